"""Shapley values, region sums, polygon masks and SHAP explanations that add up."""

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from torch import nn

from kdutils import attribution, attribution_regions, shapley
from kdutils.cache import model_fingerprint
from kdutils.errors import ConfigError, MissingDataError
from kdutils.models import small_resnet
from kdutils.teacher import CIFAR10_MEAN, CIFAR10_STD, Normalize

# ------------------------------------------------------------------ Shapley values

THESIS_STYLE_GAME = {"": 0, "A": 10, "B": 20, "C": 30, "AB": 40, "AC": 60, "BC": 70, "ABC": 100}


def game(coalition):
    return THESIS_STYLE_GAME["".join(sorted(coalition))]


def test_three_player_game_by_hand():
    # Orderings ABC ACB BAC BCA CAB CBA; A adds 10, 10, 20, 30, 30, 30 -> 130/6, and so on.
    phi = shapley.shapley_values("ABC", game)
    assert phi["A"] == pytest.approx(130 / 6)
    assert phi["B"] == pytest.approx(190 / 6)
    assert phi["C"] == pytest.approx(280 / 6)
    assert sum(phi.values()) == pytest.approx(100)  # efficiency
    rows = shapley.marginal_contributions("ABC", game)
    assert len(rows) == 6
    assert dict(rows)[("B", "C", "A")] == {"B": 20, "C": 50, "A": 30}


def test_additive_game_gives_each_player_its_own_weight():
    weights = {"x": 1.5, "y": -2.0, "z": 4.0, "w": 0.25}
    phi = shapley.shapley_values(weights, lambda s: sum(weights[p] for p in s))
    assert phi == pytest.approx(weights)


def test_efficiency_symmetry_and_null_player_on_a_random_game():
    rng = np.random.default_rng(0)
    players = ["a", "b", "c", "d"]
    values = {frozenset(s): rng.normal() for r in range(5) for s in itertools.combinations(players, r)}
    values[frozenset()] = 0.0
    phi = shapley.shapley_values(players, values.__getitem__)
    assert sum(phi.values()) == pytest.approx(values[frozenset(players)])
    # d is a null player and a, b are symmetric in this game
    sym = lambda s: 3.0 * len(s & {"a", "b"}) + (5.0 if "c" in s else 0.0)  # noqa: E731
    phi = shapley.shapley_values(players, sym)
    assert phi["a"] == pytest.approx(phi["b"]) == pytest.approx(3.0)
    assert phi["d"] == pytest.approx(0.0) and phi["c"] == pytest.approx(5.0)


def test_shapley_refuses_what_it_cannot_enumerate():
    with pytest.raises(ConfigError, match="at most"):
        shapley.shapley_values(range(10), len)
    with pytest.raises(ConfigError, match="distinct"):
        shapley.shapley_values("AA", len)


# ------------------------------------------------------------- region analysis

def test_region_contributions_by_hand():
    values = np.array([[1.0, -2.0, 0.0, 0.5],
                       [3.0, 0.0, -1.0, 0.0],
                       [0.0, 0.0, 0.0, -0.5],
                       [2.0, 0.0, 0.0, 0.0]])
    mask = np.zeros((4, 4), dtype=bool)
    mask[:2, :2] = True  # foreground: 1, -2, 3, 0
    out = attribution_regions.region_contributions(values, mask)
    assert out["fg"] == {"pos": 4.0, "neg": -2.0, "diff": 2.0}
    assert out["bg"] == {"pos": 2.5, "neg": -1.5, "diff": 1.0}
    # (C, H, W) values are summed over the channels first
    split = np.stack([values * 0.25, values * 0.5, values * 0.25])
    assert attribution_regions.region_contributions(torch.tensor(split), mask) == out
    table = attribution_regions.region_table(np.stack([values, -values]), np.stack([mask, mask]))
    assert table["fg_pos"].tolist() == [4.0, 2.0] and table["bg_neg"].tolist() == [-1.5, -2.5]
    with pytest.raises(ValueError, match="does not match"):
        attribution_regions.region_contributions(values, mask[:3])


# ------------------------------------------------------------- polygon masks

def test_polygon_rasterisation_uses_pixel_centres():
    rect = attribution_regions.polygon_mask([1, 1, 4, 1, 4, 3, 1, 3], height=5, width=6)
    expected = np.zeros((5, 6), dtype=bool)
    expected[1:3, 1:4] = True  # centres x in {1.5, 2.5, 3.5}, y in {1.5, 2.5}: the 3 x 2 = area pixels
    assert np.array_equal(rect, expected)
    tri = attribution_regions.polygon_mask([[0, 0, 20, 0, 0, 20]], 20, 20)
    assert abs(int(tri.sum()) - 200) <= 20  # area 200
    both = attribution_regions.polygon_mask([[0, 0, 2, 0, 2, 2, 0, 2], [4, 4, 6, 4, 6, 6, 4, 6]], 8, 8)
    assert both.sum() == 8 and both[0, 0] and both[5, 5] and not both[3, 3]
    with pytest.raises(ValueError, match="at least 3"):
        attribution_regions.polygon_mask([0, 0, 1, 1], 4, 4)


def write_via_coco(path, images, annotations):
    path.write_text(json.dumps({"info": {"description": "VIA export"}, "images": images,
                                "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}))
    return path


def test_coco_polygon_masks_from_a_via_style_export(tmp_path):
    path = write_via_coco(tmp_path / "via.json",
                          [{"id": 0, "file_name": "test_00003.png", "width": 8, "height": 6},
                           {"id": 1, "file_name": "test_00010.png", "width": 8, "height": 6},
                           {"id": 2, "file_name": "unlabelled.png", "width": 8, "height": 6}],
                          [{"id": 1, "image_id": 0, "category_id": 1, "segmentation": [[0, 0, 4, 0, 4, 2, 0, 2]],
                            "area": 8, "bbox": [0, 0, 4, 2], "iscrowd": 0},
                           {"id": 2, "image_id": 0, "category_id": 1, "segmentation": [[6, 4, 8, 4, 8, 6, 6, 6]],
                            "area": 4, "bbox": [6, 4, 2, 2], "iscrowd": 0},
                           {"id": 3, "image_id": 1, "category_id": 1, "segmentation": [[2, 2, 5, 2, 5, 5, 2, 5]],
                            "area": 9, "bbox": [2, 2, 3, 3], "iscrowd": 0}])
    masks = attribution_regions.coco_polygon_masks(path)
    assert set(masks) == {"test_00003.png", "test_00010.png"}
    assert masks["test_00003.png"].shape == (6, 8)
    assert masks["test_00003.png"].sum() == 8 + 4 and masks["test_00010.png"].sum() == 9
    assert attribution_regions.index_from_file_name("test_00003.png") == 3
    assert attribution_regions.index_from_file_name("cifar10/42.jpg") == 42
    with pytest.raises(ConfigError, match="index"):
        attribution_regions.index_from_file_name("cat.png")
    rle = write_via_coco(tmp_path / "rle.json", [{"id": 0, "file_name": "a_1.png", "width": 4, "height": 4}],
                         [{"id": 1, "image_id": 0, "segmentation": {"counts": [0, 16], "size": [4, 4]}}])
    with pytest.raises(ConfigError, match="RLE"):
        attribution_regions.coco_polygon_masks(rle)
    with pytest.raises(MissingDataError, match="VGG Image Annotator"):
        attribution_regions.coco_polygon_masks(tmp_path / "missing.json")


# ------------------------------------------------------------ SHAP-safe models

def test_shap_safe_resnet_computes_the_same_outputs_and_passes_the_check():
    import torchvision
    from torchvision.models.resnet import Bottleneck, ResNet

    torch.manual_seed(0)
    x = torch.rand(2, 3, 32, 32)
    for net in (torchvision.models.resnet18(num_classes=10), ResNet(Bottleneck, [1, 1, 1, 1], num_classes=10)):
        net.eval()
        with pytest.raises(ConfigError, match="in place"):
            attribution.check_shap_safe(net, x)
        safe = attribution.shap_safe_resnet(net).eval()
        attribution.check_shap_safe(safe, x)
        assert torch.allclose(net(x), safe(x), atol=1e-6)
        assert any(isinstance(m, nn.ReLU) and m.inplace for m in net.modules())  # the original is untouched


def test_check_shap_safe_catches_a_module_used_twice():
    relu = nn.ReLU()
    net = nn.Sequential(nn.Linear(4, 4), relu, nn.Linear(4, 4), relu)
    with pytest.raises(ConfigError, match="more than once"):
        attribution.check_shap_safe(net, torch.rand(2, 4))


def test_accumulating_maxpool_is_scoped_and_restores_shap():
    from shap.explainers._deep import deep_pytorch

    before = dict(deep_pytorch.op_handler)
    with pytest.raises(RuntimeError, match="^inside$"):
        with attribution.accumulating_maxpool():
            assert deep_pytorch.op_handler["MaxPool2d"] is not before["MaxPool2d"]
            assert deep_pytorch.op_handler["MaxPool2d"].__name__ == "maxpool"  # shap stores x/y by this name
            assert "Normalize" in deep_pytorch.op_handler
            raise RuntimeError("inside")
    assert deep_pytorch.op_handler == before


@pytest.fixture(scope="module")
def small_cnn():
    torch.manual_seed(0)
    net = small_resnet("resnet_xs", num_classes=5).eval()
    return net, torch.rand(6, 3, 16, 16), torch.rand(3, 3, 16, 16)


def test_deep_explanations_add_up_with_the_accumulating_rule_only(small_cnn):
    net, background, images = small_cnn
    fingerprint = model_fingerprint(net)
    fixed = attribution.explain_deep(net, background, images)
    assert fixed.values.shape == (3, 3, 16, 16)
    with torch.no_grad():
        logits = net(images)
        expected = net(background).mean(0)
    assert np.array_equal(fixed.classes, logits.argmax(1).numpy())
    assert np.allclose(fixed.outputs, logits.max(1).values.numpy(), atol=1e-6)
    assert np.allclose(fixed.expected, expected[fixed.classes].numpy(), atol=1e-5)
    sums = fixed.values.reshape(3, -1).sum(1)
    assert np.allclose(sums, fixed.outputs - fixed.expected, atol=1e-5)
    assert fixed.additivity_error.max() < 1e-5
    shap_rule = attribution.explain_deep(net, background, images, accumulate_maxpool=False)
    assert shap_rule.additivity_error.max() > 100 * fixed.additivity_error.max()  # the bug, measured
    # shap leaves tensors on nested modules; explain_deep removes them
    assert model_fingerprint(net) == fingerprint
    assert not [n for n, _ in net.named_parameters() if n.endswith((".x", ".y"))]


def test_relative_additivity_error_does_not_change_when_the_logits_are_scaled_by_10(small_cnn):
    net, background, images = small_cnn
    scaled = copy.deepcopy(net)
    with torch.no_grad():
        scaled.fc.weight.mul_(10)
        scaled.fc.bias.mul_(10)
    # shap's own max-pool rule: errors are the rule's, not float rounding, so they scale with the logits
    plain, tenfold = (attribution.explain_deep(m, background, images, accumulate_maxpool=False)
                      for m in (net, scaled))
    assert tenfold.additivity_error.max() == pytest.approx(10 * plain.additivity_error.max(), rel=1e-3)
    assert tenfold.relative_additivity_error == pytest.approx(plain.relative_additivity_error, rel=1e-3)
    assert plain.relative_additivity_error == pytest.approx(
        plain.additivity_error.max() / np.abs(plain.outputs - plain.expected).mean())
    assert attribution.explain_deep(scaled, background, images).relative_additivity_error < 1e-4  # the fix
    flat = attribution.DeepExplanation(plain.values, plain.classes, plain.expected, plain.expected,
                                       plain.additivity_error, plain.method)
    with pytest.raises(ValueError, match="undefined"):
        _ = flat.relative_additivity_error


def test_cached_explanations_equal_live_ones_and_are_reused(small_cnn, monkeypatch, tmp_path):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path))
    net, background, images = small_cnn
    live = attribution.explain_deep(net, background, images)
    first = attribution.explain_deep_cached(net, background, images)
    np.testing.assert_array_equal(first.values, live.values)
    np.testing.assert_array_equal(first.classes, live.classes)

    def recompute(*args, **kwargs):
        raise AssertionError("a stored explanation was computed again")

    monkeypatch.setattr(attribution, "explain_deep", recompute)
    again = attribution.explain_deep_cached(net, background, images)  # the stored entry, not a recomputation
    np.testing.assert_array_equal(again.values, live.values)
    with pytest.raises(AssertionError, match="computed again"):  # other images are another entry
        attribution.explain_deep_cached(net, background, images[:2])


def test_deep_explainer_on_a_normalised_torchvision_resnet18():
    import torchvision

    torch.manual_seed(1)
    resnet = torchvision.models.resnet18(num_classes=4).eval()
    net = nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD, input_size=48),
                        attribution.shap_safe_resnet(resnet)).eval()
    e = attribution.explain_deep(net, torch.rand(4, 3, 24, 24), torch.rand(2, 3, 24, 24))
    assert e.values.shape == (2, 3, 24, 24)  # attributions on the un-resized input pixels
    assert e.additivity_error.max() < 1e-4
    with pytest.raises(ConfigError, match="in place"):
        attribution.explain_deep(nn.Sequential(Normalize(CIFAR10_MEAN, CIFAR10_STD), resnet),
                                 torch.rand(4, 3, 24, 24), torch.rand(1, 3, 24, 24))


def test_expected_gradients_cross_check(small_cnn):
    net, background, images = small_cnn
    deep = attribution.explain_deep(net, background, images)
    state = np.random.get_state()[1].copy()
    grads = attribution.explain_expected_gradients(net, background, images, deep.classes, nsamples=64, seed=3)
    assert np.array_equal(np.random.get_state()[1], state)  # the global NumPy stream is left alone
    again = attribution.explain_expected_gradients(net, background, images, deep.classes, nsamples=64, seed=3)
    assert grads.shape == deep.values.shape and np.array_equal(grads, again)
    rho = attribution.rank_agreement(deep.values, grads)
    assert rho.shape == (3,) and np.all(rho > 0.2)
    with pytest.raises(RuntimeError, match="other classes"):
        attribution.explain_expected_gradients(net, background, images, (deep.classes + 1) % 5, nsamples=8)


def test_rank_agreement_extremes():
    a = np.random.default_rng(0).normal(size=(2, 3, 5, 5))
    assert np.allclose(attribution.rank_agreement(a, a), 1.0)
    assert np.allclose(attribution.rank_agreement(a, -a), -1.0)


def test_plot_attribution_draws_a_titled_map():
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    im = attribution.plot_attribution(ax, torch.rand(3, 8, 8), np.random.default_rng(0).normal(size=(3, 8, 8)),
                                      "TL: star", vmax=2.0)
    assert ax.get_title() == "TL: star" and im.get_clim() == (-2.0, 2.0)
    plt.close(fig)


# ------------------------------------------------------------- foreground share (H2, scale-free)

def test_foreground_share_by_hand_and_channel_sum():
    values = np.zeros((2, 3, 2, 2))
    values[0, 0] = [[1.0, 3.0], [-2.0, 0.0]]   # one channel carries everything
    values[1, :, 0, 0] = [1.0, -0.5, 0.5]       # channels sum to +1 at (0, 0)
    values[1, :, 1, 1] = 3.0                    # +9 at (1, 1)
    masks = np.array([[[True, False], [True, False]], [[True, False], [False, False]]])
    np.testing.assert_allclose(attribution_regions.foreground_share(values, masks), [0.25, 0.1])


def test_foreground_share_is_invariant_to_rescaling_and_nan_without_positive_attribution():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 3, 8, 8))
    masks = rng.random((5, 8, 8)) < 0.3
    share = attribution_regions.foreground_share(values, masks)
    np.testing.assert_allclose(attribution_regions.foreground_share(0.909 * values, masks), share)
    np.testing.assert_allclose(attribution_regions.foreground_share(torch.tensor(40.0 * values), masks), share)
    assert ((share >= 0) & (share <= 1)).all()
    negative = -np.ones((1, 4, 4))
    assert np.isnan(attribution_regions.foreground_share(negative, np.ones((1, 4, 4), bool))).all()


def test_foreground_share_rejects_bad_input():
    with pytest.raises(ValueError, match="same N, H, W"):
        attribution_regions.foreground_share(np.ones((2, 4, 4)), np.ones((2, 4, 5), bool))
    with pytest.raises(ValueError, match="NaN"):
        attribution_regions.foreground_share(np.full((1, 2, 2), np.nan), np.ones((1, 2, 2), bool))
