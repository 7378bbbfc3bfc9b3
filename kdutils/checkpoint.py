"""Training checkpoints: written atomically after every epoch, read back to resume.

A checkpoint holds the model, optimiser, scheduler, AMP scaler, the History and every RNG state (Python,
NumPy, torch, CUDA, the loader's generator), so a run killed at any point and started again ends with
exactly the numbers of an uninterrupted run. `train.fit` writes one with `save_training` and resumes with
`resume_training`; both live here so the checkpoint's format is defined in one place.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, CorruptFileError
from .paths import write_atomically

__all__ = ["History", "save_checkpoint", "load_checkpoint", "save_training", "resume_training"]


@dataclass
class History:
    """Per-epoch records: training losses (means over steps), validation metrics, lr, time."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    stopped_early: bool = False

    def series(self, key: str) -> list[float]:
        return [e[key] for e in self.epochs if key in e]

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch,
                "best_value": self.best_value, "stopped_early": self.stopped_early}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)


def _rng_state(loader) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(loader, "generator", None)
    if gen is not None:
        state["loader"] = gen.get_state()
    return state


def _set_rng_state(state: dict, loader) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen = getattr(loader, "generator", None)
    if gen is not None and "loader" in state:
        gen.set_state(state["loader"])


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write `state` to a temporary file, then rename it: a run killed mid-write keeps the previous checkpoint."""
    write_atomically(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A checkpoint written by `save_checkpoint` (a trusted local file, so full unpickling).

    A truncated or corrupt file stops with an error naming it and the remedy,
    not torch's unpickling traceback.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise CorruptFileError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0]}): it is "
            "truncated or corrupt (a full disk, an interrupted copy). Delete it to run this training again "
            "from the start.") from None


def save_training(path: Path, key: str, *, model, optimizer, scheduler, scaler, history: History, best_state,
                  since_best: int, loader) -> None:
    """Checkpoint `fit`'s whole state after an epoch, the RNG states included, under the configuration `key`."""
    save_checkpoint({"key": key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": None if scheduler is None else scheduler.state_dict(),
                     "scaler": scaler.state_dict(), "history": history.to_dict(), "best_state": best_state,
                     "since_best": since_best, "rng": _rng_state(loader)}, path)


def resume_training(ckpt_path: Path | None, key: str, model, optimizer, scheduler, scaler, loader, device) -> dict:
    """Load a checkpoint written by `save_training` into the training state; a fresh state when there is none."""
    if ckpt_path is None or not ckpt_path.exists():
        return {"history": History(), "best_state": None, "since_best": 0, "resumed": False}
    state = load_checkpoint(ckpt_path, map_location=device)
    if state["key"] != key:
        raise ConfigError(
            f"checkpoint {ckpt_path} was written for a different configuration "
            f"(key {state['key']!r}, expected {key!r}); delete it to retrain.")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"], loader)
    return {"history": History.from_dict(state["history"]), "best_state": state["best_state"],
            "since_best": state["since_best"], "resumed": True}
