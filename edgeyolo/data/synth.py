"""A deterministic synthetic multi-class detection dataset in the Ultralytics layout.

``make_synthetic(out)`` writes::

    out/images/{train,val}/NNNNNN.png   8-bit BGR PNG, img_size x img_size
    out/labels/{train,val}/NNNNNN.txt   one ``cls cx cy w h`` line per object (normalized, 6 decimals)
    out/data.yaml                       path / train / val / nc / names
    out/synth.json                      generation parameters, statistics and sha256 of every file

Objects are shapes and glyphs (disc, ring, square, star, letters, ...); the class is decided by the
shape alone: every object gets a random colour (often with a gradient), a random size from ~6 px to
45 % of the image (log-uniform, so about a third are under 16 px at 256 px), a small rotation and an
aspect jitter. Objects may overlap, but every labelled object keeps at least half of its pixels
visible (checked on the rendered masks, objects that would hide too much are placed elsewhere or
dropped). Boxes are the tight bounding boxes of each object's *visible* rendered pixels (alpha >= 0.5
before blur). Backgrounds are smooth gradients / noise textures / stripes, or random crops of the
photos in ``backgrounds``; clutter strokes and irregular blobs that are no class are drawn under the
objects; brightness / contrast jitter, blur, noise and occasional grayscale are applied to the whole
image.

Every image is rendered from its own RNG, ``SeedSequence([seed, split, index])``, so the output is
bit-identical for any number of ``workers`` (on the same machine and OpenCV build; PNG is lossless).
"""
from __future__ import annotations

import json
import math
import multiprocessing
import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from hashlib import sha256
from pathlib import Path

import cv2
import numpy as np
import yaml

from edgeyolo.errors import InputFileError, UsageError
from edgeyolo.fileio import atomic_write_bytes, atomic_write_text, sha256_file
from edgeyolo.log import get_logger, track
from edgeyolo.model.io import IMAGE_SUFFIXES

log = get_logger(__name__)

GENERATOR = "edgeyolo.data.synth/1"  # bump when the rendering changes: old folders then need --overwrite
SPLITS = ("train", "val")
MIN_OBJECT_PX = 6.0  # nominal long side of the smallest object
MAX_OBJECT_FRAC = 0.45  # nominal long side of the largest object, as a fraction of the image
MAX_OBJECTS = 15
MIN_VISIBLE = 0.5  # every labelled object keeps at least this fraction of its pixels visible
MAX_ROTATION_DEG = 15.0  # small, so square/diamond and plus/x stay distinct classes
PHOTO_PROB = 0.75  # with --backgrounds, the share of images on a photo crop (the rest synthetic)
_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]  # fast, small on noise
_NAME = re.compile(r"^(\d{6})\.(png|jpg|txt)$")


# ---------------------------------------------------------------- shapes
# A polygon shape is a list of (points [N, 2] in unit coordinates, value): value 255 fills, 0 cuts a hole.
# Unit coordinates: centred, long side spans [-1, 1], y down. Builders take the object's RNG for
# small per-object variations (ring width, star depth, ...), so a class is not one fixed template.

Poly = list[tuple[np.ndarray, int]]


def _circle(r: float = 1.0, cx: float = 0.0, cy: float = 0.0, n: int = 64) -> np.ndarray:
    t = np.linspace(0.0, 2.0 * np.pi, n, endpoint=False)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _regular(n: int, r: float = 1.0, phase: float = -np.pi / 2) -> np.ndarray:
    t = phase + np.arange(n) * 2.0 * np.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def _disc(rng: np.random.Generator) -> Poly:
    return [(_circle(), 255)]


def _ring(rng: np.random.Generator) -> Poly:
    return [(_circle(), 255), (_circle(rng.uniform(0.5, 0.68)), 0)]


def _square(rng: np.random.Generator) -> Poly:
    return [(_rect(-1, -1, 1, 1), 255)]


def _frame(rng: np.random.Generator) -> Poly:
    k = rng.uniform(0.5, 0.65)
    return [(_rect(-1, -1, 1, 1), 255), (_rect(-k, -k, k, k), 0)]


def _triangle(rng: np.random.Generator) -> Poly:
    return [(np.array([[0, -1], [1, 1], [-1, 1]], np.float64), 255)]


def _triangle_outline(rng: np.random.Generator) -> Poly:
    outer = np.array([[0, -1], [1, 1], [-1, 1]], np.float64)
    centroid = outer.mean(0)
    return [(outer, 255), ((outer - centroid) * rng.uniform(0.4, 0.5) + centroid, 0)]


def _star(rng: np.random.Generator) -> Poly:
    outer, inner = _regular(5), _regular(5, rng.uniform(0.38, 0.5), -np.pi / 2 + np.pi / 5)
    pts = np.empty((10, 2))
    pts[0::2], pts[1::2] = outer, inner
    return [(pts, 255)]


def _plus(rng: np.random.Generator, angle: float = 0.0) -> Poly:
    a = rng.uniform(0.25, 0.36)
    pts = np.array(
        [[-a, -1], [a, -1], [a, -a], [1, -a], [1, a], [a, a], [a, 1], [-a, 1], [-a, a], [-1, a], [-1, -a], [-a, -a]]
    )
    c, s = math.cos(angle), math.sin(angle)
    return [(pts @ np.array([[c, s], [-s, c]]), 255)]


def _x_mark(rng: np.random.Generator) -> Poly:
    return _plus(rng, math.pi / 4)


def _diamond(rng: np.random.Generator) -> Poly:
    return [(np.array([[0, -1], [1, 0], [0, 1], [-1, 0]], np.float64), 255)]


def _hexagon(rng: np.random.Generator) -> Poly:
    return [(_regular(6, phase=0.0), 255)]


def _arrow(rng: np.random.Generator) -> Poly:
    a, head = rng.uniform(0.18, 0.3), rng.uniform(0.6, 0.8)
    pts = np.array([[-1, -a], [0.1, -a], [0.1, -head], [1, 0], [0.1, head], [0.1, a], [-1, a]], np.float64)
    return [(pts, 255)]


def _crescent(rng: np.random.Generator) -> Poly:
    return [(_circle(), 255), (_circle(rng.uniform(0.75, 0.85), cx=rng.uniform(0.4, 0.55), cy=-0.1), 0)]


def _heart(rng: np.random.Generator) -> Poly:
    t = np.linspace(0.0, 2.0 * np.pi, 96, endpoint=False)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [(np.stack([x, y], 1), 255)]


def _half_disc(rng: np.random.Generator) -> Poly:
    t = np.linspace(np.pi, 2.0 * np.pi, 48)
    return [(np.stack([np.cos(t), np.sin(t)], 1), 255)]


def _t_shape(rng: np.random.Generator) -> Poly:
    a = rng.uniform(0.25, 0.35)
    return [(_rect(-1, -1, 1, -1 + 2 * a), 255), (_rect(-a, -1, a, 1), 255)]


def _l_shape(rng: np.random.Generator) -> Poly:
    a = rng.uniform(0.3, 0.4)
    return [(_rect(-1, -1, -1 + 2 * a, 1), 255), (_rect(-1, 1 - 2 * a, 0.6, 1), 255)]


def _bowtie(rng: np.random.Generator) -> Poly:
    left = np.array([[-1, -1], [0, 0], [-1, 1]], np.float64)
    return [(left, 255), (left * np.array([-1.0, 1.0]), 255)]


_POLY_SHAPES: dict[str, Callable[[np.random.Generator], Poly]] = {
    "disc": _disc,
    "ring": _ring,
    "square": _square,
    "triangle": _triangle,
    "star": _star,
    "plus": _plus,
    "diamond": _diamond,
    "hexagon": _hexagon,
    "arrow": _arrow,
    "frame": _frame,
    "x_mark": _x_mark,
    "crescent": _crescent,
    "heart": _heart,
    "half_disc": _half_disc,
    "t_shape": _t_shape,
    "l_shape": _l_shape,
    "bowtie": _bowtie,
    "triangle_outline": _triangle_outline,
}
_GLYPHS = {"letter_A": "A", "digit_7": "7", "letter_E": "E", "letter_K": "K", "digit_3": "3", "letter_S": "S"}

# Class order: the first 12 (the default) are the most distinct from one another.
CLASS_NAMES: tuple[str, ...] = (
    "disc", "ring", "square", "triangle", "star", "plus", "diamond", "hexagon", "arrow", "frame",
    "letter_A", "digit_7",
    "x_mark", "crescent", "heart", "half_disc", "t_shape", "l_shape", "bowtie", "triangle_outline",
    "letter_E", "letter_K", "digit_3", "letter_S",
)  # fmt: skip
MAX_CLASSES = len(CLASS_NAMES)
_FONTS = (cv2.FONT_HERSHEY_SIMPLEX, cv2.FONT_HERSHEY_DUPLEX, cv2.FONT_HERSHEY_TRIPLEX)


def _normalized(polys: Poly) -> Poly:
    """Centre the filled extent and scale its long side to [-1, 1] (aspect kept)."""
    filled = np.concatenate([p for p, v in polys if v])
    lo, hi = filled.min(0), filled.max(0)
    centre, half = (lo + hi) / 2.0, float((hi - lo).max()) / 2.0
    return [((p - centre) / half, v) for p, v in polys]


@lru_cache(maxsize=256)
def _glyph_ink(text: str, font: int, thickness: int) -> np.ndarray:
    """The glyph's ink at high resolution, cropped to its tight box (uint8 0..255)."""
    scale = 4.0
    (tw, th), base = cv2.getTextSize(text, font, scale, thickness)
    pad = thickness + 8
    canvas = np.zeros((th + base + 2 * pad, tw + 2 * pad), np.uint8)
    cv2.putText(canvas, text, (pad, pad + th), font, scale, 255, thickness, cv2.LINE_AA)
    ys, xs = np.nonzero(canvas)
    ink = canvas[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    ink.setflags(write=False)
    return ink


def _render_shape(name: str, size: float, rng: np.random.Generator) -> np.ndarray | None:
    """Alpha (float32 0..1) of one object with nominal long side ``size`` px, cropped to alpha > 0."""
    aspect = math.exp(rng.uniform(math.log(0.8), math.log(1.25)))
    theta = math.radians(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    ss = 4 if size < 48 else 2  # supersampling factor
    c, s = math.cos(theta), math.sin(theta)
    if name in _GLYPHS:
        font = _FONTS[int(rng.integers(len(_FONTS)))]
        ink = _glyph_ink(_GLYPHS[name], font, int(rng.integers(8, 15)))
        ih, iw = ink.shape
        scale = size / max(ih, iw)
        w, h = iw * scale * aspect, ih * scale / aspect
    else:
        polys = _normalized(_POLY_SHAPES[name](rng))
        w, h = size * aspect, size / aspect  # unit [-1, 1] spans these
    dim = math.ceil(math.hypot(w, h)) + 4
    big = dim * ss
    centre = big / 2.0
    canvas = np.zeros((big, big), np.uint8)
    if name in _GLYPHS:
        sx, sy = w * ss / iw, h * ss / ih
        m = np.array([[c * sx, -s * sy, 0.0], [s * sx, c * sy, 0.0]])
        m[:, 2] = centre - m[:, :2] @ np.array([iw / 2.0, ih / 2.0])
        canvas = cv2.warpAffine(ink, m, (big, big), flags=cv2.INTER_LINEAR, borderValue=0)
    else:
        rot = np.array([[c, s], [-s, c]])
        for pts, value in polys:
            p = (pts * np.array([w * ss / 2.0, h * ss / 2.0])) @ rot + centre
            cv2.fillPoly(canvas, [np.round(p * 16).astype(np.int32)], int(value), cv2.LINE_AA, shift=4)
    alpha = cv2.resize(canvas, (dim, dim), interpolation=cv2.INTER_AREA)
    ys, xs = np.nonzero(alpha >= 128)
    if len(ys) < 4:
        return None
    ys, xs = np.nonzero(alpha)
    return alpha[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].astype(np.float32) / 255.0


# ---------------------------------------------------------------- backgrounds and clutter


def _smooth_noise(rng: np.random.Generator, size: int, cells: int, channels: int = 1) -> np.ndarray:
    grid = rng.random((cells, cells, channels), dtype=np.float32)
    out = cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
    return out.reshape(size, size, channels)


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, 3).astype(np.float32)


@lru_cache(maxsize=8)
def _unit_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) pixel coordinates / size, broadcastable: [size, 1] and [1, size]."""
    v = np.arange(size, dtype=np.float32) / size
    return v[:, None], v[None, :]


def _synthetic_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth gradient, cloud or stripe texture (float32 BGR); built at half size, it is smooth anyway."""
    kind = int(rng.integers(3))
    lo = max(16, size // 2)
    yy, xx = _unit_grid(lo)
    if kind == 0:  # linear gradient between two colours, plus low-frequency colour noise
        a = rng.uniform(0.0, 2.0 * np.pi)
        t = xx * math.cos(a) + yy * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        c1, c2 = _colour(rng), _colour(rng)
        img = c1 + (c2 - c1) * t[..., None]
        img += (_smooth_noise(rng, lo, int(rng.integers(3, 8)), 3) - 0.5) * rng.uniform(20, 70)
    elif kind == 1:  # multi-octave value noise mapped between two colours ("clouds")
        t = sum(_smooth_noise(rng, lo, cells) * (0.5**o) for o, cells in enumerate((4, 8, 16, 32)))
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        c1, c2 = _colour(rng), _colour(rng)
        img = c1 + (c2 - c1) * t
    else:  # soft stripes / waves over a gradient
        a = rng.uniform(0.0, np.pi)
        freq = rng.uniform(2.0, 14.0)
        warp = _smooth_noise(rng, lo, 4)[..., 0] * rng.uniform(0.0, 3.0)
        t = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (xx * math.cos(a) + yy * math.sin(a)) + warp)
        c1, c2 = _colour(rng), _colour(rng)
        c2 = c1 + (c2 - c1) * rng.uniform(0.2, 0.6)  # low-contrast texture
        img = c1 + (c2 - c1) * t[..., None]
        img += (_smooth_noise(rng, lo, int(rng.integers(2, 6)), 3) - 0.5) * rng.uniform(20, 60)
    img = cv2.resize(img.astype(np.float32), (size, size), interpolation=cv2.INTER_LINEAR)
    fine = rng.uniform(0.0, 12.0)  # fine grain so flat regions are not perfectly flat
    img += (_smooth_noise(rng, size, size // 4) - 0.5) * fine
    return np.clip(img, 0, 255, out=img)


@lru_cache(maxsize=64)
def _load_photo(path: str, img_size: int) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise InputFileError(f"{path}: cannot read this background image; remove it or pass another --backgrounds")
    short = min(img.shape[:2])
    if short > 2 * img_size:  # shrink once (same result cached or not) so crops stay cheap
        k = 2 * img_size / short
        img = cv2.resize(img, (round(img.shape[1] * k), round(img.shape[0] * k)), interpolation=cv2.INTER_AREA)
    img.setflags(write=False)
    return img


def _photo_background(rng: np.random.Generator, size: int, photos: Sequence[str]) -> np.ndarray:
    img = _load_photo(photos[int(rng.integers(len(photos)))], size)
    h, w = img.shape[:2]
    side = max(8, int(min(h, w) * rng.uniform(0.4, 1.0)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = img[y : y + side, x : x + side]
    inter = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    out = cv2.resize(crop, (size, size), interpolation=inter).astype(np.float32)
    return out[:, ::-1].copy() if rng.random() < 0.5 else out


def _draw_clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    """Strokes, lines and irregular blobs that are no class, drawn under the objects (uint8, in place)."""
    size = img.shape[0]
    for _ in range(int(rng.integers(0, 9))):
        colour = tuple(float(v) for v in _colour(rng))
        extent = math.exp(rng.uniform(math.log(6.0), math.log(size * 0.5)))
        cx, cy = rng.uniform(0, size, 2)
        kind = int(rng.integers(3))
        if kind == 0:  # scribble: a random walk polyline
            n = int(rng.integers(3, 9))
            steps = rng.normal(0.0, extent / 2.5, (n, 2))
            pts = np.cumsum(steps, 0) + np.array([cx, cy])
            thick = int(rng.integers(1, 4))
            cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], False, colour, thick, cv2.LINE_AA, shift=4)
        elif kind == 1:  # a long thin straight line
            a = rng.uniform(0.0, np.pi)
            d = np.array([math.cos(a), math.sin(a)]) * size
            p0, p1 = np.array([cx, cy]) - d, np.array([cx, cy]) + d
            thick = int(rng.integers(1, 3))
            cv2.line(img, tuple(int(v) for v in p0), tuple(int(v) for v in p1), colour, thick, cv2.LINE_AA)
        else:  # irregular, concave blob: radius with random low harmonics
            t = np.linspace(0.0, 2.0 * np.pi, 72, endpoint=False)
            r = np.ones_like(t)
            for k in range(2, 7):
                r += rng.uniform(0.0, 0.28) * np.cos(k * t + rng.uniform(0, 2 * np.pi))
            r = np.clip(r, 0.15, None) * extent / 2.0
            pts = np.stack([cx + r * np.cos(t) * rng.uniform(0.5, 1.0), cy + r * np.sin(t)], 1)
            cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, shift=4)


# ---------------------------------------------------------------- one image


@dataclass(frozen=True)
class _Placed:
    cls: int
    x0: int
    y0: int
    alpha: np.ndarray  # float32 [h, w] 0..1
    mask: np.ndarray  # bool [h, w], alpha >= 0.5


def _luma(bgr: np.ndarray) -> float:
    return float(bgr[0] * 0.114 + bgr[1] * 0.587 + bgr[2] * 0.299)


def _place_objects(rng: np.random.Generator, size: int, classes: int) -> tuple[list[_Placed], np.ndarray]:
    """Objects and their positions; ``owner`` says which object each pixel shows (-1: none)."""
    owner = np.full((size, size), -1, np.int16)
    placed: list[_Placed] = []
    area = np.zeros(MAX_OBJECTS, np.int64)
    visible = np.zeros(MAX_OBJECTS, np.int64)
    lo, hi = math.log(MIN_OBJECT_PX), math.log(max(MIN_OBJECT_PX, MAX_OBJECT_FRAC * size))
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        cls = int(rng.integers(classes))
        alpha = _render_shape(CLASS_NAMES[cls], math.exp(rng.uniform(lo, hi)), rng)
        if alpha is None or alpha.shape[0] > size or alpha.shape[1] > size:
            continue
        mask = alpha >= 0.5
        h, w = mask.shape
        n = len(placed)
        for _attempt in range(25):
            y0, x0 = int(rng.integers(0, size - h + 1)), int(rng.integers(0, size - w + 1))
            region = owner[y0 : y0 + h, x0 : x0 + w]
            under = region[mask]
            under = under[under >= 0]
            if under.size:
                taken = np.bincount(under, minlength=n)
                if np.any(visible[:n] - taken < MIN_VISIBLE * area[:n]):
                    continue
                visible[:n] -= taken
            region[mask] = n
            area[n] = visible[n] = int(mask.sum())
            placed.append(_Placed(cls, x0, y0, alpha, mask))
            break
    return placed, owner


def _paint(rng: np.random.Generator, img: np.ndarray, obj: _Placed) -> None:
    h, w = obj.alpha.shape
    region = img[obj.y0 : obj.y0 + h, obj.x0 : obj.x0 + w]
    bg = _luma(region[obj.mask].mean(0))
    for _ in range(8):  # a random colour, but visibly different from what is under it
        c1 = _colour(rng)
        if abs(_luma(c1) - bg) >= 60:
            break
    else:
        c1 = np.full(3, 20.0 if bg > 128 else 235.0, np.float32)
    c2 = np.clip(c1 + rng.normal(0.0, 18.0, 3), 0, 255).astype(np.float32)
    a = rng.uniform(0.0, 2.0 * np.pi)
    t = np.arange(w, dtype=np.float32)[None, :] * math.cos(a) + np.arange(h, dtype=np.float32)[:, None] * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    fill = c1 + (c2 - c1) * t[..., None]
    alpha = obj.alpha[..., None]
    region *= 1.0 - alpha
    region += fill * alpha


def _postprocess(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-30.0, 30.0)
    blur = rng.uniform(0.5, 1.2) if rng.random() < 0.3 else 0.0
    noise = rng.uniform(2.0, 8.0) if rng.random() < 0.6 else 0.0
    gray = rng.random() < 0.1
    img = img * np.float32(contrast)
    img += np.float32(128.0 * (1.0 - contrast) + brightness)
    if blur:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    if noise:
        grain = rng.standard_normal(img.shape, dtype=np.float32)
        grain *= np.float32(noise)
        img += grain
    if gray:
        img = cv2.cvtColor(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    np.clip(img, 0, 255, out=img)
    return np.rint(img, out=img).astype(np.uint8)


def image_rng(seed: int, split: str, index: int) -> np.random.SeedSequence:
    """The seed of one image: a function of (seed, split, index) only, never of the worker."""
    return np.random.SeedSequence([seed, SPLITS.index(split), index])


def render_image(
    index: int,
    split: str = "train",
    *,
    classes: int = 12,
    img_size: int = 256,
    seed: int = 0,
    photos: Sequence[str] = (),
    draw_objects: bool = True,
) -> tuple[np.ndarray, list[tuple[int, int, int, int, int]]]:
    """One image (uint8 BGR) and its objects as (cls, x0, y0, x1, y1) pixel boxes (x1, y1 exclusive).

    ``draw_objects=False`` gives the same image without the objects (same background, clutter,
    jitter, blur and noise): the difference of the two shows exactly where the objects are.
    ``photos`` is the sorted list of background photo paths (``list_backgrounds``).
    """
    bg_seq, clutter_seq, obj_seq, post_seq = image_rng(seed, split, index).spawn(4)
    bg_rng = np.random.default_rng(bg_seq)
    if photos and bg_rng.random() < PHOTO_PROB:
        img = _photo_background(bg_rng, img_size, photos)
    else:
        img = _synthetic_background(bg_rng, img_size)
    img8 = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    _draw_clutter(np.random.default_rng(clutter_seq), img8)
    img = img8.astype(np.float32)
    obj_rng = np.random.default_rng(obj_seq)
    placed, owner = _place_objects(obj_rng, img_size, classes)
    boxes: list[tuple[int, int, int, int, int]] = []
    for i, obj in enumerate(placed):
        _paint(obj_rng, img, obj)
        h, w = obj.mask.shape
        mine = owner[obj.y0 : obj.y0 + h, obj.x0 : obj.x0 + w] == i
        rows, cols = np.flatnonzero(mine.any(1)), np.flatnonzero(mine.any(0))
        x0, y0 = obj.x0 + int(cols[0]), obj.y0 + int(rows[0])
        boxes.append((obj.cls, x0, y0, obj.x0 + int(cols[-1]) + 1, obj.y0 + int(rows[-1]) + 1))
    if not draw_objects:  # rebuild without objects; every stream but the objects' is reused as-is
        img = img8.astype(np.float32)
    return _postprocess(np.random.default_rng(post_seq), img), boxes


def label_text(boxes: Iterable[tuple[int, int, int, int, int]], img_size: int) -> str:
    lines = []
    for cls, x0, y0, x1, y1 in boxes:
        cx, cy = (x0 + x1) / 2.0 / img_size, (y0 + y1) / 2.0 / img_size
        w, h = (x1 - x0) / img_size, (y1 - y0) / img_size
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n")
    return "".join(lines)


# ---------------------------------------------------------------- writing


@dataclass(frozen=True)
class _Job:
    out: str
    classes: int
    img_size: int
    seed: int
    photos: tuple[str, ...]


@dataclass(frozen=True)
class _Done:
    split: str
    index: int
    image_sha: str
    label_sha: str
    objects: tuple[tuple[int, int, int], ...]  # (cls, width px, height px)


def _make_one(job: _Job, split: str, index: int) -> _Done:
    img, boxes = render_image(
        index, split, classes=job.classes, img_size=job.img_size, seed=job.seed, photos=job.photos
    )
    ok, png = cv2.imencode(".png", img, _PNG_PARAMS)
    if not ok:  # pragma: no cover - encoding a uint8 BGR array does not fail
        raise RuntimeError("cv2.imencode failed")
    data = png.tobytes()
    label = label_text(boxes, job.img_size).encode()
    out = Path(job.out)
    atomic_write_bytes(out / "images" / split / f"{index:06d}.png", data)
    atomic_write_bytes(out / "labels" / split / f"{index:06d}.txt", label)
    objects = tuple((b[0], b[3] - b[1], b[4] - b[2]) for b in boxes)
    return _Done(split, index, sha256(data).hexdigest(), sha256(label).hexdigest(), objects)


_WORKER_JOB: _Job | None = None


def _worker_init(job: _Job) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job
    cv2.setNumThreads(1)  # the pool is the parallelism; results do not depend on thread counts


def _worker_make(task: tuple[str, int]) -> _Done:
    assert _WORKER_JOB is not None
    return _make_one(_WORKER_JOB, *task)


def list_backgrounds(folder: Path) -> list[Path]:
    """Background photos under ``folder`` (recursive), in a fixed order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputFileError(f"--backgrounds {folder}: not a folder; give a folder of .jpg/.png photos")
    photos = sorted(
        (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: p.relative_to(folder).as_posix(),
    )
    if not photos:
        raise InputFileError(f"--backgrounds {folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found in it")
    return photos


def _backgrounds_fingerprint(folder: Path, photos: list[Path]) -> str:
    listing = [[p.relative_to(folder).as_posix(), p.stat().st_size] for p in photos]
    return sha256(json.dumps(listing).encode()).hexdigest()


@dataclass(frozen=True)
class SynthSummary:
    out: Path
    data_yaml: Path
    manifest: Path
    names: list[str]
    images: dict[str, int]  # per split
    objects: dict[str, int]  # per split
    per_class: list[int]  # objects per class, both splits
    per_class_split: dict[str, list[int]]
    frac_lt16: float  # objects with max(w, h) < 16 px
    frac_lt32: float
    mean_objects: float  # per image, both splits
    seconds: float

    @property
    def total_images(self) -> int:
        return sum(self.images.values())

    @property
    def total_objects(self) -> int:
        return sum(self.objects.values())


def _check_args(classes: int, train: int, val: int, img_size: int, seed: int, workers: int) -> None:
    if not 1 <= classes <= MAX_CLASSES:
        raise UsageError(f"classes must be 1..{MAX_CLASSES} (the shapes the generator draws), got {classes}")
    for name, n in (("train", train), ("val", val)):
        if not 1 <= n <= 999_999:
            raise UsageError(f"{name} must be 1..999999 images, got {n}")
    if not 32 <= img_size <= 4096:
        raise UsageError(f"img_size must be 32..4096 px, got {img_size}")
    if seed < 0:
        raise UsageError(f"seed must be >= 0, got {seed}")
    if workers < 1:
        raise UsageError(f"workers must be >= 1, got {workers}")


def _prepare(out: Path, params: dict, overwrite: bool) -> None:
    """Refuse a non-empty folder made otherwise (unless overwrite); remove what a rebuild would leave stale."""
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; give a folder (new or made by `edgeyolo data synth`)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        manifest = out / "synth.json"
        try:
            previous = json.loads(manifest.read_text())["params"]
        except (OSError, ValueError, KeyError, TypeError):
            previous = None
        if previous is None:
            raise UsageError(
                f"--out {out} is not empty and holds no synth.json of a synthetic dataset; choose an empty or "
                f"new folder, or pass --overwrite (overwrite=True) to write into it anyway"
            )
        if previous != params:
            changed = sorted(k for k in set(previous) | set(params) if previous.get(k) != params.get(k))
            detail = ", ".join(f"{k} {previous.get(k)!r} -> {params.get(k)!r}" for k in changed)
            raise UsageError(
                f"--out {out} holds a synthetic dataset made with other parameters ({detail}); pass --overwrite "
                f"(overwrite=True) to replace it, or choose another folder"
            )
    counts = {"train": params["train"], "val": params["val"]}
    for split, n in counts.items():
        for kind in ("images", "labels"):
            folder = out / kind / split
            if not folder.is_dir():
                continue
            for f in folder.iterdir():
                m = _NAME.match(f.name)
                stale = m is not None and (int(m.group(1)) >= n or (kind == "images" and m.group(2) != "png"))
                if stale or (f.name.startswith(".") and f.name.endswith(".tmp")):  # leftovers of atomic writes
                    f.unlink()
        (out / "labels" / f"{split}.cache").unlink(missing_ok=True)  # Ultralytics' label cache


def make_synthetic(
    out: Path,
    classes: int = 12,
    train: int = 2000,
    val: int = 300,
    img_size: int = 256,
    seed: int = 0,
    backgrounds: Path | None = None,
    workers: int = 1,
    overwrite: bool = False,
) -> SynthSummary:
    """Write the synthetic dataset into ``out`` (see the module docstring) and return its statistics.

    Same arguments give bit-identical files whatever ``workers`` is. Re-running into a folder made with
    the same parameters rewrites it; a non-empty folder made otherwise raises ``UsageError`` unless
    ``overwrite`` (then files ``NNNNNN.png/.txt`` beyond the new counts are removed; other files are kept).
    ``workers > 1`` starts "spawn" processes: a calling script needs the usual ``if __name__ == "__main__"``.
    """
    start = time.perf_counter()
    _check_args(classes, train, val, img_size, seed, workers)
    out = Path(out)
    photos: list[Path] = []
    params: dict = {
        "generator": GENERATOR,
        "classes": classes,
        "train": train,
        "val": val,
        "img_size": img_size,
        "seed": seed,
        "backgrounds": None,
        "backgrounds_fingerprint": None,
    }
    if backgrounds is not None:
        folder = Path(backgrounds).resolve()
        photos = list_backgrounds(folder)
        params["backgrounds"] = str(folder)
        params["backgrounds_fingerprint"] = _backgrounds_fingerprint(folder, photos)
    _prepare(out, params, overwrite)
    names = list(CLASS_NAMES[:classes])
    manifest = out / "synth.json"
    atomic_write_text(manifest, json.dumps({"params": params, "complete": False}, indent=1) + "\n")

    job = _Job(str(out), classes, img_size, seed, tuple(str(p) for p in photos))
    tasks = [(split, i) for split, n in (("train", train), ("val", val)) for i in range(n)]
    workers = min(workers, len(tasks))
    label_sha: dict[str, str] = {}
    image_sha: dict[str, str] = {}
    per_class_split = {s: [0] * classes for s in SPLITS}
    n_images = dict.fromkeys(SPLITS, 0)
    n_objects = dict.fromkeys(SPLITS, 0)
    lt16 = lt32 = 0

    def consume(results: Iterator[_Done]) -> None:
        nonlocal lt16, lt32
        for r in track(results, "rendering synthetic images", total=len(tasks)):
            stem = f"{r.split}/{r.index:06d}"
            image_sha[f"images/{stem}.png"], label_sha[f"labels/{stem}.txt"] = r.image_sha, r.label_sha
            n_images[r.split] += 1
            n_objects[r.split] += len(r.objects)
            for cls, w, h in r.objects:
                per_class_split[r.split][cls] += 1
                lt16 += max(w, h) < 16
                lt32 += max(w, h) < 32

    if workers == 1:
        consume(_make_one(job, split, i) for split, i in tasks)
    else:
        chunk = max(1, min(32, len(tasks) // (workers * 8)))
        ctx = multiprocessing.get_context("spawn")  # no fork of a possibly threaded parent (torch, rich)
        with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(job,)) as pool:
            consume(pool.map(_worker_make, tasks, chunksize=chunk))

    total_objects = sum(n_objects.values())
    per_class = [per_class_split["train"][c] + per_class_split["val"][c] for c in range(classes)]
    stats = {
        "images": n_images,
        "objects": n_objects,
        "per_class": dict(zip(names, per_class)),
        "frac_lt16": round(lt16 / max(total_objects, 1), 6),
        "frac_lt32": round(lt32 / max(total_objects, 1), 6),
        "mean_objects": round(total_objects / max(len(tasks), 1), 6),
    }
    data_yaml = out / "data.yaml"
    atomic_write_text(
        data_yaml,
        yaml.safe_dump(
            {
                "path": str(out.resolve()),
                "train": "images/train",
                "val": "images/val",
                "nc": classes,
                "names": dict(enumerate(names)),
            },
            sort_keys=False,
        ),
    )
    manifest_doc = {
        "params": params,
        "complete": True,
        "names": names,
        "stats": stats,
        "labels": dict(sorted(label_sha.items())),
        "images": dict(sorted(image_sha.items())),
    }
    atomic_write_text(manifest, json.dumps(manifest_doc, indent=1) + "\n")
    seconds = time.perf_counter() - start
    log.info("synthetic dataset: %d images, %d objects in %.1f s -> %s", len(tasks), total_objects, seconds, out)
    return SynthSummary(
        out=out,
        data_yaml=data_yaml,
        manifest=manifest,
        names=names,
        images=n_images,
        objects=n_objects,
        per_class=per_class,
        per_class_split=per_class_split,
        frac_lt16=lt16 / max(total_objects, 1),
        frac_lt32=lt32 / max(total_objects, 1),
        mean_objects=total_objects / max(len(tasks), 1),
        seconds=seconds,
    )


def verify_synthetic(out: Path) -> list[str]:
    """Differences between the files in ``out`` and the hashes its synth.json recorded ([] if none)."""
    out = Path(out)
    try:
        doc = json.loads((out / "synth.json").read_text())
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{out / 'synth.json'}: cannot read the manifest ({exc})") from exc
    if not doc.get("complete"):
        return [f"{out}: the generation did not finish (synth.json is marked incomplete)"]
    problems = []
    for section in ("labels", "images"):
        for rel, digest in doc.get(section, {}).items():
            path = out / rel
            if not path.is_file():
                problems.append(f"{rel}: missing")
            elif sha256_file(path) != digest:
                problems.append(f"{rel}: content differs from the recorded sha256")
    return problems
