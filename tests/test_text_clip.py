"""Text encoders and the CLIP helpers: values against hand computations, save/load round trips, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdutils import clip, synthworld, text
from kdutils.cache import model_fingerprint
from kdutils.errors import ConfigError, MissingDataError
from kdutils.losses import clip_contrastive_loss
from kdutils.profiles import load_profile
from kdutils.teacher import CLIP_MEAN, CLIP_STD


@pytest.fixture(scope="module")
def tokenizer():
    return text.build_tokenizer(synthworld.vocabulary(), max_length=32)


def small_clip(tokenizer, **kw):
    from transformers import CLIPModel

    torch.manual_seed(0)
    cfg = clip.small_clip_config(len(tokenizer), patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32,
                                 text_layers=1, heads=2, projection_dim=16, **kw)
    return CLIPModel(cfg).eval()


# ----------------------------------------------------------------------------- tokenizer

def test_tokenizer_ids_lowercase_punctuation_and_unknown(tokenizer):
    assert [tokenizer.pad_token_id, tokenizer.unk_token_id, tokenizer.cls_token_id, tokenizer.sep_token_id,
            tokenizer.mask_token_id] == [0, 1, 2, 3, 4]
    enc = tokenizer(["This is an image of a Star.", "a zebra"])
    toks = tokenizer.convert_ids_to_tokens(enc["input_ids"][0])
    assert toks == ["[CLS]", "this", "is", "an", "image", "of", "a", "star", ".", "[SEP]"]
    assert tokenizer.convert_ids_to_tokens(enc["input_ids"][1]) == ["[CLS]", "a", "[UNK]", "[SEP]"]
    # every word of the vocabulary is known: no caption of the world maps to [UNK]
    batch = synthworld.generate("source", 50, 3)
    ids = tokenizer(batch.captions + [c for h in batch.hard_negatives for c in h.values()])["input_ids"]
    assert all(tokenizer.unk_token_id not in row for row in ids)
    assert len(tokenizer) == 5 + len(text.PUNCTUATION) + len(synthworld.vocabulary())


def test_tokenizer_truncates_and_pads(tokenizer):
    enc = tokenizer(["star " * 100, "a star"], padding=True, truncation=True, return_tensors="pt")
    assert enc["input_ids"].shape == (2, 32)
    assert enc["input_ids"][0, -1] == tokenizer.sep_token_id
    assert enc["attention_mask"][1].tolist() == [1, 1, 1, 1] + [0] * 28
    assert enc["input_ids"][1, 4:].eq(tokenizer.pad_token_id).all()


def test_tokenizer_round_trip(tokenizer, tmp_path):
    from transformers import AutoTokenizer

    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    texts = ["This is an image of a hollow star.", "a large red cross in the upper left on a wavy teal background"]
    assert loaded(texts)["input_ids"] == tokenizer(texts)["input_ids"]
    assert loaded.model_max_length == 32 and loaded.pad_token == "[PAD]"


def test_tokenizer_rejects_bad_input():
    with pytest.raises(ConfigError, match="non-empty"):
        text.build_tokenizer([])
    with pytest.raises(ConfigError, match="single alphanumeric"):
        text.build_tokenizer(["two words"])
    with pytest.raises(ConfigError, match="max_length"):
        text.build_tokenizer(["star"], max_length=2)


# ----------------------------------------------------------------------------- text encoders

def test_mean_pool_hand_computed():
    h = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]],
                      [[2.0, 0.0], [0.0, 0.0], [0.0, 0.0]]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert torch.equal(text.mean_pool(h, mask), torch.tensor([[2.0, 3.0], [2.0, 0.0]]))
    with pytest.raises(ValueError, match="mean_pool"):
        text.mean_pool(h, mask[:, :2])


def test_small_text_models(tokenizer):
    from transformers import BertModel, RobertaModel

    bert = text.small_text_model("bert", len(tokenizer), hidden=32, layers=1, heads=2)
    roberta = text.small_text_model("roberta", len(tokenizer), hidden=32, layers=1, heads=2, max_positions=32)
    assert isinstance(bert, BertModel) and isinstance(roberta, RobertaModel)
    assert bert.pooler is None and roberta.pooler is None
    assert bert.config.hidden_size == 32 and bert.config.vocab_size == len(tokenizer)
    enc = text.TextEncoder(tokenizer, roberta).eval()
    assert enc.encode(["star " * 40]).shape == (1, 32)  # 32 tokens fit despite RoBERTa's position offset
    with pytest.raises(ConfigError, match="kind"):
        text.small_text_model("gpt", 10)
    with pytest.raises(ConfigError, match="divisible"):
        text.small_text_model("bert", 10, hidden=30, heads=4)


def test_text_encoder_pools_real_tokens_only(tokenizer):
    torch.manual_seed(0)
    model = text.small_text_model("bert", len(tokenizer), hidden=32, layers=1, heads=2)
    enc = text.TextEncoder(tokenizer, model).eval()
    with torch.no_grad():
        alone = enc.encode(["a red star"])
        batched = enc.encode(["a red star", "a large red cross in the upper left on a wavy teal background"])
        ids = enc.tokenize(["a red star"])
        states = model(**ids).last_hidden_state
        direct = enc(**ids)
    assert enc.dim == 32 and batched.shape == (2, 32)
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)  # padding does not leak into the mean
    assert states.shape == (1, 5, 32) and ids["attention_mask"].tolist() == [[1] * 5]
    torch.testing.assert_close(alone, states.mean(1))
    torch.testing.assert_close(alone, direct)
    normed = text.TextEncoder(tokenizer, enc.model, normalize=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(normed.encode(["a red star"]).norm(dim=1), torch.ones(1))
    with pytest.raises(ValueError, match="list"):
        enc.encode("a red star")


def test_load_text_encoder_round_trip_and_errors(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = text.small_text_model("bert", len(tokenizer), hidden=32, layers=1, heads=2).eval()
    folder = tmp_path / "minilm"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    loaded = text.load_text_encoder(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode(["a red star"]),
                                   text.TextEncoder(tokenizer, model).eval().encode(["a red star"]))
    missing = tmp_path / "all-MiniLM-L6-v2"
    with pytest.raises(MissingDataError) as err:
        text.load_text_encoder(missing, repo_id="sentence-transformers/all-MiniLM-L6-v2")
    assert str(missing) in str(err.value)
    assert "huggingface-cli download sentence-transformers/all-MiniLM-L6-v2" in str(err.value)
    # config + tokenizer but no weights: an error, unless a dry run allows random weights
    (folder / "model.safetensors").unlink()
    with pytest.raises(MissingDataError, match="weights"):
        text.load_text_encoder(folder)
    placeholder = text.load_text_encoder(folder, allow_random=True)
    assert placeholder.dim == 32
    state = torch.get_rng_state()
    assert model_fingerprint(text.load_text_encoder(folder, allow_random=True).model) == \
        model_fingerprint(placeholder.model)  # the same placeholder every dry run ...
    assert torch.equal(torch.get_rng_state(), state)  # ... drawn beside the global stream


# ----------------------------------------------------------------------------- CLIP

def test_small_clip_config_and_checks(tokenizer):
    arch = {**clip.SMALL_CLIP_ARCHS["clip_xs"], "patch_size": 4}
    cfg = clip.small_clip_config(len(tokenizer), **arch)
    assert cfg.vision_config.image_size == 32 and cfg.vision_config.patch_size == 4
    assert cfg.text_config.eos_token_id == tokenizer.sep_token_id and cfg.text_config.pad_token_id == 0
    with pytest.raises(ConfigError, match="multiple"):
        clip.small_clip_config(10, image_size=32, **{**arch, "patch_size": 5})
    with pytest.raises(ConfigError, match="legacy"):
        clip.small_clip_config(10, eos_token_id=2, **arch)


def test_preprocess_resizes_and_normalises(tokenizer):
    model = small_clip(tokenizer)
    x = torch.full((2, 3, 16, 16), 0.5)
    out = clip.preprocess(model, x)
    assert out.shape == (2, 3, 32, 32)
    expected = (0.5 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out[0, :, 7, 9], expected)
    with pytest.raises(ValueError, match="N, 3, H, W"):
        clip.preprocess(model, torch.zeros(3, 32, 32))


def test_embeddings_match_the_towers(tokenizer, monkeypatch):
    model = small_clip(tokenizer)
    x = torch.rand(3, 3, 32, 32)
    enc = tokenizer(["a red star", "a blue cross in the center", "a star"], padding=True, return_tensors="pt")
    with torch.no_grad():
        img = clip.image_embeds(model, x)
        txt = clip.text_embeds(model, enc["input_ids"], enc["attention_mask"])
        # by hand: the vision tower's pooled output projected; the text tower's state at [SEP] projected
        pooled = model.vision_model(pixel_values=clip.preprocess(model, x)).pooler_output
        states = model.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
        sep = (enc["input_ids"] == tokenizer.sep_token_id).int().argmax(1)
        txt_hand = model.text_projection(states[torch.arange(3), sep])
    assert img.shape == (3, 16) and txt.shape == (3, 16)
    torch.testing.assert_close(img, model.visual_projection(pooled))
    torch.testing.assert_close(txt, txt_hand)
    # older transformers returned the tensor itself: both forms give the same embedding
    monkeypatch.setattr(type(model), "get_image_features", lambda self, pixel_values: model.visual_projection(
        model.vision_model(pixel_values=pixel_values).pooler_output))
    with torch.no_grad():
        torch.testing.assert_close(clip.image_embeds(model, x), img)


def test_retrieval_recalls_hand_computed():
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    txt = torch.tensor([[1.0, 0.1], [1.0, 0.0], [0.0, 1.0]])
    # cosines: image 0 ranks text 1 (1.0) above its own text 0 (0.995): rank 1
    # image 1: own text 1 has cosine 0 < text 2 (1.0) and text 0 (0.0995): rank 2
    # image 2: own text 2 (0.707) vs text 0 (0.774) and text 1 (0.707, a tie: counts against): rank 2
    r = clip.retrieval_recalls(img, txt, ks=(1, 2, 3))
    assert r["i2t_r1"] == 0.0 and r["i2t_r2"] == pytest.approx(100 / 3) and r["i2t_r3"] == 100.0
    perfect = clip.retrieval_recalls(torch.eye(4), torch.eye(4), ks=(1,))
    assert perfect == {"i2t_r1": 100.0, "t2i_r1": 100.0}
    with pytest.raises(ValueError, match="paired"):
        clip.retrieval_recalls(torch.eye(3), torch.eye(4))


def test_clip_loss_with_hard_negatives():
    img, txt, neg = torch.randn(4, 8), torch.randn(4, 8), torch.randn(4, 8)
    with pytest.raises(ConfigError, match="logit_scale must be > 0"):  # the negatives' path checks its inputs too
        clip_contrastive_loss(img, txt, 0.0, neg)
    with pytest.raises(ValueError, match="must have the same shape"):
        clip_contrastive_loss(img, txt[:3], 10.0, neg)
    # by hand for two pairs in 1-D directions: i2t sees 4 captions, t2i sees 2 images
    img = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    txt = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    neg = torch.tensor([[1.0, 0.0], [1.0, 0.0]])  # image 0's near miss is as close as its caption
    s = 2.0
    i2t = (-torch.log(torch.tensor(torch.e ** s / (3 * torch.e ** s + 1))) +
           -torch.log(torch.tensor(torch.e ** s / (torch.e ** s + 3)))) / 2
    t2i = -torch.log(torch.tensor(torch.e ** s / (torch.e ** s + 1)))
    expected = 0.5 * (i2t + t2i)
    torch.testing.assert_close(clip_contrastive_loss(img, txt, s, neg), expected)


def test_zero_shot_accuracy_uses_the_most_similar_prompt(tokenizer, monkeypatch):
    model = small_clip(tokenizer)
    monkeypatch.setattr(clip, "encode_images", lambda m, x: F.normalize(x.flatten(1)[:, :2], dim=1))
    monkeypatch.setattr(clip, "encode_texts", lambda m, t, p: torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    x = torch.zeros(3, 3, 32, 32)
    x[0, 0, 0, 0], x[1, 0, 0, 1], x[2, 0, 0, 0] = 1.0, 1.0, 1.0
    assert clip.zero_shot_accuracy(model, tokenizer, x, torch.tensor([0, 1, 1]), ["a", "b"]) == pytest.approx(200 / 3)


def test_pretrain_small_clip_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    cfg = load_profile("tiny", n_source_train=128, n_source_test=64, n_target_test=40, s2_clip_epochs=1,
                       batch_size=32)
    pretraining = clip.ClipPretraining.of(cfg)
    model, tok, summary = clip.pretrain_small_clip(pretraining, seed=0)
    assert summary["arch"]["name"] == "clip_xs" and len(summary["history"]["epochs"]) == 1
    assert set(summary["source_test_recalls"]) == {"i2t_r1", "i2t_r5", "t2i_r1", "t2i_r5"}
    assert 0.0 <= summary["target_zero_shot_top1"] <= 100.0
    assert summary["history"]["epochs"][0]["train_loss"] > 0
    with monkeypatch.context() as m:  # the cached CLIP must not generate (or train on) data again
        m.setattr(clip.SynthData, "split", lambda *a, **k: pytest.fail("the cached CLIP was computed again"))
        again, _, summary2 = clip.pretrain_small_clip(pretraining, seed=0)
    assert summary2 == summary
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), name
    assert not again.training and len(tok) == len(text.build_tokenizer(synthworld.vocabulary()))
    with pytest.raises(ConfigError, match="load_clip"):
        clip.ClipPretraining.of(load_profile("paper"))


def test_load_clip_round_trip_and_errors(tokenizer, tmp_path):
    model = small_clip(tokenizer)
    folder = tmp_path / "clip"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    loaded, tok = clip.load_clip(folder)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(clip.image_embeds(loaded, x), clip.image_embeds(model, x))
    assert tok("a star")["input_ids"] == tokenizer("a star")["input_ids"]
    missing = tmp_path / "openai" / "clip-vit-base-patch32"
    with pytest.raises(MissingDataError) as err:
        clip.load_clip(missing)
    assert str(missing) in str(err.value) and "openai/clip-vit-base-patch32" in str(err.value)
    (folder / "model.safetensors").unlink()
    with pytest.raises(MissingDataError, match="weights"):
        clip.load_clip(folder)
    random_model, _ = clip.load_clip(folder, allow_random=True)
    assert random_model.config.projection_dim == 16
    torch.rand(3)
    assert model_fingerprint(clip.load_clip(folder, allow_random=True)[0]) == model_fingerprint(random_model)
