"""KASSL pieces: extension, loss, collapse check, view bank (cached = live), standardised targets."""

import copy
import json
import math
import pickle

import pytest
import torch
from conftest import fail_if_recomputed
import torch.nn.functional as F
from torch import nn

from kdutils import kassl
from kdutils.distillers import FeatureRegression, spread
from kdutils.errors import ConfigError
from kdutils.kassl import EncoderExtension, KASSLStudent, feature_pairs, train_kassl
from kdutils.kassl_config import VARIANTS
from kdutils.kassl_encoders import TeacherSources, student_backbone
from kdutils.profiles import load_profile
from kdutils.kassl_views import AugmentedViewBank, BankViews, SameImage
from kdutils.augment import ViewAugment
from kdutils.teacher import FrozenTeacher
from kdutils.recipes import Recipe


def _backbone():
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten())


def test_encoder_extension_has_four_linear_layers_to_the_teacher_size():
    ext = EncoderExtension(8, 20, hidden=16)
    linears = [m for m in ext if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(8, 16), (16, 16), (16, 16), (16, 20)]
    assert ext(torch.rand(5, 8)).shape == (5, 20)


def test_feature_reduction_is_fixed_orthogonal_or_trainable():
    fixed = KASSLStudent(_backbone(), 6, 10, 12, reduced_dim=4, reduction_trainable=False)
    w = fixed.reduction.weight
    assert not w.requires_grad and torch.allclose(w @ w.T, torch.eye(4), atol=1e-5)
    assert fixed.target(torch.rand(3, 10)).shape == (3, 4)
    trained = KASSLStudent(_backbone(), 6, 10, 12, reduced_dim=4, reduction_trainable=True)
    assert trained.reduction.weight.requires_grad
    plain = KASSLStudent(_backbone(), 6, 10, 12)
    t = torch.rand(3, 10)
    assert plain.reduction is None and torch.equal(plain.target(t), t)
    with pytest.raises(ConfigError):
        KASSLStudent(_backbone(), 6, 10, 12, reduced_dim=11)


def test_kassl_loss_is_the_symmetric_negative_cosine():
    torch.manual_seed(0)
    student = KASSLStudent(_backbone(), 6, 5, 8).eval()
    v1, v2 = torch.rand(4, 3, 8, 8), torch.rand(4, 3, 8, 8)
    t1, t2 = torch.randn(4, 5), torch.randn(4, 5)
    out = FeatureRegression()(*feature_pairs(student, v1, v2, t1, t2))
    s1, s2 = student.embed(v1), student.embed(v2)
    by_hand = 0.5 * (-F.cosine_similarity(s1, t2).mean() - F.cosine_similarity(s2, t1).mean())
    assert out["loss"].item() == pytest.approx(by_hand.item(), abs=1e-6)
    same = FeatureRegression()(*feature_pairs(student, v1, None, t1, None))
    assert same["loss"].item() == pytest.approx(-F.cosine_similarity(s1, t1).mean().item(), abs=1e-6)
    assert -1 <= out["loss"].item() <= 1


def test_spread_is_zero_for_collapse_and_one_for_an_isotropic_set():
    assert spread(torch.ones(10, 4) * 3).item() == pytest.approx(0.0, abs=1e-6)
    # the 2d rows +-e_i: each coordinate is +-1 in 2 of 2d rows, 0 elsewhere
    d = 4
    rows = torch.cat([torch.eye(d), -torch.eye(d)])
    expected = math.sqrt(2 / (2 * d - 1)) * math.sqrt(d)  # unbiased std of one coordinate, times sqrt(d)
    assert spread(rows).item() == pytest.approx(expected, rel=1e-5)


def _bank(n=12, k=4, seed=0):
    torch.manual_seed(99)
    images = (torch.rand(n, 3, 8, 8) * 255).to(torch.uint8)
    pair = (ViewAugment(crop_scale=(0.5, 1), blur_p=0.0), ViewAugment(crop_scale=(0.5, 1), blur_p=0.0,
                                                                      solarize_p=1.0))
    return AugmentedViewBank.draw(images, pair, k, seed, {"fixture": n}), images


def test_view_bank_is_seeded_uint8_and_uses_both_augmentations():
    bank, _ = _bank()
    again, _ = _bank()
    assert bank.views.dtype == torch.uint8 and bank.views.shape == (12, 4, 3, 8, 8)
    assert torch.equal(bank.views, again.views)
    other, _ = _bank(seed=1)
    assert not torch.equal(bank.views, other.views)
    # views 2 and 3 come from the solarising augmentation: no pixel above 50% ... after solarising
    assert bank.views[:, 2:].max() <= 128 and bank.views[:, :2].max() > 200
    with pytest.raises(ConfigError):
        AugmentedViewBank.draw(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), (ViewAugment(),) * 2, 3, 0, {})


def test_cached_teacher_features_give_the_same_training_as_a_live_teacher(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    bank, _ = _bank(n=16)
    torch.manual_seed(5)
    teacher = FrozenTeacher(nn.Sequential(nn.Conv2d(3, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()),
                            (0, 0, 0), (1, 1, 1))
    features = bank.features(teacher, "cpu")
    assert features.shape == (16, 4, 5)
    with monkeypatch.context() as patch:
        patch.setattr(teacher, "forward", fail_if_recomputed)
        assert torch.equal(bank.features(teacher, "cpu"), features)  # second call: from the cache
    with torch.no_grad():
        assert torch.allclose(features[3, 1], teacher(bank.views[3:4, 1].float() / 255)[0], atol=1e-6)

    def train(views):
        torch.manual_seed(0)
        student = KASSLStudent(_backbone(), 6, 5, 8)
        gen = torch.Generator().manual_seed(0)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.arange(16)), batch_size=4,
                                             shuffle=True, drop_last=True, generator=gen)
        recipe = Recipe(lr=0.05, weight_decay=1e-4, schedule="warmup_cosine", warmup_epochs=1, epochs=2)
        h = train_kassl(student, loader, views, recipe, progress=False)
        return student, h.series("train_loss")

    cached_student, cached_loss = train(BankViews(bank, features=features))
    live_student, live_loss = train(BankViews(bank, teacher=teacher))
    assert cached_loss == pytest.approx(live_loss, abs=1e-6)
    for a, b in zip(cached_student.state_dict().values(), live_student.state_dict().values()):
        assert torch.allclose(a.float(), b.float(), atol=1e-5)
    with pytest.raises(ConfigError):
        BankViews(bank)


def test_same_image_path_uses_index_lookup_and_center_crop():
    torch.manual_seed(0)
    teacher = FrozenTeacher(nn.Sequential(nn.Conv2d(3, 3, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten()), (0, 0, 0),
                            (1, 1, 1))
    images = torch.rand(4, 3, 6, 6)
    with torch.no_grad():
        feats = teacher(images[..., 1:5, 1:5])  # the cached (N, D) features of the plain central crops
    batch = (images[[2, 0]], torch.tensor([1, 1]), torch.tensor([2, 0]))
    v1, v2, t1, t2 = SameImage(4, features=feats)(batch, "cpu")
    assert v2 is None and t2 is None and torch.equal(t1, feats[[2, 0]])
    assert torch.equal(v1, images[[2, 0]][..., 1:5, 1:5])
    _, _, live, _ = SameImage(4, teacher=teacher)(batch, "cpu")
    torch.testing.assert_close(live, t1)  # the teacher live on the crops: the cached rows
    with pytest.raises(ConfigError):
        SameImage(4)


def test_student_backbones_at_each_scale():
    net, dim = student_backbone(load_profile("tiny").student_arch, paper=False)
    assert dim == net.feature_dim and net(torch.rand(2, 3, 32, 32)).shape == (2, dim)
    net, dim = student_backbone(load_profile("paper").student_arch, paper=True)
    assert dim == 512 and net(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    with pytest.raises(ConfigError):
        kassl.train_student(None, {"feature_dim": 4}, "no_such_variant",
                            kassl.KASSLStudentRecipe.of(load_profile("tiny")), None, 0, "cpu")
    assert copy.deepcopy(VARIANTS)["no_aug_fr"] == (False, True)


def test_standardised_targets_and_the_mean_direction_reference():
    student = KASSLStudent(_backbone(), 6, 5, 8, standardize_targets=True).train()
    t = torch.rand(32, 5) * 3 + 10  # positive features with a large common mean, like pooled ReLU outputs
    z = student.target(t)
    assert torch.allclose(z.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(z.var(0, unbiased=False), torch.ones(5), atol=1e-3)
    assert not list(student.standardize.parameters())
    assert torch.allclose(student.eval().target(t), z)  # batch statistics in evaluation too
    assert kassl.mean_direction_cosine(t) > 0.99  # a constant prediction already scores almost 1
    assert kassl.mean_direction_cosine(torch.ones(4, 3)) == pytest.approx(1.0)
    assert kassl.mean_direction_cosine(torch.cat([torch.eye(3), -torch.eye(3)])) == pytest.approx(0.0, abs=1e-6)
    assert kassl.mean_direction_cosine(t.view(4, 8, 5)) == pytest.approx(kassl.mean_direction_cosine(t))


def test_recipes_holding_dicts_are_hashable_read_only_and_keyed_as_before():
    """TeacherSources holds dicts at three depths (ssl recipes and their hyper-parameters, checkpoints, the source
    pretraining's SynthData sizes): it hashes, survives copy and pickle, refuses changes, and a key still
    serialises the dict it held."""
    sources = TeacherSources.of(load_profile("tiny"))
    assert hash(copy.deepcopy(sources)) == hash(sources) and pickle.loads(pickle.dumps(sources)) == sources
    recipe = sources.ssl["byol"]
    for change in (lambda: recipe.hyper.update(proj_dim=1), lambda: sources.source.data.sizes.pop("source_train"),
                   lambda: sources.checkpoints.__setitem__("byol", None)):
        with pytest.raises(TypeError, match="read-only"):
            change()
    assert json.dumps(recipe.key(), sort_keys=True) == json.dumps({**recipe.key(), "hyper": dict(recipe.hyper)},
                                                                   sort_keys=True)


def test_benchmark_cached_bank_trains_like_the_live_teacher():
    from benchmarks import kassl as bench_kassl

    out = bench_kassl.run(n_images=64, views=2, epochs=1, students=1)
    assert out["same_losses"] and out["live_s"] > 0 and out["cached_s"] > 0
