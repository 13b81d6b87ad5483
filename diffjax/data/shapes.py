"""Procedural, class-labelled RGB shapes: shape x colour on a black background, from a seed.

Each image holds one axis-aligned shape of half-size r (pixels) centred at c, fully inside the
frame:
    circle   |d|_2 <= r                       area pi r^2
    square   |d|_inf <= r                     area 4 r^2
    triangle equilateral, circumradius r      area (3 sqrt(3) / 4) r^2
    diamond  |d|_1 <= r                       area 2 r^2
with d = p - c. A pixel's value is coverage * colour (coverage estimated on an ``antialias`` x
``antialias`` sub-pixel grid; 1 means hard edges), so every drawn pixel is a multiple of its colour.
label = shape_id * len(colours) + colour_id. Images are float32 NHWC in [-1, 1].
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS = {"red": (1.0, 0.0, 0.0), "green": (0.0, 1.0, 0.0), "blue": (0.0, 0.0, 1.0),
           "yellow": (1.0, 1.0, 0.0), "cyan": (0.0, 1.0, 1.0), "magenta": (1.0, 0.0, 1.0)}
SHAPE_AREA = {"circle": np.pi, "square": 4.0, "triangle": 3.0 * np.sqrt(3.0) / 4.0, "diamond": 2.0}
"""Area of each shape divided by r^2."""


class Shapes(NamedTuple):
    """A shapes dataset: images (N,H,W,3) in [-1,1], labels and the attributes that made them."""
    images: np.ndarray
    labels: np.ndarray
    shape_ids: np.ndarray
    colour_ids: np.ndarray
    centres: np.ndarray  # (N, 2) as (x, y) in pixels, origin at the top-left corner
    radii: np.ndarray  # (N,) half-size r in pixels
    class_names: tuple[str, ...]


def _inside(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean mask of points (dx, dy) relative to the centre that lie in ``shape`` of size r."""
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= r
    if shape == "diamond":
        return np.abs(dx) + np.abs(dy) <= r
    if shape == "triangle":  # apex up (y grows downwards); each side is at distance r/2 from centre
        s = np.sqrt(3.0) / 2.0
        return (dy <= r / 2) & (s * dx - 0.5 * dy <= r / 2) & (-s * dx - 0.5 * dy <= r / 2)
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def render_coverage(shape: str, centres: np.ndarray, radii: np.ndarray, resolution: int,
                    antialias: int = 4) -> np.ndarray:
    """Fraction of each pixel covered by the shape: (N, resolution, resolution) in [0, 1]."""
    sub = (np.arange(resolution * antialias, dtype=np.float32) + 0.5) / antialias
    dx = sub[None, None, :] - centres[:, 0, None, None]
    dy = sub[None, :, None] - centres[:, 1, None, None]
    mask = _inside(shape, dx, dy, radii[:, None, None]).astype(np.float32)
    n = mask.shape[0]
    return mask.reshape(n, resolution, antialias, resolution, antialias).mean(axis=(2, 4))


def make_shapes(num_examples: int, seed: int = 0, resolution: int = 32,
                shapes: Sequence[str] = SHAPES, colours: Sequence[str] = tuple(COLOURS),
                size_range: tuple[float, float] = (0.15, 0.35), antialias: int = 4,
                chunk: int = 256) -> Shapes:
    """Draw ``num_examples`` labelled shapes; identical output for identical arguments.

    ``size_range`` bounds r as a fraction of ``resolution``; centres are uniform where the shape
    fits.
    """
    unknown = [s for s in shapes if s not in SHAPES] + [c for c in colours if c not in COLOURS]
    if unknown:
        raise ValueError(f"unknown shapes/colours {unknown}; shapes: {SHAPES}, "
                         f"colours: {tuple(COLOURS)}")
    if not 0 < size_range[0] <= size_range[1] < 0.5:
        raise ValueError(f"size_range must satisfy 0 < lo <= hi < 0.5, got {size_range}")
    if antialias < 1 or num_examples < 1:
        raise ValueError(f"need antialias >= 1 and num_examples >= 1, "
                         f"got {antialias}, {num_examples}")
    rng = np.random.default_rng(seed)
    shape_ids = rng.integers(0, len(shapes), num_examples).astype(np.int32)
    colour_ids = rng.integers(0, len(colours), num_examples).astype(np.int32)
    radii = (rng.uniform(*size_range, num_examples) * resolution).astype(np.float32)
    centres = (radii[:, None] + rng.uniform(0, 1, (num_examples, 2))
               * (resolution - 2 * radii[:, None])).astype(np.float32)
    palette = np.array([COLOURS[c] for c in colours], np.float32)
    images = np.zeros((num_examples, resolution, resolution, 3), np.float32)
    for k, shape in enumerate(shapes):
        idx = np.flatnonzero(shape_ids == k)
        for start in range(0, idx.size, chunk):
            part = idx[start:start + chunk]
            cover = render_coverage(shape, centres[part], radii[part], resolution, antialias)
            images[part] = cover[..., None] * palette[colour_ids[part]][:, None, None, :]
    class_names = tuple(f"{c} {s}" for s in shapes for c in colours)
    return Shapes(images=images * 2.0 - 1.0, labels=shape_ids * len(colours) + colour_ids,
                  shape_ids=shape_ids, colour_ids=colour_ids, centres=centres, radii=radii,
                  class_names=class_names)
