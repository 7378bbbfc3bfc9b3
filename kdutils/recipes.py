"""Recipes: small frozen values saying how a network trains, built once by a notebook and passed down.

A `Recipe` is what `train.train` needs (optimiser, schedule, epochs, early stopping, a step cap); a study's
recipe extends `RunSettings` (how its run executes) and builds itself from a profile with `.of(cfg)`, so no
function below the notebook reads the whole profile. Dicts inside a recipe are `FrozenDict`s: a recipe is a
value (hashable, read-only) whose fields serialise into the cache keys it is trained under.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Recipe", "FrozenDict", "RunSettings", "ParallelRunSettings"]


@dataclass(frozen=True)
class Recipe:
    """How a model trains: optimiser, learning rate and schedule, epochs, early stopping, a step cap.

    `schedule` is None, "plateau" (ReduceLROnPlateau on `monitor`), "cosine" or "warmup_cosine" (per
    step; the warm-up lasts `warmup_epochs`, or `warmup_fraction` of all steps but at most `warmup_cap`);
    `patience` stops after that many epochs without a better `monitor`.
    """

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str | None = None
    warmup_epochs: int = 0
    warmup_fraction: float = 0.0
    warmup_cap: int | None = None
    plateau_factor: float = 0.1
    plateau_patience: int = 3
    epochs: int = 1
    monitor: str | None = None
    patience: int | None = None
    restore_best: bool = False
    max_steps: int | None = None

    def steps(self, loader) -> int:
        """Optimisation steps per epoch on `loader` (at most `max_steps`)."""
        return min(len(loader), self.max_steps or len(loader))

    def total_steps(self, loader) -> int:
        """Optimisation steps of the whole run on `loader`."""
        return self.epochs * self.steps(loader)

    def warmup_steps(self, steps_per_epoch: int) -> int:
        if self.warmup_epochs:
            return min(self.warmup_epochs, self.epochs) * steps_per_epoch
        warmup = int(self.warmup_fraction * (self.epochs * steps_per_epoch))
        return warmup if self.warmup_cap is None else min(warmup, self.warmup_cap)


class FrozenDict(dict):
    """The dict a frozen recipe holds: read and serialised as a dict (its cache keys keep their bytes), but hashable,
    and read-only, so a recipe shared by several trainings stays the one they were keyed by."""

    def __hash__(self):
        return hash(frozenset(self.items()))

    def __reduce__(self):  # copy and pickle rebuild it whole, not item by item through __setitem__
        return type(self), (dict(self),)

    def _read_only(self, *args, **kwargs):
        raise TypeError(f"a {type(self).__name__} is read-only; build a new one")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _read_only


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """How a study's run executes, apart from what it learns: loader workers, a step cap (dry runs) and progress
    bars. Study recipes extend it; `of_profile(cfg)` reads it from a profile."""

    num_workers: int = 0
    max_steps: int | None = None
    dry_run: bool = False
    progress: bool = False

    @staticmethod
    def of_profile(cfg) -> dict:
        return {"num_workers": cfg.num_workers, "max_steps": cfg.max_steps, "dry_run": cfg.dry_run,
                "progress": cfg.progress}


@dataclass(frozen=True, kw_only=True)
class ParallelRunSettings(RunSettings):
    """`RunSettings` of a training that `parallel.launch` can share among `processes` data-parallel processes (the
    profile's `num_processes`); the others have no use for it."""

    processes: int = 1

    @staticmethod
    def of_profile(cfg) -> dict:
        return {**RunSettings.of_profile(cfg), "processes": cfg.num_processes}
