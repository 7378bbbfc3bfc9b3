"""Notebook 03 (KASSL) at tiny, at paper as a dry run on fixtures, and at paper without its inputs."""

import json
import math
import time

import pytest
import torch
import torchvision

from kdutils import kassl, runner
from kdutils.stats import VERDICTS, paired_verdict
from kdutils.datasets import imagenet100_classes
from kdutils.profiles import load_profile
from tests.fixtures import paper_run_failure, write_image_folder

FIGURES = ("kassl_1_top1_bars", "kassl_2_loss_curves", "kassl_3_teachers", "kassl_4_pca", "kassl_5_views")


def _check_results(results: dict, profile: str, teachers: list[str], grid: list[tuple[str, str]]):
    m = results["metrics"]
    mean = m["probes"]["mean"]
    assert results["profile"] == profile
    assert set(mean["teachers"]) == set(teachers)
    cells = [mean["baseline"], *mean["teachers"].values(), *mean["random_init"].values()]
    cells += [mean["students"][t][v] for t, v in grid]
    for cell in cells:
        assert 0 <= cell["top1"] <= cell["top5"] <= 100
    assert [tuple(g) for g in m["grid"]] == grid
    assert len(m["tables"]["this_run"]) == 2 * len(teachers)
    assert m["tables"]["paper"]["BYOL top-1"] == kassl.PAPER["byol"]["top1"]
    for (t, v) in grid:
        steps = m["loss_histories"]["kassl"][f"{t}/{v}/0"]["steps"]
        assert steps and all(-1.0 <= x <= 1.0 for x in steps)
        assert -1.0 <= m["test_cosine"][f"{t}/{v}/0"] <= 1.0
    assert all(math.isfinite(x) for x in m["loss_histories"]["baseline"]["0"]["steps"])
    assert {c["verdict"] for c in results["claims"]} <= set(VERDICTS)
    per_seed = m["probes"]["per_seed"]
    for c in results["claims"]:  # every seed-based verdict is the ledger's, over the run's seeds
        if c["basis"] == "seeds":
            assert c["ours"]["n"] == len(per_seed) and c["verdict"] == paired_verdict(c["ours"]["per_seed"]).name
    return m


@pytest.mark.notebook
def test_kassl_notebook_at_tiny(tmp_path):
    t0 = time.perf_counter()
    runner.run(["03_kassl"], "tiny", {}, output_root=tmp_path, progress=False)
    seconds = time.perf_counter() - t0
    out = tmp_path / "03_kassl"
    results = json.loads((out / "results.json").read_text())
    cfg = load_profile("tiny")
    m = _check_results(results, "tiny", cfg.s3_teachers, kassl.grid(cfg))
    ssl_steps = m["loss_histories"]["teachers"]["byol"]["steps"]
    assert ssl_steps and all(0 <= x <= 8 for x in ssl_steps)  # BYOL's summed loss range
    assert m["loss_histories"]["teachers"]["supervised"] is None
    runs = [row["run"] for row in m["controls"]]
    assert len(runs) == 4 and runs[1] == "no aug, targets none" and runs[3] == "no aug + FR, projection fixed"
    assert all(0 <= row["target spread"] <= 2 and row["steps"] for row in m["controls"])
    assert 0 < m["mean_direction_cosine"]["supervised"] <= 1  # ReLU features: positive mean direction
    assert m["data"] == {"train": 300, "probe_train": 300, "probe_test": 200, "classes": 10, "size": 32}
    # 4 per teacher, 2 summaries, SSL teachers vs random weights, students vs random weights
    # 4 per teacher, 3 summaries; preconditions: students and SSL teachers vs random weights, the baseline
    ssl_teachers = [t for t in cfg.s3_teachers if t != "supervised"]
    assert len(results["claims"]) == 4 * len(cfg.s3_teachers) + 3 + len(cfg.s3_teachers) + len(ssl_teachers) + 1
    assert sum(c["kind"] == "precondition" for c in results["claims"]) == len(cfg.s3_teachers) + len(ssl_teachers) + 1
    for name in FIGURES:
        assert (out / f"{name}.png").stat().st_size > 10_000, name
    assert results["main_figures"] == [f"{name}.png" for name in FIGURES[:3]]
    print(f"tiny notebook: {seconds:.1f} s (notebook's own wall time {m['wall_s']['total']:.1f} s)")


def _resnet50_fixtures(weights):
    """Random torchvision ResNet-50s saved as the two published layouts (mmselfsup BYOL, official MoCo)."""
    torch.manual_seed(0)
    byol = {f"backbone.{k}": v for k, v in torchvision.models.resnet50().state_dict().items()
            if not k.startswith("fc.")}
    byol["neck.mlp.0.weight"] = torch.zeros(4, 2048)
    torch.save({"meta": {"epoch": 200}, "state_dict": byol}, weights / load_profile("paper").s3_byol_checkpoint)
    moco = {f"module.encoder_q.{k}": v for k, v in torchvision.models.resnet50().state_dict().items()
            if not k.startswith("fc.")}
    moco["module.encoder_q.fc.0.weight"] = torch.zeros(4, 2048)
    moco["module.queue"] = torch.zeros(128, 16)
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": moco},
               weights / load_profile("paper").s3_moco_checkpoint)


PAPER_SMALL = {"image_size": 32, "num_workers": 0, "s3_ssl_batch": 32, "s3_probe_epochs": 2, "progress": False}


@pytest.mark.notebook
def test_kassl_notebook_paper_dry_run_on_fixtures(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", str(tmp_path / "cache"))
    data, weights = tmp_path / "data", tmp_path / "weights"
    classes = imagenet100_classes()
    write_image_folder(data / "imagenet100" / "train", classes, n_per_class=3, size=40, seed=0, ext="JPEG")
    write_image_folder(data / "imagenet100" / "val", classes, n_per_class=1, size=40, seed=1, ext="JPEG")
    weights.mkdir()
    _resnet50_fixtures(weights)
    params = {"dry_run": True, "data_root": str(data), "weights_root": str(weights), **PAPER_SMALL}
    runner.run(["03_kassl"], "paper", params, output_root=tmp_path / "out", progress=False)
    results = json.loads((tmp_path / "out" / "03_kassl" / "results.json").read_text())
    cfg = load_profile("paper")
    m = _check_results(results, "paper", cfg.s3_teachers, kassl.grid(cfg))
    assert m["teachers"]["byol"]["format"] == "backbone" and m["teachers"]["moco_v2"]["format"] == "moco"
    assert m["teachers"]["byol"]["feature_dim"] == 2048 and m["teachers"]["byol"]["tensors_loaded"] == 318  # ResNet-50 without fc
    assert m["data"] == {"train": 300, "probe_train": 300, "probe_test": 100, "classes": 100, "size": 32}
    # dry run: two optimisation steps per phase
    assert all(len(h["steps"]) == 2 for h in m["loss_histories"]["kassl"].values())
    assert results["config"]["dry_run"] is True


@pytest.mark.notebook
def test_kassl_notebook_paper_without_inputs_fails_fast(tmp_path):
    message = paper_run_failure("03_kassl", tmp_path, {"data_root": str(tmp_path / "nodata"),
                                                       "weights_root": str(tmp_path / "noweights")})
    assert "4 required inputs" in message
    assert str(tmp_path / "nodata" / "imagenet100" / "train") in message and "image-net.org" in message
    assert "moco_v2_800ep_pretrain.pth.tar" in message and "dl.fbaipublicfiles.com" in message
    assert "download.openmmlab.com" in message
