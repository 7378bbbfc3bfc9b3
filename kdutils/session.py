"""The first and last cell of every notebook, written once.

`start(...)` turns the papermill parameters into a checked configuration,
picks the device, makes the output folder and applies the plotting style;
`run.figure(fig, name)` saves a PNG; `run.save(metrics)` writes the results
JSON with its provenance. Notebooks stay about their study.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import plots
from .errors import ConfigError, MissingDataError
from .paths import output_dir_for
from .profiles import load_profile
from .results import save_figure, write_results
from .stats import NOT_MEASURED, NOT_REPRODUCED, REPRODUCED, paired_verdict
from .train import resolve_device


@dataclass
class NotebookRun:
    name: str
    cfg: object
    out: Path
    device: torch.device
    started: float = field(default_factory=time.time)
    figures: list[str] = field(default_factory=list)

    def figure(self, fig, name: str):
        """Save `fig` as `<out>/<name>.png` (atomically) and keep it displayed in the notebook."""
        path = save_figure(fig, self.out, name)
        self.figures.append(path.name)
        return path

    def save(self, metrics: dict, **extra) -> Path:
        """Write `<out>/results.json`: metrics, config, seeds, versions, commit, wall time."""
        unsaved = [f for f in extra.get("main_figures", []) if f not in self.figures]
        if unsaved:
            raise ValueError(f"main_figures {unsaved} were not saved with run.figure(); saved: {self.figures}")
        path = write_results(self.out / "results.json", notebook=self.name, metrics=metrics,
                             config=self.cfg.to_dict(), seeds=self.cfg.seeds, started=self.started,
                             extra={"figures": sorted(set(self.figures)), **extra})
        print(f"[{self.name}] results -> {path}  ({time.time() - self.started:.1f} s wall time)")
        return path

    def elapsed(self) -> float:
        return time.time() - self.started


def start(name: str, profile: str, *, seeds=None, dry_run: bool = False, output_dir: str | None = None,
          overrides: dict | None = None) -> NotebookRun:
    """Validate the notebook's parameters and prepare its run; raises before any work on bad input."""
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"parameter 'overrides' must be a dict of profile fields, got {overrides!r}.")
    cfg = load_profile(profile, seeds=seeds, dry_run=dry_run, **(overrides or {}))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    out = output_dir_for(name, cfg.profile, output_dir)
    plots.style()
    print(f"[{name}] profile={cfg.profile} seeds={cfg.seeds} dry_run={cfg.dry_run} device={device} "
          f"threads={torch.get_num_threads()} -> {out}")
    return NotebookRun(name=name, cfg=cfg, out=out, device=device)


def require_files(paths: dict[str, tuple[Path, str]]) -> None:
    """Fail fast on the `paper` profile: {what: (path, how to get it)} must all exist.

    Every missing item is listed in one error, so a user fixes them in one go.
    """
    missing = [(what, Path(p), how) for what, (p, how) in paths.items() if not Path(p).exists()]
    if not missing:
        print("paper inputs found:", ", ".join(paths))
        return
    if len(missing) == 1:
        what, p, how = missing[0]
        raise MissingDataError(what, p, how)
    lines = "\n".join(f"  - {what}: '{p}'. {how}" for what, p, how in missing)
    raise MissingDataError(f"{len(missing)} required inputs", missing[0][1], f"Missing:\n{lines}")


def claim(text: str, paper, measured: str | None = None, reproduced: bool | None = None, note: str = "", *,
          gains=None, paper_size: float | None = None, precondition: bool = False, unit: str = "") -> dict:
    """One row of the claims ledger: the paper's number beside ours, and a verdict from `stats.VERDICTS`.

    With `gains` (per-seed paired differences, positive when the claim holds; `note` says how they are
    formed) the verdict is `stats.paired_verdict(gains)`: mean +- sample std (n), a 95% t-interval over
    seeds, and, when the paper states a size (`paper_size`, in the units of the gains), whether it lies
    inside that interval. `measured` is then what was measured before the gains were formed (`value`).
    Without gains, `reproduced` is one computed comparison (`basis: "one comparison"`, no interval), and
    `None` means not measured at this profile. `precondition=True` marks a lab check (a teacher beats
    random weights, SHAP additivity), kept apart from the papers' claims. The overview collects the rows.

    >>> claim("KD beats TL", "+3.56", gains=[0.9, 1.4, 1.1], paper_size=3.56)["verdict"]
    'reproduced'
    """
    row = {"claim": text, "kind": "precondition" if precondition else "claim", "paper": paper, "note": note}
    if gains is not None:
        v = paired_verdict(gains)
        per_seed = [float(g) for g in np.asarray(gains, dtype=float).ravel()]
        ours = f"{v.gains_text(unit)}, 95% CI {v.interval_text()}"
        row.update(measured=f"{measured}; {ours}" if measured else ours, value=measured or "", verdict=v.name,
                   basis="seeds",
                   ours={"mean": v.mean, "std": v.std, "n": v.n, "per_seed": per_seed},
                   interval=[v.low, v.high], confidence=v.confidence,
                   paper_inside=None if paper_size is None or not math.isfinite(v.low) else v.contains(paper_size))
        return row
    verdict = NOT_MEASURED if reproduced is None else REPRODUCED if reproduced else NOT_REPRODUCED
    row.update(measured=measured if measured is not None else "not measured", verdict=verdict,
               value=measured if measured is not None else "",
               basis="not measured" if reproduced is None else "one comparison", ours=None, interval=None,
               paper_inside=None)
    return row


def claims_for(cfg):
    """`claim` as a run at `cfg` states it: tiny and dry-run sizes measure nothing, so there a paper's claim is
    "not measured at this profile", one rule for every study. Its gains are still formed and judged (the row's
    `verdict_if_measured`), so every rule runs in the tests at tiny; the lab's preconditions keep their verdicts.

    >>> claims_for(load_profile("tiny"))("KD beats TL", "+3.56", gains=[0.9, 1.4, 1.1])["verdict_if_measured"]
    'reproduced'
    """
    if cfg.profile != "tiny" and not cfg.dry_run:
        return claim

    def not_measured_here(*args, **kwargs) -> dict:
        row = claim(*args, **kwargs)
        if row["kind"] == "precondition" or row["verdict"] == NOT_MEASURED:
            return row
        return {**row, "verdict": NOT_MEASURED, "verdict_if_measured": row["verdict"], "paper_inside": None}
    return not_measured_here
