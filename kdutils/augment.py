"""Batched tensor augmentations that run where the batch is (CPU or GPU).

Per-image PIL pipelines cost more than the tiny networks of the `small`
profile; these operate on a whole (N, 3, H, W) float batch at once and draw
their randomness from torch's global generator, so a seed fixes them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_flip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    flip = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_shift(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (reflect padding), as a padded random crop."""
    if max_shift <= 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1))  # (n, h)
    cols = (torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1))  # (n, w)
    idx = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx, rows.view(n, h, 1), cols.view(n, 1, w)]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


def flip_shift(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """The standard CIFAR-style training augmentation."""
    return random_shift(random_flip(x), max_shift)
