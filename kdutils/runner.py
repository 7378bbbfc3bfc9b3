"""Execute the study notebooks with papermill, checking parameters first.

`python -m kdutils run 00_overview --profile tiny -p seeds=[0,1]` validates every
`-p` against the notebook's `parameters` cell and the profile, before a kernel
starts; runs the notebook with an explicit kernel and a time limit per cell;
keeps the executed copy in `runs/<profile>/`; and on failure prints the
failing cell and where the executed notebook is. Each run writes into its own
private files and swaps its results and figures in only when the notebook
finished, so a failed, interrupted or concurrent run never leaves a mixed set.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import papermill
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from papermill.exceptions import PapermillExecutionError

from . import engine as run_engine
from .progress import PROGRESS_MODES, expected_seconds
from .errors import ConfigError, CorruptFileError
from .paths import FIGURES_DIR, KERNEL_NAME, NOTEBOOKS_DIR, default_output_root, read_json, runs_dir
from .profiles import Config, load_profile
from .results import staleness

CONFIG_FIELDS = frozenset(Config.__dataclass_fields__)  # the profile's fields: a run may set them on any notebook


def notebooks() -> list[Path]:
    """Every notebook in run order: the studies first, then the overview that reads their results."""
    found = sorted(NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb"))
    return [p for p in found if not p.stem.startswith("00")] + [p for p in found if p.stem.startswith("00")]


def resolve(name: str) -> Path:
    """'00_overview', '00', '00_overview.ipynb' or a path -> the notebook's path."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.exists():
        return path.resolve()
    stem = path.stem
    matches = [p for p in notebooks() if p.stem == stem or p.stem.split("_")[0] == stem]
    if len(matches) != 1:
        known = ", ".join(p.stem for p in notebooks())
        raise ConfigError(f"no notebook named '{name}'; known: {known}.")
    return matches[0]


def notebook_parameters(path: Path) -> dict[str, dict]:
    """The names, defaults and help of the notebook's `parameters` cell (inspected once per version of the file:
    a run and a sweep ask for them several times)."""
    path = Path(path)
    return _inspect(path, path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=None)
def _inspect(path: Path, mtime_ns: int) -> dict[str, dict]:
    params = papermill.inspect_notebook(str(path))
    if not params:
        raise ConfigError(f"{path.name} has no cell tagged 'parameters'.")
    return params


def parse_value(text: str):
    """'3' -> 3, '[0, 7]' -> [0, 7], 'True' -> True, 'abc' -> 'abc' (a plain string)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def parse_assignments(pairs: list[str]) -> dict:
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"parameter '{pair}' must be written name=value.")
        name, value = pair.split("=", 1)
        out[name.strip()] = parse_value(value.strip())
    return out


def validate(path: Path, profile: str, params: dict) -> dict:
    """Check `params` against the notebook's parameters cell and the profile; return them complete.

    A name the notebook declares is passed as is; a profile field the notebook
    does not declare (`s4_epochs`, `batch_size`...) goes into its `overrides`
    dict; anything else is an error naming the parameter.
    """
    declared = notebook_parameters(path)
    direct, overrides = {}, dict(params.get("overrides") or {})
    for name, value in params.items():
        if name == "overrides":
            continue
        if name not in declared:
            if name in CONFIG_FIELDS and "overrides" in declared:
                overrides[name] = value
                continue
            raise ConfigError(f"{path.stem} has no parameter '{name}'; it has {sorted(declared)} "
                              f"and the profile fields {sorted(CONFIG_FIELDS)}.")
        default = declared[name]["default"]
        try:
            default_value = ast.literal_eval(default)
        except (ValueError, SyntaxError):
            default_value = None  # an expression default: the notebook checks it itself
        if default_value is not None and not isinstance(value, type(default_value)) and not (
                isinstance(default_value, float) and isinstance(value, int)):
            raise ConfigError(f"parameter '{name}' of {path.stem} must be "
                              f"{type(default_value).__name__} like its default {default}, got {value!r}.")
        direct[name] = value
    _config(profile, {**direct, "overrides": overrides})
    if overrides:
        direct["overrides"] = overrides
    return {**direct, "profile": profile}


def _config(profile: str, full: dict):
    """The configuration a notebook will build from its checked parameters (profile fields and overrides)."""
    direct = {k: v for k, v in full.items() if k in CONFIG_FIELDS and k != "profile"}
    return load_profile(profile, **direct, **(full.get("overrides") or {}))


def run(names: list[str], profile: str, params: dict, output_root: Path | None = None,
        kernel: str = KERNEL_NAME, progress: bool | str = True, cell_timeout: int | None = None,
        jobs: int = 1, force: bool = False) -> list[Path]:
    """Validate every notebook first, then execute them in order; return the executed copies.

    `cell_timeout` (seconds) replaces the profile's `cell_timeout` as the limit for any one cell.
    `progress`: "bars" (or True: a cell bar and a line per section), "sections" (the lines only) or "none"
    (or False). `jobs` > 1 runs that many study notebooks side by side, each in its own `kdutils run` process
    (longest expected first), and the overview after them all. A study whose results in the output folder
    are current (`up_to_date`) is not run again unless `force`; the overview always runs.
    """
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive number of notebooks at once, got {jobs!r}.")
    progress = {True: "bars", False: "none"}.get(progress, progress)
    if progress not in PROGRESS_MODES:
        raise ConfigError(f"progress must be one of {PROGRESS_MODES}, got {progress!r}.")
    if cell_timeout is not None and (isinstance(cell_timeout, bool) or not isinstance(cell_timeout, int)
                                     or cell_timeout <= 0):
        raise ConfigError(f"cell_timeout must be a positive number of seconds, got {cell_timeout!r}.")
    paths = [resolve(n) for n in names] if names else notebooks()
    output_root = output_root or default_output_root(profile)
    everyone = set().union(*(notebook_parameters(p) for p in paths)) | CONFIG_FIELDS
    unknown = sorted(set(params) - everyone)
    if unknown:
        raise ConfigError(f"no notebook has a parameter '{unknown[0]}'; see `python -m kdutils list`.")
    plans = []
    for path in paths:
        declared = notebook_parameters(path)
        own = {k: v for k, v in params.items() if k in declared or k in CONFIG_FIELDS}
        full = validate(path, profile, own)
        if "output_dir" in declared:
            full.setdefault("output_dir", str(Path(output_root) / path.stem))
        plans.append((path, full))
    _check_kernel(kernel)
    executed = []
    for path, full in list(plans):
        overview = path.stem.startswith("00")
        commit = None if force or overview else up_to_date(path, full, profile, Path(output_root))
        if commit:
            print(f"== {path.stem} [{profile}] up to date: its results are of this code and these parameters "
                  f"(commit {commit[:10]}); not run again (--force reruns it)")
            plans.remove((path, full))
    studies = [plan for plan in plans if not plan[0].stem.startswith("00")]
    if jobs > 1 and len(studies) > 1:
        executed += _side_by_side(studies, profile, Path(output_root), kernel, progress, cell_timeout, jobs)
        plans = [plan for plan in plans if plan not in studies]
    for path, full in plans:
        out = runs_dir() / profile / path.name
        print(f"== {path.stem} [{profile}] -> {out}")
        t0 = time.perf_counter()
        execute(path, full, profile, out, kernel, cell_timeout,
                progress_of=Path(output_root) / path.stem / "results.json" if progress != "none" else None,
                bars=progress == "bars")
        print(f"== {path.stem} done in {time.perf_counter() - t0:.1f} s")
        executed.append(out)
    return executed


def up_to_date(path: Path, full: dict, profile: str, output_root: Path) -> str | None:
    """The commit of the results `path` left in `output_root` when running it again would change nothing: the same
    code (`results.staleness`), profile and configuration, written from a clean tree; else None."""
    try:
        results = read_json(output_root / path.stem / "results.json") or {}
    except CorruptFileError:  # not a finished run's results: this run rewrites them
        return None
    commit = str(results.get("git_commit") or "")
    if not commit or commit.endswith("+dirty") or staleness(results, path.stem, profile):
        return None
    wanted = json.loads(json.dumps(_config(profile, full).to_dict()))
    if full.get("seeds") is None:  # the notebook derives its seeds from the profile's fields, compared below
        wanted.pop("seeds")
    return commit if all(results.get("config", {}).get(k) == v for k, v in wanted.items()) else None


def _side_by_side(plans, profile: str, output_root: Path, kernel: str, progress: str, cell_timeout: int | None,
                  jobs: int) -> list[Path]:
    """Run validated notebooks `jobs` at a time, each as `python -m kdutils run` in its own process.

    Each child prints its sections (no bars: they would fight over one terminal) and its own error; a
    failure starts no new notebook, lets the running ones finish, then raises `NotebooksFailed`.
    """
    def expected(plan):  # this output folder's last run, else the canonical run's
        stem = plan[0].stem
        return (expected_seconds(output_root / stem / "results.json", profile)
                or expected_seconds(FIGURES_DIR / stem / "results.json", profile) or 0.0)

    queue = sorted(plans, key=expected, reverse=True)
    running, failed = {}, []
    try:
        while (queue and not failed) or running:
            while queue and len(running) < jobs and not failed:
                path, full = queue.pop(0)
                given = {k: v for k, v in full.items() if k not in ("profile", "output_dir")}
                shown = "none" if progress == "none" else "sections"
                command = [sys.executable, "-m", "kdutils", "run", str(path), "--profile", profile, "--output-root",
                           str(output_root), "--kernel", kernel, "--progress", shown, "--force",  # decided here
                           *(["--cell-timeout", str(cell_timeout)] if cell_timeout else []),
                           *[arg for k, v in given.items() for arg in ("-p", f"{k}={v!r}")]]
                running[path] = subprocess.Popen(command)
            for path, proc in list(running.items()):
                if proc.poll() is not None:
                    del running[path]
                    if proc.returncode:
                        failed.append(path)
            time.sleep(0.2)
    except KeyboardInterrupt:  # the children got the Ctrl-C too: each stops its kernel and says so
        for path, proc in running.items():
            proc.wait()
            failed.append(path)
    if failed:
        raise NotebooksFailed([(p, runs_dir() / profile / p.name) for p in failed])
    return [runs_dir() / profile / path.name for path, _ in plans]


def execute(path: Path, full: dict, profile: str, executed: Path, kernel: str = KERNEL_NAME,
            cell_timeout: int | None = None, progress_of: Path | None = None, bars: bool = True) -> None:
    """Run one validated notebook into `executed` (papermill); its results and figures replace `output_dir`
    only when it finishes. `progress_of`: the results.json whose wall times the progress display expects
    (None: no progress display); `bars`: a cell bar besides the section lines.
    Raises NotebookFailed / NotebookStopped."""
    executed.parent.mkdir(parents=True, exist_ok=True)
    limit = cell_timeout or _config(profile, full).cell_timeout
    with _as_one_unit(path, executed, full.get("output_dir")) as (private_out, private_params):
        shown = run_engine.engine_options(path.stem if progress_of is not None else None, progress_of, profile,
                                          bars=bars)
        papermill.execute_notebook(str(path), str(private_out), parameters={**full, **private_params},
                                   kernel_name=kernel, cwd=str(path.parent), execution_timeout=limit, **shown)


@contextlib.contextmanager
def _as_one_unit(path: Path, executed: Path, output_dir: str | None):
    """Run into private files; on success swap results and figures in as one unit.

    Yields the private executed-notebook path and the private `output_dir`
    parameter. The executed copy always moves to `executed` (the path every
    message names); the output folder replaces `output_dir` only when the
    notebook finished, so a failed or interrupted run leaves the previous
    complete set, and concurrent runs never write into the same files.
    """
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    private_nb = executed.with_name(f".{executed.stem}.{run_id}.running.ipynb")
    final = Path(output_dir) if output_dir else None
    staging = final.with_name(f".{final.name}.{run_id}.staging") if final else None
    try:
        yield private_nb, ({"output_dir": str(staging)} if staging else {})
        if staging is not None and staging.exists():  # a notebook may write nothing
            _swap_in(staging, final)
    except PapermillExecutionError as err:
        raise NotebookFailed(path, executed, err) from None
    except CellTimeoutError as err:
        raise NotebookStopped(path, executed, f"a cell ran past its time limit ({str(err).splitlines()[0]}). "
                              "Raise it with --cell-timeout SECONDS or -p cell_timeout=SECONDS.") from None
    except DeadKernelError:
        raise NotebookStopped(path, executed, "the kernel died (out of memory, or a crash in native code); "
                              "the last cell that ran is the likely cause.") from None
    except KeyboardInterrupt:
        raise NotebookStopped(path, executed, "interrupted (Ctrl-C); its results and figures were not "
                              "replaced.") from None
    finally:
        if private_nb.exists():
            os.replace(private_nb, executed)
        if staging is not None and staging.exists():
            shutil.rmtree(staging)


def _swap_in(staging: Path, final: Path) -> None:
    """Replace the folder `final` by `staging` with two renames (never a mix of old and new files)."""
    old = final.with_name(f".{final.name}.{staging.name}.old")
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


class NotebookFailed(RuntimeError):
    """A cell raised: names the cell, the error and the executed copy to open."""

    def __init__(self, path: Path, executed: Path, err: PapermillExecutionError):
        self.path, self.executed, self.error = path, executed, err
        source = "\n".join("    " + line for line in err.source.splitlines()[:25])
        super().__init__(
            f"{path.name} failed in cell {err.cell_index} (execution count {err.exec_count}):\n"
            f"{source}\n{err.ename}: {err.evalue}\n"
            f"Open the executed notebook to see the full traceback: {executed}")


class NotebooksFailed(RuntimeError):
    """Notebooks run side by side failed: each printed its own error; this names their executed copies."""

    def __init__(self, failures: list[tuple[Path, Path]]):
        self.failures = failures
        super().__init__("failed: " + "; ".join(f"{p.stem} (executed notebook: {e})" for p, e in failures))


class NotebookStopped(NotebookFailed):
    """The run stopped without a cell raising: a cell's time limit, a dead kernel or Ctrl-C."""

    def __init__(self, path: Path, executed: Path, reason: str):
        self.path, self.executed, self.error = path, executed, None
        RuntimeError.__init__(self, f"{path.name} stopped: {reason}\n"
                                    f"The executed notebook, up to where it stopped: {executed}")


def _check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if kernel not in KernelSpecManager().find_kernel_specs():
        raise ConfigError(
            f"Jupyter kernel '{kernel}' is not registered. Run `make install`, or "
            f"`python -m ipykernel install --sys-prefix --name {kernel}` inside the project's environment.")
