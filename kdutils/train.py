"""One training loop for every study, readable top to bottom.

`train(model, distiller, loader, recipe, outputs=...)` is how a study trains: a
`recipes.Recipe` says how (optimiser, schedule, epochs, early stopping), a distiller
(`kdutils.distillers`) what is minimised, and `outputs(batch)` gives the
distiller its arguments. Underneath, `fit` trains any model whose loss is
`compute_loss(batch) -> {"loss": tensor, ...named parts}` (mdistiller style:
the method returns its named losses, the loop only sums what it is told).
What the loop adds:

* seeded determinism on CPU (same seed, same numbers);
* a checkpoint after every epoch (`kdutils.checkpoint`), so a run killed at
  any point and started again ends with exactly the metrics of an
  uninterrupted run;
* a NaN/inf guard that names the epoch and step;
* early stopping and ReduceLROnPlateau on a chosen validation metric;
* AMP and channels-last on CUDA, tqdm progress everywhere;
* data parallelism under Hugging Face Accelerate (`kdutils.parallel`): started by a launcher
  (`parallel.launch`, `accelerate launch`), each process trains on its share of every batch and the
  gradients are averaged, so N processes take the steps one process takes with the same global batch;
  only the main process writes checkpoints.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import time
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .checkpoint import History, resume_training, save_training
from .errors import ConfigError, NonFiniteLossError
from .optim import make_optimizer, make_scheduler
from .parallel import all_reduce_sum, batch_rows, data_parallel, global_batch_norms, sharing
from .recipes import Recipe

__all__ = ["seed_everything", "resolve_device", "train", "fit", "to_device", "single_cpu_thread"]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a torch Generator for data loaders."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    g = torch.Generator()
    g.manual_seed(seed)
    return g


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` means CUDA when present, else CPU; anything else is taken literally."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device='{device}' but no CUDA device is visible; use device='cpu' or 'auto'.")
    return torch.device(device)


@contextlib.contextmanager
def single_cpu_thread(device="cpu"):
    """Run small tensor work on one CPU thread (restored on exit; no effect on a GPU).

    Per-image explanations and linear heads issue many small operations; on a
    busy 2-core machine the thread pool's hand-offs cost more than they save
    (a head's training step ran ~5x slower with two threads than with one).
    """
    threads = torch.get_num_threads()
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def to_device(batch, device: torch.device, channels_last: bool = False):
    """Move a batch (tensor, or tuple/list/dict of them) to `device`; other items pass through."""
    if isinstance(batch, torch.Tensor):
        batch = batch.to(device, non_blocking=True)
        if channels_last and batch.ndim == 4 and batch.is_floating_point():
            batch = batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, Mapping):
        return {k: to_device(v, device, channels_last) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(b, device, channels_last) for b in batch)
    return batch


def train(model: nn.Module, distiller: Callable[..., dict], loader, recipe: Recipe, *,
          outputs: Callable[[object], tuple] | None = None, parameters: Iterable | None = None,
          log: Callable[..., dict] | None = None, evaluate: Callable[[], dict] | None = None,
          **fit_options) -> History:
    """Train `model` by `recipe` until `distiller(*outputs(batch))["loss"]` is low; return the History.

    `distiller` is a distiller or any module returning named losses; `outputs` defaults to `(batch,)` and
    `parameters` (parameter groups) to the model's. `log(*outputs(batch))` adds values to record (an
    accuracy); `fit_options` go to `fit` (checkpoint, device, progress...).
    """
    steps = recipe.steps(loader)
    opt = make_optimizer(model.parameters() if parameters is None else parameters, recipe.optimizer, lr=recipe.lr,
                         momentum=recipe.momentum, weight_decay=recipe.weight_decay, betas=recipe.betas,
                         eps=recipe.eps)
    sched = make_scheduler(opt, recipe.schedule, epochs=recipe.epochs, steps_per_epoch=steps,
                           warmup_steps=recipe.warmup_steps(steps), plateau_factor=recipe.plateau_factor,
                           plateau_patience=recipe.plateau_patience)

    def compute_loss(batch):
        args = (batch,) if outputs is None else outputs(batch)
        parts = distiller(*args)
        return parts if log is None else {**parts, **log(*args)}

    return fit(model, loader, compute_loss, opt, recipe.epochs, scheduler=sched, evaluate=evaluate,
               monitor=recipe.monitor, patience=recipe.patience, restore_best=recipe.restore_best,
               max_steps_per_epoch=recipe.max_steps, **fit_options)


def fit(model: nn.Module, loader, compute_loss: Callable[[object], dict], optimizer: torch.optim.Optimizer,
        epochs: int, *, scheduler=None, evaluate: Callable[[], dict] | None = None, monitor: str | None = None,
        patience: int | None = None, restore_best: bool = False,
        checkpoint: str | os.PathLike | None = None, checkpoint_key: str = "", device: torch.device | str = "cpu",
        amp: bool | None = None, channels_last: bool | None = None, max_steps_per_epoch: int | None = None,
        desc: str = "train", progress: bool = True, on_step: Callable[[dict], None] | None = None) -> History:
    """Train `model` for `epochs` on `compute_loss(batch)["loss"]` (other entries: logged epoch means).

    `evaluate()` gives validation metrics after each epoch; `monitor` names the one (higher is better) that
    drives early stopping (`patience`), ReduceLROnPlateau and `restore_best`. With `checkpoint`, the state is saved
    after each epoch and an existing file with the same `checkpoint_key` is resumed (a finished run
    returns at once; another key never resumes). `max_steps_per_epoch` caps the steps (dry runs: 2).
    Under a launcher (`launch`) every process iterates the same seeded `loader`, trains on its share of
    each batch (`compute_loss` returns a batch mean) and the gradients are averaged by share size: one
    process's steps with the same global batch, up to float rounding; batch norm uses global statistics,
    and random draws made through `per_example` match one process's. Only the main process writes the
    checkpoint and shows progress. `on_step(losses)` sees each step's (global) losses.
    """
    accelerator = data_parallel()
    main = accelerator is None or accelerator.is_main_process
    progress = progress and main
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if (patience is not None or plateau or restore_best) and (evaluate is None or monitor is None):
        raise ConfigError("early stopping, ReduceLROnPlateau and restore_best need `evaluate` and `monitor`.")
    device, amp, channels_last = _place(model, device, amp, channels_last, accelerator)
    on_cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp and on_cuda)
    ckpt_path = Path(checkpoint) if checkpoint else None
    state = resume_training(ckpt_path, checkpoint_key, model, optimizer, scheduler, scaler, loader, device)
    history, best_state, since_best = state["history"], state["best_state"], state["since_best"]
    start_epoch = len(history.epochs)
    if state["resumed"] and progress and start_epoch < epochs and not history.stopped_early:
        print(f"[{desc}] resuming from {ckpt_path} at epoch {start_epoch + 1}/{epochs}")

    epoch_bar = tqdm(range(start_epoch, epochs), desc=desc, disable=not progress, leave=False)
    for epoch in epoch_bar:
        if history.stopped_early:
            break
        t0 = time.perf_counter()
        model.train()

        def one_step(batch, where):
            losses = _step(model, batch, compute_loss, optimizer, scaler, accelerator, device, channels_last,
                           amp and on_cuda, where=f"[{desc}] epoch {epoch + 1}, {where}")
            if on_step is not None:
                on_step(losses)
            scaler.step(optimizer)
            scaler.update()
            if scheduler is not None and not plateau:
                scheduler.step()
            return losses

        means = _epoch(loader, one_step, max_steps_per_epoch, desc=f"epoch {epoch + 1}", progress=progress)
        record = {"epoch": epoch + 1, "lr": optimizer.param_groups[0]["lr"]}
        record.update({f"train_{k}": v for k, v in means.items()})
        if evaluate is not None:
            model.eval()
            record.update(evaluate())
            model.train()
        record["seconds"] = time.perf_counter() - t0
        history.epochs.append(record)

        if monitor is not None:  # early stopping, the plateau schedule and the best weights follow `monitor`
            best_state, since_best = _follow(history, record[monitor], model, best_state, since_best,
                                             restore_best, scheduler if plateau else None, patience)
        epoch_bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                               if k not in ("epoch", "seconds") and isinstance(v, float)})
        if ckpt_path is not None and main:
            save_training(ckpt_path, checkpoint_key, model=model, optimizer=optimizer, scheduler=scheduler,
                          scaler=scaler, history=history, best_state=best_state, since_best=since_best, loader=loader)
        if accelerator is not None:
            accelerator.wait_for_everyone()
    if restore_best and best_state is not None:
        model.load_state_dict(best_state)
    return history


def _place(model: nn.Module, device, amp: bool | None, channels_last: bool | None, accelerator):
    """Move `model` to its device; (device, amp, channels_last), the last two on by default on CUDA only."""
    if accelerator is not None:  # Accelerate names CPU processes cpu:RANK, which torch.load cannot map to
        device = accelerator.device if accelerator.device.type != "cpu" else "cpu"
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    amp = on_cuda if amp is None else amp
    channels_last = on_cuda if channels_last is None else channels_last
    model.to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return device, amp, channels_last


def _epoch(loader, one_step: Callable, max_steps: int | None, *, desc: str, progress: bool) -> dict:
    """One pass of `one_step(batch, where)` over the loader (at most `max_steps`); the mean of each loss."""
    bar = tqdm(total=min(len(loader), max_steps or len(loader)), desc=desc, leave=False,
               disable=not progress)  # updated by hand: wrapping would start the loader twice
    sums, n_steps = {}, 0
    for step, batch in enumerate(_steps(loader, max_steps)):
        losses = one_step(batch, f"step {step + 1}")
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + float(v.detach())
        n_steps = step + 1
        bar.update()
        bar.set_postfix(loss=f"{float(losses['loss'].detach()):.4f}")
    bar.close()
    return {k: v / max(n_steps, 1) for k, v in sums.items()}


def _follow(history: History, value: float, model, best_state, since_best: int, restore_best: bool,
            plateau, patience: int | None):
    """Book one epoch's monitored `value`: best epoch and weights, the plateau schedule, early stopping."""
    epoch = len(history.epochs)
    if history.best_value is None or value > history.best_value:
        history.best_value, history.best_epoch, since_best = value, epoch, 0
        if restore_best:
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    else:
        since_best += 1
    if plateau is not None:
        plateau.step(value)
    if patience is not None and since_best >= patience:
        history.stopped_early = True
    return best_state, since_best


def _steps(loader, max_steps: int | None):
    """The batches of one epoch, at most `max_steps` of them."""
    return loader if max_steps is None else itertools.islice(loader, max_steps)


def _step(model, batch, compute_loss, optimizer, scaler, accelerator, device, channels_last: bool, autocast: bool,
          where: str) -> dict:
    """Forward and backward of one batch (this process's share of it under `launch`); returns the losses.

    Under data parallelism each process weights its share's mean loss by the share's size before the
    backward, and the gradients and logged losses are summed across processes: the global batch's mean.
    """
    with sharing(batch, accelerator) as share:
        share = to_device(share, device, channels_last)
        with torch.autocast(device.type, enabled=autocast), global_batch_norms(model, accelerator):
            losses = compute_loss(share)
    loss = losses["loss"]
    if not torch.isfinite(loss).all():
        raise NonFiniteLossError(f"{where}: the loss is {loss.item()}; lower the learning rate, check the inputs "
                                 "for NaN, or disable AMP.")
    optimizer.zero_grad(set_to_none=True)
    if accelerator is None:
        scaler.scale(loss).backward()
        return losses
    weight = batch_rows(share) / batch_rows(batch)
    scaler.scale(loss * weight).backward()
    all_reduce_sum([p.grad for p in model.parameters() if p.grad is not None], accelerator)
    parts = [v.detach().float().reshape(1) for v in losses.values()]
    all_reduce_sum(parts, accelerator, scale=weight)
    return dict(zip(losses, parts))
