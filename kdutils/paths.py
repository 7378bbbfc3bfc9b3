"""Where things live, independent of the current directory (JupyterLab, papermill, pytest)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

from .errors import CorruptFileError

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS_DIR = REPO_ROOT / "notebooks"
FIGURES_DIR = REPO_ROOT / "figures"
RUNS_DIR = REPO_ROOT / "runs"  # the default of runs_dir()
KERNEL_NAME = "kd-studies"  # the Jupyter kernel `make install` registers, which runs every notebook


def runs_dir() -> Path:
    """`$KD_RUNS_DIR` (read at each call, so tests can point it at a temporary folder), else `runs/`."""
    env = os.environ.get("KD_RUNS_DIR")
    return Path(env) if env else RUNS_DIR


def default_output_root(profile: str) -> Path:
    """Where a run writes each notebook's figures and results by default: `figures/` for the canonical `small`
    run, `runs/<profile>/` otherwise."""
    return FIGURES_DIR if profile == "small" else runs_dir() / profile


def write_atomically(path: str | os.PathLike, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` to a hidden temporary file beside `path`, then rename it to `path`: a crash never leaves a
    half-written file, and a failed write leaves no temporary."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_json(path: str | os.PathLike) -> dict | None:
    """A JSON file (a results.json, a manifest), or None when there is none. One that does not parse was edited
    by hand (every write here is atomic): an error naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except ValueError as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}): delete it, or run again what wrote it.") from None


def under(root: str | os.PathLike, path: str | os.PathLike = ".") -> Path:
    """A profile path: `path` if absolute, else `root / path`, a relative `root` taken from the repository
    root (never from the notebook's folder, so JupyterLab, papermill and pytest agree)."""
    path = Path(path)
    if path.is_absolute():
        return path
    root = Path(root)
    return (root if root.is_absolute() else REPO_ROOT / root) / path


def output_dir_for(notebook: str, profile: str, output_dir: str | None) -> Path:
    """The folder a notebook writes figures and results to.

    The runner always says where (`figures/<notebook>` for the canonical
    `small` run); a notebook opened by hand writes to `runs/<profile>/<notebook>`.
    """
    path = Path(output_dir) if output_dir else runs_dir() / profile / notebook
    if not path.is_absolute():
        path = REPO_ROOT / path
    path.mkdir(parents=True, exist_ok=True)
    return path
