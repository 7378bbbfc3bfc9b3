"""Attributions and what study 4 measures with them.

* **Exact Shapley values** of a small cooperative game (the teaching example),
  by averaging marginal contributions over every ordering of the players.
* **SHAP on a CNN, done so that it adds up.** `explain_deep` runs shap's
  `DeepExplainer` on a network from input pixels to class logits and returns,
  per image, the attribution of the winning class and its *additivity error*
  |sum of attributions - (f(x) - E[f(background)])|, always computed and
  reported. Two problems of shap 0.51 with ResNets (STUDIES.md section 5) are
  fixed here rather than hidden:
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
* **Foreground / background analysis** (`region_contributions`) and masks
  from COCO-format polygons as the VGG Image Annotator exports them
  (`polygon_mask`, `coco_polygon_masks`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .cache import cached, model_fingerprint
from .errors import ConfigError, MissingDataError
from .frozen import batches, outputs
from .train import single_cpu_thread

__all__ = [
    "marginal_contributions", "shapley_values",
    "region_contributions", "region_table", "foreground_share",
    "polygon_mask", "coco_polygon_masks", "index_from_file_name",
    "shap_safe_resnet", "check_shap_safe", "accumulating_maxpool",
    "DeepExplanation", "explain_deep", "explain_deep_cached", "explain_expected_gradients", "rank_agreement",
    "plot_attribution",
]

# ------------------------------------------------------------------ Shapley values

#: Orderings grow as n!; 9 players (362,880 orderings) is the most enumerated exactly.
MAX_PLAYERS = 9


def marginal_contributions(players: Iterable[Hashable], value: Callable[[frozenset], float]
                           ) -> list[tuple[tuple, dict]]:
    """For every ordering of `players`: what each adds to the coalition of those before it.

    Returns [(ordering, {player: value(before | {player}) - value(before)})].
    This is the definition Shapley values average, spelled out for teaching.
    """
    players = list(players)
    if len(set(players)) != len(players):
        raise ConfigError(f"players must be distinct, got {players}.")
    if len(players) > MAX_PLAYERS:
        raise ConfigError(f"exact enumeration of {len(players)}! orderings is too slow; "
                          f"at most {MAX_PLAYERS} players.")
    memo: dict[frozenset, float] = {}

    def v(coalition: frozenset) -> float:
        if coalition not in memo:
            memo[coalition] = float(value(coalition))
        return memo[coalition]

    rows = []
    for order in itertools.permutations(players):
        before, gains = frozenset(), {}
        for p in order:
            gains[p] = v(before | {p}) - v(before)
            before = before | {p}
        rows.append((order, gains))
    return rows


def shapley_values(players: Iterable[Hashable], value: Callable[[frozenset], float]) -> dict:
    """Exact Shapley values: each player's marginal contribution averaged over all orderings.

    `value` maps a frozenset of players (a coalition) to a number. The values
    sum to value(all) - value(empty) (efficiency).
    """
    players = list(players)
    rows = marginal_contributions(players, value)
    return {p: sum(gains[p] for _, gains in rows) / len(rows) for p in players}


# ------------------------------------------------- foreground / background analysis

def _pixel_map(values) -> np.ndarray:
    """(C, H, W) attributions summed over channels, or (H, W) as is; float64."""
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if v.ndim == 3:
        v = v.sum(axis=0)
    if v.ndim != 2:
        raise ValueError(f"attribution values must be (C, H, W) or (H, W), got shape {v.shape}.")
    if not np.isfinite(v).all():
        raise ValueError("attribution values hold NaN or infinite entries: the explainer failed upstream.")
    return v.astype(np.float64)


def region_contributions(values, mask) -> dict:
    """Positive, negative and net attribution inside and outside a foreground mask.

    `values`: one image's attributions, (C, H, W) (summed over the colour
    channels first, so a pixel's attribution is that of its three values
    together, as in the red/blue maps) or (H, W). `mask`: (H, W) bool, True
    on the foreground. Returns {"fg": {...}, "bg": {...}} with, per region,
    `pos` (sum of the positive pixel attributions, >= 0), `neg` (sum of the
    negative ones, <= 0) and `diff = pos - |neg|` (the region's net share).
    """
    v = _pixel_map(values)
    m = np.asarray(mask)
    if m.shape != v.shape:
        raise ValueError(f"mask shape {m.shape} does not match the attribution map {v.shape}.")
    m = m.astype(bool)
    out = {}
    for name, region in (("fg", m), ("bg", ~m)):
        r = v[region]
        pos, neg = float(r[r > 0].sum()), float(r[r < 0].sum())
        out[name] = {"pos": pos, "neg": neg, "diff": pos + neg}
    return out


def region_table(values, masks) -> dict[str, np.ndarray]:
    """`region_contributions` for a batch: {"fg_pos", "fg_neg", "fg_diff", "bg_pos", ...} -> (N,) arrays."""
    if len(values) != len(masks):
        raise ValueError(f"{len(values)} attribution maps but {len(masks)} masks.")
    rows = [region_contributions(v, m) for v, m in zip(values, masks)]
    return {f"{region}_{part}": np.array([r[region][part] for r in rows])
            for region in ("fg", "bg") for part in ("pos", "neg", "diff")}


def foreground_share(values, masks) -> np.ndarray:
    """Per image, the share of its positive attribution that lies inside the foreground mask.

    Scale-free, unlike region sums: a model whose attributions are all x0.9
    (a KD head that shrinks its logits, say) has the same shares. `values`:
    (N, C, H, W), summed over channels per pixel first as the thesis's maps
    are, or (N, H, W); `masks`: (N, H, W) boolean. NaN where an image has no
    positive attribution at all.

    >>> v = np.array([[[1.0, 3.0], [-2.0, 0.0]]])
    >>> foreground_share(v, np.array([[[True, False], [True, False]]]))
    array([0.25])
    """
    v = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    v = v.astype(np.float64)
    if v.ndim == 4:
        v = v.sum(axis=1)
    m = np.asarray(masks)
    if v.ndim != 3 or m.shape != v.shape:
        raise ValueError(f"foreground_share needs values (N, C, H, W) or (N, H, W) and masks (N, H, W) of the "
                         f"same N, H, W; got {np.shape(values)} and {m.shape}.")
    if not np.isfinite(v).all():
        raise ValueError("foreground_share got NaN or infinite attributions: the explainer failed upstream.")
    positive = np.clip(v, 0, None)
    total = positive.reshape(len(v), -1).sum(1)
    inside = (positive * m.astype(bool)).reshape(len(v), -1).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, inside / np.where(total > 0, total, 1), np.nan)


# ----------------------------------------------------------- masks from polygons

def polygon_mask(polygons, height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons (lists of x1, y1, x2, y2, ... in pixels) into one bool mask.

    Method: a pixel (row i, column j) covers the square [j, j+1) x [i, i+1)
    (COCO's convention); it is foreground when its centre (j + 0.5, i + 0.5)
    lies inside any of the polygons (matplotlib `Path.contains_points`). The
    mask's area therefore approximates the polygon's area (exact for
    rectangles with integer corners).
    """
    from matplotlib.path import Path as MplPath

    if isinstance(polygons, (list, tuple)) and polygons and isinstance(polygons[0], (int, float)):
        polygons = [polygons]
    jj, ii = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    centres = np.stack([jj.ravel(), ii.ravel()], axis=1)
    mask = np.zeros(height * width, dtype=bool)
    for poly in polygons:
        xy = np.asarray(poly, dtype=np.float64)
        if xy.ndim != 1 or xy.size < 6 or xy.size % 2:
            raise ValueError(f"a COCO polygon is a flat list of at least 3 (x, y) pairs, got {len(xy)} numbers.")
        mask |= MplPath(xy.reshape(-1, 2)).contains_points(centres)
    return mask.reshape(height, width)


def coco_polygon_masks(annotation_file) -> dict[str, np.ndarray]:
    """{image file name: foreground mask} from a COCO instances JSON with polygon segmentations.

    This is what the VGG Image Annotator (VIA) exports as "COCO format": an
    `images` list (id, file_name, width, height) and `annotations` (image_id,
    segmentation as a list of polygons). All polygons of an image are united
    (one foreground); images without annotations are left out. RLE masks
    (`iscrowd`) are not supported and raise.
    """
    path = Path(annotation_file)
    if not path.is_file():
        raise MissingDataError("foreground polygon annotations (COCO JSON)", path,
                               "Annotate the images with the VGG Image Annotator and export "
                               "'Annotations > Export annotations (COCO format)' to this path.")
    data = json.loads(path.read_text())
    images = {im["id"]: im for im in data.get("images", [])}
    polygons: dict = {}
    for ann in data.get("annotations", []):
        seg = ann.get("segmentation")
        if not isinstance(seg, list):
            raise ConfigError(f"{path}: annotation {ann.get('id')} has an RLE mask; only polygons are supported.")
        if ann["image_id"] not in images:
            raise ConfigError(f"{path}: annotation {ann.get('id')} refers to unknown image {ann['image_id']}.")
        polygons.setdefault(ann["image_id"], []).extend(seg)
    return {images[i]["file_name"]: polygon_mask(p, int(images[i]["height"]), int(images[i]["width"]))
            for i, p in polygons.items()}


def index_from_file_name(file_name: str) -> int:
    """The data-set index an annotated image stands for: the last number in its file name.

    `test_00042.png`, `cifar10/42.jpg` -> 42. Annotation files name images
    this way so that their masks can be matched to the test set.
    """
    numbers = re.findall(r"\d+", Path(file_name).stem)
    if not numbers:
        raise ConfigError(f"annotated image '{file_name}' has no index number in its name "
                          "(expected e.g. 'test_00042.png' for test image 42).")
    return int(numbers[-1])


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


def _strip_shap_attributes(model: nn.Module, before: set) -> None:
    """Remove the `x` / `y` tensors DeepExplainer leaves as parameters on nested modules."""
    for m in model.modules():
        for attr in ("x", "y"):
            if attr in m._parameters and (id(m), attr) not in before:
                del m._parameters[attr]


def explain_deep(model: nn.Module, background: torch.Tensor, images: torch.Tensor, *,
                 accumulate_maxpool: bool = True, chunk: int = 8, progress: bool = False,
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
            for start in tqdm(range(0, len(images), chunk), desc=desc, leave=False, disable=not progress):
                x = images[start:start + chunk]
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
    def digest(t: torch.Tensor) -> str:
        return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]

    key = {"model": model_fingerprint(model), "background": digest(background), "images": digest(images),
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
    return np.array([spearmanr(_pixel_map(x).ravel(), _pixel_map(y).ravel()).statistic for x, y in zip(a, b)])


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
    v = _pixel_map(values)
    vmax = float(np.abs(v).max()) if vmax is None else float(vmax)
    vmax = vmax if vmax > 0 and math.isfinite(vmax) else 1.0
    h, w = v.shape
    ax.imshow(grey, cmap="gray", alpha=0.35, extent=(-0.5, w - 0.5, h - 0.5, -0.5))
    im = ax.imshow(v, cmap=red_transparent_blue, vmin=-vmax, vmax=vmax)
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])
    return im
