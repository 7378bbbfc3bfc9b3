"""One training loop for every study, readable top to bottom.

`train(model, distiller, loader, recipe, outputs=...)` is how a study trains: a
`Recipe` says how (optimiser, schedule, epochs, early stopping), a distiller
(`kdutils.distillers`) what is minimised, and `outputs(batch)` gives the
distiller its arguments. Underneath, `fit` trains any model whose loss is
`compute_loss(batch) -> {"loss": tensor, ...named parts}` (mdistiller style:
the method returns its named losses, the loop only sums what it is told).
What the loop adds:

* seeded determinism on CPU (same seed, same numbers);
* a checkpoint after every epoch, written atomically, holding the model,
  optimiser, scheduler, AMP scaler, history and every RNG state, so a run
  killed at any point and started again ends with exactly the metrics of an
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
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .errors import ConfigError, CorruptFileError, NonFiniteLossError
from .parallel import batch_rows, all_reduce_sum, data_parallel, global_batch_norms, sharing

__all__ = [
    "seed_everything",
    "resolve_device",
    "make_optimizer",
    "make_scheduler",
    "warmup_cosine",
    "History",
    "Recipe",
    "RunSettings",
    "train",
    "fit",
    "save_checkpoint",
    "load_checkpoint",
    "to_device",
    "single_cpu_thread",
]


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


def make_optimizer(params: Iterable, name: str, lr: float, momentum: float = 0.9, weight_decay: float = 0.0,
                   betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> torch.optim.Optimizer:
    """The optimisers the four studies use: SGD (with momentum), Adam, AdamW; `params` may be groups."""
    params = list(params)
    if not all(isinstance(p, dict) for p in params):
        params = [p for p in params if p.requires_grad]
    if not params:
        raise ConfigError("make_optimizer got no trainable parameters (is everything frozen?).")
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps)
    raise ConfigError(f"optimizer '{name}' is unknown; choose sgd, adam or adamw.")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  min_factor: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay, stepped once per optimisation step."""
    if total_steps <= 0 or warmup_steps < 0 or warmup_steps > total_steps:
        raise ConfigError(f"warmup_cosine needs 0 <= warmup_steps ({warmup_steps}) <= total_steps ({total_steps}).")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def make_scheduler(optimizer, name: str | None, *, epochs: int = 1, steps_per_epoch: int = 1,
                   warmup_steps: int = 0, plateau_factor: float = 0.1, plateau_patience: int = 3,
                   mode: str = "max"):
    """None, 'plateau' (ReduceLROnPlateau on the monitored metric), 'cosine' or 'warmup_cosine' (per step)."""
    if name in (None, "none"):
        return None
    if name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode=mode, factor=plateau_factor, patience=plateau_patience)
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    if name == "warmup_cosine":
        return warmup_cosine(optimizer, warmup_steps, max(1, epochs * steps_per_epoch))
    raise ConfigError(f"scheduler '{name}' is unknown; choose none, plateau, cosine or warmup_cosine.")


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


@dataclass
class History:
    """Per-epoch records: training losses (means over steps), validation metrics, lr, time."""

    epochs: list[dict] = field(default_factory=list)
    best_epoch: int | None = None
    best_value: float | None = None
    stopped_early: bool = False

    def series(self, key: str) -> list[float]:
        return [e[key] for e in self.epochs if key in e]

    def to_dict(self) -> dict:
        return {"epochs": self.epochs, "best_epoch": self.best_epoch,
                "best_value": self.best_value, "stopped_early": self.stopped_early}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(**d)


def _rng_state(loader) -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    gen = getattr(loader, "generator", None)
    if gen is not None:
        state["loader"] = gen.get_state()
    return state


def _set_rng_state(state: dict, loader) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    gen = getattr(loader, "generator", None)
    if gen is not None and "loader" in state:
        gen.set_state(state["loader"])


def save_checkpoint(state: dict, path: str | os.PathLike) -> None:
    """Write `state` to a temporary file, then rename it: a run killed mid-write keeps the previous checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """A checkpoint written by `save_checkpoint` (a trusted local file, so full unpickling).

    A truncated or corrupt file stops with an error naming it and the remedy,
    not torch's unpickling traceback.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise CorruptFileError(
            f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err).splitlines()[0]}): it is "
            "truncated or corrupt (a full disk, an interrupted copy). Delete it to run this training again "
            "from the start.") from None


@dataclass(frozen=True)
class Recipe:
    """How a model trains: optimiser, learning rate and schedule, epochs, early stopping, a step cap.

    `schedule` is None, "plateau" (ReduceLROnPlateau on `monitor`), "cosine" or "warmup_cosine" (per
    step; the warm-up lasts `warmup_epochs`, or `warmup_fraction` of all steps but at most `warmup_cap`);
    `patience` stops after that many epochs without a better `monitor`.
    """

    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    schedule: str | None = None
    warmup_epochs: int = 0
    warmup_fraction: float = 0.0
    warmup_cap: int | None = None
    plateau_factor: float = 0.1
    plateau_patience: int = 3
    epochs: int = 1
    monitor: str | None = None
    patience: int | None = None
    restore_best: bool = False
    max_steps: int | None = None

    def steps(self, loader) -> int:
        """Optimisation steps per epoch on `loader` (at most `max_steps`)."""
        return min(len(loader), self.max_steps or len(loader))

    def total_steps(self, loader) -> int:
        """Optimisation steps of the whole run on `loader`."""
        return self.epochs * self.steps(loader)

    def warmup_steps(self, steps_per_epoch: int) -> int:
        if self.warmup_epochs:
            return min(self.warmup_epochs, self.epochs) * steps_per_epoch
        warmup = int(self.warmup_fraction * (self.epochs * steps_per_epoch))
        return warmup if self.warmup_cap is None else min(warmup, self.warmup_cap)


@dataclass(frozen=True, kw_only=True)
class RunSettings:
    """How a study's run executes, apart from what it learns: loader workers, a step cap (dry runs), progress
    bars and data-parallel processes. Study recipes extend it; `of_profile(cfg)` reads it from a profile."""

    num_workers: int = 0
    max_steps: int | None = None
    dry_run: bool = False
    progress: bool = False
    processes: int = 1

    @staticmethod
    def of_profile(cfg) -> dict:
        return {"num_workers": cfg.num_workers, "max_steps": cfg.max_steps, "dry_run": cfg.dry_run,
                "progress": cfg.progress, "processes": cfg.num_processes}


def train(model: nn.Module, loss: Callable[..., dict], loader, recipe: Recipe, *,
          outputs: Callable[[object], tuple] | None = None, parameters: Iterable | None = None,
          log: Callable[..., dict] | None = None, evaluate: Callable[[], dict] | None = None,
          **fit_options) -> History:
    """Train `model` by `recipe` until `loss(*outputs(batch))["loss"]` is low; return the History.

    `loss` is a distiller or any module returning named losses; `outputs` defaults to `(batch,)` and
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
        parts = loss(*args)
        return parts if log is None else {**parts, **log(*args)}

    return fit(model, loader, compute_loss, opt, recipe.epochs, scheduler=sched, evaluate=evaluate,
               monitor=recipe.monitor, patience=recipe.patience, restore_best=recipe.restore_best,
               max_steps_per_epoch=recipe.max_steps, **fit_options)


def fit(model: nn.Module, loader, compute_loss: Callable[[object], dict], optimizer: torch.optim.Optimizer,
        epochs: int, *, scheduler=None, evaluate: Callable[[], dict] | None = None, monitor: str | None = None,
        mode: str = "max", patience: int | None = None, restore_best: bool = False,
        checkpoint: str | os.PathLike | None = None, checkpoint_key: str = "", device: torch.device | str = "cpu",
        amp: bool | None = None, channels_last: bool | None = None, max_steps_per_epoch: int | None = None,
        desc: str = "train", progress: bool = True, on_step: Callable[[dict], None] | None = None) -> History:
    """Train `model` for `epochs` on `compute_loss(batch)["loss"]` (other entries: logged epoch means).

    `evaluate()` gives validation metrics after each epoch; `monitor` names the one that drives early
    stopping (`patience`), ReduceLROnPlateau and `restore_best`. With `checkpoint`, the state is saved
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
    if mode not in ("max", "min"):
        raise ConfigError(f"mode must be 'max' or 'min', got '{mode}'.")
    device, amp, channels_last = _place(model, device, amp, channels_last, accelerator)
    on_cuda = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp and on_cuda)
    ckpt_path = Path(checkpoint) if checkpoint else None
    state = _resume(ckpt_path, checkpoint_key, model, optimizer, scheduler, scaler, loader, device)
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
            best_state, since_best = _follow(history, record[monitor], mode, model, best_state, since_best,
                                             restore_best, scheduler if plateau else None, patience)
        epoch_bar.set_postfix({k: f"{v:.3g}" for k, v in record.items()
                               if k not in ("epoch", "seconds") and isinstance(v, float)})
        if ckpt_path is not None and main:
            save_checkpoint({"key": checkpoint_key, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                             "scheduler": None if scheduler is None else scheduler.state_dict(),
                             "scaler": scaler.state_dict(), "history": history.to_dict(), "best_state": best_state,
                             "since_best": since_best, "rng": _rng_state(loader)}, ckpt_path)
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


def _follow(history: History, value: float, mode: str, model, best_state, since_best: int, restore_best: bool,
            plateau, patience: int | None):
    """Book one epoch's monitored `value`: best epoch and weights, the plateau schedule, early stopping."""
    epoch = len(history.epochs)
    if history.best_value is None or (value > history.best_value if mode == "max" else value < history.best_value):
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


def _resume(ckpt_path: Path | None, key: str, model, optimizer, scheduler, scaler, loader, device) -> dict:
    """Load a checkpoint written by `fit` into the training state; a fresh state when there is none."""
    if ckpt_path is None or not ckpt_path.exists():
        return {"history": History(), "best_state": None, "since_best": 0, "resumed": False}
    state = load_checkpoint(ckpt_path, map_location=device)
    if state["key"] != key:
        raise ConfigError(
            f"checkpoint {ckpt_path} was written for a different configuration "
            f"(key {state['key']!r}, expected {key!r}); delete it to retrain.")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    scaler.load_state_dict(state["scaler"])
    _set_rng_state(state["rng"], loader)
    return {"history": History.from_dict(state["history"]), "best_state": state["best_state"],
            "since_best": state["since_best"], "resumed": True}


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
