"""Self-supervised learning in small, tested pieces: batched views, BYOL, MoCo-v2.

KASSL's teachers are self-supervised (BYOL, MoCo-v2), its baseline is BYOL
and its student sees two SimCLR-style views. Everything here works on whole
(N, 3, H, W) float batches in [0, 1], on the device the batch is on, and draws
its randomness from torch's generator, so a seed fixes every view.

* `ViewAugment`: random resized crop (+ optional rotation) and flip in one
  `grid_sample`, colour jitter, grayscale, Gaussian blur, solarisation; the
  BYOL/SimCLR recipe (`VIEW_PRESETS["imagenet"]`) and one matched to
  SynthWorld's invariances (`VIEW_PRESETS["synthworld"]`: see its comment).
* `BYOL` (online network + predictor, EMA target, symmetric loss) and
  `MoCoV2` (query network, EMA key network, queue, shuffled split batch-norm).
  Both are modules whose `forward(view1, view2)` returns the loss dict that
  `kdutils.train.fit` minimises, so checkpointing and resuming come for free.

Blur and solarisation are kornia's ops and the heads, EMA update and momentum
schedule lightly's, on our parameter draws: `python -m kdutils bench ssl_libs`
shows them equal to the hand-written code they replaced, and why the rest stays.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from kornia.enhance import solarize
from kornia.filters import filter2d_separable, get_gaussian_kernel1d
from lightly.models.modules.heads import MoCoProjectionHead, ProjectionHead
from lightly.models.utils import update_momentum
from lightly.utils.scheduler import cosine_schedule
from torch import nn

from .checkpoint import History
from .errors import ConfigError
from .losses import MoCoQueue, byol_loss, info_nce
from .parallel import per_example
from .train import Recipe, train

__all__ = ["ViewAugment", "VIEW_PRESETS", "view_pair", "as_float_images", "MLPHead", "BYOL", "MoCoV2",
           "LossTrace", "make_learner", "train_ssl"]

_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def as_float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float in [0, 1]; float images pass through."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x


def _uniform(n: int, lo: float, hi: float, device) -> torch.Tensor:
    return per_example(lambda rows: torch.empty(rows, device=device).uniform_(lo, hi), n)


def _chance(n: int, p: float, device) -> torch.Tensor:
    return _uniform(n, 0.0, 1.0, device) < p


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _hue_rotation(angle: torch.Tensor) -> torch.Tensor:
    """(N, 3, 3) rotations of RGB space about the grey axis by `angle` radians.

    A linear stand-in for HSV hue shifting (it keeps luminance roughly and
    greys exactly); one batched matrix product instead of a per-image HSV trip.
    """
    u = torch.full((3,), 1 / math.sqrt(3), device=angle.device, dtype=angle.dtype)
    cross = torch.tensor([[0.0, -u[2], u[1]], [u[2], 0.0, -u[0]], [-u[1], u[0], 0.0]],
                         device=angle.device, dtype=angle.dtype)
    c, s = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    eye = torch.eye(3, device=angle.device, dtype=angle.dtype)
    return c * eye + s * cross + (1 - c) * torch.outer(u, u)


@dataclass(frozen=True)
class ViewAugment:
    """One random view per image of a batch; the fields are SimCLR/BYOL's knobs.

    Geometry: a crop of `crop_scale` (area fraction) and `crop_ratio` (aspect),
    rotated by up to `rotation` degrees and mirrored with `flip_p`, resampled
    to `out_size` (default: the input size) with one bilinear `grid_sample`.
    Colour (with `jitter_p`): brightness, contrast, saturation, hue in that
    fixed order (torchvision draws a random order), clamped to [0, 1] after
    each; hue is a rotation about the grey axis by up to `hue` turns.
    Then grayscale (`gray_p`), Gaussian blur (`blur_p`, sigma in `blur_sigma`
    pixels at the output size, kernel `blur_kernel` pixels or 10% of the side),
    solarisation (`solarize_p`, threshold 0.5).
    """

    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    rotation: float = 0.0
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 1.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    solarize_p: float = 0.0
    out_size: int | None = None

    def __post_init__(self):
        lo, hi = self.crop_scale
        checks = [(0 < lo <= hi <= 1, "crop_scale must satisfy 0 < lo <= hi <= 1"),
                  (0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio must satisfy 0 < lo <= hi"),
                  (all(0 <= p <= 1 for p in (self.flip_p, self.jitter_p, self.gray_p, self.blur_p,
                                             self.solarize_p)), "probabilities must be in [0, 1]"),
                  (min(self.brightness, self.contrast, self.saturation) >= 0 and 0 <= self.hue <= 0.5,
                   "jitter strengths must be >= 0 and hue in [0, 0.5]"),
                  (0 < self.blur_sigma[0] <= self.blur_sigma[1], "blur_sigma must satisfy 0 < lo <= hi"),
                  (self.blur_kernel is None or (self.blur_kernel >= 1 and self.blur_kernel % 2 == 1),
                   "blur_kernel must be an odd number of pixels")]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"ViewAugment: {message}.")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"ViewAugment needs a (N, 3, H, W) batch, got {tuple(x.shape)}")
        x = self.geometry(as_float_images(x))
        x = self.colour(x)
        x = self.blur(x)
        if self.solarize_p > 0:  # threshold 0.5, or 2 (above every pixel) for an image left as it is
            x = solarize(x, torch.where(_chance(len(x), self.solarize_p, x.device), 0.5, 2.0))
        return x

    def geometry(self, x: torch.Tensor) -> torch.Tensor:
        """Random resized crop, rotation and flip as one affine resampling."""
        n, dev = len(x), x.device
        size = self.out_size or x.shape[-1]
        area = _uniform(n, *self.crop_scale, dev)
        log_ratio = _uniform(n, math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]), dev)
        ratio = log_ratio.exp()
        w = (area * ratio).sqrt().clamp(max=1.0)  # crop side as a fraction of the image side
        h = (area / ratio).sqrt().clamp(max=1.0)
        cx = (_uniform(n, 0.0, 1.0, dev) * 2 - 1) * (1 - w)  # crop centre in [-1, 1] coordinates
        cy = (_uniform(n, 0.0, 1.0, dev) * 2 - 1) * (1 - h)
        angle = _uniform(n, -self.rotation, self.rotation, dev) * (math.pi / 180)
        flip = torch.where(_chance(n, self.flip_p, dev), -1.0, 1.0)
        cos, sin = angle.cos(), angle.sin()
        theta = torch.stack([torch.stack([w * cos * flip, -h * sin, cx], 1),
                             torch.stack([w * sin * flip, h * cos, cy], 1)], 1)
        grid = F.affine_grid(theta, [n, 3, size, size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)

    def colour(self, x: torch.Tensor) -> torch.Tensor:
        """Colour jitter (with `jitter_p`) then grayscale (with `gray_p`)."""
        n, dev = len(x), x.device
        on = _chance(n, self.jitter_p, dev)

        def factor(strength):
            f = _uniform(n, max(0.0, 1 - strength), 1 + strength, dev)
            return torch.where(on, f, torch.ones_like(f)).view(-1, 1, 1, 1)

        x = (x * factor(self.brightness)).clamp(0, 1)
        mean = _grayscale(x).mean((2, 3), keepdim=True)
        x = ((x - mean) * factor(self.contrast) + mean).clamp(0, 1)
        gray = _grayscale(x)
        x = ((x - gray) * factor(self.saturation) + gray).clamp(0, 1)
        if self.hue > 0:
            turns = torch.where(on, _uniform(n, -self.hue, self.hue, dev), torch.zeros(n, device=dev))
            x = torch.einsum("nij,njhw->nihw", _hue_rotation(turns * 2 * math.pi), x).clamp(0, 1)
        if self.gray_p > 0:
            g = _chance(n, self.gray_p, dev).view(-1, 1, 1, 1)
            x = torch.where(g, _grayscale(x).expand_as(x), x)
        return x

    def blur(self, x: torch.Tensor) -> torch.Tensor:
        """Separable Gaussian blur with a per-image sigma (an identity kernel for an image left sharp)."""
        if self.blur_p <= 0:
            return x
        n, k = len(x), self.blur_kernel or max(3, int(0.1 * x.shape[-1]) // 2 * 2 + 1)
        kernel = get_gaussian_kernel1d(k, _uniform(n, *self.blur_sigma, x.device).view(-1, 1))
        identity = (torch.arange(k, device=x.device) == k // 2).to(x.dtype).expand(n, k)
        kernel = torch.where(_chance(n, self.blur_p, x.device).view(-1, 1), kernel, identity)
        return filter2d_separable(x, kernel, kernel, border_type="reflect")


# BYOL's two asymmetric views (Grill et al. 2020, table 6): blur always on the
# first view, rarely on the second, solarisation only on the second.
_IMAGENET = ViewAugment(crop_scale=(0.08, 1.0), brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
# SynthWorld: the label is the shape, while colour, background, position,
# scale and (+-20 deg) rotation are random. Crops keep most of the image so
# the object survives (objects reach 0.34 of the side, shifted by up to 0.18),
# rotation matches the world's, and colour is scrambled hard (hue over the
# whole circle, strong saturation, more grayscale) because colour is the
# cheapest way to tell two images apart and says nothing about the shape.
# Blur is mild: a 32-pixel shape has little detail to spare.
_SYNTH = ViewAugment(crop_scale=(0.4, 1.0), rotation=20.0, brightness=0.4, contrast=0.4, saturation=0.8,
                     hue=0.5, gray_p=0.3, blur_sigma=(0.1, 1.0), blur_kernel=3)
VIEW_PRESETS: dict[str, tuple[ViewAugment, ViewAugment]] = {
    "imagenet": (_IMAGENET, replace(_IMAGENET, blur_p=0.1, solarize_p=0.2)),
    "synthworld": (_SYNTH, replace(_SYNTH, blur_p=0.1, solarize_p=0.2)),
}


def view_pair(preset: str, out_size: int | None = None) -> tuple[ViewAugment, ViewAugment]:
    """The two view augmentations (t, t') of a preset, resampled to `out_size`."""
    if preset not in VIEW_PRESETS:
        raise ConfigError(f"unknown view preset '{preset}'; choose one of {sorted(VIEW_PRESETS)}.")
    t1, t2 = VIEW_PRESETS[preset]
    return replace(t1, out_size=out_size), replace(t2, out_size=out_size)


# ---------------------------------------------------------------- learners

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
    module before `fit` and call `record(loss)` in the loss function.
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
              weight_decay: float = 1e-4, warmup_fraction: float = 0.1, device="cpu", checkpoint=None,
              checkpoint_key: str = "", max_steps: int | None = None, progress: bool = True,
              desc: str = "ssl") -> History:
    """Self-supervised training: two views of each batch (`loader` yields (images, ...)), SGD, warm-up + cosine.

    The per-step losses end up in `learner.trace` (a `LossTrace`).

    SGD with momentum 0.9 stands in for BYOL's LARS (not in torch). The
    training loop is `kdutils.train.train`, so `checkpoint` makes it resumable
    and doubles as the cache of the finished encoder.
    """

    recipe = Recipe(optimizer="sgd", lr=lr, momentum=0.9, weight_decay=weight_decay, schedule="warmup_cosine",
                    warmup_fraction=warmup_fraction, epochs=epochs, max_steps=max_steps)
    learner.trace = LossTrace(recipe.total_steps(loader))
    view1, view2 = views

    def two_views(batch):
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        return view1(x), view2(x)

    return train(learner, learner, loader, recipe, outputs=two_views, checkpoint=checkpoint,
                 checkpoint_key=checkpoint_key, device=device, desc=desc, progress=progress,
                 on_step=lambda losses: learner.trace.record(losses["loss"]))
