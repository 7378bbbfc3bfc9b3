"""SynthWorld's renderer: the attributes ``synthworld.generate`` draws -> images and masks.

``draw_params`` draws what only the picture shows (background pattern phases,
distractor and occluder placement and colours) from generate's random stream;
``render`` paints in chunks with array operations over a pixel grid: inside
tests on rotated, scaled and shifted coordinates, grouped by (shape,
modifier). There is no per-image Python loop in the image path.

Drawing choices (where this departs from the first sketch, and why):

* ``diamond`` is a tall rhombus, not a square turned by 45 degrees, so that
  square, diamond and cross stay distinct under the world's +-20 degree
  rotation.
* Hollow shapes are outlined with a stroke of ``max(1, size // 32)`` pixels
  (binary erosion of the filled mask), so the outline stays visible at every
  object scale; small hollow thin shapes (cross, crescent) are hard on
  purpose.
* Distractors are small blobs painted *behind* the object in a colour other
  than the object's, so they never change the mask and cannot pass for the
  same-colour dot of the "with a dot" source classes.
* The occluding bar is cancelled for an image when it would hide more than
  half of the object, so every mask is non-empty.

The vocabulary and palettes come from ``synthworld`` (which imports this
module inside ``generate``, so there is no import cycle at load time).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
from scipy import ndimage

from .synthworld import (_FG_RGB, _MAX_DISTRACTORS, BACKGROUNDS, BG_COLORS, COLORS, MODIFIERS, SHAPES, WorldConfig,
                         _other)

__all__ = ["draw_params", "render"]

_BG_RGB = np.array(list(BG_COLORS.values()), np.float32)
_PATTERN_AMPLITUDE = 0.4
_CHUNK = 256  # images rendered together: big enough for NumPy, small for cache


# --------------------------------------------------------------------------
# Geometry: inside tests in the object's unit frame (x right, y up, radius 1)
# --------------------------------------------------------------------------

def _polygon(vertices) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    """Inside test (crossing number) for a simple polygon."""
    v = np.asarray(vertices, np.float32)
    edges = [(v[i], v[i - 1]) for i in range(len(v)) if v[i, 1] != v[i - 1, 1]]

    def inside(x, y):
        result = np.zeros(x.shape, bool)
        for (xi, yi), (xj, yj) in edges:
            slope = (xj - xi) / (yj - yi)
            crosses = (yi > y) != (yj > y)
            crosses &= x < xi + (y - yi) * slope
            result ^= crosses
        return result
    return inside


def _disc(cx, cy, r):
    return lambda x, y: (x - cx) ** 2 + (y - cy) ** 2 < r * r


def _box(hx, hy):
    return lambda x, y: (np.abs(x) < hx) & (np.abs(y) < hy)


def _star_vertices(points=5, outer=1.0, inner=0.45):
    angles = np.pi / 2 + np.arange(2 * points) * np.pi / points
    radii = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], 1)


_circle = _disc(0.0, 0.0, 0.85)
_square = _box(0.7, 0.7)
_triangle = _polygon([(0.0, 1.0), (-0.92, -0.6), (0.92, -0.6)])
_star = _polygon(_star_vertices())
_cross_h, _cross_v = _box(0.95, 0.32), _box(0.32, 0.95)
_diamond = _polygon([(0.0, 1.0), (-0.6, 0.0), (0.0, -1.0), (0.6, 0.0)])
_heart_l, _heart_r = _disc(-0.42, 0.32, 0.46), _disc(0.42, 0.32, 0.46)
_heart_tip = _polygon([(-0.86, 0.18), (0.0, -0.92), (0.86, 0.18)])
_moon, _moon_cut = _disc(0.0, 0.0, 0.9), _disc(0.42, 0.18, 0.72)
_arrow = _polygon([(-0.95, 0.25), (0.1, 0.25), (0.1, 0.7), (0.95, 0.0),
                   (0.1, -0.7), (0.1, -0.25), (-0.95, -0.25)])
_hourglass = _polygon([(-0.75, 0.95), (0.75, 0.95), (0.09, 0.0),
                       (0.75, -0.95), (-0.75, -0.95), (-0.09, 0.0)])

_SHAPE_INSIDE = {
    "circle": _circle,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "cross": lambda x, y: _cross_h(x, y) | _cross_v(x, y),
    "diamond": _diamond,
    "heart": lambda x, y: _heart_l(x, y) | _heart_r(x, y) | _heart_tip(x, y),
    "crescent": lambda x, y: _moon(x, y) & ~_moon_cut(x, y),
    "arrow": _arrow,
    "hourglass": _hourglass,
}
_dot = _disc(0.74, 0.0, 0.24)
_bar = _box(0.85, 0.13)


def _object_inside(shape: str, modifier: str | None, x, y) -> np.ndarray:
    """Filled object (before hollowing) in the unit frame of the composite."""
    inside = _SHAPE_INSIDE[shape]
    if modifier in (None, "hollow"):
        return inside(x, y)
    if modifier == "wide":
        return inside(x, y / 0.55)
    if modifier == "tall":
        return inside(x / 0.55, y)
    if modifier == "dot":
        return inside((x + 0.32) / 0.66, y / 0.66) | _dot(x, y)
    if modifier == "double":
        return inside((x + 0.5) / 0.5, y / 0.5) | inside((x - 0.5) / 0.5, y / 0.5)
    return inside(x / 0.7, (y - 0.28) / 0.7) | _bar(x, y + 0.82)  # "bar"


# --------------------------------------------------------------------------
# Backgrounds: a pattern in [0, 1] per pixel, brightening the base colour
# --------------------------------------------------------------------------

def _frac(a):
    return a - np.floor(a)


def _background_pattern(kind: str, X, Y, p, grass, upsample) -> np.ndarray:
    """Pattern (m, H, W) for ``m`` images of one kind; p is (m, 4) in [0, 1)."""
    p0, p1, p2, p3 = (p[:, k, None, None] for k in range(4))
    if kind == "plain":
        return np.zeros((len(p),) + X.shape, np.float32)
    if kind == "gradient":  # sky: lighter towards the top, slightly tilted
        angle = (p0 - 0.5) * (np.pi / 3)
        return np.clip(0.5 + X * np.sin(angle) + Y * np.cos(angle), 0.0, 1.0)
    if kind == "wavy":  # water: horizontal bands with a sinusoidal wobble
        wobble = 0.06 * np.sin(2 * np.pi * ((1.5 + p2) * X + p3))
        return 0.5 + 0.5 * np.sin(2 * np.pi * ((2.5 + 1.5 * p1) * (Y + wobble) + p0))
    if kind == "grassy":  # grass: vertical streaks of smooth random values
        h_interp, w_interp = upsample
        return h_interp @ grass @ w_interp.T
    if kind == "striped":
        angle = p0 * np.pi
        period = 0.18 + 0.1 * p1
        return _frac((X * np.cos(angle) + Y * np.sin(angle)) / period + p2) < 0.5
    if kind == "checkered":
        period = 0.2 + 0.1 * p1
        return (np.floor(X / period + p2) + np.floor(Y / period + p3)) % 2
    if kind == "dotted":
        period = 0.2 + 0.08 * p1
        return (_frac(X / period + p2) - 0.5) ** 2 + (_frac(Y / period + p3) - 0.5) ** 2 < 0.08
    if kind == "ringed":
        radius = np.sqrt((X - p2 + 0.5) ** 2 + (Y - p3 + 0.5) ** 2)
        return _frac(radius / (0.15 + 0.1 * p1) + p0) < 0.5
    if kind == "tiled":
        period = 0.22 + 0.1 * p1
        return np.minimum(_frac(X / period + p2), _frac(Y / period + p3)) < 0.22
    # zigzag: horizontal stripes folded by a triangle wave
    fold = 0.1 * np.abs(2 * _frac(X / 0.2 + p2) - 1)
    return _frac((Y + fold) / (0.2 + 0.08 * p1) + p3) < 0.5


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """Linear interpolation matrix (n_out, n_in) spanning the image."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    w = (pos - lo).astype(np.float32)
    m = np.zeros((n_out, n_in), np.float32)
    m[np.arange(n_out), lo] = 1 - w
    m[np.arange(n_out), lo + 1] = w
    return m


# --------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------

def draw_params(rng, a: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-image rendering parameters (not attributes a caption would state), drawn after the attributes ``a``."""
    n = len(a["shape"])
    return {
        "bg": rng.random((n, 4)).astype(np.float32),
        "grass": rng.random((n, 4, 12)).astype(np.float32),
        "distractor": rng.random((n, _MAX_DISTRACTORS, 4)).astype(np.float32),
        "distractor_color": np.stack([_other(rng, a["color"], len(COLORS))
                                      for _ in range(_MAX_DISTRACTORS)], 1),
        "occluder": rng.random((n, 3)).astype(np.float32),
        "occluder_color": _other(rng, a["color"], len(COLORS)),
    }


def render(a: dict[str, np.ndarray], params: dict[str, np.ndarray], cfg: WorldConfig,
           rng) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, 3) uint8 and visible-object masks (N, H, W) of attributes ``a``, in chunks.

    ``rng`` draws the pixel noise; an occluder that would hide more than half of
    its object is cancelled in ``a["occluded"]``.
    """
    n, s = len(a["shape"]), cfg.size
    images = np.empty((n, s, s, 3), np.uint8)
    masks = np.empty((n, s, s), bool)
    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        images[sl], masks[sl] = _render_chunk(
            {k: v[sl] for k, v in a.items()}, {k: v[sl] for k, v in params.items()}, cfg, rng)
    return images, masks


@functools.lru_cache(maxsize=8)
def _grid(size: int):
    """Pixel-centre coordinates (x right, y up) in [-0.5, 0.5], and the
    interpolation matrices of the grassy background."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    X, Y = np.meshgrid(c, -c)
    return X, Y, (_interp_matrix(size, 4), _interp_matrix(size, 12))


def _render_chunk(a, p, cfg: WorldConfig, rng):
    """Render one chunk: background, distractors, object, occluder, noise."""
    m, s = len(a["shape"]), cfg.size
    X, Y, upsample = _grid(s)

    pattern = np.empty((m, s, s), np.float32)
    for kind_code in np.unique(a["background"]):
        idx = np.flatnonzero(a["background"] == kind_code)
        pattern[idx] = _background_pattern(BACKGROUNDS[kind_code], X, Y, p["bg"][idx],
                                           p["grass"][idx], upsample)
    base = _BG_RGB[a["bg_color"]][:, None, None, :]
    img = base + pattern[..., None] * (_PATTERN_AMPLITUDE * (1 - base))

    # Distractor blobs, behind the object: never part of the mask.
    for k in range(_MAX_DISTRACTORS):
        idx = np.flatnonzero(a["distractors"] > k)
        if len(idx) == 0:
            break
        q = p["distractor"][idx, k, :, None, None]
        rx, ry = 0.03 + 0.035 * q[:, 2], 0.03 + 0.035 * q[:, 3]
        blob = ((X - 0.9 * (q[:, 0] - 0.5)) / rx) ** 2 + ((Y - 0.9 * (q[:, 1] - 0.5)) / ry) ** 2 < 1
        color = _FG_RGB[p["distractor_color"][idx, k]][:, None, None, :]
        img[idx] = np.where(blob[..., None], color, img[idx])

    # Object, grouped by (shape, modifier) so each group is one array call.
    theta = np.deg2rad(a["rotation"])
    cos_r = (np.cos(theta) / a["scale"])[:, None, None]
    sin_r = (np.sin(theta) / a["scale"])[:, None, None]
    dx = X - a["offset"][:, 0, None, None]
    dy = Y - a["offset"][:, 1, None, None]
    u = cos_r * dx + sin_r * dy
    v = cos_r * dy - sin_r * dx
    obj = np.empty((m, s, s), bool)
    group = a["shape"] * (len(MODIFIERS) + 1) + a["modifier"] + 1
    for g in np.unique(group):
        idx = np.flatnonzero(group == g)
        shape, mod = SHAPES[g // (len(MODIFIERS) + 1)], g % (len(MODIFIERS) + 1) - 1
        obj[idx] = _object_inside(shape, MODIFIERS[mod] if mod >= 0 else None, u[idx], v[idx])
    hollow = np.flatnonzero(a["modifier"] == MODIFIERS.index("hollow"))
    if len(hollow):
        interior = ndimage.binary_erosion(obj[hollow], structure=np.ones((1, 3, 3), bool), iterations=max(1, s // 32))
        obj[hollow] &= ~interior
    img = np.where(obj[..., None], a["color_rgb"][:, None, None, :], img)

    # Occluding bar through the object; cancelled where it would hide > half.
    mask = obj
    idx = np.flatnonzero(a["occluded"])
    if len(idx):
        q = p["occluder"][idx, :, None, None]
        angle = q[:, 0] * np.pi
        r = a["scale"][idx, None, None]
        shift = (q[:, 1] - 0.5) * r
        half_width = (0.05 + 0.04 * q[:, 2]) * r / 0.25
        band = np.abs(dx[idx] * np.cos(angle) + dy[idx] * np.sin(angle) - shift) < half_width
        visible = obj[idx] & ~band
        keep = visible.sum((1, 2)) * 2 >= obj[idx].sum((1, 2))
        a["occluded"][idx[~keep]] = False  # a view: updates the batch attributes
        idx, band, visible = idx[keep], band[keep], visible[keep]
        color = _FG_RGB[p["occluder_color"][idx]][:, None, None, :]
        img[idx] = np.where(band[..., None], color, img[idx])
        mask = obj.copy()
        mask[idx] = visible

    if cfg.noise > 0:
        img += cfg.noise * rng.standard_normal(img.shape, dtype=np.float32)
    np.clip(img, 0.0, 1.0, out=img)
    return (img * 255 + 0.5).astype(np.uint8), mask
