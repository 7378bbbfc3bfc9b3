"""Optimisers and learning-rate schedules built by name, so a `recipes.Recipe` can say which in plain strings."""

from __future__ import annotations

import math
from typing import Iterable

import torch

from .errors import ConfigError

__all__ = ["make_optimizer", "warmup_cosine", "make_scheduler"]


def make_optimizer(params: Iterable, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """The optimisers the four studies use: SGD (with momentum), Adam, AdamW; `params` may be groups.

    All take PyTorch's multi-tensor ("foreach") step, also on the CPU where it is not the default: the same
    arithmetic in one call per step instead of one per tensor, which a small head's step notices.
    """
    params = list(params)
    if not all(isinstance(p, dict) for p in params):
        params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("make_optimizer got no trainable parameters (is everything frozen?).")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, foreach=True)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps, foreach=True)
    raise ConfigError(f"optimizer '{name}' is unknown; choose sgd, adam or adamw.")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay, stepped once per optimisation step."""
    if total_steps <= 0 or warmup_steps < 0 or warmup_steps > total_steps:
        raise ConfigError(f"warmup_cosine needs 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}).")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_scheduler(optimizer, name: str | None, *, epochs: int = 1, steps_per_epoch: int = 1,
                   warmup_steps: int = 0, plateau_factor: float = 0.1, plateau_patience: int = 3,
                   mode: str = "max"):
    """None, 'plateau' (ReduceLROnPlateau on the monitored metric), 'cosine' or 'warmup_cosine' (per step)."""
    if name in (None, "none"):
        return None
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=plateau_factor, patience=plateau_patience)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    if name == "warmup_cosine":
        return warmup_cosine(optimizer, warmup_steps, max(1, epochs * steps_per_epoch))
    raise ConfigError(f"scheduler '{name}' is unknown; choose none, plateau, cosine or warmup_cosine.")
