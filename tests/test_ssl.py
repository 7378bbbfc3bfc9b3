"""Batched view augmentations, BYOL and MoCo-v2: values, not just shapes."""

import math

import pytest
import torch
from torch import nn

from kdutils.errors import ConfigError
from kdutils.losses import byol_loss
from kdutils.augment import VIEW_PRESETS, ViewAugment, _hue_rotation, as_float_images, view_pair
from kdutils.ssl import BYOL, MoCoV2, make_learner, train_ssl

OFF = dict(flip_p=0.0, jitter_p=0.0, gray_p=0.0, blur_p=0.0, solarize_p=0.0)


def test_identity_augmentation_returns_the_image():
    torch.manual_seed(0)
    x = torch.rand(4, 3, 16, 16)
    aug = ViewAugment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **OFF)
    assert torch.allclose(aug(x), x, atol=1e-5)


def test_flip_mirrors_and_uint8_is_scaled():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4)
    aug = ViewAugment(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), **{**OFF, "flip_p": 1.0})
    assert torch.allclose(aug(x), x.float().div(255).flip(-1), atol=1e-5)


def test_crop_of_a_quarter_area_zooms_into_a_quadrant_region():
    # a horizontal ramp: a half-width crop spans half of the ramp's range
    ramp = torch.linspace(0, 1, 64).view(1, 1, 1, 64).expand(8, 3, 64, 64).contiguous()
    torch.manual_seed(1)
    out = ViewAugment(crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), **OFF)(ramp)
    span = out[:, 0, 0, -1] - out[:, 0, 0, 0]
    assert torch.allclose(span, torch.full_like(span, 0.5), atol=0.03)


def test_solarize_and_grayscale_values():
    x = torch.tensor([0.2, 0.6, 0.9]).view(1, 3, 1, 1).expand(1, 3, 2, 2).contiguous()
    sol = ViewAugment(crop_scale=(1, 1), crop_ratio=(1, 1), **{**OFF, "solarize_p": 1.0})(x)
    assert torch.allclose(sol[0, :, 0, 0], torch.tensor([0.2, 0.4, 0.1]), atol=1e-5)
    gray = ViewAugment(crop_scale=(1, 1), crop_ratio=(1, 1), **{**OFF, "gray_p": 1.0})(x)
    expected = 0.299 * 0.2 + 0.587 * 0.6 + 0.114 * 0.9
    assert torch.allclose(gray[0, :, 0, 0], torch.full((3,), expected), atol=1e-5)


def test_hue_rotation_keeps_grey_and_a_third_turn_permutes_channels():
    r = _hue_rotation(torch.tensor([2 * math.pi / 3, 0.3]))
    grey = torch.full((3,), 0.5)
    assert torch.allclose(r[1] @ grey, grey, atol=1e-6)
    red = torch.tensor([1.0, 0.0, 0.0])
    assert torch.allclose(r[0] @ red, torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)  # red -> green


def test_blur_keeps_constant_images_and_means():
    torch.manual_seed(0)
    blur = ViewAugment(crop_scale=(1, 1), crop_ratio=(1, 1), **{**OFF, "blur_p": 1.0}, blur_kernel=5)
    const = torch.full((3, 3, 8, 8), 0.3)
    assert torch.allclose(blur(const), const, atol=1e-6)
    x = torch.rand(3, 3, 8, 8)
    y = blur(x)
    assert (y - x).abs().max() > 1e-3 and y.var() < x.var()


def test_views_are_seeded_in_range_and_differ():
    x = torch.rand(8, 3, 32, 32)
    t1, t2 = view_pair("synthworld")
    torch.manual_seed(3)
    a = t1(x)
    torch.manual_seed(3)
    b = t1(x)
    assert torch.equal(a, b) and a.shape == x.shape
    assert a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, t2(x))
    assert view_pair("imagenet", out_size=16)[0](torch.rand(2, 3, 40, 40)).shape == (2, 3, 16, 16)


def test_bad_augmentation_settings_fail():
    with pytest.raises(ConfigError):
        ViewAugment(crop_scale=(0.5, 0.2))
    with pytest.raises(ConfigError):
        ViewAugment(blur_kernel=4)
    with pytest.raises(ConfigError):
        view_pair("cifar")
    assert set(VIEW_PRESETS) == {"imagenet", "synthworld"}
    assert as_float_images(torch.tensor([255], dtype=torch.uint8)).item() == 1.0


def test_byol_momentum_is_the_cosine_from_base_to_one():
    model = BYOL(_encoder(), 4, hidden_dim=8, proj_dim=3, momentum=0.99, total_steps=100)
    for step, expected in [(0, 0.99), (50, 0.995), (100, 1.0)]:
        model.step.fill_(step + 1)  # the update applied at step + 1 is the one for step
        assert model.current_momentum() == pytest.approx(expected)


def _encoder():
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten())


def test_byol_loss_matches_hand_computation_and_target_is_ema():
    torch.manual_seed(0)
    model = BYOL(_encoder(), 4, hidden_dim=8, proj_dim=3, momentum=0.9, total_steps=10)
    x1, x2 = torch.rand(4, 3, 6, 6), torch.rand(4, 3, 6, 6)
    online_before = [p.detach().clone() for p in model.online.parameters()]
    out = model(x1, x2)  # first step: no EMA update yet
    p1, p2 = model.predictor(model.online(x1)), model.predictor(model.online(x2))
    z1, z2 = model.target(x1), model.target(x2)
    assert out["loss"].item() == pytest.approx((byol_loss(p1, z2) + byol_loss(p2, z1)).item(), rel=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(model.target.parameters(), online_before))
    assert not any(p.requires_grad for p in model.target.parameters())
    with torch.no_grad():  # pretend the optimiser moved the online weights
        for p in model.online.parameters():
            p.add_(1.0)
    model(x1, x2)  # second step applies the first step's EMA: target <- m * target + (1 - m) * online
    m = 0.9  # the schedule's first value
    for t, o0, o in zip(model.target.parameters(), online_before, model.online.parameters()):
        assert torch.allclose(t, m * o0 + (1 - m) * o, atol=1e-6)


def test_moco_queue_advances_by_the_batch_and_holds_unit_keys():
    """The keys' order under the shuffled batch norm is checked by the permutation test below."""
    torch.manual_seed(0)
    model = MoCoV2(_encoder(), 4, hidden_dim=8, proj_dim=3, queue_size=16, momentum=0.99, temperature=0.2,
                   bn_splits=2)
    x = torch.rand(8, 3, 6, 6)
    out = model(x, x)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    assert int(model.queue.ptr) == 8
    assert model.queue.keys[:8].shape == (8, 3)
    assert torch.allclose(model.queue.keys[:8].norm(dim=1), torch.ones(8), atol=1e-5)
    with pytest.raises(ValueError, match="bn_splits"):
        model(torch.rand(7, 3, 6, 6), torch.rand(7, 3, 6, 6))


def test_moco_key_network_is_permutation_consistent_without_batch_norm():
    torch.manual_seed(0)
    enc = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    model = MoCoV2(enc, 4, hidden_dim=8, proj_dim=3, queue_size=32, momentum=0.99, bn_splits=4)
    x = torch.rand(8, 3, 6, 6)
    model(x, x)
    keys = model.queue.keys[:8]
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model.target(x), dim=1)
    assert torch.allclose(keys, expected, atol=1e-6)  # row i is the key of image i


def test_train_ssl_reduces_byol_loss_and_is_deterministic(tmp_path):
    def run():
        torch.manual_seed(0)
        x = torch.rand(64, 3, 8, 8)
        gen = torch.Generator().manual_seed(0)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x), batch_size=16, shuffle=True,
                                             drop_last=True, generator=gen)
        learner = make_learner("byol", _encoder(), 4, total_steps=20, hidden_dim=16, proj_dim=8,
                               byol_momentum=0.9)
        views = (ViewAugment(crop_scale=(0.6, 1), blur_p=0), ViewAugment(crop_scale=(0.6, 1), blur_p=0))
        h = train_ssl(learner, loader, views, epochs=5, lr=0.05, progress=False)
        return h.series("train_loss")

    a, b = run(), run()
    assert a == b
    assert a[-1] < a[0]
    with pytest.raises(ConfigError):
        make_learner("simclr", _encoder(), 4, total_steps=1, hidden_dim=4, proj_dim=2)


def test_loss_trace_records_steps_and_survives_a_state_dict_round_trip():
    from kdutils.ssl import LossTrace

    trace = LossTrace(3)
    for v in (1.0, 0.5, 0.25, 0.125):  # the fourth is beyond the planned steps: ignored
        trace.record(torch.tensor(v))
    assert trace.series() == [1.0, 0.5, 0.25]
    copy_ = LossTrace(3)
    copy_.load_state_dict(trace.state_dict())
    assert copy_.series() == [1.0, 0.5, 0.25]


def test_library_pieces_equal_the_hand_written_code_they_replaced():
    """kornia's blur and solarisation, lightly's heads, EMA update and momentum schedule, as `ssl` calls them."""
    from benchmarks import ssl_libs

    out = ssl_libs.run(batch=8, size=16, hidden=16, proj=8, queue=16, repeats=1)
    adopted = [row for row in out.values() if row["adopted"]]
    assert len(adopted) == len(ssl_libs.ADOPTED) and all(row["max_abs_diff"] == 0 for row in adopted)
    assert all(row["ours_ms"] > 0 and row["library_ms"] > 0 for row in out.values())
