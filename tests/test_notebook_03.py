"""Notebook 03 (KASSL) at tiny, at paper as a dry run on fixtures, at paper without its inputs, and its table and
claims cells on planted per-seed probes."""

import json
import math
import time

import pytest
import torch
import torchvision

from kdutils import runner
from kdutils.stats import VERDICTS, paired_verdict
from kdutils.datasets import imagenet100_classes
from kdutils.kassl_config import TEACHER_LABELS, VARIANTS, grid
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
    assert m["tables"]["paper"]["BYOL top-1"] == {"teacher": 81.46, "baseline": 63.52, "original": 81.82,
                                                  "no_aug": 81.04, "feature_reduction": 76.18, "no_aug_fr": 75.50}
    for (t, v) in grid:
        steps = m["loss_histories"]["kassl"][f"{t}/{v}/0"]["steps"]
        assert steps and all(-1.0 <= x <= 1.0 for x in steps)
        assert -1.0 <= m["test_cosine"][f"{t}/{v}/0"] <= 1.0
    assert all(math.isfinite(x) for x in m["loss_histories"]["baseline"]["0"]["steps"])
    assert {c["verdict"] for c in results["claims"]} <= set(VERDICTS)
    per_seed = m["probes"]["per_seed"]
    for c in results["claims"]:  # every seed-based verdict is the ledger's, over the run's seeds
        if c["basis"] == "seeds":
            assert c["ours"]["n"] == len(per_seed)
            assert c.get("verdict_if_measured", c["verdict"]) == paired_verdict(c["ours"]["per_seed"]).name
    # tiny and dry runs measure nothing: every claim of the presentation is judged (above), reported not measured
    assert {c["verdict"] for c in results["claims"] if c["kind"] == "claim"} == {"not measured at this profile"}
    return m


@pytest.mark.notebook
def test_kassl_notebook_at_tiny(tmp_path):
    t0 = time.perf_counter()
    runner.run(["03_kassl"], "tiny", {}, output_root=tmp_path, progress=False)
    seconds = time.perf_counter() - t0
    out = tmp_path / "03_kassl"
    results = json.loads((out / "results.json").read_text())
    cfg = load_profile("tiny")
    m = _check_results(results, "tiny", cfg.s3_teachers, grid(cfg))
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
    m = _check_results(results, "paper", cfg.s3_teachers, grid(cfg))
    assert m["teachers"]["byol"]["format"] == "backbone" and m["teachers"]["moco_v2"]["format"] == "moco"
    # ResNet-50 without fc
    assert m["teachers"]["byol"]["feature_dim"] == 2048 and m["teachers"]["byol"]["tensors_loaded"] == 318
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


# ------------------------------------------------------------ the notebook's own table and claims cells

STARTS = ("PAPER = {", "def ratios(", "probes = probe_frame(", "claim = session.claims_for(",
          "def byol_summary_claims(")


def _presentation(per_seed: dict, teachers: list[str]) -> dict:
    """The notebook's paper, table and claims cells, executed as written on planted per-seed probes."""
    import types

    import nbformat
    import numpy as np
    import pandas as pd

    from kdutils import session, stats
    from kdutils.paths import NOTEBOOKS_DIR

    cells = [c.source for c in nbformat.read(NOTEBOOKS_DIR / "03_kassl.ipynb", 4).cells if c.cell_type == "code"]
    namespace = {"np": np, "pd": pd, "session": session, "stats": stats, "display": lambda *args, **kwargs: None,
                 "TEACHER_LABELS": TEACHER_LABELS, "VARIANTS": VARIANTS, "per_seed": per_seed,
                 "SEEDS": list(per_seed),
                 "cfg": types.SimpleNamespace(profile="small", dry_run=False, s3_teachers=teachers,
                                              s3_target_norm="standardize")}
    for start in STARTS:
        (source,) = [c for c in cells if c.startswith(start)]
        exec(source, namespace)
    return namespace


def _probes(students: dict, teachers: dict, baseline: float, jitter: float = 0.0) -> dict:
    """One seed's probes as the notebook builds them (top-5 = top-1 + 10).

    `jitter` moves the i-th student variant by (1 + i / 2) * jitter and the teachers and the baseline by
    jitter / 2, so that every difference varies over seeds (the same difference on every seed is one replicate)."""
    cell = lambda top1: {"top1": top1, "top5": top1 + 10}  # noqa: E731
    return {"teachers": {t: cell(v + jitter / 2) for t, v in teachers.items()}, "baseline": cell(baseline + jitter / 2),
            "random_init": {"student_arch": cell(20.0), "teacher_arch": cell(25.0)},
            "students": {t: {v: cell(x + (1 + i / 2) * jitter) for i, (v, x) in enumerate(row.items())}
                         for t, row in students.items()}}


def _verdicts(namespace: dict) -> dict:
    return {c["claim"]: c for c in namespace["claims"]}


def test_the_presentation_table_planted_reproduces_every_claim():
    """Every seed scores the presentation's own top-1 table (students jittered): each of its claims is reproduced,
    its stated sizes lie inside our intervals, and its derived numbers come out of the notebook's ratio code."""
    from kdutils.stats import paired_verdict

    jitter = {0: -0.3, 1: 0.1, 2: 0.2}
    paper = {"byol": {"teacher": 81.46, "baseline": 63.52, "original": 81.82, "no_aug": 81.04,
                      "feature_reduction": 76.18, "no_aug_fr": 75.50},
             "moco_v2": {"teacher": 80.28, "original": 77.02, "no_aug": 77.52, "feature_reduction": 71.56,
                         "no_aug_fr": 71.34}}
    students = {t: {v: x for v, x in row.items() if v not in ("teacher", "baseline")} for t, row in paper.items()}
    per_seed = {s: _probes(students, {t: row["teacher"] for t, row in paper.items()}, 63.52, j)
                for s, j in jitter.items()}
    ns = _presentation(per_seed, ["byol", "moco_v2"])
    assert ns["PAPER"]["byol"]["top1"] == paper["byol"]
    # the presentation's derived numbers, recomputed from its table by the notebook's code
    paper_cells, row_cells = ns["paper_cells"], ns["row_cells"]
    byol = ns["ratio_summary"](row_cells(paper_cells, "byol"))
    stated = ns["PAPER_CLAIMS"]
    assert byol["mean_student_over_teacher_pct"] == pytest.approx(stated["mean_student_over_teacher_pct"], abs=0.01)
    assert byol["best_student_over_teacher_pct"] == pytest.approx(stated["best_student_over_teacher_pct"], abs=0.01)
    assert byol["mean_gain_over_baseline_pts"] == pytest.approx(stated["mean_gain_over_baseline_pts"], abs=0.01)
    both = ns["ratio_summary"](paper_cells[paper_cells.metric == "top1"])
    # no MoCo baseline
    assert both["cells"] == 8 and both["mean_gain_over_baseline_pts"] == pytest.approx(15.115, abs=1e-3)
    assert ns["ratios"](row_cells(paper_cells, "moco_v2"))["original"]["gain_over_baseline_pts"] is None
    # the mean table over seeds is the planted one (the jitter averages out), std is the sample std
    assert ns["mean"]["students"]["byol"]["original"]["top1"] == pytest.approx(81.82)
    assert ns["std"]["students"]["byol"]["original"]["top1"] == pytest.approx(0.2646, abs=1e-4)  # ddof=1
    rows = _verdicts(ns)
    assert len(rows) == 4 * 2 + 3 + 2 + 2 + 1
    for text, row in rows.items():
        assert row["verdict"] == "reproduced", (text, row["measured"])
        assert row["verdict"] == paired_verdict(row["ours"]["per_seed"]).name
    scope = "top-1, the BYOL teacher's cells (4 of 4 run)"
    for text in (f"the student beats the baseline by +15.12 points on average ({scope})",
                 f"the student's best gain over the baseline is +18.3 points ({scope})",
                 "BYOL teacher: the student beats the BYOL baseline (original, top-1)"):
        assert rows[text]["paper_inside"] is True, text
    ratio = rows[f"the student reaches at least 90% of its teacher on average (paper: 96.5%; {scope})"]
    assert ratio["paper"] == "+6.53 pts (student / teacher 96.53%)" and ratio["paper_inside"] is True
    fr = rows["BYOL teacher: feature reduction costs accuracy (top-1)"]
    assert fr["paper"] == "+5.59 pts (FR - without FR -5.59)" and fr["ours"]["mean"] == pytest.approx(5.59)
    aug = rows["BYOL teacher: dropping augmentation changes little (top-1)"]
    assert aug["paper"] == "no aug - aug -0.73 pts (within 2)" and aug["ours"]["mean"] == pytest.approx(2 - 0.73)
    assert rows["MoCo-v2 teacher: the student beats the BYOL baseline (original, top-1)"]["paper"] == "-"


def test_the_claims_cells_judge_planted_failures_noise_and_cells_not_run():
    """A supervised teacher with two variants run, a BYOL teacher with three and a baseline below random weights,
    a noisy feature-reduction effect, and one seed: each claim gets the verdict its planted numbers call for."""
    supervised = {s: _probes({"supervised": {"original": 60.0 + d, "feature_reduction": 50.0 - d}},
                             {"supervised": 70.0}, 30.0 + 0.1 * s) for s, d in enumerate((0.0, 0.5, -0.4))}
    rows = _verdicts(_presentation(supervised, ["supervised"]))
    close = rows["Supervised teacher: the student comes within 10% of its teacher (original, top-1)"]
    assert close["verdict"] == "not reproduced" and close["ours"]["n"] == 3  # 85.7% < 90% in every seed
    assert "above the random floor 89.0%" in close["measured"]  # mean of (60 + d - 20) / (70 - 25)
    beat = rows["Supervised teacher: the student beats the BYOL baseline (original, top-1)"]
    assert beat["verdict"] == "reproduced" and beat["ours"]["mean"] == pytest.approx(30.0 + 0.1 / 3 - 0.1)
    expected = {"Supervised teacher: feature reduction costs accuracy (top-1)": "reproduced",
                "Supervised teacher: dropping augmentation changes little (top-1)": "not measured at this profile",
                "Supervised teacher: the KASSL student beats random weights (original, top-1)": "reproduced",
                "the BYOL baseline beats random weights of its architecture (top-1)": "reproduced"}
    scope = "top-1, the BYOL teacher's cells (0 of 4 run)"
    expected |= {claim: "not measured at this profile"
                 for claim in (f"the student reaches at least 90% of its teacher on average (paper: 96.5%; {scope})",
                               f"the student beats the baseline by +15.12 points on average ({scope})",
                               f"the student's best gain over the baseline is +18.3 points ({scope})")}
    assert len(rows) == len(expected) + 2 and all(rows[k]["verdict"] == v for k, v in expected.items())

    byol = {d: _probes({"byol": {"original": 40.0 + d, "feature_reduction": 35.0, "no_aug": 41.0}},
                       {"byol": 70.0 + 0.2 * d},
                       18.0 + 0.1 * d) for d in (0, 1, 2)}
    rows = _verdicts(_presentation(byol, ["byol"]))
    scope = "top-1, the BYOL teacher's cells (3 of 4 run)"
    assert rows["BYOL teacher: the student beats the BYOL baseline (original, top-1)"]["paper"] == "+18.30 pts"
    mean_gain = rows[f"the student beats the baseline by +15.12 points on average ({scope})"]
    assert mean_gain["verdict"] == "reproduced" and mean_gain["paper_inside"] is False
    assert mean_gain["ours"]["per_seed"] == pytest.approx([(62 + 0.7 * d) / 3 for d in (0, 1, 2)])
    best = rows[f"the student's best gain over the baseline is +18.3 points ({scope})"]
    assert best["paper"] == "+18.3 pts" and best["ours"]["per_seed"] == pytest.approx([23.0, 22.9, 23.8])
    ratio = rows[f"the student reaches at least 90% of its teacher on average (paper: 96.5%; {scope})"]
    assert ratio["verdict"] == "not reproduced" and ratio["paper_inside"] is False
    # 2 - |1 - d|
    assert rows["BYOL teacher: dropping augmentation changes little (top-1)"]["verdict"] == "within noise"
    weak = rows["the BYOL baseline beats random weights of its architecture (top-1)"]
    assert weak["kind"] == "precondition" and weak["verdict"] == "not reproduced" and "weak reference" in weak["note"]
    assert rows["BYOL teacher beats random weights (top-1)"]["verdict"] == "reproduced"

    noisy = {s: _probes({"supervised": {"original": 60.0, "feature_reduction": 60.0 + d}}, {"supervised": 70.0}, 30.0)
             for s, d in enumerate((1.0, -1.5, 0.2))}
    rows = _verdicts(_presentation(noisy, ["supervised"]))
    assert rows["Supervised teacher: feature reduction costs accuracy (top-1)"]["verdict"] == "within noise"
    one = _verdicts(_presentation({0: supervised[0]}, ["supervised"]))  # one seed is never a finding
    assert {c["verdict"] for c in one.values()} <= {"within noise", "not measured at this profile"}
