"""``.npz`` image arrays: key ``images`` (NHWC) and optional key ``labels`` (N,) integers (or ``x`` and
``label``, as ``diffjax sample --npz`` writes them: generated samples train like any data).

uint8 images are read as [0, 255]; float images must already be in [-1, 1] (checked), so a file
saved in [0, 1] fails loudly instead of training on shifted data.
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from diffjax.data.arrays import check_images, check_labels, resize_images, to_signed_unit

IMAGES_KEY, LABELS_KEY = "images", "labels"


def load_npz(path: str | os.PathLike, resolution: int | Sequence[int] | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images (N,H,W,C) float32 in [-1,1], labels (N,) int32)``; labels 0 if absent."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"npz file {path!r} does not exist")
    with np.load(path, allow_pickle=False) as f:
        ik = next((k for k in (IMAGES_KEY, "x") if k in f.files), None)
        lk = next((k for k in (LABELS_KEY, "label") if k in f.files), None)
        if ik is None:
            raise ValueError(f"npz file {path!r} has no {IMAGES_KEY!r} (or 'x') array; keys: "
                             f"{f.files}")
        images = check_images(f[ik], f"npz {path!r}")
        labels = check_labels(f[lk] if lk else None, images.shape[0], f"npz {path!r}")
    if images.dtype == np.uint8:
        images = to_signed_unit(images, 0.0, 255.0)
    elif np.issubdtype(images.dtype, np.floating):
        lo, hi = float(images.min()), float(images.max())
        if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
            raise ValueError(f"npz {path!r}: float images must lie in [-1, 1], found "
                             f"[{lo:.3g}, {hi:.3g}]; store uint8 in [0, 255] or rescale")
        images = np.clip(images.astype(np.float32), -1.0, 1.0)
    else:
        raise ValueError(f"npz {path!r}: images must be uint8 or float, got dtype {images.dtype}")
    if resolution is not None:
        images = resize_images(images, resolution)
    return images, labels
