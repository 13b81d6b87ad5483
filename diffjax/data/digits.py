"""scikit-learn's handwritten digits: 1797 real 8x8 grey images of 0..9, shipped with the package.

Pixel values are integers 0..16; they are resized (bilinear) to ``resolution`` and mapped to
[-1, 1].
The split is fixed and needs no seed: the last ``NUM_TEST`` images are the test set.
"""
from __future__ import annotations

import numpy as np

from diffjax.data.arrays import resize_images, to_signed_unit

NUM_EXAMPLES = 1797
NUM_TEST = 297
NUM_CLASSES = 10
SPLITS = ("all", "train", "test")


def load_digits(split: str = "all", resolution: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(images, labels)``: float32 (N, resolution, resolution, 1) in [-1, 1], int32 (N,).

    ``split``: 'all' (1797), 'train' (first 1500) or 'test' (last 297).
    """
    from sklearn.datasets import load_digits as _sk_load_digits  # local: sklearn is slow to import

    if split not in SPLITS:
        raise ValueError(f"unknown digits split {split!r}; expected one of {SPLITS}")
    bunch = _sk_load_digits()
    images = bunch.images.astype(np.float32)[..., None]  # (1797, 8, 8, 1), values 0..16
    labels = bunch.target.astype(np.int32)
    cut = {"all": slice(None), "train": slice(None, NUM_EXAMPLES - NUM_TEST),
           "test": slice(NUM_EXAMPLES - NUM_TEST, None)}[split]
    images, labels = images[cut], labels[cut]
    images = to_signed_unit(resize_images(images, resolution), 0.0, 16.0)
    return images, labels
