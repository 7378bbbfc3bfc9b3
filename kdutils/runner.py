"""Execute the study notebooks with papermill, checking parameters first.

`python -m kdutils run 00_overview --profile tiny -p seeds=[0,1]` validates every
`-p` against the notebook's `parameters` cell and the profile, before a kernel
starts; runs the notebook with an explicit kernel; keeps the executed copy in
`runs/<profile>/`; and on failure prints the failing cell and where the
executed notebook is.
"""

from __future__ import annotations

import ast
import time
from pathlib import Path

import papermill
from papermill.exceptions import PapermillExecutionError

from . import progress as section_progress
from .errors import ConfigError
from .paths import FIGURES_DIR, NOTEBOOKS_DIR, RUNS_DIR
from .profiles import Config, load_profile

KERNEL_NAME = "kd-studies"


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
    """The names, defaults and help of the notebook's `parameters` cell."""
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
    does not declare (`epochs`, `batch_size`...) goes into its `overrides`
    dict; anything else is an error naming the parameter.
    """
    declared = notebook_parameters(path)
    config_keys = set(Config.__dataclass_fields__)
    direct, overrides = {}, dict(params.get("overrides") or {})
    for name, value in params.items():
        if name == "overrides":
            continue
        if name not in declared:
            if name in config_keys and "overrides" in declared:
                overrides[name] = value
                continue
            raise ConfigError(f"{path.stem} has no parameter '{name}'; it has {sorted(declared)} "
                              f"and the profile fields {sorted(config_keys)}.")
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
    profile_params = {k: v for k, v in direct.items() if k in config_keys and k != "profile"}
    load_profile(profile, **profile_params, **overrides)
    if overrides:
        direct["overrides"] = overrides
    return {**direct, "profile": profile}


def run(names: list[str], profile: str, params: dict, output_root: Path | None = None,
        kernel: str = KERNEL_NAME, progress: bool = True) -> list[Path]:
    """Validate every notebook first, then execute them in order; return the executed copies."""
    paths = [resolve(n) for n in names] if names else notebooks()
    output_root = output_root or (FIGURES_DIR if profile == "small" else RUNS_DIR / profile)
    config_keys = set(Config.__dataclass_fields__)
    everyone = set().union(*(notebook_parameters(p) for p in paths)) | config_keys
    unknown = sorted(set(params) - everyone)
    if unknown:
        raise ConfigError(f"no notebook has a parameter '{unknown[0]}'; see `python -m kdutils list`.")
    plans = []
    for path in paths:
        declared = notebook_parameters(path)
        own = {k: v for k, v in params.items() if k in declared or k in config_keys}
        full = validate(path, profile, own)
        if "output_dir" in declared:
            full.setdefault("output_dir", str(Path(output_root) / path.stem))
        plans.append((path, full))
    _check_kernel(kernel)
    executed = []
    for path, full in plans:
        out = RUNS_DIR / profile / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        print(f"== {path.stem} [{profile}] -> {out.relative_to(RUNS_DIR.parent)}")
        t0 = time.perf_counter()
        try:
            shown = (section_progress.engine_options(path.stem, Path(output_root) / path.stem / "results.json",
                                                     profile) if progress else {"progress_bar": False})
            papermill.execute_notebook(str(path), str(out), parameters=full, kernel_name=kernel,
                                       cwd=str(path.parent), **shown)
        except PapermillExecutionError as err:
            raise NotebookFailed(path, out, err) from None
        print(f"== {path.stem} done in {time.perf_counter() - t0:.1f} s")
        executed.append(out)
    return executed


class NotebookFailed(RuntimeError):
    """A cell raised: names the cell, the error and the executed copy to open."""

    def __init__(self, path: Path, executed: Path, err: PapermillExecutionError):
        self.path, self.executed, self.error = path, executed, err
        source = "\n".join("    " + line for line in err.source.splitlines()[:25])
        super().__init__(
            f"{path.name} failed in cell {err.cell_index} (execution count {err.exec_count}):\n"
            f"{source}\n{err.ename}: {err.evalue}\n"
            f"Open the executed notebook to see the full traceback: {executed}")


def _check_kernel(kernel: str) -> None:
    from jupyter_client.kernelspec import KernelSpecManager

    if kernel not in KernelSpecManager().find_kernel_specs():
        raise ConfigError(
            f"Jupyter kernel '{kernel}' is not registered. Run `make install`, or "
            f"`python -m ipykernel install --sys-prefix --name {kernel}` inside the project's environment.")
