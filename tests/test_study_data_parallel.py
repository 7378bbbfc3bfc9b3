"""Study 3's KASSL student and BYOL baseline, study 1's self-distilled student (and study 2's CLIP teacher
fine-tuning) trained with the profile's `num_processes=2` (CPU, gloo, through `parallel.launch`) equal the
`num_processes=1` run: per-step losses and final weights within float tolerance (batch-norm over the global batch, the
views and crops of one process), and the main process alone wrote the checkpoints. The trainings are short because
float rounding grows step by step in them (the same run on one and on two CPU threads drifts apart as fast)."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "study_data_parallel_script.py"
MATCHER_SCRIPT = Path(__file__).parent / "matcher_data_parallel_script.py"
SELFDISTILL_SCRIPT = Path(__file__).parent / "selfdistill_data_parallel_script.py"


def _run(out: Path, processes: int, script: Path = SCRIPT) -> dict:
    out.mkdir()
    done = subprocess.run([sys.executable, str(script), str(out), str(processes)], capture_output=True, text=True,
                          check=False, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    return torch.load(out / "result.pt", weights_only=False)


def test_kassl_student_and_baseline_with_two_processes_equal_one(tmp_path):
    _assert_two_processes_train_as_one(tmp_path, SCRIPT, ("student", "baseline"))


def test_selfdistill_student_with_two_processes_equals_one(tmp_path):
    """Study 1's student through `selfdistill.fit_student`, alone (cross-entropy) and against soft teacher targets
    in the view each image is shown (drawn through `per_example`)."""
    _assert_two_processes_train_as_one(tmp_path, SELFDISTILL_SCRIPT, ("plain", "soft"))


def _assert_two_processes_train_as_one(tmp_path: Path, script: Path, names: tuple) -> None:
    """`script` with 1 and with 2 processes: accelerate only in the second, checkpoints by its main process alone,
    and each named training took as many steps (3 an epoch) with the same losses to the same weights."""
    single = _run(tmp_path / "single", 1, script)
    parallel = _run(tmp_path / "parallel", 2, script)
    assert not single["accelerate_imported"] and parallel["accelerate_imported"]
    assert sorted(p.name for p in (tmp_path / "parallel").glob("saved-by-*")) == ["saved-by-rank-0-of-2"]
    for name in names:
        one, two = single[f"{name}_history"], parallel[f"{name}_history"]
        assert len(two["steps"]) == len(one["steps"]) == 3 * len(one["epochs"])
        torch.testing.assert_close(torch.tensor(two["steps"]), torch.tensor(one["steps"]), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(torch.tensor([e["train_loss"] for e in two["epochs"]]),
                                   torch.tensor([e["train_loss"] for e in one["epochs"]]), rtol=1e-4, atol=1e-5)
        for key, weight in single[name].items():
            torch.testing.assert_close(parallel[name][key].float(), weight.float(), rtol=1e-3, atol=1e-4,
                                       msg=lambda m, name=name, key=key: f"{name} {key}: {m}")


def test_study2_teacher_fine_tuning_with_two_processes_equals_one(tmp_path):
    """Study 2's CLIP teacher through `matching.train_matcher(num_processes=2)`: the same epochs and weights."""
    single = _run(tmp_path / "single", 1, MATCHER_SCRIPT)
    parallel = _run(tmp_path / "parallel", 2, MATCHER_SCRIPT)  # (transformers imports accelerate either way)
    assert sorted(p.name for p in (tmp_path / "single").glob("saved-by-*")) == ["saved-by-rank-0-of-1"]
    assert sorted(p.name for p in (tmp_path / "parallel").glob("saved-by-*")) == ["saved-by-rank-0-of-2"]
    for key in ("train_loss", "val_loss", "val_acc"):
        torch.testing.assert_close(torch.tensor([e[key] for e in parallel["epochs"]]),
                                   torch.tensor([e[key] for e in single["epochs"]]), rtol=1e-4, atol=1e-5)
    for key, weight in single["model"].items():
        if key.endswith("k_proj.bias"):
            # Attention is invariant to the key bias, so its true gradient is 0 and Adam turns float noise into
            # lr-sized steps: it follows float rounding, not the data.
            continue
        torch.testing.assert_close(parallel["model"][key].float(), weight.float(), rtol=1e-3, atol=1e-4,
                                   msg=lambda m, key=key: f"{key}: {m}")


def test_study2_data_parallel_needs_a_checkpoint():
    from kdutils import matching
    from kdutils.errors import ConfigError

    with pytest.raises(ConfigError, match="cache_tag"):
        matching.train_matcher(torch.nn.Linear(1, 1), [], [], epochs=1, lr=1e-3, batch_size=1, seed=0,
                               num_processes=2)
