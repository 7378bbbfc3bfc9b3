"""`python -m kdutils bench ssl_libs`: kornia and lightly against study 3's hand-written SSL pieces.

Issue 10 asks to adopt a well-kept library where it does the job, unless it is slower by more than
half or changes results. At study 3's `small` shapes (batch 64, 32x32 SynthWorld views, the
SSL heads' 1024 -> 128) this times each hand-written piece against its library counterpart in one
run, interleaved, the fastest of `repeats`, and prints the largest difference between their outputs
on the same inputs (for the augmentations: with our parameter draws, i.e. the same seed). Where
`kdutils.augment` (blur, solarisation) or `kdutils.ssl` (heads, EMA update, momentum schedule) adopted the
library (equal outputs, within the speed rule) "ours" is the hand-written code it replaced, kept here as the
reference.
"""

from __future__ import annotations

import copy
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from kdutils.losses import MoCoQueue, byol_loss, info_nce, negative_cosine
from kdutils.models import small_resnet
from kdutils.augment import _chance, _grayscale, _hue_rotation, _uniform, view_pair
from kdutils.ssl import BYOL, MLPHead, MoCoV2

#: the rows whose library call `kdutils.augment` or `kdutils.ssl` uses (outputs equal to the hand-written code's)
ADOPTED = ("solarize", "blur", "BYOL head, biases kept", "MoCo head", "EMA update", "cosine momentum")


def run(batch: int = 64, size: int = 32, hidden: int = 1024, proj: int = 128, queue: int = 1024,
        repeats: int = 30) -> dict:
    """Print and return, per piece, the library's time over ours and the largest output difference."""
    import kornia.augmentation as K

    torch.manual_seed(0)
    x = torch.rand(batch, 3, size, size)
    t1, t2 = view_pair("synthworld", out_size=size)
    modules = [_kornia_views(K, t, size) for t in (t1, t2)]
    rows = {"views, random modules (own draws)": (lambda: (t1(x), t2(x)), lambda: [m(x) for m in modules], None)}
    rows.update(_colour_ops(x, t1))
    rows.update(_lightly_pieces(batch, hidden, proj, queue))
    result = {}
    print(f"SSL pieces at batch {batch}, {size}x{size}, heads {hidden} -> {proj}, queue {queue}, "
          f"{torch.get_num_threads()} threads; library time / ours (fastest of {repeats}, interleaved):")
    for name, (ours, lib, compare) in rows.items():
        ours_s, lib_s, diff = _race(ours, lib, compare, repeats)
        result[name] = {"ours_ms": 1e3 * ours_s, "library_ms": 1e3 * lib_s, "ratio": lib_s / ours_s,
                        "max_abs_diff": diff, "adopted": name.startswith(ADOPTED)}
        same = "n/a (different draws)" if diff is None else f"max |diff| {diff:.2e}"
        same += "  (adopted)" if name.startswith(ADOPTED) else ""
        print(f"  {name:<54} ours {1e3 * ours_s:8.3f} ms  library {1e3 * lib_s:8.3f} ms  "
              f"ratio {lib_s / ours_s:5.2f}  {same}")
    return result


def _race(ours, lib, compare, repeats: int) -> tuple[float, float, float | None]:
    """Fastest time of each (alternating calls) and the largest difference of their outputs."""
    best = [float("inf"), float("inf")]
    for _ in range(repeats):
        for i, fn in enumerate((ours, lib)):
            t0 = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - t0)
    diff = None if compare is None else float(compare(ours(), lib()))
    return best[0], best[1], diff


def _seeded(fn):
    """`fn` run from the same generator state every call, so two implementations see the same draws."""
    def call():
        torch.manual_seed(1)
        return fn()
    return call


def _max_diff(a, b) -> float:
    return (a - b).abs().max().item() if isinstance(a, torch.Tensor) else abs(a - b)


def _kornia_views(K, t, size: int):
    """kornia's random modules for the same knobs as `t` (per-sample draws, kornia's own)."""
    return K.AugmentationSequential(
        K.RandomResizedCrop((size, size), scale=t.crop_scale, ratio=t.crop_ratio),
        K.RandomRotation(t.rotation), K.RandomHorizontalFlip(p=t.flip_p),
        K.ColorJitter(t.brightness, t.contrast, t.saturation, t.hue, p=t.jitter_p),
        K.RandomGrayscale(p=t.gray_p),
        K.RandomGaussianBlur((t.blur_kernel or 3,) * 2, t.blur_sigma, p=t.blur_p),
        *([K.RandomSolarize(thresholds=0.0, additions=0.0, p=t.solarize_p)] if t.solarize_p else []),
        same_on_batch=False)


def _colour_ops(x: torch.Tensor, t) -> dict:
    """kornia's deterministic ops given our parameter draws, each against our formula."""
    from kornia.color import rgb_to_grayscale
    from kornia.enhance import (adjust_contrast, adjust_contrast_with_mean_subtraction, adjust_hue,
                                adjust_saturation_with_gray_subtraction, solarize)

    n = len(x)
    f = torch.empty(n).uniform_(0.6, 1.4).view(-1, 1, 1, 1)
    angle = torch.empty(n).uniform_(-math.pi, math.pi)
    on = torch.rand(n) < 0.2
    mean, gray = _grayscale(x).mean((2, 3), keepdim=True), _grayscale(x)
    return {
        "grayscale: kornia.color.rgb_to_grayscale": (lambda: _grayscale(x), lambda: rgb_to_grayscale(x), _max_diff),
        "brightness (x f): enhance.adjust_contrast": (lambda: (x * f).clamp(0, 1),
                                                      lambda: adjust_contrast(x, f.view(-1)), _max_diff),
        "contrast: adjust_contrast_with_mean_subtraction": (
            lambda: ((x - mean) * f + mean).clamp(0, 1),
            lambda: adjust_contrast_with_mean_subtraction(x, f.view(-1)), _max_diff),
        "saturation: adjust_saturation_with_gray_subtr.": (
            lambda: ((x - gray) * f + gray).clamp(0, 1),
            lambda: adjust_saturation_with_gray_subtraction(x, f.view(-1)), _max_diff),
        "hue: enhance.adjust_hue (HSV, not a rotation)": (
            lambda: torch.einsum("nij,njhw->nihw", _hue_rotation(angle), x).clamp(0, 1),
            lambda: adjust_hue(x, angle), _max_diff),
        "solarize: enhance.solarize (threshold 2 = off)": (
            lambda: torch.where(on.view(-1, 1, 1, 1) & (x >= 0.5), 1.0 - x, x),
            lambda: solarize(x, torch.where(on, 0.5, 2.0)), _max_diff),
        "blur, our draws: gaussian kernel + filter2d_separable": (
            _seeded(lambda: _hand_blur(t, x)), _seeded(lambda: t.blur(x)), _max_diff),
        "colour + blur, our draws: kornia ops": (
            _seeded(lambda: t.blur(t.colour(x))), _seeded(lambda: _kornia_colour_blur(t, x)), _max_diff),
    }


def _hand_blur(t, x: torch.Tensor) -> torch.Tensor:
    """The hand-written blur `t.blur` replaced: the same draws, kernels and reflect padding, grouped convolutions."""
    n, c, hgt, wid = x.shape
    k = t.blur_kernel or max(3, int(0.1 * wid) // 2 * 2 + 1)
    sigma = _uniform(n, *t.blur_sigma, x.device)
    offsets = torch.arange(k, device=x.device, dtype=x.dtype) - k // 2
    kernel = torch.exp(-offsets.view(1, -1) ** 2 / (2 * sigma.view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand(n, k)
    kernel = torch.where(_chance(n, t.blur_p, x.device).view(-1, 1), kernel, identity).repeat_interleave(c, 0)
    pad, y = k // 2, x.reshape(1, n * c, hgt, wid)
    y = F.conv2d(F.pad(y, (pad, pad, 0, 0), mode="reflect"), kernel.view(n * c, 1, 1, k), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, pad, pad), mode="reflect"), kernel.view(n * c, 1, k, 1), groups=n * c)
    return y.reshape(n, c, hgt, wid)


def _kornia_colour_blur(t, x: torch.Tensor) -> torch.Tensor:
    """`t.blur(t.colour(x))` with kornia's colour ops, drawing exactly as ours does (hue stays ours)."""
    from kornia.color import rgb_to_grayscale
    from kornia.enhance import (adjust_contrast, adjust_contrast_with_mean_subtraction,
                                adjust_saturation_with_gray_subtraction)

    n = len(x)
    on = _chance(n, t.jitter_p, x.device)

    def factor(strength):
        f = _uniform(n, max(0.0, 1 - strength), 1 + strength, x.device)
        return torch.where(on, f, torch.ones_like(f))

    x = adjust_contrast(x, factor(t.brightness))
    x = adjust_contrast_with_mean_subtraction(x, factor(t.contrast))
    x = adjust_saturation_with_gray_subtraction(x, factor(t.saturation))
    turns = torch.where(on, _uniform(n, -t.hue, t.hue, x.device), torch.zeros(n))
    x = torch.einsum("nij,njhw->nihw", _hue_rotation(turns * 2 * math.pi), x).clamp(0, 1)
    x = torch.where(_chance(n, t.gray_p, x.device).view(-1, 1, 1, 1), rgb_to_grayscale(x).expand_as(x), x)
    return t.blur(x)


def _lightly_pieces(batch: int, hidden: int, proj: int, queue: int) -> dict:
    """lightly's heads, losses, momentum update and schedule against ours on the same weights and inputs."""
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules.heads import BYOLProjectionHead

    encoder = small_resnet("resnet_m")
    dim = encoder.feature_dim
    z = torch.randn(batch, dim)
    p, t = torch.randn(batch, proj), torch.randn(batch, proj)
    torch.manual_seed(2)  # hand-written heads and the library's (`MLPHead` is a ProjectionHead), one seed each
    ours_head = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, proj))
    torch.manual_seed(2)
    lib_head = MLPHead(dim, hidden, proj)
    byol_head = BYOLProjectionHead(dim, hidden, proj)
    torch.manual_seed(3)
    moco_ours = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, proj))
    torch.manual_seed(3)
    moco_lib = MoCoV2(nn.Identity(), dim, hidden, proj, queue_size=queue).online[1]
    torch.manual_seed(4)
    bank = MoCoQueue(proj, queue)
    torch.manual_seed(4)
    ntxent = NTXentLoss(temperature=0.2, memory_bank_size=(queue, proj))
    learner = BYOL(encoder, dim, hidden, proj, momentum=0.99, total_steps=100)
    with torch.no_grad():
        for q in learner.online.parameters():
            q.add_(torch.randn_like(q))
    targets = [copy.deepcopy(learner.target) for _ in range(2)]

    @torch.no_grad()
    def ema_ours():
        for po, pt in zip(learner.online.parameters(), targets[0].parameters()):
            pt.mul_(0.99).add_(po.detach(), alpha=1 - 0.99)
        return torch.cat([q.flatten() for q in targets[0].parameters()])

    def ema_lib():
        learner.target = targets[1]
        learner.update_target(0.99)
        return torch.cat([q.flatten() for q in targets[1].parameters()])

    def momenta(schedule):
        values = []
        for step in range(101):
            learner.step.fill_(step + 1)  # the update applied at step + 1 is the one for `step`
            values.append(schedule())
        return torch.tensor(values, dtype=torch.float64)

    def momentum_ours():  # BYOL's 1 - (1 - base) (cos(pi step / total) + 1) / 2, as `cosine_momentum` wrote it
        progress = min(1.0, (int(learner.step) - 1) / 100)
        return 1 - (1 - 0.99) * (math.cos(math.pi * progress) + 1) / 2

    return {
        "BYOL head, biases kept: lightly ProjectionHead": (_train_forward(ours_head, z),
                                                           _train_forward(lib_head, z), _max_diff),
        "BYOL head: BYOLProjectionHead (no bias, other init)": (_train_forward(ours_head, z),
                                                                _train_forward(byol_head, z), None),
        "MoCo head: MoCoProjectionHead": (lambda: moco_ours(z), lambda: moco_lib(z), _max_diff),
        "negative cosine: NegativeCosineSimilarity": (lambda: negative_cosine(p, t),
                                                      lambda: NegativeCosineSimilarity()(p, t), _max_diff),
        "BYOL loss: 2 + 2 NegativeCosineSimilarity": (lambda: byol_loss(p, t),
                                                      lambda: 2 + 2 * NegativeCosineSimilarity()(p, t), _max_diff),
        "InfoNCE + queue: NTXentLoss(memory bank)": (lambda: info_nce(p, t, bank.keys.clone(), 0.2),
                                                     lambda: ntxent(p, t), _max_diff),
        "EMA update (BYOL online -> target): update_momentum": (ema_ours, ema_lib, _max_diff),
        "cosine momentum: cosine_schedule (101 steps)": (lambda: momenta(momentum_ours),
                                                         lambda: momenta(learner.current_momentum), _max_diff),
    }


def _train_forward(head: nn.Module, z: torch.Tensor):
    """A head's forward in training mode (batch statistics), as BYOL runs it."""
    return lambda: head.train()(z)
