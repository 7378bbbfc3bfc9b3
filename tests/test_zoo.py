"""The model zoo: every backbone by name, features out, with a card that says what it is."""

import pytest
import torch
from torch import nn

from kdutils import zoo
from kdutils.errors import ConfigError
from kdutils.teacher import Normalize


def test_small_resnets_come_features_out_or_with_a_fresh_head():
    net, card = zoo.backbone("resnet_xs")
    x = torch.rand(2, 3, 32, 32)
    assert net(x).shape == (2, card.feature_dim) and isinstance(card.normalize(), nn.Identity)
    assert card.parameters == sum(p.numel() for p in net.parameters()) and card.weights == "random init"
    classifier, _ = zoo.backbone("resnet_xs", num_classes=7)
    assert classifier(x).shape == (2, 7)
    headless, dim = zoo.headless(classifier)
    assert headless(x).shape == (2, dim) and dim == card.feature_dim
    with pytest.raises(ConfigError, match="source_backbone"):
        zoo.backbone("resnet_xs", weights="IMAGENET1K_V1")


def test_torchvision_backbones_lose_their_head_and_say_how_to_normalise():
    torch.manual_seed(0)
    net, card = zoo.backbone("resnet18")  # random initialisation from the global stream
    assert card.feature_dim == 512 and card.parameters == 11_176_512 and card.input_size is None
    assert isinstance(card.normalize(), Normalize) and net.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 512)
    vit, vcard = zoo.backbone("vit_b_16", weights="IMAGENET1K_SWAG_E2E_V1", input_size=32, placeholder=True,
                              seed=0)
    assert vcard.input_size == 32 and vcard.weights == "random init"
    assert vit.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 768)
    state = torch.get_rng_state()
    again, _ = zoo.backbone("resnet18", weights="IMAGENET1K_V1", placeholder=True, seed=0)
    same, _ = zoo.backbone("resnet18", weights="IMAGENET1K_V1", placeholder=True, seed=0)
    assert torch.equal(torch.get_rng_state(), state)  # a seeded dry run leaves the global stream alone
    assert all(torch.equal(a, b) for a, b in zip(again.state_dict().values(), same.state_dict().values()))
    unseeded, _ = zoo.backbone("resnet18", weights="IMAGENET1K_V1", placeholder=True)
    torch.rand(3)  # without a seed, a dry run's placeholder is still the same whatever was drawn before
    again, _ = zoo.backbone("resnet18", weights="IMAGENET1K_V1", placeholder=True)
    assert all(torch.equal(a, b) for a, b in zip(unseeded.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ConfigError, match="num_classes"):
        zoo.backbone("resnet18", num_classes=3)
    with pytest.raises(ConfigError, match="head"):
        zoo.headless(nn.Linear(2, 2))


def test_text_encoders_by_name_come_mean_pooled_with_a_card(tmp_path):
    from kdutils import synthworld, text

    torch.manual_seed(0)
    bert, card = zoo.text_encoder("bert", hidden=64, layers=1, max_length=24)
    assert isinstance(bert, text.TextEncoder) and bert.eval().encode(["a red star"]).shape == (1, 64)
    assert (card.feature_dim, card.max_length, card.weights) == (64, 24, "random init")
    assert card.parameters == sum(p.numel() for p in bert.model.parameters())
    assert bert.model.config.num_attention_heads == 2 and len(bert.tokenizer) == len(
        text.build_tokenizer(synthworld.vocabulary()))
    torch.manual_seed(0)  # the same global-stream draws as building the model by hand
    by_hand = text.small_text_model("bert", len(bert.tokenizer), hidden=64, layers=1, heads=2, max_positions=24)
    assert all(torch.equal(a, b) for a, b in zip(bert.model.state_dict().values(), by_hand.state_dict().values()))
    roberta, _ = zoo.text_encoder("roberta", hidden=32, layers=1, tokenizer=bert.tokenizer)
    assert roberta.tokenizer is bert.tokenizer and roberta.dim == 32
    bert.model.save_pretrained(tmp_path / "minilm")
    bert.tokenizer.save_pretrained(tmp_path / "minilm")
    loaded, lcard = zoo.text_encoder("sentence-transformers/all-MiniLM-L6-v2", path=tmp_path / "minilm")
    assert lcard.weights == "sentence-transformers/all-MiniLM-L6-v2" and lcard.parameters == card.parameters
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval().encode(["a red star"]), bert.encode(["a red star"]))
    with pytest.raises(ConfigError, match="path="):
        zoo.text_encoder("roberta-base")
