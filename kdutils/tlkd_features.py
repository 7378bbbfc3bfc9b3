"""Outputs of study 4's frozen backbones over fixed views of each image, cached or live.

Every backbone is frozen and only a new linear head trains, so a training image reaches the
backbones in a few fixed forms (`FixedViews`: itself and its mirror, plus H4's corruptions). Their
features and the teacher's logits are computed once (`frozen_features`, cached on disk) and the
heads train on them (`HeadInputs.cached`). `HeadInputs.live`, which runs the backbones at every step,
is the reference: both give the same head for one seed (`tests/test_tlkd.py`; `python -m kdutils bench tlkd`
times both).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch
from torch import nn

from .cache import cached, model_fingerprint
from .errors import ConfigError
from .frozen import FixedViews, ViewTargets, batches, outputs
from .teacher import Normalize
from .splits import Split

__all__ = ["frozen_features", "HeadInputs", "head_logits"]

_FINGERPRINTS: "weakref.WeakKeyDictionary[nn.Module, str]" = weakref.WeakKeyDictionary()


def _fingerprint(encoder: nn.Module) -> str:
    """Weight hash of a frozen encoder (memoised: its weights never change)."""
    if encoder not in _FINGERPRINTS:
        _FINGERPRINTS[encoder] = model_fingerprint(encoder)
    return _FINGERPRINTS[encoder]


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


class HeadInputs:
    """What a head trains on for view v of image i: a frozen backbone's features and, for TL+KD, the
    teacher's logits, each a `frozen.ViewTargets`. `cached` reads them from (V, N, ...) tables;
    `live`, the reference, renders the views and runs the networks at every step."""

    def __init__(self, features: ViewTargets, teacher: ViewTargets | None, *, n: int, n_views: int, dim: int,
                 device, render=None):
        self.features, self.teacher, self.render = features, teacher, render
        self.n, self.n_views, self.dim, self.device = n, n_views, dim, torch.device(device)

    @classmethod
    def cached(cls, features: torch.Tensor, teacher_logits: torch.Tensor | None = None, device="cpu") -> "HeadInputs":
        """From cached features (V, N, D) and teacher logits (V, N, C), kept on `device`."""
        if features.dim() != 3:
            raise ValueError(f"features must be (views, N, D), got {tuple(features.shape)}.")
        if teacher_logits is not None and teacher_logits.shape[:2] != features.shape[:2]:
            raise ValueError(f"teacher logits {tuple(teacher_logits.shape)} do not match features "
                             f"{tuple(features.shape)} in views and images.")
        teacher = None if teacher_logits is None else ViewTargets(table=teacher_logits.to(device))
        v, n, d = features.shape
        return cls(ViewTargets(table=features.to(device)), teacher, n=n, n_views=v, dim=d, device=device)

    @classmethod
    def live(cls, encoder: nn.Module, split: Split, views: FixedViews, teacher: nn.Module | None = None,
             device="cpu") -> "HeadInputs":
        """The backbones (and the teacher with its head) run on `views` of `split` at every step."""
        dim = outputs(encoder, [split.float_images(slice(1))], device=device).shape[1]
        live_teacher = None if teacher is None else ViewTargets(network=teacher.to(device))
        return cls(ViewTargets(network=encoder), live_teacher, n=len(split), n_views=views.n_views, dim=dim,
                   device=device, render=lambda idx, v: views.render(split.float_images(idx), idx, v).to(device))

    has_teacher = property(lambda self: self.teacher is not None)

    def __len__(self) -> int:
        return self.n

    def batch(self, idx: torch.Tensor, view_ids: torch.Tensor, need_teacher: bool = False):
        """(features, teacher logits or None) of view `view_ids[b]` of image `idx[b]`."""
        x = None if self.render is None else self.render(idx.cpu(), view_ids.cpu())
        return self.features(idx, view_ids, x), (self.teacher(idx, view_ids, x) if need_teacher else None)

    def with_teacher(self, teacher_head: nn.Module, teacher_features: torch.Tensor) -> "HeadInputs":
        """These features with TL+KD's targets: a trained teacher head's logits of every view, (V, N, C)."""
        self._need_tables("with_teacher")
        device = next(teacher_head.parameters()).device
        logits = torch.stack([outputs(teacher_head, [f], device=device) for f in teacher_features])
        return HeadInputs.cached(self.features.table, logits, self.device)

    def subset(self, indices) -> "HeadInputs":
        self._need_tables("subset")
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long, device=self.device)
        zt = None if self.teacher is None else self.teacher.table[:, idx]
        return HeadInputs.cached(self.features.table[:, idx], zt, self.device)

    def _need_tables(self, what: str) -> None:
        if self.render is not None:
            raise ConfigError(f"HeadInputs.{what} works on cached inputs (HeadInputs.cached); these are live: "
                              "the networks run at every step and there is no table of their outputs.")


def head_logits(head: nn.Module, source) -> torch.Tensor:
    """Logits of `head` on view 0 of every image of `source` (an evaluation source), on the CPU."""
    return outputs(head, batches(torch.arange(len(source)), 4096),
                   lambda idx: head(source.batch(idx, torch.zeros_like(idx))[0]))

