"""Matchers, losses, training and the additive-score analysis, checked against hand computations."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import fail_if_recomputed
import torch.nn.functional as F
from torch import nn

from kdutils import clip, distillers, matching, matching_models, pairs, synthworld, text
from benchmarks import matching as bench_matching
from kdutils.errors import ConfigError
from kdutils.profiles import load_profile
from kdutils.splits import from_synth


@pytest.fixture(scope="module")
def tokenizer():
    return text.build_tokenizer(synthworld.vocabulary(), max_length=32)


@pytest.fixture(scope="module")
def data(tokenizer):
    batch = synthworld.generate("target", 24, seed=7)
    images = from_synth(batch)
    p = pairs.random_negative_pairs(batch.captions, seed=0)
    return pairs.PairDataset(p, images, {"teacher": tokenizer, "student": tokenizer})


def tiny_clip(tokenizer):
    from transformers import CLIPModel

    torch.manual_seed(0)
    return CLIPModel(clip.small_clip_config(len(tokenizer), patch_size=8, vision_hidden=32, vision_layers=1,
                                            text_hidden=32, text_layers=1, heads=2, projection_dim=16))


class MeanImage(nn.Module):
    """A stand-in image tower: per-channel means (3 features)."""

    def forward(self, x):
        return x.mean((2, 3))


class FixedText(nn.Module):
    """A stand-in text tower: the caption's length in tokens, twice (2 features)."""

    dim = 2

    def forward(self, ids, mask):
        n = mask.sum(1, keepdim=True).float()
        return torch.cat([n, -n], 1)


def batch_of(data, n=6):
    return next(iter(torch.utils.data.DataLoader(data, batch_size=n)))


def test_clip_matcher_is_affine_in_the_cosine(tokenizer, data):
    model = tiny_clip(tokenizer).eval()
    m = matching.ClipMatcher(model)
    assert float(m.w.detach()) == pytest.approx(float(model.logit_scale.detach().exp()))
    b = batch_of(data)
    with torch.no_grad():
        img = F.normalize(clip.image_embeds(model, b["image"]), dim=-1)
        txt = F.normalize(clip.text_embeds(model, b["teacher_ids"], b["teacher_mask"]), dim=-1)
        cos = (img * txt).sum(1)
        m.w.fill_(3.0)
        m.b.fill_(-0.5)
        torch.testing.assert_close(m(b), 3.0 * cos - 0.5)


def test_calibrate_bias_centres_the_threshold(tokenizer, data):
    m = matching.ClipMatcher(tiny_clip(tokenizer).eval(), scale=10.0)
    bias = matching.calibrate_bias(m, data, batch_size=8)
    logits = matching.predict_logits(m, data)
    assert bias == pytest.approx(float(m.b.detach()))
    assert float(logits.mean()) == pytest.approx(0.0, abs=1e-4)  # mean cosine maps to logit 0


def test_additive_head_is_a_sum_of_parts(data):
    torch.manual_seed(0)
    m = matching.TwoTowerMatcher(MeanImage(), 3, FixedText(), head="additive")
    b = batch_of(data)
    with torch.no_grad():
        z = m(b)
        a, c = m.additive_parts(b)
        w, bias = m.head.weight[0], m.head.bias[0]
        u, n = b["image"].mean((2, 3)), b["student_mask"].sum(1).float()
        torch.testing.assert_close(z, u @ w[:3] + bias + w[3] * n - w[4] * n)
    torch.testing.assert_close(a + c, z)
    inter = matching.TwoTowerMatcher(MeanImage(), 3, FixedText(), head="interaction", width=4)
    assert inter(b).shape == (6,)
    with pytest.raises(ConfigError, match="additive"):
        inter.additive_parts(b)
    with pytest.raises(ConfigError, match="head"):
        matching.TwoTowerMatcher(MeanImage(), 3, FixedText(), head="bilinear")


def test_kd_without_teacher_logits_fails_before_training(data):
    model = matching.TwoTowerMatcher(MeanImage(), 3, FixedText(), head="interaction", width=8)
    with pytest.raises(ConfigError, match="one teacher logit per training pair"):
        matching.train_matcher(model, data, data, loss=distillers.SigmoidKD(2.0, 0.5), epochs=1, lr=1e-2,
                               batch_size=8, seed=0, progress=False)


def test_train_matcher_learns_and_resumes(tmp_path, monkeypatch, data):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))

    def make():
        torch.manual_seed(1)
        return matching.TwoTowerMatcher(MeanImage(), 3, FixedText(), head="interaction", width=8)

    teacher = torch.linspace(-2, 2, len(data))
    spec = distillers.SigmoidKD(2.0, 0.5)
    m1 = make()
    h1 = matching.train_matcher(m1, data, data, loss=spec, teacher=teacher, epochs=3, lr=1e-2, batch_size=8, seed=0,
                                cache_tag="unit", progress=False)
    assert [e["epoch"] for e in h1.epochs] == [1, 2, 3]
    assert {"train_loss", "train_ce", "train_kd", "train_acc", "val_loss", "val_acc"} <= set(h1.epochs[0])
    assert h1.epochs[-1]["train_loss"] < h1.epochs[0]["train_loss"]  # it learns
    # same seed, same numbers; a second call returns the cached run without training
    m2 = make()
    h2 = matching.train_matcher(m2, data, data, loss=spec, teacher=teacher, epochs=3, lr=1e-2, batch_size=8, seed=0,
                                cache_tag="unit", progress=False)
    assert h2.epochs == h1.epochs
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    m3 = make()
    h3 = matching.train_matcher(m3, data, data, loss=spec, teacher=teacher, epochs=3, lr=1e-2, batch_size=8, seed=0,
                                progress=False)
    assert [e["train_loss"] for e in h3.epochs] == [e["train_loss"] for e in h1.epochs]
    with pytest.raises(ConfigError, match="teacher logit"):
        matching.train_matcher(make(), data, data, loss=spec, teacher=teacher[:3], epochs=1, lr=1e-2, batch_size=8,
                               seed=0, progress=False)


def test_teacher_logits_are_cached(tmp_path, monkeypatch, tokenizer, data):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    m = matching.ClipMatcher(tiny_clip(tokenizer).eval())
    first = matching.teacher_logits(m, data)
    assert first.shape == (len(data),)
    assert len(list((tmp_path / "study2").glob("*.pt"))) == 1
    torch.testing.assert_close(first, matching.predict_logits(m, data))
    with monkeypatch.context() as patch:
        patch.setattr(matching, "predict_logits", fail_if_recomputed)
        torch.testing.assert_close(matching.teacher_logits(m, data), first)  # read from the cache


def test_matching_report_by_kind():
    p = pairs.PairSet("t", np.arange(6), list("abcdef"), np.array([1, 1, 0, 0, 0, 0]),
                      ["match", "match", "shape", "shape", "color", "color"])
    z = torch.tensor([2.0, -1.0, -3.0, 0.5, -1.0, -2.0])  # predictions 1 0 0 1 0 0
    r = matching.matching_report(z, p)
    assert r["accuracy"] == pytest.approx(100 * 4 / 6)
    assert r["precision"] == pytest.approx(50.0) and r["recall"] == pytest.approx(50.0)
    assert r["by_kind"] == {"color": 100.0, "match": 50.0, "shape": 50.0}


def test_additive_score_analysis():
    labels = np.array([1, 1, 1, 0, 0, 0])
    a = torch.tensor([1.0, 2.0, 3.0, 1.0, 2.0, 3.0])
    b = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
    out = matching.additive_score_analysis(a, b, labels)
    assert out["score"]["mean_match"] == out["score"]["mean_mismatch"] == 2.0
    assert out["score"]["std_match"] == out["score"]["std_mismatch"] == pytest.approx(1.0)  # sample std, ddof=1
    assert out["auc"] == pytest.approx(50.0) and out["welch_p"] == pytest.approx(1.0)
    shifted = matching.additive_score_analysis(a + torch.tensor([10.0, 10, 10, 0, 0, 0]), b, labels)
    assert shifted["auc"] == 100.0 and shifted["welch_p"] < 1e-3


@pytest.mark.parametrize("T,alpha", [(1.5, 0.4), (3.0, 0.5), (6.0, 0.9), (1.0, 0.0)])
def test_softmax_kd_is_a_rescaled_sigmoid_kd(T, alpha):
    torch.manual_seed(0)
    zt, y = torch.randn(32) * 3, (torch.rand(32) > 0.5).float()
    zs = (torch.randn(32) * 2).requires_grad_(True)
    (g_soft,) = torch.autograd.grad(distillers.BinarySoftmaxKD(T, alpha)(zs, zt, y)["loss"], zs)
    a2, c = matching.equivalent_sigmoid_alpha(T, alpha)
    (g_sig,) = torch.autograd.grad(distillers.SigmoidKD(T, a2)(zs, zt, y)["loss"], zs)
    torch.testing.assert_close(g_soft, c * g_sig, rtol=1e-5, atol=1e-7)
    assert matching.equivalent_sigmoid_alpha(3.0, 0.5) == pytest.approx((4.5 / 5.0, 5.0))


def test_cached_teacher_logits_train_exactly_like_the_live_teacher():
    out = bench_matching.run(n_pairs=128, epochs=1, batch_size=64)
    assert out["max_loss_difference"] < 1e-4


def test_each_backbone_seed_pretrains_its_own_encoders():
    cfg = load_profile("tiny", seeds=[0, 1], backbone_seeds=[0, 1])
    models = matching_models.MatchingModels.of(cfg)
    (clip0, _, _), (clip1, _, _) = (matching_models.build_teacher(models, seed=cfg.backbone_seed(s)) for s in cfg.seeds)
    make0, make1 = (matching_models.student_factory(models, seed=cfg.backbone_seed(s))[0] for s in cfg.seeds)
    assert any(not torch.equal(a, b) for a, b in zip(clip0.parameters(), clip1.parameters()))
    image0, image1 = make0("additive", 0).image_encoder, make1("additive", 0).image_encoder
    assert any(not torch.equal(a, b) for a, b in zip(image0.parameters(), image1.parameters()))
