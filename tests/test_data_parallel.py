"""`train.fit` data-parallel under Accelerate on CPU (2 processes, gloo) equals one process with the same
global batch, resumes from its checkpoint, and lets only the main process write it."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).parent / "data_parallel_script.py"


def _run(out: Path, processes: int, epochs: int) -> dict:
    out.mkdir(exist_ok=True)
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), str(processes), str(epochs)],
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    return torch.load(out / "result.pt")


def test_two_processes_equal_one_with_the_same_global_batch_and_resume(tmp_path):
    single = _run(tmp_path / "single", 1, 4)
    assert not single["accelerate_imported"]  # one process never loads it

    _run(tmp_path / "parallel", 2, 2)  # stops after epoch 2 with a checkpoint ...
    parallel = _run(tmp_path / "parallel", 2, 4)  # ... and a second launch resumes it to epoch 4
    # trained by 2 processes, checkpoints written by the main one only; `launch` returned its result
    assert sorted(p.name for p in (tmp_path / "parallel").glob("saved-by-*")) == ["saved-by-rank-0-of-2"]
    assert parallel["accelerate_imported"]
    first, second = map(int, (tmp_path / "parallel" / "steps-of-rank-0.txt").read_text().split())
    assert first > 0 and second == first  # the second launch trained epochs 3 and 4 only: it resumed

    assert len(parallel["losses"]) == 4
    torch.testing.assert_close(torch.tensor(parallel["losses"]), torch.tensor(single["losses"]),
                               rtol=1e-5, atol=1e-6)
    assert single["losses"][-1] < 0.7 * single["losses"][0]  # it learned: the comparison is not of noise
    for name, weight in single["weights"].items():
        torch.testing.assert_close(parallel["weights"][name], weight, rtol=1e-5, atol=1e-5)


def test_num_processes_is_a_checked_profile_field():
    from kdutils.errors import ConfigError
    from kdutils.profiles import load_profile

    assert load_profile("tiny").num_processes == 1 and load_profile("paper", num_processes=4).num_processes == 4
    with pytest.raises(ConfigError, match="num_processes"):
        load_profile("tiny", num_processes=0)
