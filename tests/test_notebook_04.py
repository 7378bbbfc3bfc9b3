"""Notebook 04 (TL+KD, SHAP, Wilcoxon) at tiny, at paper as a dry run on fixtures, and paper without data."""

import json
import time

import pytest

from kdutils import runner
from kdutils.stats import VERDICTS, paired_verdict
from tests.fixtures import paper_run_failure

NOTEBOOK = "04_tl_kd_shap"
FIGURES = ("teach_temperature", "h1_metrics", "h1_confusion", "h1_alpha_sweep", "h3_curves", "shap_maps",
           "h2_violins", "h4_corruption_examples", "h4_sweeps")


def check_results(results: dict, n_explained: int, seeds: list, h4_seeds: list) -> dict:
    m = results["metrics"]
    h1 = m["h1"]
    assert h1["seeds"] == seeds
    for model in ("TL", "TL+KD", "teacher"):
        for metric in ("accuracy", "precision", "recall", "f1"):
            summary = h1["summary"][model][metric]
            assert 0.0 <= summary["mean"] <= 100.0 and summary["std"] >= 0.0 and summary["n"] == len(seeds)
        assert set(h1["per_seed"][model]) == {str(s) for s in seeds}
    assert h1["paper"]["gain_accuracy"] == 3.56
    assert len(h1["per_class"]) == 10 and all(r["N"] > 0 for r in h1["per_class"])
    assert sorted(m["alpha_sweep"]["alphas"]) == [0.0, 0.1, 0.5, 1.0]
    shap = m["shap"]
    assert len(shap["explained_test_indices"]) == n_explained
    assert shap["seeds"] == seeds
    for name in ("TL", "TL+KD"):
        for seed in seeds:  # every seed's heads are explained: the seed is H2's replicate
            errors = shap["additivity_error"][f"{name}/{seed}"]
            assert len(errors) == n_explained and max(errors) < 1e-4
        assert all(-1.0 <= r <= 1.0 for r in shap["crosscheck"]["spearman_rho"][name])
    assert shap["additivity_error_max"] < 1e-4 < max(shap["shap_rule_demo_error"])  # the fix, measured
    # the precondition's verdict is scale-free: the largest error over the mean |f(x) - E f|
    tolerance = shap["additivity_relative_tolerance"]
    assert max(shap["additivity_relative_error"].values()) == shap["additivity_relative_error_max"] < tolerance
    assert shap["shap_rule_demo_relative_error"] > tolerance
    h2 = m["h2"]
    assert h2["images"] >= 2
    assert set(h2["per_image"]) == {"A", "B", "C", "D", "A/B", "C/D", "(A/B)/(C/D)"}
    assert len(h2["tests"]) == 6
    for test in h2["tests"].values():
        assert 0.0 <= test["pvalue"] <= 1.0 and test["method"]
    assert [r["seed"] for r in h2["per_seed"]] == seeds
    for r in h2["per_seed"]:
        assert 0 <= r["TL share"] <= 100 and 0 <= r["TL+KD share"] <= 100  # percent
        assert r["gain (TL+KD - TL)"] == pytest.approx(r["TL+KD share"] - r["TL share"], abs=0.5)
    for sweep in ("fraction", "label_noise", "center_black", "quarter_black"):
        rows = m["h4"]["summary"][sweep]
        assert rows and all(0 <= r["TL accuracy"] <= 100 and 0 <= r["TL+KD f1"] <= 100 for r in rows)
        for per_seed in m["h4"]["per_seed"][sweep].values():
            assert set(per_seed) == {str(s) for s in h4_seeds}
    claims = results["claims"]
    for sweep, label in (("fraction", "training fraction"), ("label_noise", "label-noise fraction")):
        # "a gain at every level": per seed, the smallest gain over the levels, not their mean
        levels = m["h4"]["per_seed"][sweep].values()
        smallest = [min(r[str(s)]["kd"]["accuracy"] - r[str(s)]["tl"]["accuracy"] for r in levels) for s in h4_seeds]
        row = next(c for c in claims if c["claim"].startswith(f"H4: TL+KD >= TL under {label}"))
        assert row["ours"]["per_seed"] == pytest.approx(smallest)
    assert len(claims) == 13 and sum(c["kind"] == "precondition" for c in claims) == 2
    assert {c["verdict"] for c in claims} <= set(VERDICTS)
    for c in claims:
        if c["basis"] == "seeds":  # every verdict on the thesis's claims comes from per-seed values
            n = len(h4_seeds) if c["claim"].startswith("H4") else len(seeds)
            assert c["ours"]["n"] == n and len(c["ours"]["per_seed"]) == n
            assert c.get("verdict_if_measured", c["verdict"]) == paired_verdict(c["ours"]["per_seed"]).name
    return m


@pytest.mark.notebook
def test_notebook_04_at_tiny(tmp_path):
    t0 = time.perf_counter()
    runner.run([NOTEBOOK], "tiny", {}, output_root=tmp_path, progress=False)
    seconds = time.perf_counter() - t0
    out = tmp_path / NOTEBOOK
    results = json.loads((out / "results.json").read_text())
    assert results["profile"] == "tiny" and results["seeds"] == [0]
    m = check_results(results, n_explained=10, seeds=[0], h4_seeds=[1])
    assert m["data"]["train"] == 300 and m["data"]["test"] == 200
    assert m["models"]["student"]["arch"] == "resnet_xs"
    assert m["h2"]["images"] == 10  # SynthWorld's exact masks for every explained image
    # tiny sizes measure nothing: every thesis claim is judged (above) but reported as not measured
    assert {c["verdict"] for c in results["claims"] if c["kind"] == "claim"} == {"not measured at this profile"}
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 5_000, name
    assert set(results["figures"]) >= {f"{name}.png" for name in FIGURES}
    print(f"tiny notebook: {seconds:.1f} s (budget 60 s)")


@pytest.fixture
def paper_fixture(tmp_path, monkeypatch):
    """CIFAR-10 batches, VIA-style polygon masks for two test images, an empty torch hub cache."""
    from tests.fixtures import write_cifar

    write_cifar(tmp_path / "data", "cifar10", n_train=40, n_test=20, seed=0)
    masks = {"images": [{"id": i, "file_name": f"cifar10_test_{k:05d}.png", "width": 128, "height": 128}
                        for i, k in enumerate((1, 4))],
             "annotations": [{"id": i + 1, "image_id": i, "category_id": 1, "iscrowd": 0,
                              "segmentation": [[32, 32, 96, 32, 96, 96, 32, 96]]} for i in range(2)]}
    (tmp_path / "masks.json").write_text(json.dumps(masks))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.notebook
def test_notebook_04_paper_dry_run_on_fixtures(paper_fixture):
    """The real architectures (ResNet-18, ViT-B/16, WideResNet-50-2, random weights) end to end on CPU."""
    small_inputs = {"s4_student_input_size": 32, "s4_teacher_input_size": 32, "s4_h4_input_size": 32,
                    "s4_h4_corrupt_input_size": 32}
    grids = {"s4_h1_seeds": [0], "s4_h4_seeds": [1], "s4_h4_fractions": [1.0], "s4_h4_noise_levels": [0.2],
             "s4_h4_corrupt_p": [0.5], "s4_h4_views": 1, "s4_val_fraction": 0.25,
             "s4_shap_background": 4, "s4_shap_per_class": 1, "s4_shap_crosscheck": 2,
             "s4_shap_crosscheck_samples": 8, "s4_shap_rule_demo": 2}
    overrides = {"data_root": str(paper_fixture / "data"), "s4_verify_data": False,
                 "s4_mask_annotations": str(paper_fixture / "masks.json"), **small_inputs, **grids}
    runner.run([NOTEBOOK], "paper", {"dry_run": True, "overrides": overrides}, output_root=paper_fixture / "out",
               progress=False)
    results = json.loads((paper_fixture / "out" / NOTEBOOK / "results.json").read_text())
    assert results["profile"] == "paper" and results["config"]["dry_run"] is True
    m = results["metrics"]
    assert m["data"] == {"source": "CIFAR-10", "train": 30, "val": 10, "test": 20,
                         "classes": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                     "ship", "truck"]}
    assert m["models"]["student"]["arch"] == "resnet18" and m["models"]["student"]["parameters"] == 11_176_512
    assert m["models"]["teacher"]["arch"] == "vit_b_16"
    assert m["models"]["h4_teacher"]["arch"] == "wide_resnet50_2"
    assert all(info["weights"] == "random (dry run)" for info in m["models"].values())
    explained = m["shap"]["explained_test_indices"]
    assert 1 in explained and 4 in explained  # every annotated image is explained
    assert m["h2"]["images"] == 2  # H2 runs on the annotated images only
    assert max(max(v) for v in m["shap"]["additivity_error"].values()) < 1e-4
    assert len(results["claims"]) == 13


@pytest.mark.notebook
def test_notebook_04_paper_without_data_fails_fast(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    message = paper_run_failure(NOTEBOOK, tmp_path, {"data_root": str(tmp_path / "nothing")}, within_s=90)
    assert str(tmp_path / "nothing" / "cifar-10-batches-py") in message
    assert "resnet18" in message and "vit_b_16" in message and "wide_resnet50_2" in message
    assert "cifar-10-python.tar.gz" in message  # how to get it
