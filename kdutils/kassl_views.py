"""Where a KASSL student's views and its teacher's features come from: a bank of pre-drawn augmented views
(teacher features cached), fresh views with a live teacher, or the same plain image to both (no augmentation)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from .augment import ViewAugment, as_float_images, view_pair
from .cache import cached, model_fingerprint
from .errors import ConfigError
from .frozen import ViewTargets, batches, outputs
from .kassl_data import input_side
from .models import seeded_rng
from .splits import StudyData
from .parallel import per_example

__all__ = ["to_uint8", "AugmentedViewBank", "BankViews", "FreshViews", "SameImage", "center_crop", "view_bank"]


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] images as uint8 pixels: how banked views and SSL training images are kept in memory."""
    return x.clamp(0, 1).mul(255).round().to(torch.uint8)


@dataclass
class AugmentedViewBank:
    """K pre-drawn views of every image, stored as uint8 (N, K, 3, H, W).

    Views 0..K/2-1 come from the first augmentation t, views K/2..K-1 from the
    second t' (BYOL's asymmetric pair). A training step picks one of each per
    image, so the student and the frozen teacher see different views, and the
    teacher's features for all N*K views are computed once (`features`).
    """

    views: torch.Tensor
    key: dict

    @classmethod
    def draw(cls, images: torch.Tensor, pair: tuple[ViewAugment, ViewAugment], k: int, seed: int,
             data_key: dict) -> AugmentedViewBank:
        if k < 2 or k % 2:
            raise ConfigError(f"a view bank needs an even number of views >= 2, got {k}.")
        with seeded_rng(seed):
            out = [torch.stack([to_uint8(pair[j * 2 // k](x)) for j in range(k)], 1)
                   for x in map(as_float_images, batches(images, 512))]
        key = {"data": data_key, "views": [asdict(t) for t in pair], "k": k, "seed": seed}
        return cls(torch.cat(out), key)

    def __len__(self) -> int:
        return len(self.views)

    @property
    def k(self) -> int:
        return self.views.shape[1]

    def features(self, teacher: nn.Module, device) -> torch.Tensor:
        """The frozen teacher's features of every view, (N, K, D), cached on disk."""
        def compute():
            views = map(as_float_images, batches(self.views.flatten(0, 1), 512))
            return outputs(teacher, views, device=device).view(len(self), self.k, -1)

        return cached("kassl_bank", {"teacher": model_fingerprint(teacher), "bank": self.key}, compute)


class BankViews:
    """Views from an `AugmentedViewBank`; their teacher features cached (the bank's `features`) or from `teacher` live.

    The loader yields image indices. Both ways give the same numbers (a test
    checks it): the cache only saves the teacher's forward passes.
    """

    def __init__(self, bank: AugmentedViewBank, features: torch.Tensor | None = None, teacher: nn.Module | None = None):
        self.bank = bank
        self.targets = ViewTargets(network=teacher, table=None if features is None else features.transpose(0, 1))

    def __call__(self, batch, device):
        idx = batch[0].cpu()
        half = self.bank.k // 2
        i = per_example(lambda n: torch.randint(0, half, (n,)), len(idx))
        j = per_example(lambda n: torch.randint(half, self.bank.k, (n,)), len(idx))
        v1 = as_float_images(self.bank.views[idx, i].to(device))
        v2 = as_float_images(self.bank.views[idx, j].to(device))
        return v1, v2, self.targets(idx, i, v1, device=device), self.targets(idx, j, v2, device=device)


class FreshViews:
    """New random views t(x), t'(x) at every step; the teacher runs on them live (the GPU path)."""

    def __init__(self, pair: tuple[ViewAugment, ViewAugment], teacher: nn.Module):
        self.pair, self.teacher = pair, teacher

    def __call__(self, batch, device):
        x = as_float_images(batch[0].to(device))
        v1, v2 = self.pair[0](x), self.pair[1](x)
        return v1, v2, self.teacher(v1), self.teacher(v2)


class SameImage:
    """No augmentation: the same plain image to student and teacher (ablation Exp 1).

    The loader yields a `Split`'s (image, label, index); the teacher's features of the
    plain images come from `features` (cached, (N, D)) or from `teacher` live.
    """

    def __init__(self, size: int, features: torch.Tensor | None = None, teacher: nn.Module | None = None):
        self.size = size
        self.targets = ViewTargets(network=teacher, table=None if features is None else features.unsqueeze(0))

    def __call__(self, batch, device):
        x, idx = batch[0], batch[2]
        x = center_crop(as_float_images(x.to(device)), self.size)
        return x, None, self.targets(idx, torch.zeros_like(idx), x, device=device), None


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size pixels (the plain, un-augmented view of a canvas)."""
    h, w = x.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot crop {size} pixels out of a {h}x{w} image")
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top:top + size, left:left + size]


def view_bank(data: StudyData, *, views: int, preset: str, seed: int) -> AugmentedViewBank | None:
    """`views` views of every training image from `preset`'s pair, drawn with `seed`; None: fresh views every step.

    None for 0 views or images not held in memory (`paper`). The notebook draws one per backbone seed: like
    the frozen teacher, the bank is shared by the replicates, each of which draws its own view pairs from it,
    its initialisation and its order.
    """
    train = data.splits["train"]
    if not views or train.lazy:
        return None
    return AugmentedViewBank.draw(train.images, view_pair(preset, out_size=input_side(data)), views, seed,
                                  data.key["train"])
