"""Outputs of a network over data in evaluation mode: the lab's one batched inference loop.

Frozen teachers and backbones (whose outputs the studies cache with `kdutils.cache.cached`, keyed
by `cache.model_fingerprint` and the data) and trained models under evaluation all run through
`outputs`: eval mode and no gradients for the call, the module's mode restored afterwards (even
after an error), each batch moved to `device`, results float32 on the CPU in input order.

>>> feats = outputs(encoder, batches(images, 512), device="cpu")        # (N, D)
>>> logits = outputs(matcher, loader, device="cpu")                     # dict batches
>>> emb = outputs(student, loader, lambda b: student.embed(b[0]), device="cpu")
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from .train import to_device

__all__ = ["outputs", "batches"]


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
