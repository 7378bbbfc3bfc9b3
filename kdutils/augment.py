"""Batched tensor augmentations that run where the batch is (CPU or GPU).

Per-image PIL pipelines cost more than the tiny networks of the `small`
profile; these operate on a whole (N, 3, H, W) float batch at once and draw
their randomness from torch's global generator, so a seed fixes them.

* `flip_shift`: the CIFAR-style training augmentation (supervised pretraining).
* `ViewAugment`: the self-supervised views, random resized crop (+ optional
  rotation) and flip in one `grid_sample`, colour jitter, grayscale, Gaussian
  blur, solarisation; the BYOL/SimCLR recipe (`VIEW_PRESETS["imagenet"]`) and
  one matched to SynthWorld's invariances (`VIEW_PRESETS["synthworld"]`: see
  its comment), as pairs of views by `view_pair`.

Blur and solarisation are kornia's ops on our parameter draws: `python -m
kdutils bench ssl_libs` shows them equal to the hand-written code they
replaced, and why the rest stays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from kornia.enhance import solarize
from kornia.filters import filter2d_separable, get_gaussian_kernel1d

from .errors import ConfigError
from .parallel import per_example

__all__ = ["random_flip", "random_shift", "flip_shift", "as_float_images", "ViewAugment", "VIEW_PRESETS",
           "view_pair"]


def random_flip(x: torch.Tensor, p: float = 0.5) -> torch.Tensor:
    """Mirror each image left-right with probability p."""
    flip = torch.rand(x.shape[0], device=x.device) < p
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def random_shift(x: torch.Tensor, max_shift: int = 2) -> torch.Tensor:
    """Translate each image by up to `max_shift` pixels (reflect padding), as a padded random crop."""
    n, _, h, w = x.shape
    padded = F.pad(x, (max_shift,) * 4, mode="reflect")
    dy = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), device=x.device)
    rows = (torch.arange(h, device=x.device).view(1, h) + dy.view(n, 1))  # (n, h)
    cols = (torch.arange(w, device=x.device).view(1, w) + dx.view(n, 1))  # (n, w)
    idx = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded.permute(0, 2, 3, 1)[idx, rows.view(n, h, 1), cols.view(n, 1, w)]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).contiguous()


def flip_shift(x: torch.Tensor) -> torch.Tensor:
    """The standard CIFAR-style training augmentation: a random mirror, then a shift of up to 2 pixels."""
    return random_shift(random_flip(x), 2)


_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def as_float_images(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (0..255) -> float32 in [0, 1]; float images pass through as float32."""
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


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
