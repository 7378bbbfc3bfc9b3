"""Where an attribution map puts its weight: foreground against background (study 4's H2), and the
foreground masks, from COCO-format polygons as the VGG Image Annotator exports them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import torch

from .errors import ConfigError, MissingDataError

__all__ = ["pixel_map", "region_contributions", "region_table", "foreground_share", "polygon_mask",
           "coco_polygon_masks", "index_from_file_name"]

def pixel_map(values) -> np.ndarray:
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
    v = pixel_map(values)
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
    v = v.astype(np.float64)  # before the channel sum, unlike pixel_map: reusing it would move the shares' low bits
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
