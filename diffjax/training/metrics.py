"""Metric writers, metric truncation on resume, and sample pictures.

``make_writer(workdir)`` is clu's default writer (TensorBoard event files + console logging) plus a
JSON-lines file ``workdir/metrics.jsonl`` with one ``{"step": s, name: value, ...}`` per write, easy
to read back in a notebook or a test; each row is flushed as it is written, so a killed run keeps
its rows. Only process 0 writes files; the others just log. ``truncate_after(workdir, step)``
drops the rows (and TensorBoard events) past a restored checkpoint, so a resumed run has one
series per step.
``to_picture`` turns samples into one uint8 picture: a grid for images, a density plot for 2-D points.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import numpy as np


class JsonlWriter:
    """Appends scalar writes to a JSON-lines file (other summary kinds are ignored). It has clu's
    MetricWriter methods, so clu's MultiWriter drives it; clu (and with it TensorFlow, seconds to
    import) is only imported by ``make_writer``, not by sampling code that just draws pictures."""

    def __init__(self, path: str):
        self.path = path
        self._f = open(path, "a", encoding="utf-8")

    def write_scalars(self, step: int, scalars: Mapping[str, Any]):
        row = {"step": int(step)}
        row.update({k: float(np.asarray(v)) for k, v in scalars.items()})
        self._f.write(json.dumps(row) + "\n")
        self._f.flush()   # a kill -9 loses no row

    def write_summaries(self, step, values, metadata=None):
        pass

    def write_images(self, step, images):
        pass

    def write_videos(self, step, videos):
        pass

    def write_audios(self, step, audios, *, sample_rate):
        pass

    def write_texts(self, step, texts):
        pass

    def write_histograms(self, step, arrays, num_buckets=None):
        pass

    def write_hparams(self, hparams):
        pass

    def flush(self):
        self._f.flush()

    def close(self):
        self._f.close()


def make_writer(workdir: str):
    """clu MetricWriter: TensorBoard + console (+ metrics.jsonl) on process 0; console elsewhere."""
    from clu import metric_writers

    if jax.process_index() > 0:
        return metric_writers.create_default_writer(None, just_logging=True)
    os.makedirs(workdir, exist_ok=True)
    default = metric_writers.create_default_writer(workdir, asynchronous=False)
    return metric_writers.MultiWriter([default, JsonlWriter(os.path.join(workdir, "metrics.jsonl"))])


def _truncate_jsonl(path: str, step: int) -> int:
    """Keep the rows of ``path`` with step <= ``step`` (atomically); returns how many were dropped.
    A torn last line (a kill during a write) is dropped too."""
    if not os.path.exists(path):
        return 0
    kept, dropped = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                dropped += 1
                continue
            if int(row.get("step", 0)) <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
            else:
                dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(kept)
        os.replace(tmp, path)
    return dropped


def _truncate_events(path: str, step: int) -> int:
    """Rewrite one TensorBoard event file without the events whose step is > ``step``."""
    import tensorflow as tf
    from tensorflow.core.util import event_pb2

    kept, dropped = [], 0
    try:
        for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
            event = event_pb2.Event.FromString(record)
            if event.step > step:
                dropped += 1
            else:
                kept.append(record)
    except tf.errors.DataLossError:   # a torn tail (kill -9 while writing): drop it
        dropped += 1
    if dropped:
        tmp = path + ".tmp"
        with tf.io.TFRecordWriter(tmp) as w:
            for record in kept:
                w.write(record)
        os.replace(tmp, path)
    return dropped


def truncate_after(workdir: str, step: int) -> int:
    """Drop metrics rows and TensorBoard events past optimizer step ``step`` (a resume restored that
    step: what follows will be written again). Process 0 only; returns the number dropped."""
    if jax.process_index() > 0 or not os.path.isdir(workdir):
        return 0
    dropped = _truncate_jsonl(os.path.join(workdir, "metrics.jsonl"), step)
    for name in sorted(os.listdir(workdir)):
        if name.startswith("events.out.tfevents") and not name.endswith(".tmp"):
            dropped += _truncate_events(os.path.join(workdir, name), step)
    return dropped


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def image_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1) -> np.ndarray:
    """(N, H, W, C) in [-1, 1] -> uint8 (rows*(H+pad)+pad, cols*(W+pad)+pad, C) grid."""
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"image_grid needs (N, H, W, C) images, got shape {images.shape}")
    n, h, w, c = images.shape
    ncol = ncol or int(math.ceil(math.sqrt(n)))
    nrow = int(math.ceil(n / ncol))
    u8 = np.clip(np.round((images + 1.0) * 127.5), 0, 255).astype(np.uint8)
    grid = np.zeros((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h,
             pad + q * (w + pad): pad + q * (w + pad) + w] = u8[i]
    return grid


def points_picture(points: np.ndarray, size: int = 256, lim: float | None = None) -> np.ndarray:
    """2-D points -> uint8 (size, size, 1) log-density picture over [-lim, lim]^2."""
    points = np.asarray(points, np.float32)
    lim = lim or float(max(np.abs(points).max(), 1e-3) * 1.05)
    hist, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=size,
                                range=[[-lim, lim], [-lim, lim]])
    img = np.log1p(hist[::-1])
    img = img / max(img.max(), 1e-9)
    return (255 - np.round(img * 255)).astype(np.uint8)[..., None]


def to_picture(samples: np.ndarray, ncol: int | None = None) -> np.ndarray:
    """A uint8 HWC picture of ``samples``: an image grid, or a density plot of 2-D points."""
    samples = np.asarray(samples)
    if samples.ndim == 4:
        return image_grid(samples, ncol)
    if samples.ndim == 2 and samples.shape[1] == 2:
        return points_picture(samples)
    raise ValueError(f"cannot draw samples of shape {samples.shape}; expected (N, H, W, C) images "
                     "or (N, 2) points")


def save_png(picture: np.ndarray, path: str, upscale: int = 1) -> str:
    """Write a uint8 HWC picture (1 or 3 channels) as PNG, optionally enlarged (nearest)."""
    from PIL import Image

    pic = np.asarray(picture, np.uint8)
    if upscale > 1:
        pic = pic.repeat(upscale, 0).repeat(upscale, 1)
    if pic.shape[-1] == 1:
        pic = pic[..., 0]
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(pic).save(path)
    return path
