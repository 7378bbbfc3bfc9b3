"""Results files: plain JSON and PNG, written atomically, with provenance.

A results JSON holds what was measured plus everything needed to trust it:
the configuration, seeds, library versions, git commit, wall time and the
code fingerprint of the notebook that wrote it (`staleness` uses it to tell
current results from stale ones).
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from .cache import notebook_fingerprint
from .paths import NOTEBOOKS_DIR, write_atomically

__all__ = ["environment", "git_commit", "write_json", "write_results", "save_figure",
           "staleness"]

_LIBRARIES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "transformers", "shap",
              "matplotlib", "papermill")


def git_commit(root: Path | None = None) -> str | None:
    """The repository's HEAD commit, with '+dirty' when code has uncommitted changes.

    `figures/` is left out: it holds the runs' own outputs, so studies run one after another (or side by
    side) would otherwise call each other's fresh figures a dirty tree.
    """
    root = root or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)figures"], cwd=root, capture_output=True, text=True).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def environment() -> dict:
    """Python, platform, device and library versions of this run."""
    versions = {}
    for lib in _LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    import torch

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({os.cpu_count()} cores)"
    return {"python": sys.version.split()[0], "platform": platform.platform(), "device": device,
            "torch_threads": torch.get_num_threads(), "libraries": versions}


def _plain(obj):
    """Convert numpy / torch scalars and arrays to JSON types; refuse NaN silently hidden as null."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return _plain(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)  # "nan" / "inf": visible in the file, never a fake number
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write JSON atomically (`write_atomically`)."""
    text = json.dumps(_plain(data), indent=2, sort_keys=False)
    return write_atomically(path, lambda tmp: tmp.write_text(text))


def write_results(path: str | os.PathLike, *, notebook: str, metrics: dict, config: dict,
                  seeds, started: float, extra: dict | None = None) -> Path:
    """The results JSON every notebook writes: metrics + config + provenance."""
    data = {
        "notebook": notebook,
        "profile": config.get("profile"),
        "seeds": list(seeds),
        "metrics": metrics,
        "config": config,
        "git_commit": git_commit(),
        "code_fingerprint": notebook_fingerprint(NOTEBOOKS_DIR / f"{notebook}.ipynb"),
        "environment": environment(),
        "wall_time_s": round(time.time() - started, 2),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if extra:
        data.update(extra)
    return write_json(path, data)


def staleness(results: dict, study: str, profile: str) -> str:
    """Why `study`'s results must not be counted beside a run at `profile` ("" when they are current).

    Stale: written at another profile, or by other code, i.e. the study's
    notebook or a kdutils module it uses (directly or not) is not what it was
    when the results were written, committed or not (`code_fingerprint`). Code,
    not commits, decides: results stay current across commits that do not
    touch what produced them, as the committed canonical results must.
    """
    if results.get("profile") != profile:
        return f"measured at profile {results.get('profile')!r}, not {profile!r}"
    if results.get("code_fingerprint") != notebook_fingerprint(NOTEBOOKS_DIR / f"{study}.ipynb"):
        return (f"written by other code (commit {results.get('git_commit')}): the notebook or a kdutils module "
                "it uses changed since")
    return ""


def save_figure(fig, out_dir: str | os.PathLike, name: str, dpi: int = 110) -> Path:
    """Save a figure as PNG atomically under `out_dir/name.png` and return the path."""
    return write_atomically(Path(out_dir) / f"{name}.png", lambda tmp: fig.savefig(tmp, format="png", dpi=dpi,
                                                                                      bbox_inches="tight"))
