"""Frechet Inception Distance (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule"):
images -> features (jitted, batch-sharded over the devices) -> Gaussian statistics -> distance.

For features f of generated images (mean mu_g, covariance S_g) and of reference images (mu_r, S_r),
    FID = |mu_r - mu_g|^2 + tr(S_r) + tr(S_g) - 2 tr((S_r^1/2 S_g S_r^1/2)^1/2),
the Frechet (2-Wasserstein) distance of N(mu_r, S_r) and N(mu_g, S_g); tr((S_r^1/2 S_g S_r^1/2)^1/2)
= tr((S_r S_g)^1/2), pytorch-fid's scipy.linalg.sqrtm form, here by two symmetric eigendecompositions
in float64. S is the unbiased covariance (divided by n - 1), as in pytorch-fid, clean-fid and EDM.

Images enter as saved PNGs would (``prepare``): channel-last (N, H, W, C), C = 3 (C = 1 is
repeated, as PIL's convert('RGB')), floats in ``value_range`` (default [-1, 1], diffjax's samples)
quantized to uint8 by u = floor(clip(255 x01 + 1/2, 0, 255)), x01 = (x - lo) / (hi - lo) (EDM's
``x * 127.5 + 128`` cast, torchvision's save_image), then u / 255 (exactly ToTensor's float32
values); uint8 inputs are used as u. The
network sees [0, 1] images (``inception.InceptionV3`` resizes and normalizes them).

Reference statistics are ``.npz`` files with arrays ``mu`` (D,) and ``sigma`` (D, D), the format of
pytorch-fid's ``--save-stats``, clean-fid and EDM's fid-refs. ``fid_of_sampler`` is EDM's protocol
(Karras et al. 2022): images from seeds 0 .. N-1 (N = 50,000 in the papers), statistics accumulated
batch by batch in float64.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DEFAULT_RANGE = (-1.0, 1.0)
# u / 255 for u = 0..255 by true float32 division, as torchvision's ToTensor computes it (XLA would
# multiply by a rounded 1/255 instead: 126 of the 256 values one ulp off)
_U8 = np.arange(256, dtype=np.float32) / np.float32(255)


# --- the distance and the statistics -------------------------------------------------------------
def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """Frechet distance between N(mu1, cov1) and N(mu2, cov2) (see module docstring)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    cov1, cov2 = np.atleast_2d(np.asarray(cov1, np.float64)), np.atleast_2d(np.asarray(cov2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"frechet_distance: statistics of different features: mu {mu1.shape} and "
                         f"{mu2.shape}, sigma {cov1.shape} and {cov2.shape} (compute both with the "
                         f"same network and feature layer)")
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    m = s1 @ cov2 @ s1
    tr_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)).sum()
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * tr_sqrt)


def feature_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """(mean, unbiased covariance) of features (N, D), in float64."""
    feats = np.asarray(feats, np.float64)
    return feats.mean(0), np.cov(feats, rowvar=False)


class Moments:
    """Streaming float64 sums of f and f f^T: ``add`` batches, ``stats()`` = ``feature_stats`` of
    everything added, sigma = (sum f f^T - n mu mu^T) / (n - 1) (EDM's accumulation)."""

    def __init__(self):
        self.n, self.s, self.ss = 0, None, None

    def add(self, feats) -> None:
        f = np.asarray(feats, np.float64)
        if self.s is None:
            self.s, self.ss = np.zeros(f.shape[1]), np.zeros((f.shape[1],) * 2)
        self.n += len(f)
        self.s += f.sum(0)
        self.ss += f.T @ f

    def stats(self) -> tuple[np.ndarray, np.ndarray]:
        if self.n < 2:
            raise ValueError(f"feature statistics need at least 2 images, got {self.n}")
        mu = self.s / self.n
        return mu, (self.ss - self.n * np.outer(mu, mu)) / (self.n - 1)


def save_stats(path: str, mu, sigma) -> None:
    """Write ``mu``, ``sigma`` as an .npz (pytorch-fid / clean-fid / EDM reference format)."""
    if not path.endswith(".npz"):
        raise ValueError(f"{path}: reference statistics are saved as .npz (numpy would append "
                         f"'.npz' to this name)")
    np.savez(path, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64))


def load_stats(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from an .npz holding arrays ``mu`` (D,) and ``sigma`` (D, D)."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"reference statistics {path} not found (make them with "
                                f"fid.save_stats or pytorch-fid --save-stats, or use a clean-fid / "
                                f"EDM fid-refs .npz)")
    try:
        with np.load(path, allow_pickle=False) as f:
            found = dict(f.items())
    except Exception as e:   # not an npz (zip) file
        raise ValueError(f"{path}: not a readable .npz of reference statistics ({e})") from e
    missing = [k for k in ("mu", "sigma") if k not in found]
    if missing:
        raise ValueError(f"{path}: reference statistics need arrays 'mu' and 'sigma'; missing "
                         f"{', '.join(repr(k) for k in missing)} (the file holds "
                         f"{sorted(found) or 'nothing'})")
    mu, sigma = np.asarray(found["mu"], np.float64), np.asarray(found["sigma"], np.float64)
    if mu.ndim != 1 or sigma.shape != mu.shape * 2:
        raise ValueError(f"{path}: 'mu' has shape {mu.shape} and 'sigma' {sigma.shape}; expected "
                         f"(D,) and (D, D)")
    return mu, sigma


def as_stats(ref) -> tuple[np.ndarray, np.ndarray]:
    """Reference statistics from an .npz path or a (mu, sigma) pair."""
    if isinstance(ref, (str, os.PathLike)):
        return load_stats(os.fspath(ref))
    mu, sigma = ref
    return np.asarray(mu, np.float64), np.asarray(sigma, np.float64)


# --- images -> features ---------------------------------------------------------------------------
def prepare(images, value_range: Sequence[float] = DEFAULT_RANGE, quantize: bool = True):
    """(N, H, W, C) images -> float32 RGB in [0, 1] as the network reads them (module docstring).
    ``quantize=False`` keeps the float values (mapped from ``value_range``, not clipped)."""
    x = jnp.asarray(images)
    if x.ndim != 4 or x.shape[-1] not in (1, 3):
        raise ValueError(f"FID takes channel-last images (N, H, W, 3) or (N, H, W, 1), got shape "
                         f"{tuple(x.shape)} (channel-first arrays: transpose to (N, H, W, C))")
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range {tuple(value_range)}: expected (low, high), low < high")
    if x.dtype == jnp.uint8:
        x = jnp.take(_U8, x.astype(jnp.int32))
    elif quantize:   # a x + b = 255 x01 + 1/2 as EDM (127.5 x + 128) and save_image (255 x + .5)
        a = 255.0 / (hi - lo)
        u = jnp.floor(jnp.clip(x.astype(jnp.float32) * a + (0.5 - lo * a), 0.0, 255.0))
        x = jnp.take(_U8, u.astype(jnp.int32))
    else:
        x = (x.astype(jnp.float32) - lo) / (hi - lo)
    return jnp.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _device_batch(x: np.ndarray, sharding) -> jax.Array:
    """A global array split over the mesh from the same host batch on every process."""
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


class Features:
    """``features(images) -> (N, D) float32 numpy``: ``apply(variables, x01)`` jitted on batches of
    ``batch_size`` (rounded up to a multiple of the device count) split over a 1-D mesh of
    ``devices`` (default: all); the last batch is padded with zeros and the padding dropped, so
    every batch runs the same executable. ``variables`` are replicated. Images go through
    ``prepare(value_range, quantize)`` inside the jitted function."""

    def __init__(self, apply: Callable, variables, *, batch_size: int = 50,
                 devices: Sequence | None = None, value_range: Sequence[float] = DEFAULT_RANGE,
                 quantize: bool = True):
        if int(batch_size) < 1:
            raise ValueError(f"feature batch size {batch_size} must be at least 1")
        devices = list(jax.devices() if devices is None else devices)
        self.mesh = Mesh(np.array(devices), ("batch",))
        self.batch_size = math.ceil(int(batch_size) / len(devices)) * len(devices)
        self.value_range, self.quantize = tuple(value_range), bool(quantize)
        self._rows = NamedSharding(self.mesh, P("batch"))
        rep = NamedSharding(self.mesh, P())
        self.variables = jax.tree.map(lambda a: _device_batch(np.asarray(a), rep), variables)

        def fn(v, x):
            return apply(v, prepare(x, self.value_range, self.quantize)).astype(jnp.float32)

        self._fn = jax.jit(fn, in_shardings=(rep, self._rows), out_shardings=self._rows)

    def batches(self, images):
        """Features of ``images`` batch by batch (for streaming statistics)."""
        n = len(images)
        for start in range(0, n, self.batch_size):
            x = np.asarray(images[start:start + self.batch_size])
            b = len(x)
            if b < self.batch_size:
                x = np.concatenate([x, np.zeros((self.batch_size - b,) + x.shape[1:], x.dtype)])
            y = self._fn(self.variables, _device_batch(x, self._rows))
            if not y.is_fully_addressable:   # several processes: every host gets the whole batch
                from jax.experimental import multihost_utils
                y = multihost_utils.process_allgather(y, tiled=True)
            yield np.asarray(jax.device_get(y))[:b]

    def __call__(self, images) -> np.ndarray:
        if len(images) == 0:
            raise ValueError("no images to compute features of")
        return np.concatenate(list(self.batches(images)))

    def stats(self, images) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma) of the features of ``images``, accumulated batch by batch."""
        acc = Moments()
        for f in self.batches(images):
            acc.add(f)
        return acc.stats()


def inception_features(weights, *, convention: str = "pytorch_fid", batch_size: int = 50,
                       devices: Sequence | None = None,
                       value_range: Sequence[float] = DEFAULT_RANGE, quantize: bool = True,
                       ) -> Features:
    """``Features`` of the FID Inception's pool3 (2048-d). ``weights``: a path for
    ``inception.load_params`` (pytorch-fid's .pth, or converted .safetensors / .npz) or variables."""
    from diffjax.metrics import inception

    variables = inception.load_params(weights) if isinstance(weights, (str, os.PathLike)) \
        else weights
    model = inception.InceptionV3(convention=convention)
    return Features(lambda v, x: model.apply(v, x), variables, batch_size=batch_size,
                    devices=devices, value_range=value_range, quantize=quantize)


def fid(images, ref, features: Features) -> float:
    """FID of ``images`` (N, H, W, C) against ``ref`` (an .npz path or (mu, sigma))."""
    mu_r, sigma_r = as_stats(ref)
    return frechet_distance(*features.stats(images), mu_r, sigma_r)


def fid_of_sampler(sample_fn: Callable[[np.ndarray], np.ndarray], ref, features: Features, *,
                   num: int = 50_000, batch_size: int = 100, first_seed: int = 0) -> dict:
    """EDM's protocol: ``sample_fn(seeds)`` draws one image per seed of ``first_seed ..
    first_seed + num - 1``, ``batch_size`` seeds a call (image i must depend on seeds[i] alone, so
    the result is the papers' whatever the batching); returns {'fid', 'num', 'mu', 'sigma'}."""
    if int(num) < 2:
        raise ValueError(f"FID needs at least 2 samples, got num={num}")
    mu_r, sigma_r = as_stats(ref)
    acc = Moments()
    for start in range(first_seed, first_seed + int(num), int(batch_size)):
        seeds = np.arange(start, min(start + int(batch_size), first_seed + int(num)))
        images = np.asarray(sample_fn(seeds))
        if len(images) != len(seeds):
            raise ValueError(f"sample_fn returned {len(images)} images for {len(seeds)} seeds "
                             f"(one image per seed)")
        for f in features.batches(images):
            acc.add(f)
    mu, sigma = acc.stats()
    return {"fid": frechet_distance(mu, sigma, mu_r, sigma_r), "num": int(num), "mu": mu,
            "sigma": sigma}
