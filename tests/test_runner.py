"""The runner checks parameters before any kernel starts, and reports failures usefully."""

import json
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from papermill.cli import papermill as papermill_cli

from kdutils import runner
from kdutils.__main__ import _parser as cli_parser
from kdutils.errors import ConfigError
from kdutils.paths import NOTEBOOKS_DIR, REPO_ROOT


def test_parse_value():
    assert runner.parse_value("3") == 3
    assert runner.parse_value("[0, 7, 42]") == [0, 7, 42]
    assert runner.parse_value("True") is True
    assert runner.parse_value("abc") == "abc"
    assert runner.parse_assignments(["a=1", "b=x"]) == {"a": 1, "b": "x"}
    with pytest.raises(ConfigError, match="name=value"):
        runner.parse_assignments(["oops"])


def test_resolve_names():
    assert runner.resolve("00_overview").name == "00_overview.ipynb"
    assert runner.resolve("00").name == "00_overview.ipynb"
    with pytest.raises(ConfigError, match="no notebook named"):
        runner.resolve("99_nothing")


def test_overview_runs_last():
    names = [p.stem for p in runner.notebooks()]
    assert names[-1] == "00_overview"


@pytest.mark.parametrize("params, message", [
    ({"seeds": "abc"}, "'seeds'"),
    ({"no_such_key": 1}, "'no_such_key'"),
    ({"dry_run": "yes"}, "'dry_run'"),
    ({"batch_size": 0}, "'batch_size'"),
])
def test_validate_names_the_bad_parameter(params, message):
    with pytest.raises(ConfigError, match=message):
        runner.validate(runner.resolve("00_overview"), "tiny", params)


def test_profile_fields_go_into_overrides():
    full = runner.validate(runner.resolve("00_overview"), "tiny", {"batch_size": 3, "seeds": [1]})
    assert full == {"seeds": [1], "overrides": {"batch_size": 3}, "profile": "tiny"}


@pytest.mark.parametrize("arg, name", [("seeds=abc", "seeds"), ("no_such_key=1", "no_such_key")])
def test_cli_fails_before_any_work(arg, name, tmp_path):
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kdutils", "run", "00_overview", "--profile", "tiny",
                           "-p", arg, "--output-root", str(tmp_path)], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=120)
    assert proc.returncode == 2
    assert f"'{name}'" in proc.stderr
    assert not list(tmp_path.iterdir())  # nothing written
    assert time.perf_counter() - t0 < 30


def test_failing_cell_is_reported_with_the_executed_copy(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "tiny"\noutput_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell("x = 1\nraise ValueError('boom at cell 1')")]
    nb.metadata["kernelspec"] = {"name": "kd-studies", "display_name": "kd", "language": "python"}
    path = tmp_path / "98_failing.ipynb"
    nbformat.write(nb, path)
    monkeypatch.setenv("KD_RUNS_DIR", str(tmp_path / "runs"))
    with pytest.raises(runner.NotebookFailed) as info:
        runner.run([str(path)], "tiny", {}, output_root=tmp_path / "out", progress=False)
    text = str(info.value)
    assert "boom at cell 1" in text and "ValueError" in text and "raise ValueError" in text
    assert info.value.executed.exists()


STUDIES = [p.stem for p in runner.notebooks() if not p.stem.startswith("00")]


@pytest.mark.parametrize("study", STUDIES)
def test_try_it_commands_pass_the_runners_checks(study):
    """Each study's Try it commands parse and validate as `kdutils run` (and papermill) would take them, so a
    renamed or removed parameter cannot linger in the teaching material; each runs into runs/try/."""
    path = runner.resolve(study)
    cells = [c for c in nbformat.read(path, as_version=4).cells if c.get("id") == "try-it"]
    assert len(cells) == 1, f"{study} has no markdown cell with id 'try-it'"
    commands = re.findall(r"`(python -m kdutils run [^`]+)`", cells[0].source)
    assert commands, f"{study}'s Try it gives no `python -m kdutils run` command"
    for command in commands:
        args = cli_parser().parse_args(shlex.split(command)[3:])
        assert [runner.resolve(n) for n in args.notebooks] == [path], command
        assert args.output_root == Path("runs/try"), f"{command} would not write into runs/try/"
        runner.validate(path, args.profile, runner.parse_assignments(args.param))
    for command in re.findall(r"`(papermill [^`]+)`", cells[0].source):
        params = papermill_cli.make_context("papermill", shlex.split(command)[1:]).params
        assert runner.resolve(params["notebook_path"]) == path, command
        values = {name: runner.parse_value(value) for name, value in params["parameters"]}
        for text in params["parameters_yaml"]:
            values.update(yaml.safe_load(text))
        runner.validate(path, values.pop("profile"), values)


def test_list_shows_parameters():
    proc = subprocess.run([sys.executable, "-m", "kdutils", "list"], capture_output=True, text=True,
                          cwd=REPO_ROOT, timeout=60)
    assert proc.returncode == 0
    assert "00_overview" in proc.stdout and "profile" in proc.stdout


def test_notebooks_are_committed_clean():
    for path in NOTEBOOKS_DIR.glob("*.ipynb"):
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
            f"{path.name} has outputs: strip them"
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in code), \
            f"{path.name} has no cell tagged 'parameters'"
        assert nb["metadata"]["kernelspec"]["name"] == "kd-studies", path.name


def test_bench_command_lists_the_benchmarks_and_names_an_unknown_one(capsys):
    """`bench` runs the benchmarks/ folder beside the package: `list` names them all, a typo says so (exit 2)."""
    from benchmarks import BENCHMARKS
    from kdutils.__main__ import main

    assert main(["bench", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"  {name}: " in listed for name in BENCHMARKS) and "tlkd" in BENCHMARKS
    assert main(["bench", "tlkdd"]) == 2
    assert "unknown benchmark 'tlkdd'" in capsys.readouterr().err
