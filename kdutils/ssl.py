"""Self-supervised learners in small, tested pieces: BYOL, MoCo-v2.

KASSL's teachers are self-supervised (BYOL, MoCo-v2) and its baseline is BYOL;
the two views each learner compares come from `kdutils.augment.view_pair`.

* `BYOL` (online network + predictor, EMA target, symmetric loss) and
  `MoCoV2` (query network, EMA key network, queue, shuffled split batch-norm).
  Both are modules whose `forward(view1, view2)` returns the loss dict that
  `kdutils.train.fit` minimises, so checkpointing and resuming come for free.

The heads, EMA update and momentum schedule are lightly's: `python -m kdutils
bench ssl_libs` shows them equal to the hand-written code they replaced.
"""

from __future__ import annotations

import copy

import torch
from lightly.models.modules.heads import MoCoProjectionHead, ProjectionHead
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from .augment import ViewAugment
from .checkpoint import History
from .errors import ConfigError
from .losses import MoCoQueue, byol_loss, info_nce
from .recipes import Recipe
from .train import train

__all__ = ["MLPHead", "BYOL", "MoCoV2", "LossTrace", "make_learner", "train_ssl"]

class MLPHead(ProjectionHead):
    """BYOL's projector / predictor: Linear -> BatchNorm -> ReLU -> Linear, biases kept (lightly's BYOL heads
    drop the first one)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int):
        super().__init__([(in_dim, hidden_dim, nn.BatchNorm1d(hidden_dim), nn.ReLU(), True),
                          (hidden_dim, out_dim, None, None, True)])


class _EMATeacherMixin:
    """An EMA copy of `self.online`; updated at the start of each step, i.e. after the last one."""

    @property
    def encoder(self) -> nn.Module:
        """The backbone being learned (the online network's first module)."""
        return self.online[0]

    def _make_target(self):
        target = copy.deepcopy(self.online)
        for p in target.parameters():
            p.requires_grad_(False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        return target

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        update_momentum(self.online, self.target, momentum)

    def _advance(self) -> None:
        """Apply the EMA step for the optimiser step just taken (none before the first)."""
        if self.training:
            if int(self.step) > 0:
                self.update_target(self.current_momentum())
            self.step += 1


class BYOL(_EMATeacherMixin, nn.Module):
    """Bootstrap Your Own Latent (Grill et al. 2020) around any feature encoder.

    online = encoder + projector, prediction = predictor(online), target = EMA
    of online (momentum from `momentum` to 1 on a cosine over `total_steps`).
    Loss: `byol_loss(p1, z2) + byol_loss(p2, z1)` (the paper's symmetric sum,
    range [0, 8]). The EMA update runs at the start of each `forward`, which
    is the same as after the previous optimiser step (the last update of a run
    is skipped: the target is never used after training).
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, hidden_dim: int = 4096, proj_dim: int = 256,
                 momentum: float = 0.996, total_steps: int = 1):
        super().__init__()
        if not 0 <= momentum < 1:
            raise ConfigError(f"BYOL momentum must be in [0, 1), got {momentum}.")
        self.online = nn.Sequential(encoder, MLPHead(feature_dim, hidden_dim, proj_dim))
        self.predictor = MLPHead(proj_dim, hidden_dim, proj_dim)
        self.target = self._make_target()
        self.base_momentum, self.total_steps = momentum, total_steps

    def current_momentum(self) -> float:
        """BYOL's cosine from `momentum` (first update) to 1 (after `total_steps`; lightly counts the last step)."""
        return cosine_schedule(int(self.step) - 1, self.total_steps + 1, self.base_momentum, 1.0)

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> dict:
        self._advance()
        p1, p2 = self.predictor(self.online(view1)), self.predictor(self.online(view2))
        with torch.no_grad():
            z1, z2 = self.target(view1), self.target(view2)
        return {"loss": byol_loss(p1, z2) + byol_loss(p2, z1)}


def _split_forward(net: nn.Module, x: torch.Tensor, splits: int) -> torch.Tensor:
    return torch.cat([net(chunk) for chunk in x.chunk(splits)]) if splits > 1 else net(x)


class MoCoV2(_EMATeacherMixin, nn.Module):
    """MoCo-v2 (Chen et al. 2020): query network, momentum key network, a queue of negatives.

    online (the query network) = encoder + MLP head (Linear-ReLU-Linear, no
    batch-norm), key network = EMA of it with a constant `momentum`, loss =
    InfoNCE of q (view 1) against its key (view 2) and the queue, temperature
    0.2; asymmetric as in the paper. Shuffling BN: on one device the batch is
    cut into `bn_splits` groups that get their own batch-norm statistics, and
    the keys are shuffled before the cut (as the MoCo CIFAR demo does), so a
    query and its key never share their statistics; otherwise the network
    can match the batch's BN "signature" instead of the image.
    """

    def __init__(self, encoder: nn.Module, feature_dim: int, hidden_dim: int = 2048, proj_dim: int = 128,
                 queue_size: int = 65536, momentum: float = 0.999, temperature: float = 0.2,
                 bn_splits: int = 1):
        super().__init__()
        if not 0 <= momentum < 1:
            raise ConfigError(f"MoCo momentum must be in [0, 1), got {momentum}.")
        if bn_splits < 1:
            raise ConfigError(f"bn_splits must be >= 1, got {bn_splits}.")
        self.online = nn.Sequential(encoder, MoCoProjectionHead(feature_dim, hidden_dim, proj_dim))
        self.target = self._make_target()
        self.queue = MoCoQueue(proj_dim, queue_size)
        self.momentum, self.temperature, self.bn_splits = momentum, temperature, bn_splits

    def current_momentum(self) -> float:
        return self.momentum

    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> dict:
        if self.training and len(view1) % self.bn_splits:
            raise ValueError(f"batch size {len(view1)} is not divisible by bn_splits={self.bn_splits}; "
                             "use drop_last=True and a batch size that is a multiple of it.")
        self._advance()
        q = _split_forward(self.online, view1, self.bn_splits)
        with torch.no_grad():
            perm = torch.randperm(len(view2), device=view2.device)
            k = torch.empty_like(q)
            k[perm] = _split_forward(self.target, view2[perm], self.bn_splits)
        loss = info_nce(q, k, self.queue.keys.clone(), self.temperature)
        if self.training:
            self.queue.enqueue(k)
        return {"loss": loss}


class LossTrace(nn.Module):
    """Per-step training losses kept as a buffer, so they are checkpointed and restored with the model.

    `fit` logs epoch means; SSL and KASSL runs at the `small` scale last a few
    epochs, so their curves are drawn from the steps. Attach it to the trained
    module before training and call `record(loss)` after each step (`train_ssl` does it in `train`'s `on_step`).
    """

    def __init__(self, steps: int):
        super().__init__()
        self.register_buffer("values", torch.full((max(1, steps),), float("nan")))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def record(self, loss: torch.Tensor) -> None:
        i = int(self.count)
        if i < len(self.values):
            self.values[i] = loss.detach().float()
            self.count += 1

    def series(self) -> list[float]:
        return self.values[: int(self.count)].tolist()


def make_learner(method: str, encoder: nn.Module, feature_dim: int, *, total_steps: int, hidden_dim: int,
                 proj_dim: int, byol_momentum: float = 0.996, moco_momentum: float = 0.999,
                 queue_size: int = 65536, temperature: float = 0.2, bn_splits: int = 1) -> nn.Module:
    """'byol' or 'moco_v2' around `encoder` (its output is the `feature_dim` feature)."""
    if method == "byol":
        return BYOL(encoder, feature_dim, hidden_dim, proj_dim, byol_momentum, total_steps)
    if method == "moco_v2":
        return MoCoV2(encoder, feature_dim, hidden_dim, proj_dim, queue_size, moco_momentum, temperature,
                      bn_splits)
    raise ConfigError(f"unknown SSL method '{method}'; choose byol or moco_v2.")


def train_ssl(learner: nn.Module, loader, views: tuple[ViewAugment, ViewAugment], *, epochs: int, lr: float,
              device="cpu", checkpoint=None, checkpoint_key: str = "", max_steps: int | None = None,
              progress: bool = True, desc: str = "ssl") -> History:
    """Self-supervised training: two views of each batch (`loader` yields (images, ...)), SGD, warm-up + cosine.

    The per-step losses end up in `learner.trace` (a `LossTrace`).

    SGD with momentum 0.9 and weight decay 1e-4 stands in for BYOL's LARS (not
    in torch); the first 10% of the steps warm up. The training loop is
    `kdutils.train.train`, so `checkpoint` makes it resumable and doubles as
    the cache of the finished encoder.
    """
    recipe = Recipe(optimizer="sgd", lr=lr, momentum=0.9, weight_decay=1e-4, schedule="warmup_cosine",
                    warmup_fraction=0.1, epochs=epochs, max_steps=max_steps)
    learner.trace = LossTrace(recipe.total_steps(loader))
    view1, view2 = views

    def two_views(batch):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return view1(x), view2(x)

    return train(learner, learner, loader, recipe, outputs=two_views, checkpoint=checkpoint,
                 checkpoint_key=checkpoint_key, device=device, desc=desc, progress=progress,
                 on_step=lambda losses: learner.trace.record(losses["loss"]))
