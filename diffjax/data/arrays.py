"""In-memory random-access source and the pixel conversions every image loader shares.

Convention for the whole data layer: images are float32 NHWC in [-1, 1], labels are int32, and a
*source* is anything with ``len(src)`` and ``src[i] -> {'x': float32 array, 'label': int32}`` (the
random-access contract that ``grain.MapDataset.source`` consumes).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image


def to_signed_unit(images: np.ndarray, low: float, high: float) -> np.ndarray:
    """Map values from [low, high] affinely to [-1, 1] as float32 (clipped against round-off)."""
    x = (np.asarray(images, np.float32) - low) * (2.0 / (high - low)) - 1.0
    return np.clip(x, -1.0, 1.0)


def as_hw(resolution: int | Sequence[int]) -> tuple[int, int]:
    """Return ``(height, width)`` from an int (square) or a pair; raise ValueError otherwise."""
    hw = (resolution, resolution) if np.ndim(resolution) == 0 else tuple(resolution)
    if len(hw) != 2 or min(hw) < 1:
        raise ValueError(f"resolution must be a positive int or (height, width), "
                         f"got {resolution!r}")
    return int(hw[0]), int(hw[1])


def resize_image(image: np.ndarray, resolution: int | Sequence[int]) -> np.ndarray:
    """Bilinear resize of one float HWC image (PIL, antialiased when shrinking); float32 out."""
    h, w = as_hw(resolution)
    image = np.asarray(image, np.float32)
    if image.shape[:2] == (h, w):
        return image
    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c])).resize(
        (w, h), Image.BILINEAR)) for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1).astype(np.float32)


def resize_images(images: np.ndarray, resolution: int | Sequence[int]) -> np.ndarray:
    """Bilinear resize of a float NHWC batch to ``resolution`` (see ``resize_image``)."""
    if images.shape[1:3] == as_hw(resolution):
        return np.asarray(images, np.float32)
    return np.stack([resize_image(im, resolution) for im in images]).astype(np.float32)


def check_images(images: np.ndarray, where: str) -> np.ndarray:
    """Validate an NHWC image array (4-D, non-empty, 1..4 channels); return it as a numpy array."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"{where}: images must be NHWC (4-D), got shape {images.shape}")
    if images.shape[0] == 0:
        raise ValueError(f"{where}: no images (shape {images.shape})")
    if not 1 <= images.shape[-1] <= 4:
        raise ValueError(f"{where}: expected 1..4 channels last (NHWC), got shape {images.shape}")
    return images


def check_labels(labels: np.ndarray | None, n: int, where: str) -> np.ndarray:
    """Validate integer labels of shape (n,); ``None`` means all zeros. Returns int32."""
    if labels is None:
        return np.zeros((n,), np.int32)
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"{where}: labels must have shape ({n},), got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{where}: labels must be integers, got dtype {labels.dtype}")
    if n and labels.min() < 0:
        raise ValueError(f"{where}: labels must be >= 0, got min {labels.min()}")
    return labels.astype(np.int32)


class ArraySource:
    """Random-access source over in-memory arrays: ``src[i] -> {'x': x[i], 'label': labels[i]}``.

    ``x`` is float32 with any per-example shape (HWC images, or 2-D points for the toy data).
    """

    def __init__(self, x: np.ndarray, labels: np.ndarray | None = None,
                 class_names: Sequence[str] | None = None, num_classes: int | None = None):
        self.x = np.asarray(x, np.float32)
        if self.x.ndim < 2 or self.x.shape[0] == 0:
            raise ValueError(f"ArraySource needs a non-empty (N, ...) array, "
                             f"got shape {self.x.shape}")
        self.labels = check_labels(labels, self.x.shape[0], "ArraySource")
        self.class_names = tuple(class_names) if class_names is not None else None
        if num_classes is None:
            num_classes = len(self.class_names) if self.class_names else int(self.labels.max()) + 1
        self.num_classes = int(num_classes)

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return {"x": self.x[index], "label": self.labels[index]}

    def __repr__(self) -> str:
        return f"ArraySource(x={self.x.shape}, num_classes={self.num_classes})"


def source_arrays(source, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``limit`` (default: all) examples of a source as (x float32, labels int32): an
    in-memory source's arrays directly, any other random-access source item by item."""
    n = len(source) if limit is None else min(int(limit), len(source))
    x = getattr(source, "x", None)
    if x is not None:
        return np.asarray(x[:n], np.float32), np.asarray(source.labels[:n], np.int32)
    items = [source[i] for i in range(n)]
    return (np.stack([it["x"] for it in items]).astype(np.float32),
            np.asarray([it["label"] for it in items], np.int32))
