"""A frozen teacher that owns its input normalisation (timm's distillation style).

Students and teachers in these studies see the same images but were trained
with different preprocessing (ImageNet statistics, CLIP statistics, another
input size). Every model in the lab therefore takes images in [0, 1]; the
wrapper resizes and normalises for its own network, so any teacher plugs into
any student.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2471, 0.2435, 0.2616)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class Normalize(nn.Module):
    """Resize (optionally) and normalise [0, 1] images for the wrapped network."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], input_size: int | None = None):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear",
                              align_corners=False, antialias=False)
        return (x - self.mean) / self.std


def freeze(net: nn.Module) -> nn.Module:
    """`net` with its weights and batch-norm statistics fixed (no weight gradients, eval mode), in place.

    Still differentiable in its input (SHAP explains through a frozen student); `FrozenTeacher` adds
    no-grad inference, a `train()` that cannot unfreeze it, and its own preprocessing.
    """
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


class FrozenTeacher(nn.Module):
    """Eval mode forever, no gradients, its own preprocessing.

    `train()` cannot switch it back to training mode: a teacher whose dropout
    or batch-norm statistics move during distillation is a silent bug.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] = IMAGENET_MEAN,
                 std: Sequence[float] = IMAGENET_STD, input_size: int | None = None):
        super().__init__()
        self.preprocess = Normalize(mean, std, input_size)
        self.model = freeze(model)
        super().train(False)

    def train(self, mode: bool = True) -> "FrozenTeacher":
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.preprocess(x))
