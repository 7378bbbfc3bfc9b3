"""Draft 002's mean teacher for semi-supervised retrieval: the EMA, the consistency term, the training."""

import math

import pytest
import torch

from kdutils.mean_teacher import Adapter, MeanTeacherRetrieval, compare, recalls, train_retrieval


def test_adapter_starts_as_the_identity_on_the_sphere():
    x = torch.randn(5, 8)
    torch.testing.assert_close(Adapter(8)(x), torch.nn.functional.normalize(x, dim=-1))


def test_teacher_is_the_moving_average_of_the_student_and_gets_no_gradient():
    model = MeanTeacherRetrieval(dim=4, bank=torch.randn(3, 4), decay=0.75)
    model.step.fill_(100)  # past the EMA warm-up: the decay is 0.75
    with torch.no_grad():
        for p in [*model.image.parameters(), *model.text.parameters()]:
            p.fill_(1.0)
    before = [t.clone() for t in model.teacher.parameters()]
    model.update_teacher()
    for t, old in zip(model.teacher.parameters(), before):
        torch.testing.assert_close(t, 0.75 * old + 0.25)
        assert not t.requires_grad


def test_consistency_is_zero_when_teacher_equals_student_without_noise():
    torch.manual_seed(0)
    model = MeanTeacherRetrieval(dim=6, bank=torch.randn(10, 6), noise=0.0)
    batch = {"image": torch.randn(4, 6), "text": torch.randn(4, 6), "unpaired": torch.randn(7, 6)}
    out = model(batch)
    assert out["consistency"].item() == pytest.approx(0.0, abs=1e-7)
    assert out["loss"].item() == pytest.approx(out["contrastive"].item())
    noisy = MeanTeacherRetrieval(dim=6, bank=torch.randn(10, 6), noise=0.5)(batch)
    assert noisy["consistency"].item() > 1e-4


def test_zero_shot_recall_on_aligned_embeddings():
    torch.manual_seed(0)
    image = torch.randn(50, 16)
    r = recalls(image, image + 0.01 * torch.randn(50, 16))
    assert r["i2t_r1"] == 100.0 and r["t2i_r1"] == 100.0
    assert recalls(image, torch.randn(50, 16))["i2t_r1"] < 20


def test_training_is_seeded_and_the_mean_teacher_changes_the_result():
    torch.manual_seed(0)
    image, text, unpaired = torch.randn(64, 8), torch.randn(64, 8), torch.randn(200, 8)
    kw = dict(epochs=2, seed=3, batch_size=16)
    a = train_retrieval(image, text, unpaired, mean_teacher=True, **kw)
    b = train_retrieval(image, text, unpaired, mean_teacher=True, **kw)
    c = train_retrieval(image, text, unpaired, mean_teacher=False, **kw)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(p, q)  # same seed, same numbers
    assert any(not torch.equal(p, q) for p, q in zip(a.image.parameters(), c.image.parameters()))
    assert recalls(image, text, a)["i2t_r10"] > recalls(image, text)["i2t_r10"]  # learned the pairs


def test_ramp_ups_follow_the_mean_teacher_paper():
    model = MeanTeacherRetrieval(dim=4, bank=torch.randn(3, 4), consistency=2.0, decay=0.99, rampup_steps=10)
    assert model.consistency_weight() == pytest.approx(2.0 * math.exp(-5.0))  # step 0: almost nothing
    before = [t.clone() for t in model.teacher.parameters()]
    with torch.no_grad():
        for p in [*model.image.parameters(), *model.text.parameters()]:
            p.add_(1.0)
    model.update_teacher()  # step 0: decay min(0.99, 1 - 1/1) = 0, so the teacher copies the student
    for t, s in zip(model.teacher.parameters(), [*model.image.parameters(), *model.text.parameters()]):
        torch.testing.assert_close(t, s)
    assert not all(torch.equal(t, b) for t, b in zip(model.teacher.parameters(), before))
    model.step.fill_(10)
    assert model.consistency_weight() == pytest.approx(2.0)  # ramped up


def test_compare_chooses_the_weight_on_held_out_pairs_only():
    torch.manual_seed(0)
    image, unpaired = torch.randn(50, 8), torch.randn(100, 8)
    text = image + 0.3 * torch.randn(50, 8)
    out = compare(image, text, unpaired, weights=(0.1, 1.0), epochs=2, seed=0, batch_size=16)
    assert out["weight"] in (0.1, 1.0) and set(out["validation"]) == {0.1, 1.0}
    assert out["weight"] == max(out["validation"], key=out["validation"].get)
    held_out = slice(0, 10)  # a fifth of 50 pairs
    r = recalls(image[held_out], text[held_out], out["mean teacher"])
    assert (r["i2t_r10"] + r["t2i_r10"]) / 2 == pytest.approx(out["validation"][out["weight"]])


def test_every_unpaired_image_is_drawn_and_the_draws_are_seeded():
    """Each pair gets `per_pair` unpaired images drawn at random, not the same fixed block every epoch."""
    from kdutils.mean_teacher import _PairsWithUnpaired

    image, text, unpaired = torch.zeros(10, 2), torch.zeros(10, 2), torch.arange(100.0).view(100, 1)

    def drawn(seed, epochs=10):
        data = _PairsWithUnpaired(image, text, unpaired, 4, torch.Generator().manual_seed(seed))
        return torch.cat([data[i][2].view(-1) for _ in range(epochs) for i in range(len(data))])

    assert torch.equal(drawn(0), drawn(0)) and not torch.equal(drawn(0), drawn(1))
    assert len(drawn(0, epochs=1).unique()) > 30 and len(drawn(0).unique()) > 90  # a fixed block would stay at 40


def test_clip_embeddings_read_uint8_splits_as_images_in_0_1():
    """A split holds uint8 images; CLIP's preprocessing wants [0, 1] floats and refuses anything else."""
    from transformers import CLIPModel

    from kdutils import clip, synthworld, text
    from kdutils.mean_teacher import clip_embeddings
    from kdutils.splits import Split

    tokenizer = text.build_tokenizer(synthworld.vocabulary(), max_length=32)
    torch.manual_seed(0)
    model = CLIPModel(clip.small_clip_config(len(tokenizer), patch_size=8, vision_hidden=32, vision_layers=1,
                                             text_hidden=32, text_layers=1, heads=2, projection_dim=16)).eval()
    images = (torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    with pytest.raises(ValueError, match="uint8"):
        clip.preprocess(model, images)
    image_emb, _ = clip_embeddings(model, tokenizer, Split(images, torch.zeros(3, dtype=torch.long), key="toy"),
                                   ["a red circle"] * 3)
    torch.testing.assert_close(image_emb, clip.encode_images(model, images.float() / 255))
