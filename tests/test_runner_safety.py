"""Runs fail safely: a time limit per cell, clear ends on a dead kernel or Ctrl-C, results swapped in as one unit."""

import json
import signal
import subprocess
import sys
import time

import nbformat
import pytest

from kdutils import runner
from kdutils.paths import REPO_ROOT

PARAMETERS = 'profile = "tiny"\noutput_dir = None\noverrides = {}\ntag = ""\nfail = False'
WRITE = """
import json, pathlib
out = pathlib.Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
(out / "results.json").write_text(json.dumps({"tag": tag}))
(out / f"figure_{tag}.png").write_bytes(b"png")
"""


@pytest.fixture(autouse=True)
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("KD_RUNS_DIR", str(tmp_path / "runs"))  # read at call time, by subprocesses too


def _notebook(folder, name, *cells):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMETERS)
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nb.metadata["kernelspec"] = {"name": "kd-studies", "display_name": "kd", "language": "python"}
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def _run(path, out, **params):
    return runner.run([str(path)], "tiny", params, output_root=out, progress=False)


def _set(folder):
    return {p.name: p.read_text() for p in folder.iterdir()}


def test_a_failed_run_leaves_the_previous_complete_set_and_a_good_run_replaces_it(tmp_path):
    path = _notebook(tmp_path, "97_unit", WRITE, "if fail:\n    raise RuntimeError('late failure')")
    out = tmp_path / "out"
    _run(path, out, tag="first")
    first = _set(out / "97_unit")
    assert first == {"results.json": '{"tag": "first"}', "figure_first.png": "png"}
    with pytest.raises(runner.NotebookFailed, match="late failure"):
        _run(path, out, tag="second", fail=True)  # wrote a new results.json and figure, then failed
    assert _set(out / "97_unit") == first
    _run(path, out, tag="third")
    assert _set(out / "97_unit") == {"results.json": '{"tag": "third"}', "figure_third.png": "png"}
    assert [p.name for p in out.iterdir()] == ["97_unit"]  # no staging folder left behind
    assert [p.name for p in (tmp_path / "runs" / "tiny").iterdir()] == ["97_unit.ipynb"]


def test_a_cell_past_its_time_limit_stops_the_run(tmp_path):
    path = _notebook(tmp_path, "96_slow", "import time\ntime.sleep(120)")
    for limit in ({"cell_timeout": 2}, {}):  # the profile field (-p cell_timeout=2), then --cell-timeout
        with pytest.raises(runner.NotebookStopped, match="time limit.*--cell-timeout") as info:
            if limit:
                _run(path, tmp_path / "out", **limit)
            else:
                runner.run([str(path)], "tiny", {}, output_root=tmp_path / "out", progress=False, cell_timeout=2)
        assert info.value.executed.exists() and str(info.value.executed) in str(info.value)


def test_a_dead_kernel_ends_with_a_clear_message_and_the_executed_notebook(tmp_path):
    path = _notebook(tmp_path, "95_dies", "import os\nos._exit(1)")
    with pytest.raises(runner.NotebookStopped, match="the kernel died") as info:
        _run(path, tmp_path / "out")
    assert info.value.executed == tmp_path / "runs" / "tiny" / "95_dies.ipynb" and info.value.executed.exists()


def _as_in_a_terminal():
    """Ctrl-C reaches a run started from a terminal, even when pytest itself runs in the background."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("shown", [["--no-progress"], []], ids=["quiet", "with-progress"])
def test_ctrl_c_ends_with_a_clear_message_and_keeps_the_previous_results(tmp_path, shown):
    started = tmp_path / "started"
    path = _notebook(tmp_path, "94_long", WRITE, f"import pathlib, time\npathlib.Path({str(started)!r}).touch()\n"
                                               "time.sleep(120)")
    out = tmp_path / "out"
    (out / "94_long").mkdir(parents=True)
    (out / "94_long" / "results.json").write_text("previous")
    proc = subprocess.Popen([sys.executable, "-m", "kdutils", "run", str(path), "--profile", "tiny",
                             "--output-root", str(out), *shown, "-p", "tag='new'"],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_as_in_a_terminal)
    deadline = time.monotonic() + 240  # a kernel start on busy shared cores can take minutes
    while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert started.exists(), "the notebook's long cell never started"
    proc.send_signal(signal.SIGINT)
    interrupted = time.monotonic()
    _, stderr = proc.communicate(timeout=180)  # the kernel is killed, not waited for
    assert proc.returncode == 1, stderr
    assert time.monotonic() - interrupted < 60, "the run waited for the interrupted cell to finish"
    assert "interrupted (Ctrl-C)" in stderr and str(tmp_path / "runs" / "tiny" / "94_long.ipynb") in stderr
    assert "time.sleep(120)" in nbformat.read(tmp_path / "runs" / "tiny" / "94_long.ipynb", 4).cells[-1].source
    assert _set(out / "94_long") == {"results.json": "previous"}


def test_concurrent_runs_write_private_files_and_each_lands_whole(tmp_path):
    path = _notebook(tmp_path, "93_twice", "import time\ntime.sleep(2)", WRITE)
    out = tmp_path / "out"
    procs = [subprocess.Popen([sys.executable, "-m", "kdutils", "run", str(path), "--profile", "tiny",
                               "--output-root", str(out), "--no-progress", "-p", f"tag='{tag}'"],
                              cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for tag in ("a", "b")]
    for proc in procs:
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 0, stderr
    tag = json.loads((out / "93_twice" / "results.json").read_text())["tag"]
    assert _set(out / "93_twice") == {"results.json": json.dumps({"tag": tag}), f"figure_{tag}.png": "png"}
    executed = nbformat.read(tmp_path / "runs" / "tiny" / "93_twice.ipynb", 4)  # one whole notebook
    (injected,) = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert 'tag = "a"' in injected.source or 'tag = "b"' in injected.source
    assert sorted(p.name for p in out.iterdir()) == ["93_twice"]
    assert sorted(p.name for p in (tmp_path / "runs" / "tiny").iterdir()) == ["93_twice.ipynb"]
