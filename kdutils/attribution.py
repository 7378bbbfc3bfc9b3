"""SHAP attributions of study 4's heads, computed so that they add up.

* **SHAP on a CNN, done so that it adds up.** `explain_deep` runs shap's
  `DeepExplainer` on a network from input pixels to class logits and returns,
  per image, the attribution of the winning class and its *additivity error*
  |sum of attributions - (f(x) - E[f(background)])|, always computed and
  reported, and judged relative to the mean |f(x) - E f| (scale-free).
  Two problems of shap 0.51 with ResNets (STUDIES.md section 5) are fixed
  here rather than hidden:
    - torchvision's ResNet blocks use in-place ReLUs, an in-place residual add
      and one ReLU module twice per block, which corrupts the activations
      DeepExplainer stores; `shap_safe_resnet` rebuilds the blocks with
      separate non-in-place ReLUs and an out-of-place add (same numbers), and
      `check_shap_safe` refuses models that still reuse a module.
    - shap's max-pool rule unpools with `max_unpool`, which *overwrites* where
      the windows of an overlapping pool (ResNet's stem, 3x3 stride 2) share
      an arg-max, so the explanations stop adding up (errors ~1e-2).
      `accumulating_maxpool()` swaps in, reversibly, the same DeepLIFT rule
      computed with the autograd of `max_pool2d`, which *adds* the shares:
      errors fall to float rounding (~1e-7).
  shap's own additivity check is not used because with `ranked_outputs` it
  compares the explained (winning) class with class 0, 1, ... in turn; the
  error is computed here for the class actually explained.
* **A second method** (`explain_expected_gradients`: shap's GradientExplainer,
  expected gradients) and `rank_agreement` between two maps, to cross-check.
Exact Shapley values of a small game (the teaching example) are in `kdutils.shapley`; the
foreground / background analysis and the polygon masks in `kdutils.attribution_regions`.
"""

from __future__ import annotations

import contextlib
import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .cache import cached, content_digest, model_fingerprint
from .attribution_regions import pixel_map
from .errors import ConfigError
from .frozen import batches, outputs
from .train import single_cpu_thread

__all__ = [
    "shap_safe_resnet", "check_shap_safe", "accumulating_maxpool",
    "DeepExplanation", "explain_deep", "explain_deep_cached", "explain_expected_gradients", "rank_agreement",
    "plot_attribution",
]

# --------------------------------------------------------------- SHAP-safe models

class _SafeBasicBlock(nn.Module):
    """torchvision BasicBlock with its own ReLU per use and an out-of-place residual add."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2 = block.conv1, block.bn1, block.conv2, block.bn2
        self.downsample = block.downsample if block.downsample is not None else nn.Identity()
        self.relu1, self.relu2 = nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.downsample(x))


class _SafeBottleneck(nn.Module):
    """torchvision Bottleneck (ResNet-50, WideResNet) rebuilt the same way."""

    def __init__(self, block: nn.Module):
        super().__init__()
        for name in ("conv1", "bn1", "conv2", "bn2", "conv3", "bn3"):
            setattr(self, name, getattr(block, name))
        self.downsample = block.downsample if block.downsample is not None else nn.Identity()
        self.relu1, self.relu2, self.relu3 = nn.ReLU(), nn.ReLU(), nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu3(out + self.downsample(x))


def shap_safe_resnet(model: nn.Module) -> nn.Module:
    """A copy of a torchvision ResNet that DeepExplainer can trace; it computes the same outputs.

    Every BasicBlock / Bottleneck is rebuilt with separate, non-in-place ReLUs
    and `out + identity` instead of `out += identity`; every other in-place
    ReLU becomes non-in-place. Weights are shared with nothing (deep copy).
    """
    from torchvision.models.resnet import BasicBlock, Bottleneck

    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, BasicBlock):
                setattr(module, child_name, _SafeBasicBlock(child))
            elif isinstance(child, Bottleneck):
                setattr(module, child_name, _SafeBottleneck(child))
            elif isinstance(child, nn.ReLU) and child.inplace:
                setattr(module, child_name, nn.ReLU())
    return model


def check_shap_safe(model: nn.Module, example: torch.Tensor) -> None:
    """Raise if DeepExplainer would silently mis-trace `model`.

    Checks, with one forward pass on `example`, that no module is in place
    and that no leaf module is called more than once (a reused ReLU
    overwrites the activations DeepExplainer stores). In-place tensor ops in
    `forward` code cannot be seen this way; `shap_safe_resnet` removes
    torchvision's.
    """
    inplace = [n for n, m in model.named_modules() if getattr(m, "inplace", False)]
    if inplace:
        raise ConfigError(f"modules {inplace[:5]} are in place; DeepExplainer needs out-of-place "
                          "modules (use kdutils.attribution.shap_safe_resnet for torchvision ResNets).")
    calls: dict[str, int] = {}
    leaves = [(n, m) for n, m in model.named_modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: calls.__setitem__(n, calls.get(n, 0) + 1))
               for n, m in leaves]
    try:
        with torch.no_grad():
            model(example)
    finally:
        for h in handles:
            h.remove()
    reused = [n for n, c in calls.items() if c > 1]
    if reused:
        raise ConfigError(f"modules {reused[:5]} are called more than once per forward pass; DeepExplainer "
                          "needs one module per use (use kdutils.attribution.shap_safe_resnet).")


def _accumulating_maxpool_rule(module, grad_input, grad_output):
    """DeepLIFT's rule for max-pooling, with overlapping windows *summed*.

    As in shap: the output change y - y_ref is split into (max(y, y_ref) - y_ref),
    credited to the input's arg-max, and (y - max(y, y_ref)), credited to the
    reference's arg-max; the multiplier is the credit over the input change.
    The credits are placed with the autograd of `max_pool`, which adds them
    where windows share an arg-max (shap's `max_unpool` keeps only one).
    """
    pool = {"MaxPool1d": F.max_pool1d, "MaxPool2d": F.max_pool2d, "MaxPool3d": F.max_pool3d}[
        type(module).__name__]
    x = module.x.detach()
    half = x.shape[0] // 2
    delta_in = x[:half] - x[half:]
    y, y_ref = torch.chunk(module.y.detach(), 2)
    cross = torch.max(y, y_ref)
    credit = torch.cat([cross - y_ref, y - cross], 0)
    with torch.enable_grad():
        xg = x.clone().requires_grad_(True)
        out = pool(xg, module.kernel_size, module.stride, module.padding, module.dilation, module.ceil_mode)
        (placed,) = torch.autograd.grad(out, xg, grad_outputs=grad_output[0] * credit)
    x_part, ref_part = torch.chunk(placed, 2)
    multipliers = torch.where(delta_in.abs() < 1e-7, torch.zeros_like(delta_in), (x_part + ref_part) / delta_in)
    grads = [None] * len(grad_input)
    grads[0] = multipliers.repeat((2,) + (1,) * (x.dim() - 1))
    return tuple(grads)


# shap decides from the handler's *name* whether to store a module's input and
# output ("maxpool" and "nonlinear_1d" do); the replacement must keep that name.
_accumulating_maxpool_rule.__name__ = "maxpool"


@contextlib.contextmanager
def accumulating_maxpool(enabled: bool = True):
    """Within this block, shap's DeepExplainer uses the accumulating max-pool rule.

    Also registers the lab's `Normalize` (resize + affine: a linear map) as
    linear, and turns cuDNN's TF32 off so that GPU sums add up to float32
    precision. Everything is restored on exit. `enabled=False` keeps shap's
    own max-pool rule (to show the additivity errors it causes).
    """
    from shap.explainers._deep import deep_pytorch

    handlers = deep_pytorch.op_handler
    saved = dict(handlers)
    tf32 = torch.backends.cudnn.allow_tf32
    try:
        if enabled:
            for name in ("MaxPool1d", "MaxPool2d", "MaxPool3d"):
                handlers[name] = _accumulating_maxpool_rule
        handlers["Normalize"] = deep_pytorch.linear_1d
        torch.backends.cudnn.allow_tf32 = False
        yield
    finally:
        handlers.clear()
        handlers.update(saved)
        torch.backends.cudnn.allow_tf32 = tf32


# ------------------------------------------------------------------ explanations

@dataclass
class DeepExplanation:
    """Attributions of the winning class for a batch of images.

    `values` (N, C, H, W) float32; `classes` (N,) the explained (arg-max)
    class; `outputs` f(x) of that class; `expected` E[f(background)] of that
    class; `additivity_error` |values.sum() - (outputs - expected)| per image.
    """

    values: np.ndarray
    classes: np.ndarray
    outputs: np.ndarray
    expected: np.ndarray
    additivity_error: np.ndarray
    method: str

    @property
    def relative_additivity_error(self) -> float:
        """The largest additivity error over the images / the mean |f(x) - E f| of the same images.

        Scale-free, so a verdict on it does not change when a model's logits are rescaled (attributions,
        errors and output differences all scale together); the absolute error would.
        """
        scale = float(np.abs(self.outputs - self.expected).mean())
        if scale == 0.0:
            raise ValueError("every explained output equals its expected value: the relative additivity error "
                             "is undefined; explain images the model does not map to its background mean.")
        return float(self.additivity_error.max()) / scale


def _strip_shap_attributes(model: nn.Module, before: set) -> None:
    """Remove the `x` / `y` tensors DeepExplainer leaves as parameters on nested modules."""
    for m in model.modules():
        for attr in ("x", "y"):
            if attr in m._parameters and (id(m), attr) not in before:
                del m._parameters[attr]


def explain_deep(model: nn.Module, background: torch.Tensor, images: torch.Tensor, *,
                 accumulate_maxpool: bool = True, progress: bool = False,
                 desc: str = "DeepExplainer") -> DeepExplanation:
    """shap.DeepExplainer attributions of each image's winning class (`ranked_outputs=1`).

    `model` maps images to logits (the whole network: a frozen backbone and a
    trained head together); it is checked with `check_shap_safe` and left
    unchanged (shap's leftover tensors are removed). Inputs are on the
    model's device. The additivity error of every image is returned.
    """
    import shap

    model.eval()
    check_shap_safe(model, background[:2])
    before = {(id(m), a) for m in model.modules() for a in ("x", "y") if a in m._parameters}
    parts = []
    try:
        with accumulating_maxpool(accumulate_maxpool), single_cpu_thread(images.device):
            explainer = shap.DeepExplainer(model, background)
            expected_all = np.asarray(explainer.expected_value, dtype=np.float64)
            for x in tqdm(batches(images, 8), desc=desc, leave=False, disable=not progress):
                # The additivity error is computed below for the class explained
                # (shap's own check compares it with the wrong classes under ranked_outputs).
                values, ranks = explainer.shap_values(x, ranked_outputs=1, check_additivity=False)
                parts.append((np.asarray(values)[..., 0], ranks[:, 0].cpu().numpy()))
    finally:
        _strip_shap_attributes(model, before)
    values = np.concatenate([p[0] for p in parts]).astype(np.float32)
    classes = np.concatenate([p[1] for p in parts]).astype(np.int64)
    logits = outputs(model, batches(images, 64)).double().numpy()
    explained = logits[np.arange(len(classes)), classes]
    expected = expected_all[classes]
    error = np.abs(values.astype(np.float64).reshape(len(values), -1).sum(1) - (explained - expected))
    method = "DeepExplainer (DeepLIFT rescale, accumulating max-pool)" if accumulate_maxpool else \
        "DeepExplainer (shap 0.51 max-pool rule)"
    return DeepExplanation(values, classes, explained, expected, error, method)


def explain_deep_cached(model: nn.Module, background: torch.Tensor, images: torch.Tensor,
                        **kwargs) -> DeepExplanation:
    """`explain_deep`, stored on disk by the model's weights, the background, the images and this code.

    DeepExplainer is study 4's costliest step and every seed's heads are explained: a rerun of the same
    heads (a warm run, a sweep's merge) loads the attributions instead of recomputing them.
    """
    key = {"model": model_fingerprint(model), "background": content_digest(background),
           "images": content_digest(images),
           "accumulate_maxpool": kwargs.get("accumulate_maxpool", True)}
    return cached("shap", key, lambda: explain_deep(model, background, images, **kwargs), verbose=False)


def explain_expected_gradients(model: nn.Module, background: torch.Tensor, images: torch.Tensor,
                               classes, *, nsamples: int = 200, seed: int = 0) -> np.ndarray:
    """shap.GradientExplainer (expected gradients) attributions of the given classes, (N, C, H, W).

    Explains the arg-max class of each image and checks that it is the one in
    `classes` (so maps from two methods compare like with like). The sampling
    is seeded; NumPy's global random state is restored afterwards.
    """
    import shap

    model.eval()
    state = np.random.get_state()
    try:
        with single_cpu_thread(images.device):
            explainer = shap.GradientExplainer(model, background)
            values, ranks = explainer.shap_values(images, nsamples=nsamples, ranked_outputs=1, rseed=seed)
    finally:
        np.random.set_state(state)
    ranks = np.asarray(ranks)[:, 0]
    if not np.array_equal(ranks, np.asarray(classes)):
        raise RuntimeError("GradientExplainer explained other classes than expected; are the models the same?")
    return np.asarray(values)[..., 0].astype(np.float32)


def rank_agreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation between two methods' pixel maps, one value per image.

    Maps are (N, C, H, W) or (N, H, W) and are summed over channels first.
    """
    from scipy.stats import spearmanr

    if len(a) != len(b):
        raise ValueError(f"{len(a)} and {len(b)} maps cannot be paired.")
    return np.array([spearmanr(pixel_map(x).ravel(), pixel_map(y).ravel()).statistic for x, y in zip(a, b)])


# ------------------------------------------------------------------------ display

def plot_attribution(ax, image, values, title: str, vmax: float | None = None):
    """shap's red (positive) / blue (negative) map of one image, over its grey-scale picture.

    `image` is (3, H, W) in [0, 1] (de-normalised); `values` (C, H, W) or
    (H, W), summed over channels. `vmax` fixes the colour scale so that maps
    of two models on the same image compare (default: this map's max |value|).
    """
    from shap.plots.colors import red_transparent_blue

    img = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    grey = img.mean(axis=0) if img.shape[0] == 3 else img.mean(axis=-1)
    v = pixel_map(values)
    vmax = float(np.abs(v).max()) if vmax is None else float(vmax)
    vmax = vmax if vmax > 0 and math.isfinite(vmax) else 1.0
    h, w = v.shape
    ax.imshow(grey, cmap="gray", alpha=0.35, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    im = ax.imshow(v, cmap=red_transparent_blue, vmin=-vmax, vmax=vmax)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return im
