"""Head training on cached views equals the plain loop; H4 conditions; study data and models."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import fail_if_recomputed

from kdutils import models, tlkd, tlkd_analysis, tlkd_backbones, tlkd_data
from benchmarks import tlkd as bench_tlkd
from kdutils.errors import ConfigError, MissingDataError
from kdutils.models import small_resnet
from kdutils.profiles import load_profile
from kdutils.teacher import FrozenTeacher, freeze
from kdutils.splits import Split
from kdutils.frozen import FixedViews
from kdutils.tlkd_features import HeadInputs, frozen_features, head_logits


def split(n, seed, size=16):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    labels = torch.arange(n) % 4
    return Split(images, labels, key=f"random-{n}-{seed}-{size}")


@pytest.fixture(scope="module")
def networks():
    torch.manual_seed(0)
    student = freeze(small_resnet("resnet_xs"))
    teacher = FrozenTeacher(small_resnet("resnet_xs"), (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    return student, teacher


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ------------------------------------------------------------------- fixed views

def test_fixed_views_mirror_and_center_black():
    x = torch.ones(3, 3, 10, 10)
    x[:, :, :, 0] = 0.5  # a marker column to see the mirror
    idx = torch.arange(3)
    mirrored = FixedViews.mirrored(3)
    assert mirrored.n_views == 2
    assert torch.equal(mirrored.render(x, idx, idx * 0), x)
    assert torch.equal(mirrored.render(x, idx, idx * 0 + 1), x.flip(-1))
    views = FixedViews.corrupted("center_black", 3, p=1.0, draws=2, seed=0, min_side=0.5, mirrors=False)
    out = views.render(x, idx, torch.tensor([0, 1, 0]))
    for i, draw in enumerate([0, 1, 0]):
        side = int(round(float(views.side[i, draw]) * 10))
        top = (10 - side) // 2
        black = out[i, 0] == 0
        assert black.sum() == side * side
        assert black[top:top + side, top:top + side].all()
    none = FixedViews.corrupted("center_black", 3, p=0.0, draws=2, seed=0, mirrors=False)
    assert torch.equal(none.render(x, idx, torch.tensor([0, 1, 0])), x)


def test_quarter_black_blacks_out_exactly_one_quadrant():
    views = FixedViews.corrupted("quarter_black", 8, p=1.0, draws=1, seed=1, mirrors=False)
    out = views.render(torch.ones(8, 3, 12, 12), torch.arange(8), torch.zeros(8, dtype=torch.long))
    for i in range(8):
        q = int(views.quadrant[i, 0])
        rows = slice(6, 12) if q // 2 else slice(0, 6)
        cols = slice(6, 12) if q % 2 else slice(0, 6)
        assert (out[i, :, rows, cols] == 0).all() and (out[i] == 0).sum() == 3 * 36


def test_corrupted_share_matches_p_and_draws_are_fixed():
    a = FixedViews.corrupted("center_black", 4000, p=0.3, draws=4, seed=5)
    b = FixedViews.corrupted("center_black", 4000, p=0.3, draws=4, seed=5)
    assert torch.equal(a.apply, b.apply) and torch.equal(a.side, b.side)
    assert abs(a.apply.float().mean().item() - 0.3) < 0.02
    assert float(a.side.min()) >= 200 / 224 and float(a.side.max()) <= 1.0
    with pytest.raises(ConfigError, match="unknown corruption"):
        FixedViews.corrupted("blur", 4, p=0.1, draws=1)
    with pytest.raises(ConfigError):
        FixedViews.corrupted("center_black", 4, p=1.5, draws=1)


# --------------------------------------------------------------- cached features

def test_frozen_features_are_the_encoder_on_each_view_and_are_cached(networks, cache_dir, monkeypatch):
    student, _ = networks
    data = split(10, 0)
    views = FixedViews.mirrored(10)
    feats = frozen_features(student, data, views, batch_size=4)
    with torch.no_grad():
        assert torch.allclose(feats[0], student(data.float_images()), atol=1e-6)
        assert torch.allclose(feats[1], student(data.float_images().flip(-1)), atol=1e-6)
    files = list(cache_dir.rglob("*.pt"))
    assert len(files) == 1
    with monkeypatch.context() as patch:
        patch.setattr(student, "forward", fail_if_recomputed)
        again = frozen_features(student, data, views, batch_size=4)
    assert torch.equal(feats, again) and list(cache_dir.rglob("*.pt")) == files
    other = FixedViews.corrupted("quarter_black", 10, p=0.5, draws=1, seed=0)
    frozen_features(student, data, other)
    assert len(list(cache_dir.rglob("*.pt"))) == 2  # other views, another entry
    with pytest.raises(ValueError, match="views are for"):
        frozen_features(student, data, FixedViews.plain(9))


@pytest.mark.parametrize("kind", ["none", "center_black"])
def test_cached_training_equals_the_plain_loop(networks, cache_dir, kind):
    """Same seed: the cached path trains the same head as backbones run at every step."""
    student, teacher = networks
    train, val, test = split(32, 1), split(12, 2), split(12, 3)
    views = (FixedViews.mirrored(32) if kind == "none"
            else FixedViews.corrupted(kind, 32, p=0.5, draws=2, seed=0, min_side=0.5))
    plain = FixedViews.plain
    hp = tlkd.HeadParams(replace(tlkd.THESIS_RECIPE, epochs=2, patience=None, lr=0.05), batch_size=8)
    t_train = frozen_features(teacher, train, views)
    t_head = tlkd.train_head(HeadInputs.cached(t_train), train.labels,
                             HeadInputs.cached(frozen_features(teacher, val, plain(12))), val.labels, hp,
                             num_classes=4, seed=0).head
    kd = replace(hp, alpha=0.5, temperature=4.0)
    cached = tlkd.train_head(
        HeadInputs.cached(frozen_features(student, train, views)).with_teacher(t_head, t_train),
        train.labels, HeadInputs.cached(frozen_features(student, val, plain(12))), val.labels, kd,
        num_classes=4, seed=7)
    reference = tlkd.train_head(
        HeadInputs.live(student, train, views, torch.nn.Sequential(teacher, t_head)), train.labels,
        HeadInputs.live(student, val, plain(12)), val.labels, kd, num_classes=4, seed=7)
    for key in ("train_loss", "train_kd", "train_ce", "val_acc", "val_loss"):
        assert np.allclose(cached.history.series(key), reference.history.series(key), atol=1e-5), key
    logits_c = head_logits(cached.head, HeadInputs.cached(frozen_features(student, test, plain(12))))
    logits_p = head_logits(reference.head, HeadInputs.live(student, test, plain(12)))
    assert torch.allclose(logits_c, logits_p, atol=1e-5)
    assert torch.equal(logits_c.argmax(1), logits_p.argmax(1))
    live = HeadInputs.live(student, test, plain(12))
    with pytest.raises(ConfigError, match="subset works on cached inputs"):
        live.subset([0, 1])
    with pytest.raises(ConfigError, match="with_teacher works on cached inputs"):
        live.with_teacher(t_head, t_train)


def test_train_head_is_reproducible_and_checks_its_inputs():
    g = torch.Generator().manual_seed(0)
    feats, val = torch.randn(2, 30, 6, generator=g), torch.randn(1, 10, 6, generator=g)
    y, yv = torch.arange(30) % 3, torch.arange(10) % 3
    hp = tlkd.HeadParams(replace(tlkd.THESIS_RECIPE, epochs=2), batch_size=8)
    a = tlkd.train_head(HeadInputs.cached(feats), y, HeadInputs.cached(val), yv, hp, num_classes=3, seed=4)
    b = tlkd.train_head(HeadInputs.cached(feats), y, HeadInputs.cached(val), yv, hp, num_classes=3, seed=4)
    assert torch.equal(a.head[1].weight, b.head[1].weight) and not a.head.training
    assert [type(m).__name__ for m in a.head] == ["Dropout", "Linear"] and a.head[0].p == 0.2
    with pytest.raises(ConfigError, match="teacher logits"):
        tlkd.train_head(HeadInputs.cached(feats), y, HeadInputs.cached(val), yv, replace(hp, alpha=0.1),
                        num_classes=3, seed=0)
    with pytest.raises(ValueError, match="one label per image"):
        tlkd.train_head(HeadInputs.cached(feats), y[:5], HeadInputs.cached(val), yv, hp, num_classes=3, seed=0)
    with pytest.raises(ValueError, match="do not match"):
        HeadInputs.cached(feats, torch.zeros(2, 29, 3))


def test_tl_vs_kd_reports_each_seed():
    g = torch.Generator().manual_seed(0)
    sources = lambda d: {"train": HeadInputs.cached(torch.randn(2, 24, d, generator=g)),  # noqa: E731
                         "val": HeadInputs.cached(torch.randn(1, 9, d, generator=g)),
                         "test": HeadInputs.cached(torch.randn(1, 9, d, generator=g))}
    labels = {"train": torch.arange(24) % 3, "val": torch.arange(9) % 3, "test": torch.arange(9) % 3}
    hp = tlkd.HeadParams(replace(tlkd.THESIS_RECIPE, epochs=1, patience=None))
    out = tlkd.tl_vs_kd(sources(5), sources(7), labels, hp, 0.1, [1, 7], num_classes=3)
    assert set(out) == {1, 7}
    assert set(out[1]) == {"teacher", "tl", "kd"}
    assert set(out[1]["kd"]) == {"accuracy", "precision", "recall", "f1"}


def test_head_params_follow_the_thesis():
    small = load_profile("small")
    hp = tlkd.HeadParams.of(small)
    assert replace(hp.recipe, epochs=200) == tlkd.THESIS_RECIPE  # the thesis's values but fewer epochs
    assert (hp.recipe.lr, hp.recipe.momentum, hp.recipe.weight_decay, hp.batch_size) == (0.01, 0.9, 5e-4, 64)
    assert (hp.recipe.patience, hp.recipe.plateau_factor, hp.recipe.plateau_patience) == (10, 0.9, 3)
    assert hp.dropout == 0.2
    assert (hp.temperature, hp.alpha, small.s4_alpha) == (10.0, 0.0, 0.1)
    assert tlkd.HeadParams.of(load_profile("paper")).recipe.epochs == 200
    dry = tlkd.HeadParams.of(load_profile("paper", dry_run=True)).recipe
    assert (dry.epochs, dry.max_steps) == (1, 2)  # the step cap rides in the recipe
    h4 = tlkd.HeadParams.of(small, h4=True)
    assert (h4.recipe.lr, h4.recipe.patience, h4.recipe.restore_best) == (0.1, None, False)
    assert replace(h4.recipe, lr=hp.recipe.lr, epochs=hp.recipe.epochs, patience=10, restore_best=True) == hp.recipe
    assert load_profile("paper").s4_h4_seeds == [1, 7, 42]


# ------------------------------------------------------------- H4 conditions

def test_subset_indices_are_stratified_and_fixed():
    y = np.repeat(np.arange(4), [10, 20, 30, 40])
    idx = tlkd.subset_indices(y, 0.1, seed=3)
    assert np.bincount(y[idx]).tolist() == [1, 2, 3, 4]
    assert np.all(np.diff(idx) > 0) and np.array_equal(idx, tlkd.subset_indices(y, 0.1, seed=3))
    assert len(tlkd.subset_indices(y, 1.0, seed=0)) == 100
    with pytest.raises(ConfigError):
        tlkd.subset_indices(y, 0.0, seed=0)


def test_noisy_labels_change_exactly_the_requested_share_to_other_classes():
    y = torch.arange(200) % 10
    noisy = tlkd.noisy_labels(y, 0.3, 10, seed=0)
    changed = noisy != y
    assert int(changed.sum()) == 60
    assert noisy.min() >= 0 and noisy.max() < 10
    assert torch.equal(tlkd.noisy_labels(y, 0.0, 10, seed=0), y)
    assert torch.equal(noisy, tlkd.noisy_labels(y, 0.3, 10, seed=0))


# -------------------------------------------------------------- report helpers

def test_per_class_gain_by_hand():
    y = [0, 0, 0, 0, 1, 1, 2, 2]
    tl = [0, 1, 1, 1, 1, 1, 0, 0]
    kd = [0, 0, 0, 1, 1, 0, 2, 0]
    rows = tlkd_analysis.per_class_gain(y, tl, kd, ["a", "b", "c"])
    assert rows[0] == {"class": "a", "N": 4, "TP1": 1, "TP2": 3, "TP2-TP1": 2, "error_decrement": 2 / 3}
    assert rows[1] == {"class": "b", "N": 2, "TP1": 2, "TP2": 1, "TP2-TP1": -1, "error_decrement": None}
    assert rows[2]["error_decrement"] == 0.5


def test_first_epoch_reaching():
    assert tlkd_analysis.first_epoch_reaching([10, 50, 80, 79, 90], 80) == 3
    assert tlkd_analysis.first_epoch_reaching([10, 20], 30) is None


def test_foreground_analysis_columns_and_tests():
    tl = {"fg_diff": np.array([1.0, 2.0, 0.0, 4.0, 3.0]), "bg_diff": np.array([2.0, 1.0, 1.0, 2.0, 1.0]),
          "bg_pos": np.array([3.0, 3.0, 3.0, 3.0, 3.0]), "fg_neg": np.array([-1.0, -2.0, -3.0, -4.0, -5.0])}
    kd = {"fg_diff": np.array([2.0, 4.0, 1.0, 5.0, 6.0]), "bg_diff": np.array([1.0, 1.0, 0.0, 4.0, 2.0]),
          "bg_pos": np.array([2.0, 2.0, 2.0, 2.0, 2.0]), "fg_neg": np.array([-0.5, -1.0, -1.5, -2.0, -2.5])}
    cols, tests = tlkd_analysis.foreground_analysis(tl, kd)
    assert cols["A/B"].tolist() == [0.5, 0.5, 0.0, 0.8, 0.5]
    assert np.isnan(cols["C/D"][2]) and cols["C/D"][0] == 2.0
    assert np.isnan(cols["(A/B)/(C/D)"][2]) and cols["(A/B)/(C/D)"][0] == 0.25
    ab = tests["foreground diff: TL (A) vs TL+KD (B)"]
    assert ab.pvalue == pytest.approx(0.0625) and ab.median_difference < 0  # B > A in all five
    assert tests["TL+KD: foreground diff vs 0"].pvalue == pytest.approx(0.0625)
    assert tests["foreground |neg|: TL vs TL+KD"].median_difference > 0
    assert len(tests) == 6


def test_foreground_shares_per_seed_by_hand():
    """Seed 0: TL+KD is TL halved (same shares, ratio 1); seed 1: TL+KD moves attribution onto the object."""
    mask = np.array([[True, False], [False, False]])
    tl = np.array([[[3.0, 1.0], [2.0, -1.0]],      # share 3/6, A = 3, C = 2
                   [[1.0, 1.0], [1.0, 1.0]],       # share 1/4, A = 1, C = 3
                   [[-1.0, 0.0], [0.0, 0.0]]])     # no positive attribution: left out of the shares
    kd1 = np.array([[[4.0, 1.0], [2.0, -1.0]], [[3.0, 1.0], [1.0, 1.0]], tl[2]])  # shares 4/7 and 3/6
    rows = tlkd_analysis.foreground_shares_per_seed({0: {"TL": tl, "TL+KD": 0.5 * tl}, 1: {"TL": tl, "TL+KD": kd1}},
                                                    np.stack([mask] * 3))
    assert [r["seed"] for r in rows] == [0, 1] and [r["images"] for r in rows] == [2, 2]
    assert rows[0]["TL share"] == pytest.approx(37.5) and rows[0]["TL+KD share"] == pytest.approx(37.5)
    assert rows[0]["gain (TL+KD - TL)"] == pytest.approx(0.0) and rows[0]["median (A/B)/(C/D)"] == pytest.approx(1.0)
    assert rows[1]["TL+KD share"] == pytest.approx(100 * (4 / 7 + 0.5) / 2)
    assert rows[1]["gain (TL+KD - TL)"] == pytest.approx(100 * ((4 / 7 - 0.5) + (0.5 - 0.25)) / 2)
    # (A/B)/(C/D): image 0 (3/4)/(2/2), image 1 (1/3)/(3/3), image 2 NaN (C = D = 0)
    assert rows[1]["median (A/B)/(C/D)"] == pytest.approx((0.75 + 1 / 3) / 2)
    assert 0.0 <= rows[1]["Wilcoxon p (images)"] <= 1.0


def test_study_seeds():
    assert tlkd.study_seeds("small", None, {}) == [0, 7, 42]
    assert tlkd.study_seeds("small", [3], {}) == [3]
    assert tlkd.study_seeds("tiny", None, {"s4_h1_seeds": [5, 6]}) == [5, 6]


# ------------------------------------------------------------ data and models

def test_paper_requirements_name_data_and_weights(tmp_path):
    cfg = load_profile("paper", data_root=str(tmp_path))
    need = tlkd_data.paper_requirements(cfg)
    assert need["CIFAR-10 python batches"][0] == tmp_path / "cifar-10-batches-py"
    weights = [k for k in need if "weights" in k]
    assert len(weights) == 3 and any("vit_b_16 IMAGENET1K_SWAG_E2E_V1" in k for k in weights)
    assert need["teacher weights vit_b_16 IMAGENET1K_SWAG_E2E_V1"][0].name.startswith("vit_b_16_swag")
    dry = tlkd_data.paper_requirements(load_profile("paper", data_root=str(tmp_path), dry_run=True,
                                               s4_mask_annotations=str(tmp_path / "masks.json")))
    assert set(dry) == {"CIFAR-10 python batches", "foreground polygon annotations"}
    with pytest.raises(ConfigError, match="weight set"):
        models.weights_file("resnet18", "NOPE")


def test_paper_data_from_cifar_batches_with_polygon_masks(tmp_path):
    from tests.fixtures import write_cifar

    written = write_cifar(tmp_path, "cifar10", n_train=40, n_test=12, seed=0)
    (tmp_path / "masks.json").write_text(json.dumps({
        "images": [{"id": 7, "file_name": "test_00003.png", "width": 64, "height": 64}],
        "annotations": [{"id": 1, "image_id": 7, "segmentation": [[0, 0, 32, 0, 32, 32, 0, 32]]}]}))
    cfg = load_profile("paper", data_root=str(tmp_path), s4_verify_data=False, s4_val_fraction=0.25,
                       s4_mask_annotations=str(tmp_path / "masks.json"))
    data = tlkd_data.load_data(cfg)
    test = data.splits["test"]
    assert [len(data.splits[role]) for role in ("train", "val", "test")] == [30, 10, 12]
    assert data.class_names[0] == "airplane" and data.name == "CIFAR-10"
    test_images, test_labels = written["test"]
    assert torch.equal(test.labels, torch.tensor(test_labels))
    assert torch.equal(test.images[0], torch.from_numpy(test_images[0]).permute(2, 0, 1))
    assert test.has_mask.tolist() == [i == 3 for i in range(12)]
    assert test.masks[3].sum() == 16 * 16 and test.masks[3][:16, :16].all()  # 64 px polygon -> 32 px
    with pytest.raises(MissingDataError, match="MD5 mismatch"):
        tlkd_data.load_data(load_profile("paper", data_root=str(tmp_path)))


def test_dry_run_torchvision_encoders_are_the_real_architectures():
    backbones = tlkd_backbones.FrozenBackbones.of(load_profile("paper", dry_run=True))
    student, info = tlkd_backbones.load_encoder("resnet18", backbones, weights="IMAGENET1K_V1", input_size=32)
    assert info["weights"] == "random (dry run)" and info["parameters"] == 11_176_512
    x = torch.rand(2, 3, 16, 16)
    from kdutils.attribution import check_shap_safe

    check_shap_safe(student, x)  # the student is explained with DeepExplainer
    assert student(x).shape == (2, 512) and not any(p.requires_grad for p in student.parameters())
    teacher, tinfo = tlkd_backbones.load_encoder("vit_b_16", backbones, weights="IMAGENET1K_SWAG_E2E_V1", input_size=32,
                                       teacher=True)
    assert teacher(x).shape == (2, 768) and tinfo["input_size"] == 32
    again, _ = tlkd_backbones.load_encoder("resnet18", backbones, weights="IMAGENET1K_V1", input_size=32)
    assert torch.equal(student(x), again(x))  # seeded random weights


def test_benchmark_runs_both_paths_at_tiny(capsys):
    result = bench_tlkd.run("tiny", epochs=1)
    out = capsys.readouterr().out
    assert "speed-up" in out and "plain" in out
    assert result["max_abs_logit_difference"] < 1e-4 and result["same_predictions"] == 1.0
    assert result["test_acc_cached"] == result["test_acc_plain"]
    assert result["plain_s"] > 0 and result["cached_s"] > 0


def test_study4_takes_one_backbone_seed_and_says_so_for_several():
    cfg = load_profile("tiny", seeds=[0, 1], backbone_seeds=[0, 1])
    with pytest.raises(ConfigError, match="once per backbone seed"):
        tlkd_backbones.FrozenBackbones.of(cfg)
    one, zero = (tlkd_backbones.load_encoder(cfg.student_arch, tlkd_backbones.FrozenBackbones.of(load_profile(
        "tiny", backbone_seeds=seeds)))[0] for seeds in ([1], [0]))
    assert any(not torch.equal(a, b) for a, b in zip(one.parameters(), zero.parameters()))
