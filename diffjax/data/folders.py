"""Image folders: ``root/<class name>/*.png|jpg|jpeg``, one class per sub-folder.

Class names are sorted and numbered 0..C-1; every image is converted to RGB (or grey), resized
bilinearly to ``resolution`` (no crop, so the aspect ratio is not kept) and mapped to [-1, 1].
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from diffjax.data.arrays import as_hw, to_signed_unit

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def list_image_folder(root: str | os.PathLike) -> tuple[list[str], list[int], tuple[str, ...]]:
    """Return ``(paths, labels, class_names)`` for a class-per-sub-folder tree, in sorted order."""
    root = os.fspath(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"image folder {root!r} does not exist or is not a directory")
    class_names = tuple(sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d))))
    if not class_names:
        raise ValueError(f"image folder {root!r} has no class sub-folders; expected "
                         f"root/<class>/<image>{'|'.join(IMAGE_EXTENSIONS)}")
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = sorted(f for f in os.listdir(os.path.join(root, name))
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise ValueError(f"class folder {os.path.join(root, name)!r} holds no "
                             f"{'/'.join(IMAGE_EXTENSIONS)} images")
        paths += [os.path.join(root, name, f) for f in files]
        labels += [label] * len(files)
    return paths, labels, class_names


def read_image(path: str, resolution: int | Sequence[int], channels: int = 3) -> np.ndarray:
    """Read one image as float32 (H, W, channels) in [-1, 1], resized bilinearly."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    h, w = as_hw(resolution)
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L").resize((w, h), Image.BILINEAR)
            pixels = np.asarray(im, np.uint8)
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"cannot read image {path!r}: {e}") from e
    return to_signed_unit(pixels.reshape(h, w, channels), 0.0, 255.0)


def load_image_folder(root: str | os.PathLike, resolution: int | Sequence[int],
                      channels: int = 3) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Return ``(images (N,H,W,C) float32 in [-1,1], labels (N,) int32, class_names)``."""
    paths, labels, class_names = list_image_folder(root)
    images = np.stack([read_image(p, resolution, channels) for p in paths])
    return images, np.asarray(labels, np.int32), class_names
