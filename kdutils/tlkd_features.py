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

import numpy as np
import torch
from torch import nn

from .cache import cached, model_fingerprint
from .frozen import FixedViews, batches, outputs
from .teacher import Normalize
from .splits import Split

__all__ = ["frozen_features", "CachedSource", "PlainSource", "head_logits"]

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

