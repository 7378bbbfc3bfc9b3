"""Outputs of a network over data in evaluation mode: the lab's one batched inference loop.

Frozen teachers and backbones (whose outputs the studies cache with `kdutils.cache.cached`, keyed
by `cache.model_fingerprint` and the data) and trained models under evaluation all run through
`outputs`: eval mode and no gradients for the call, the module's mode restored afterwards (even
after an error), each batch moved to `device`, results float32 on the CPU in input order.

>>> feats = outputs(encoder, batches(images, 512), device="cpu")        # (N, D)
>>> logits = outputs(matcher, loader, device="cpu")                     # dict batches
>>> emb = outputs(student, loader, lambda b: student.embed(b[0]), device="cpu")

What a frozen network sees of each image is a `FixedViews` specification: the image, its mirror,
and pre-drawn corruptions, with a stable `key`, so a cache of the views' outputs is exact. A
`ViewTargets` answers "the network's output for view v of image i" from that cache or live.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ConfigError
from .train import to_device

__all__ = ["outputs", "batches", "FixedViews", "ViewTargets"]


def batches(x, size: int) -> list:
    """Consecutive slices of `x` (a tensor or a list) of `size` rows; the last may be shorter."""
    return [x[i:i + size] for i in range(0, len(x), size)]


@torch.no_grad()
def outputs(model: nn.Module, inputs: Iterable, forward: Callable | None = None, *, device=None,
            progress: bool = False, desc: str = "outputs") -> torch.Tensor:
    """`forward(batch)` (default `model(batch)`) over every batch of `inputs`, concatenated on the CPU.

    `model` is the module whose mode is switched to eval for the call (and moved to `device` when
    given); `forward` picks what to compute from it, e.g. an embedding instead of the logits.
    """
    device = None if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    if device is not None:
        model.to(device)
    forward = forward or model
    # The bar is updated by hand: tqdm wrapping `inputs` would iterate them twice (tqdm.auto calls iter() when
    # it is created), starting a DataLoader twice and drawing its seed from the global RNG twice.
    bar = tqdm(total=len(inputs) if hasattr(inputs, "__len__") else None, desc=desc, leave=False,
               disable=not progress)
    out = []
    try:
        for b in inputs:
            out.append(forward(b if device is None else to_device(b, device)).float().cpu())
            bar.update()
    finally:
        bar.close()
        model.train(was_training)
    return torch.cat(out)


class ViewTargets:
    """What a frozen network outputs for view v of image i: its row of a cache, or the network run on the view.

    `table` holds the outputs of every view of every image, (V, N, ...) (a transposed (N, V, ...) will do);
    without it, the caller renders the views and `network` runs on them at every call. Both give the same
    numbers (tests check it for each study that uses them): the cache only saves the forward passes.

    >>> live = ViewTargets(network=teacher)
    >>> cached = ViewTargets(table=torch.stack([outputs(teacher, [render(images, v)]) for v in range(2)]))
    >>> cached(idx, view_ids)  # equals live(idx, view_ids, render(images[idx], view_ids)), (B, D)
    """

    def __init__(self, *, network: nn.Module | None = None, table: torch.Tensor | tuple | None = None):
        if (network is None) == (table is None):
            raise ConfigError("ViewTargets needs exactly one of a cached `table` or a live `network`.")
        self.network, self.table = None if network is None else network.eval(), table

    def __call__(self, idx: torch.Tensor, view_ids: torch.Tensor, x: torch.Tensor | None = None, *, device=None):
        """Rows (view_ids[b], idx[b]) of the table, moved to `device` when given; else `network(x)` as float32.

        A network with several outputs (a tuple) is cached as a tuple of tables and returns a tuple either way.
        """
        if self.table is None:
            with torch.no_grad():
                out = self.network(x)
            return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()
        if isinstance(self.table, tuple):
            return tuple(_rows(t, idx, view_ids, device) for t in self.table)
        return _rows(self.table, idx, view_ids, device)


def _rows(table: torch.Tensor, idx: torch.Tensor, view_ids: torch.Tensor, device) -> torch.Tensor:
    rows = table[view_ids.to(table.device), idx.to(table.device)]
    return rows if device is None else rows.to(device)


VIEWS_FLIP = 2  # a training image and its mirror


@dataclass(frozen=True, eq=False)
class FixedViews:
    """The fixed views of every image of a split: pre-drawn corruptions x (optionally) mirrors.

    View v of image i is corruption draw v // m (m = 2 with mirrors, else 1),
    mirrored when v % m == 1. A draw is applied with probability `p` and its
    random size or quadrant is drawn once, here, from `seed`: so a cache of
    the views' features is exact, and a training step that picks a random
    view per image sees a corruption with probability p, as a random
    per-epoch transform would (with `draws` distinct corruptions per image).
    Kinds: "none", "center_black" (a centred black square of side
    U(min_side, 1) x image side), "quarter_black" (one of the four quadrants).
    """

    kind: str
    n: int
    draws: int
    mirrors: bool
    p: float = 0.0
    seed: int = 0
    min_side: float = 1.0
    apply: torch.Tensor = field(default=None, repr=False)
    side: torch.Tensor = field(default=None, repr=False)
    quadrant: torch.Tensor = field(default=None, repr=False)

    KINDS = ("none", "center_black", "quarter_black")

    @classmethod
    def plain(cls, n: int) -> "FixedViews":
        """Evaluation: each image once, untouched."""
        return cls.corrupted("none", n, p=0.0, draws=1, mirrors=False)

    @classmethod
    def mirrored(cls, n: int) -> "FixedViews":
        """Clean training: each image and its mirror (random horizontal flip)."""
        return cls.corrupted("none", n, p=0.0, draws=1, mirrors=True)

    @classmethod
    def corrupted(cls, kind: str, n: int, *, p: float, draws: int, seed: int = 0, min_side: float = 200 / 224,
                  mirrors: bool = True) -> "FixedViews":
        if kind not in cls.KINDS:
            raise ConfigError(f"unknown corruption '{kind}'; choose one of {cls.KINDS}.")
        if not 0.0 <= p <= 1.0 or draws < 1 or not 0.0 < min_side <= 1.0:
            raise ConfigError(f"corruption needs 0 <= p <= 1, draws >= 1 and 0 < min_side <= 1; "
                              f"got p={p}, draws={draws}, min_side={min_side}.")
        g = torch.Generator().manual_seed(seed)
        apply = torch.rand(n, draws, generator=g) < p
        side = min_side + (1.0 - min_side) * torch.rand(n, draws, generator=g)
        quadrant = torch.randint(0, 4, (n, draws), generator=g)
        return cls(kind, n, draws, mirrors, p, seed, min_side, apply, side, quadrant)

    @property
    def n_views(self) -> int:
        return self.draws * (VIEWS_FLIP if self.mirrors else 1)

    @property
    def key(self) -> dict:
        return {"kind": self.kind, "n": self.n, "draws": self.draws, "mirrors": self.mirrors, "p": self.p,
                "seed": self.seed, "min_side": self.min_side}

    def render(self, images: torch.Tensor, idx: torch.Tensor, view_ids: torch.Tensor) -> torch.Tensor:
        """View `view_ids[b]` of image `idx[b]`; `images` are those images, (B, 3, H, W)."""
        m = VIEWS_FLIP if self.mirrors else 1
        idx, view_ids = idx.cpu(), view_ids.cpu()
        draw, flip = view_ids // m, (view_ids % m) == 1
        x = images
        if self.kind != "none":
            _, _, h, w = x.shape
            on = self.apply[idx, draw]
            rows, cols = torch.arange(h).view(1, h, 1), torch.arange(w).view(1, 1, w)
            if self.kind == "center_black":
                side = self.side[idx, draw]
                sh = (side * h).round().clamp(1, h).long().view(-1, 1, 1)
                sw = (side * w).round().clamp(1, w).long().view(-1, 1, 1)
                top, left = (h - sh) // 2, (w - sw) // 2
                black = (rows >= top) & (rows < top + sh) & (cols >= left) & (cols < left + sw)
            else:
                q = self.quadrant[idx, draw].view(-1, 1, 1)
                lower, right = (q // 2) == 1, (q % 2) == 1
                black = ((rows >= h // 2) == lower) & ((cols >= w // 2) == right)
            black = black & on.view(-1, 1, 1)
            x = x.masked_fill(black.unsqueeze(1).to(x.device), 0.0)
        return torch.where(flip.view(-1, 1, 1, 1).to(x.device), x.flip(-1), x)
