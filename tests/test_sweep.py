"""A real local Ray sweep of notebook 04 at tiny: a job killed mid-run, the sweep resumed, the merge checked
against the notebook's own run with the same seeds."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

import torch
from conftest import fail_if_recomputed

from kdutils import runner, tlkd
from kdutils.errors import ConfigError
from kdutils.sweep import parse_grid, parse_seeds, plan
from kdutils.tlkd_features import HeadInputs

NOTEBOOK = "04_tl_kd_shap"
SEEDS = [0, 7]


def _kernel_of(job: str) -> int | None:
    """The pid of the Jupyter kernel the sweep started for `job` (the sweep marks it with KD_SWEEP_JOB)."""
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if b"ipykernel" in cmdline and f"KD_SWEEP_JOB={job}".encode() in environ:
            return int(entry.name)
    return None


def _h1_stored(store: Path, seed: int) -> bool:
    """Whether a job has stored `seed`'s H1 heads: that cell is done, SHAP, H2-H4 and the verdicts are not."""
    for entry in (store / "tlkd-h1-seed").glob("*.json"):
        try:
            if json.loads(entry.read_text()).get("seed") == seed:
                return True
        except (OSError, ValueError):  # being written
            continue
    return False


def _sweep(root: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kdutils", "sweep", "04", "--profile", "tiny", "--seeds",
                             ",".join(map(str, SEEDS)), "--cpus-per-job", "1", "--output-root", str(root)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _numbers(results: dict) -> dict:
    """Everything measured, without the wall times."""
    return {"metrics": {k: v for k, v in results["metrics"].items() if k != "wall_time_s"},
            "claims": results["claims"], "seeds": results["seeds"]}


@pytest.mark.notebook
def test_sweep_resumes_after_a_killed_job_and_merges_to_the_notebooks_own_run(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_CACHE_DIR", os.environ.get("KD_CACHE_DIR") or str(tmp_path / "cache"))
    root = tmp_path / "sweep"
    job_dir = root / "jobs" / NOTEBOOK
    first = _sweep(root)
    deadline = time.time() + 240
    victim = None
    while victim is None and first.poll() is None and time.time() < deadline:
        # mid-run, at a point that cannot race: seed 7's H1 heads are stored, the rest of its notebook is not
        if _h1_stored(root / "store", 7):
            victim = _kernel_of("seed 7")
            if victim:
                os.kill(victim, signal.SIGKILL)
        time.sleep(0.1)
    out, _ = first.communicate(timeout=240)
    assert victim, f"never saw seed 7's kernel mid-run:\n{out}"
    assert first.returncode == 1, out
    assert "0 queued, 2 running" in out  # the two jobs ran side by side
    assert "FAILED seed 7" in out and "the kernel died" in out and str(job_dir / "seed7.ipynb") in out
    assert (job_dir / "seed0" / "results.json").exists() and not (job_dir / "seed7" / "results.json").exists()
    assert not (root / NOTEBOOK / "results.json").exists()  # no merge over a failed job

    second = _sweep(root)
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 0, out
    assert "1 skipped" in out  # seed 0's results exist
    merged = json.loads((root / NOTEBOOK / "results.json").read_text())
    assert merged["seeds"] == SEEDS and merged["metrics"]["h1"]["seeds"] == SEEDS
    # one stored H1 entry per seed: the resumed job and the merge reused what the killed job had finished
    # (entries are keyed by the code too: if kdutils changed while this test ran, each version counts apart)
    by_code = {}
    for entry in (root / "store" / "tlkd-h1-seed").glob("*.json"):
        key = json.loads(entry.read_text())
        by_code.setdefault(key["code"], []).append(key["seed"])
    assert all(sorted(seeds) == sorted(set(seeds)) for seeds in by_code.values()), by_code  # no seed trained twice
    assert any(sorted(seeds) == SEEDS for seeds in by_code.values()), by_code

    # the notebook's own run with both seeds, computing everything itself (its own empty store)
    monkeypatch.setenv("KD_RESULTS_STORE", str(tmp_path / "reference_store"))
    runner.run([NOTEBOOK], "tiny", {"seeds": SEEDS}, output_root=tmp_path / "reference", progress=False)
    reference = json.loads((tmp_path / "reference" / NOTEBOOK / "results.json").read_text())
    assert _numbers(merged) == _numbers(reference)
    for name in merged["main_figures"]:
        assert (root / NOTEBOOK / name).stat().st_size > 5_000  # figures re-drawn from the merged data


def test_sweep_plan_validates_every_job_first(tmp_path):
    jobs, merges = plan("04", "tiny", parse_seeds("0,7"), {"s4_epochs": 2}, parse_grid(["s4_alpha=0.1,0.5"]),
                        tmp_path)
    assert [j.name for j in jobs] == ["s4_alpha=0.1 seed 0", "s4_alpha=0.1 seed 7",
                                      "s4_alpha=0.5 seed 0", "s4_alpha=0.5 seed 7"]
    assert jobs[3].params["seeds"] == [7] and jobs[3].params["overrides"] == {"s4_epochs": 2, "s4_alpha": 0.5}
    assert jobs[3].folder == tmp_path / "jobs" / NOTEBOOK / "s4_alpha=0.5" / "seed7"
    assert jobs[3].executed == tmp_path / "jobs" / NOTEBOOK / "s4_alpha=0.5" / "seed7.ipynb"
    assert merges[1].folder == tmp_path / NOTEBOOK / "s4_alpha=0.5"
    assert [m.params["seeds"] for m in merges] == [[0, 7], [0, 7]]
    with pytest.raises(ConfigError, match="s4_epochs"):
        plan("04", "tiny", [0], {"s4_epochs": "two"}, {}, tmp_path)  # a bad value stops the sweep before Ray
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds("0,x")
    with pytest.raises(ConfigError, match="--seeds"):
        plan("04", "tiny", [0], {"seeds": [1]}, {}, tmp_path)


def test_a_job_folder_with_other_parameters_is_refused(tmp_path):
    (job,), _ = plan("04", "tiny", [0], {"s4_epochs": 2}, {}, tmp_path)
    job.record.parent.mkdir(parents=True)
    job.record.write_text(json.dumps({**job.params, "overrides": {"s4_epochs": 3}}))
    with pytest.raises(ConfigError, match="other parameters"):
        job.check_folder()
    job.record.write_text(json.dumps(job.params))
    job.check_folder()  # the same job: resumable


def test_h1_seeds_are_stored_and_reused_not_retrained(tmp_path, monkeypatch):
    """What a sweep's merge (and a warm run) relies on: a finished seed comes back from the store, identical."""
    monkeypatch.setenv("KD_RESULTS_STORE", str(tmp_path / "store"))
    g = torch.Generator().manual_seed(0)
    features = {(role, split): torch.randn(2 if split == "train" else 1, n, 6, generator=g)
                for role in ("teacher", "student") for split, n in (("train", 30), ("val", 12))}
    labels = {"train": torch.arange(30) % 3, "val": torch.arange(12) % 3}
    hp = tlkd.HeadParams(replace(tlkd.THESIS_RECIPE, epochs=2), batch_size=8)
    args = dict(features=features, labels=labels, hp=hp, alphas=[0.0, 0.5], num_classes=3)
    teacher, students = tlkd.h1_seed(seed=7, **args)

    def no_training(*args, **kwargs):
        raise AssertionError("a stored seed was trained again")

    monkeypatch.setattr(tlkd, "train_head", no_training)
    again_teacher, again = tlkd.h1_seed(seed=7, **args)
    assert torch.equal(again_teacher.head[1].weight, teacher.head[1].weight)
    assert all(torch.equal(again[a].head[1].weight, students[a].head[1].weight) for a in (0.0, 0.5))
    assert again[0.5].history.to_dict() == students[0.5].history.to_dict()
    with pytest.raises(AssertionError, match="trained again"):
        tlkd.h1_seed(seed=8, **args)  # another seed is another entry
    with pytest.raises(AssertionError, match="trained again"):
        tlkd.h1_seed(seed=7, **{**args, "hp": replace(hp, recipe=replace(hp.recipe, lr=0.02))})  # so is another recipe


def test_h4_seeds_are_stored_and_reused_not_retrained(tmp_path, monkeypatch):
    """H4's conditions (`tl_vs_kd`) too: a second identical call reads each seed's reports from the store."""
    monkeypatch.setenv("KD_RESULTS_STORE", str(tmp_path / "store"))
    g = torch.Generator().manual_seed(0)
    sources = lambda d: {"train": HeadInputs.cached(torch.randn(2, 24, d, generator=g)),  # noqa: E731
                         "val": HeadInputs.cached(torch.randn(1, 9, d, generator=g)),
                         "test": HeadInputs.cached(torch.randn(1, 9, d, generator=g))}
    labels = {"train": torch.arange(24) % 3, "val": torch.arange(9) % 3, "test": torch.arange(9) % 3}
    hp = tlkd.HeadParams(replace(tlkd.THESIS_RECIPE, epochs=1, patience=None))
    args = dict(student=sources(5), teacher=sources(7), labels=labels, hp=hp, alpha=0.1, num_classes=3)
    first = tlkd.tl_vs_kd(seeds=[1, 7], **args)
    monkeypatch.setattr(tlkd, "train_head", fail_if_recomputed)
    assert tlkd.tl_vs_kd(seeds=[1, 7], **args) == first
    assert tlkd.tl_vs_kd(seeds=[7], **args) == {7: first[7]}  # each seed is its own entry
    with pytest.raises(AssertionError, match="recomputed"):
        tlkd.tl_vs_kd(seeds=[8], **args)  # another seed is another entry
    with pytest.raises(AssertionError, match="recomputed"):
        tlkd.tl_vs_kd(seeds=[7], **{**args, "alpha": 0.5})  # so is another condition
