"""Outputs of study 4's frozen backbones over fixed views of each image, cached or live.

Every backbone is frozen and only a new linear head trains, so a training image reaches the
backbones in a few fixed forms (`FixedViews`: itself and its mirror, plus H4's corruptions). Their
features and the teacher's logits are computed once (`frozen_features`, cached on disk) and the
heads train on them (`CachedSource`). `PlainSource`, which runs the backbones at every step, is the
reference: both give the same head for one seed (`tests/test_tlkd.py`; `python -m kdutils bench tlkd`
times both).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .cache import cached, model_fingerprint
from .errors import ConfigError
from .frozen import batches, outputs
from .teacher import Normalize
from .splits import Split

__all__ = ["FixedViews", "frozen_features", "CachedSource", "PlainSource", "head_logits"]

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


_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def _fingerprint(encoder: nn.Module) -> str:
    """Weight hash of a frozen encoder (memoised: its weights never change)."""
    if encoder not in _FINGERPRINTS:
        _FINGERPRINTS[encoder] = model_fingerprint(encoder)
    return _FINGERPRINTS[encoder]


@torch.no_grad()
def frozen_features(encoder: nn.Module, split: Split, views: FixedViews, *, device="cpu", batch_size: int = 256,
                    use_cache: bool = True, progress: bool = False, desc: str = "features") -> torch.Tensor:
    """Features of every view of every image, (V, N, D) on the CPU; cached on disk.

    The cache key holds the encoder's weights (hash) and input sizes, the
    split's content hash and the views' parameters.
    """
    if views.n != len(split):
        raise ValueError(f"the views are for {views.n} images, the split has {len(split)}.")
    sizes = [m.input_size for m in encoder.modules() if isinstance(m, Normalize)]
    key = {"model": _fingerprint(encoder), "input_sizes": sizes, "data": split.key, "views": views.key}
    device = torch.device(device)

    def compute() -> torch.Tensor:
        encoder.to(device)
        order = batches(torch.arange(len(split)), batch_size)
        return torch.stack([outputs(encoder, order, lambda idx: encoder(views.render(split.float_images(idx), idx,
            torch.full_like(idx, v)).to(device)), progress=progress, desc=f"{desc} view {v}")
            for v in range(views.n_views)])

    return cached("tlkd-features", key, compute, verbose=False) if use_cache else compute()


class CachedSource:
    """Training / evaluation inputs of a head from cached features (V, N, D) and teacher logits (V, N, C)."""

    def __init__(self, features: torch.Tensor, teacher_logits: torch.Tensor | None = None, device="cpu"):
        if features.dim() != 3:
            raise ValueError(f"features must be (views, N, D), got {tuple(features.shape)}.")
        if teacher_logits is not None and teacher_logits.shape[:2] != features.shape[:2]:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match features "
                             f"{tuple(features.shape)} in views and images.")
        self.device = torch.device(device)
        self.features = features.to(self.device)
        self.teacher_logits = None if teacher_logits is None else teacher_logits.to(self.device)

    n_views = property(lambda self: self.features.shape[0])
    dim = property(lambda self: self.features.shape[2])
    has_teacher = property(lambda self: self.teacher_logits is not None)

    def __len__(self) -> int:
        return self.features.shape[1]

    def batch(self, idx: torch.Tensor, view_ids: torch.Tensor, need_teacher: bool = False):
        idx, view_ids = idx.to(self.device), view_ids.to(self.device)
        zt = self.teacher_logits[view_ids, idx] if need_teacher else None
        return self.features[view_ids, idx], zt

    def with_teacher(self, teacher_head: nn.Module, teacher_features: torch.Tensor) -> "CachedSource":
        """These features with TL+KD's targets: a trained teacher head's logits of every view, (V, N, C)."""
        device = next(teacher_head.parameters()).device
        logits = torch.stack([outputs(teacher_head, [f], device=device) for f in teacher_features])
        return CachedSource(self.features, logits, self.device)

    def subset(self, indices) -> "CachedSource":
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.device)
        zt = None if self.teacher_logits is None else self.teacher_logits[:, idx]
        return CachedSource(self.features[:, idx], zt, self.device)


class PlainSource:
    """The reference path: renders the views and runs the frozen networks at every step."""

    def __init__(self, encoder: nn.Module, split: Split, views: FixedViews, teacher: nn.Module | None = None,
                 device="cpu"):
        self.encoder, self.split, self.views, self.teacher = encoder, split, views, teacher
        self.device = torch.device(device)
        with torch.no_grad():
            self.dim = encoder.eval().to(self.device)(split.float_images(slice(1)).to(self.device)).shape[1]
        if teacher is not None:
            teacher.eval().to(self.device)

    n_views = property(lambda self: self.views.n_views)
    has_teacher = property(lambda self: self.teacher is not None)

    def __len__(self) -> int:
        return len(self.split)

    @torch.no_grad()
    def batch(self, idx: torch.Tensor, view_ids: torch.Tensor, need_teacher: bool = False):
        idx = idx.cpu()
        x = self.views.render(self.split.float_images(idx), idx, view_ids.cpu()).to(self.device)
        return self.encoder(x).float(), (self.teacher(x).float() if need_teacher else None)


def head_logits(head: nn.Module, source) -> torch.Tensor:
    """Logits of `head` on view 0 of every image of `source` (an evaluation source), on the CPU."""
    return outputs(head, batches(torch.arange(len(source)), 4096),
                   lambda idx: head(source.batch(idx, torch.zeros_like(idx))[0]))

