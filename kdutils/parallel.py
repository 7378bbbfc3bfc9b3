"""Data parallelism for `train.fit` under Hugging Face Accelerate, on GPUs or CPU processes (gloo).

`launch(function, args, num_processes)` runs a training function in N processes; inside them `fit`
gives each process a contiguous share of every batch (`sharing`), normalises batch-norm layers over
the global batch (`global_batch_norms`) and sums the size-weighted gradients (`all_reduce_sum`), so N
processes take the steps one process takes with the same global batch. Random per-example choices
drawn through `per_example` are the ones a single process draws.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
from typing import Callable, Mapping

import torch
from torch import nn

from .errors import ConfigError

__all__ = ["launch", "per_example", "sharing", "global_batch_norms", "all_reduce_sum", "data_parallel"]


def launch(function: Callable, args: tuple = (), num_processes: int = 1):
    """`function(*args)` trained data-parallel in `num_processes` processes; returns what it returns.

    The processes come from Accelerate's `notebook_launcher` (a CUDA node: one
    GPU each; a CPU: gloo) and every `fit` inside them runs data-parallel;
    then `function` is called once more here, where `fit` finds the finished
    checkpoint the main process wrote and returns at once: so `function`
    should give its `fit` a checkpoint. One process: a plain call, and
    accelerate is never imported. Each process runs on one CPU thread (a
    fork of a process that already used torch's thread pool hangs otherwise). From a shell, `accelerate launch
    --num_processes N script.py` runs a script's `fit` the same way.
    """
    if num_processes > 1:
        from accelerate import notebook_launcher

        forked = functools.update_wrapper(functools.partial(_forked, function), function)  # the launcher wants a name
        notebook_launcher(forked, args, num_processes=num_processes)
    return function(*args)


def _forked(function: Callable, *args):
    """`function(*args)` on one CPU thread: a forked child hangs in the OpenMP pool of a parent that computed."""
    torch.set_num_threads(1)
    return function(*args)


_SHARE: tuple[int, int, int] | None = None  # (first row, end row, global batch size) while fit shares a batch


@contextlib.contextmanager
def sharing(batch, accelerator):
    """This process's share of `batch` (the whole batch without a launcher), for `per_example` to cut by."""
    global _SHARE
    if accelerator is None:
        yield batch
        return
    rank, world, total = accelerator.process_index, accelerator.num_processes, batch_rows(batch)
    _SHARE = (rank * total // world, (rank + 1) * total // world, total)
    try:
        yield _share(batch, rank, world)
    finally:
        _SHARE = None


def per_example(draw: Callable[[int], torch.Tensor], n: int) -> torch.Tensor:
    """`draw(n)`: per-example random choices (views, flips) for a batch of `n` rows, drawn by `compute_loss`.

    Under data parallelism the choices are drawn for the whole global batch and
    cut to this process's rows, so they are the ones a single process draws.
    """
    if _SHARE is None:
        return draw(n)
    start, stop, total = _SHARE
    if stop - start != n:
        raise ConfigError(f"per_example got {n} rows but this process trains on {stop - start}.")
    return draw(total)[start:stop]


def _synced_batch_norm(norm: nn.modules.batchnorm._BatchNorm, x: torch.Tensor) -> torch.Tensor:
    """Batch norm over the global batch: mean and variance summed over processes (autograd flows through).

    torch's SyncBatchNorm runs on GPUs only; this one runs wherever the process group does (gloo on a CPU).
    """
    if not norm.training and norm.running_mean is not None:  # eval mode with running statistics: nothing to share
        return type(norm).forward(norm, x)
    from torch.distributed.nn.functional import all_reduce as deprecated_all_reduce

    def all_reduce(t):  # torch 2.x deprecates it, but it is still the collective autograd flows through
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return deprecated_all_reduce(t)

    dims = [0, *range(2, x.ndim)]
    shape = [1, -1] + [1] * (x.ndim - 2)
    count = all_reduce(torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device))
    mean = all_reduce(x.sum(dims)) / count
    centred = x - mean.view(shape)
    var = all_reduce(centred.pow(2).sum(dims)) / count
    if norm.training and norm.running_mean is not None:
        with torch.no_grad():
            norm.num_batches_tracked += 1
            factor = 1.0 / float(norm.num_batches_tracked) if norm.momentum is None else norm.momentum
            norm.running_mean.mul_(1 - factor).add_(factor * mean)
            norm.running_var.mul_(1 - factor).add_(factor * var * count / (count - 1).clamp(min=1))
    out = centred / torch.sqrt(var.view(shape) + norm.eps)
    return out * norm.weight.view(shape) + norm.bias.view(shape) if norm.affine else out


@contextlib.contextmanager
def global_batch_norms(model: nn.Module, accelerator):
    """Every batch-norm layer of `model` normalises over the global batch while the block runs."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)] if accelerator else []
    for norm in norms:
        norm.forward = lambda x, norm=norm: _synced_batch_norm(norm, x)
    try:
        yield
    finally:
        for norm in norms:
            del norm.forward


def data_parallel():
    """The Accelerator when this process is one of several started by a launcher, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator

    return Accelerator(cpu=not torch.cuda.is_available())


def _is_data(batch) -> bool:
    """A tensor, or a list of plain items (captions): split it. Lists of tensors are structure (collate)."""
    return isinstance(batch, torch.Tensor) or (
        isinstance(batch, list) and not any(isinstance(b, (torch.Tensor, list, tuple, Mapping)) for b in batch))


def _share(batch, rank: int, world: int):
    """This process's contiguous share of a batch (every tensor and item list split along its first axis)."""
    if _is_data(batch):
        n = len(batch)
        if n < world:
            raise ConfigError(f"a batch of {n} cannot be shared by {world} processes; use a larger batch_size.")
        return batch[rank * n // world:(rank + 1) * n // world]
    if isinstance(batch, Mapping):
        return {k: _share(v, rank, world) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_share(b, rank, world) for b in batch)
    return batch


def batch_rows(batch) -> int:
    if _is_data(batch):
        return len(batch)
    items = batch.values() if isinstance(batch, Mapping) else batch
    return next(batch_rows(b) for b in items if isinstance(b, (torch.Tensor, list, tuple, Mapping)))


def all_reduce_sum(tensors: list[torch.Tensor], accelerator, scale: float = 1.0) -> None:
    """In place: `scale` times each tensor, summed over processes (one flat all-reduce)."""
    flat = accelerator.reduce(torch.cat([t.reshape(-1) for t in tensors]) * scale, reduction="sum")
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()
