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


def test_jobs_run_studies_side_by_side_and_the_overview_after_them(tmp_path):
    def stamped(name):
        span = tmp_path / f"{name}.span"
        return _notebook(tmp_path, name, f"import time, pathlib\nstart = time.time()\ntime.sleep(3)\n"
                                         f"pathlib.Path({str(span)!r}).write_text(f'{{start}} {{time.time()}}')", WRITE)

    paths = [stamped(name) for name in ("91_first", "92_second", "00_last")]
    out = tmp_path / "out"
    runner.run([str(p) for p in paths], "tiny", {"tag": "x"}, output_root=out, progress=False, jobs=2)
    (a0, a1), (b0, b1), (c0, _) = (map(float, (tmp_path / f"{p.stem}.span").read_text().split()) for p in paths)
    assert a0 < b1 and b0 < a1, "the two studies did not overlap"
    assert c0 >= max(a1, b1), "the overview started before the studies finished"
    for path in paths:
        assert json.loads((out / path.stem / "results.json").read_text()) == {"tag": "x"}


def test_a_failed_study_run_side_by_side_stops_before_the_overview(tmp_path):
    bad = _notebook(tmp_path, "91_bad", "raise ValueError('planted')")
    good = _notebook(tmp_path, "92_good", WRITE)
    last = _notebook(tmp_path, "00_last", WRITE)
    with pytest.raises(runner.NotebooksFailed, match="91_bad") as info:
        runner.run([str(bad), str(good), str(last)], "tiny", {"tag": "x"}, output_root=tmp_path / "out",
                   progress=False, jobs=2)
    assert info.value.failures == [(bad, tmp_path / "runs" / "tiny" / "91_bad.ipynb")]
    assert not (tmp_path / "out" / "00_last").exists()


def test_a_study_whose_results_are_current_is_not_run_again(tmp_path):
    counter = tmp_path / "runs.txt"
    path = _notebook(tmp_path, "91_current", f"""
import json, pathlib
from kdutils.profiles import load_profile
with open({str(counter)!r}, "a") as f:
    f.write("run\\n")
out = pathlib.Path(output_dir)
out.mkdir(parents=True, exist_ok=True)
commit = "abc+dirty" if tag == "dirty" else "abc"
(out / "results.json").write_text(json.dumps({{"profile": profile, "git_commit": commit,
                                              "config": load_profile(profile, **overrides).to_dict()}}))
""")
    out = tmp_path / "out"

    def runs(params, **kwargs):
        runner.run([str(path)], "tiny", params, output_root=out, progress=False, **kwargs)
        return len(counter.read_text().splitlines())

    assert runs({}) == 1
    assert runs({}) == 1  # current: the same code, profile and configuration
    assert runs({"batch_size": 3}) == 2  # another configuration
    assert runs({"batch_size": 3}, force=True) == 3
    assert runs({"batch_size": 3, "tag": "dirty"}, force=True) == 4  # writes results of uncommitted code ...
    assert runs({"batch_size": 3, "tag": "dirty"}) == 5  # ... which are never current
