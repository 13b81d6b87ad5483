"""The FID Inception network (Szegedy et al. 2016, "Rethinking the Inception Architecture"; FID of
Heusel et al. 2017) in Flax linen: exactly pytorch-fid's ``fid_inception_v3``, the TensorFlow graph
``inception-2015-12-05`` (1008 classes) that every published FID is computed with.

It is torchvision's Inception3 (aux head dropped) with four patched block types:
    Mixed_5b/5c/5d (A), 6b..6e (C), 7b (E_1): the pool branch is a 3x3 stride-1 average pool with
        padding 1 that averages only the in-image pixels (TF's 'SAME' average, torch's
        ``count_include_pad=False``);
    Mixed_7c (E_2): that pool is a 3x3 stride-1 *max* pool (padding -inf), as in the TF graph;
    Mixed_6a (B), 7a (D) and the two stem pools: 3x3 stride-2 max pools, no padding.
Every conv is BasicConv2d: conv (no bias) -> BatchNorm in inference mode -> ReLU,
    y = relu((conv(x, W) - mean) / sqrt(var + 0.001) * gamma + beta),
with the running ``mean`` / ``var`` in the ``batch_stats`` collection (eps 0.001, not torch's 1e-5).
pool3 = the spatial mean of Mixed_7c's (B, 8, 8, 2048) output; logits = pool3 @ W_fc + b_fc (1008).

Input conventions (channel-last images x in [0, 1], shape (B, H, W, 3)):
    'pytorch_fid'  resize to 299x299 bilinearly with half-pixel centers, no antialiasing
                   (torch's F.interpolate(mode='bilinear', align_corners=False)), then 2x - 1;
    'tf'           TF1's tf.image.resize_bilinear alignment, src = dst * in / out (the detector of
                   StyleGAN2-ADA / EDM emulates it with grid_sample), then (255 x - 128) / 128.
Both networks are ports of the same TF graph and weights; the two conventions give slightly
different features (a small FID offset), so numbers compare only within one convention. ``resize_input`` / ``normalize_input`` turn those steps off, as
pytorch-fid's flags of the same names do.

``load_params(path)`` reads pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (converted by
``diffjax.convert.inception``) or already converted variables (.safetensors / .npz). Nothing is ever
downloaded.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   + FID_WEIGHTS)
SIZE = 299
NUM_CLASSES = 1008
FEATURES = 2048
BN_EPS = 1e-3
CONVENTIONS = ("pytorch_fid", "tf")
_RESIZE_ALIGN = {"pytorch_fid": "half_pixel", "tf": "tf1"}


# --- input conventions ----------------------------------------------------------------------------
def _taps(n_in: int, n_out: int, align: str):
    """Source rows i0, i1 and weights (1 - l, l) of 2-tap linear interpolation from n_in to n_out
    samples, rounded as torch's CPU kernel rounds them: a float32 scale and src = fma(scale,
    dst + 1/2, -1/2) rounded once to float32 (bit-identical weights; measured on torch 2.13)."""
    f32 = np.float32
    scale = np.float64(f32(n_in) / f32(n_out))       # float32 ratio; its products are exact in f64
    dst = np.arange(n_out, dtype=np.float64)
    if align == "half_pixel":   # torch align_corners=False: src = (dst + 1/2) * scale - 1/2, >= 0
        src = np.maximum((scale * (dst + 0.5) - 0.5).astype(f32), f32(0))
    elif align == "tf1":        # TF1 resize_bilinear(align_corners=False): src = dst * scale
        src = (dst * scale).astype(f32)
    else:
        raise ValueError(f"resize alignment {align!r} is not 'half_pixel' or 'tf1'")
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0.astype(f32)).astype(f32)
    return i0, i1, (f32(1) - lam).astype(f32), lam


def resize_bilinear(x: jax.Array, size: Sequence[int] = (SIZE, SIZE),
                    align: str = "half_pixel") -> jax.Array:
    """Bilinear resize of (B, H, W, C) to ``size`` without antialiasing, separably per axis:
        y[j] = (1 - l_j) x[i0_j] + l_j x[i1_j],  i0_j = floor(s_j), i1_j = min(i0_j + 1, n - 1),
        l_j = s_j - i0_j,
    s_j = max((j + 1/2) n / m - 1/2, 0) for ``align='half_pixel'`` (torch F.interpolate, bilinear,
    align_corners=False) or s_j = j n / m for ``'tf1'`` (TF1 resize_bilinear); n -> m samples.
    Downsampling reads 2 taps per output, like both references (no low-pass filter)."""
    for axis, m in zip((1, 2), size):
        n = x.shape[axis]
        if n == m:
            continue   # both formulas are the identity at equal sizes
        i0, i1, w0, w1 = _taps(n, m, align)
        shape = [1] * x.ndim
        shape[axis] = m
        w0, w1 = jnp.asarray(w0).reshape(shape), jnp.asarray(w1).reshape(shape)
        x = jnp.take(x, i0, axis=axis) * w0 + jnp.take(x, i1, axis=axis) * w1
    return x


def normalize(x: jax.Array, convention: str = "pytorch_fid") -> jax.Array:
    """[0, 1] -> the network's range: 2x - 1 ('pytorch_fid') or (255 x - 128) / 128 ('tf')."""
    if convention == "pytorch_fid":
        return 2.0 * x - 1.0
    if convention == "tf":
        return (x * 255.0 - 128.0) / 128.0
    raise ValueError(f"Inception input convention {convention!r} is not one of {CONVENTIONS}")


# --- the network ----------------------------------------------------------------------------------
def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv(nn.Module):
    """torchvision's BasicConv2d: conv without bias, BatchNorm (running stats, eps 1e-3), ReLU."""

    features: int
    kernel: Any = 1
    strides: Any = 1
    padding: Any = 0

    @nn.compact
    def __call__(self, x):
        ph, pw = _pair(self.padding)
        x = nn.Conv(self.features, _pair(self.kernel), _pair(self.strides),
                    padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPS, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x):
    """3x3 stride-1 average over the in-image pixels only (TF 'SAME'; count_include_pad=False)."""
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool(x, stride: int = 2, pad: int = 0):
    return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class InceptionA(nn.Module):
    pool_features: int

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(64, name="branch1x1")(x)
        b5 = BasicConv(48, name="branch5x5_1")(x)
        b5 = BasicConv(64, 5, padding=2, name="branch5x5_2")(b5)
        b3 = BasicConv(64, name="branch3x3dbl_1")(x)
        b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(b3)
        b3 = BasicConv(96, 3, padding=1, name="branch3x3dbl_3")(b3)
        bp = BasicConv(self.pool_features, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], -1)


class InceptionB(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(384, 3, strides=2, name="branch3x3")(x)
        bd = BasicConv(64, name="branch3x3dbl_1")(x)
        bd = BasicConv(96, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = BasicConv(96, 3, strides=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool(x)], -1)


class InceptionC(nn.Module):
    channels_7x7: int

    @nn.compact
    def __call__(self, x):
        c7 = self.channels_7x7
        b1 = BasicConv(192, name="branch1x1")(x)
        b7 = BasicConv(c7, name="branch7x7_1")(x)
        b7 = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv(c7, name="branch7x7dbl_1")(x)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv(192, name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], -1)


class InceptionD(nn.Module):
    @nn.compact
    def __call__(self, x):
        b3 = BasicConv(192, name="branch3x3_1")(x)
        b3 = BasicConv(320, 3, strides=2, name="branch3x3_2")(b3)
        b7 = BasicConv(192, name="branch7x7x3_1")(x)
        b7 = BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv(192, 3, strides=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool(x)], -1)


class InceptionE(nn.Module):
    """E_1 (Mixed_7b: same-padded average pool) or E_2 (Mixed_7c: same-padded max pool)."""

    max_pool: bool = False

    @nn.compact
    def __call__(self, x):
        b1 = BasicConv(320, name="branch1x1")(x)
        b3 = BasicConv(384, name="branch3x3_1")(x)
        b3 = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
        bd = BasicConv(448, name="branch3x3dbl_1")(x)
        bd = BasicConv(384, 3, padding=1, name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                              BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)],
                             -1)
        pooled = _max_pool(x, stride=1, pad=1) if self.max_pool else _avg_pool_same(x)
        bp = BasicConv(192, name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], -1)


class InceptionV3(nn.Module):
    """The FID Inception: (B, H, W, 3) images in [0, 1] -> pool3 (B, 2048) [, logits (B, 1008)].

    Module names are those of torchvision's Inception3, so the converter maps keys one to one."""

    resize_input: bool = True
    normalize_input: bool = True
    convention: str = "pytorch_fid"

    @nn.compact
    def __call__(self, x, return_logits: bool = False):
        if self.convention not in CONVENTIONS:
            raise ValueError(f"Inception input convention {self.convention!r} is not one of "
                             f"{CONVENTIONS}")
        if x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"InceptionV3 takes channel-last RGB images (B, H, W, 3), got shape "
                             f"{tuple(x.shape)} (grayscale: fid.prepare repeats the channel)")
        x = x.astype(jnp.float32)
        if self.resize_input:
            x = resize_bilinear(x, (SIZE, SIZE), _RESIZE_ALIGN[self.convention])
        if self.normalize_input:
            x = normalize(x, self.convention)
        x = BasicConv(32, 3, strides=2, name="Conv2d_1a_3x3")(x)       # 149 x 149 x 32
        x = BasicConv(32, 3, name="Conv2d_2a_3x3")(x)                  # 147 x 147 x 32
        x = BasicConv(64, 3, padding=1, name="Conv2d_2b_3x3")(x)       # 147 x 147 x 64
        x = _max_pool(x)                                               # 73 x 73 x 64
        x = BasicConv(80, name="Conv2d_3b_1x1")(x)                     # 73 x 73 x 80
        x = BasicConv(192, 3, name="Conv2d_4a_3x3")(x)                 # 71 x 71 x 192
        x = _max_pool(x)                                               # 35 x 35 x 192
        x = InceptionA(32, name="Mixed_5b")(x)                         # 35 x 35 x 256
        x = InceptionA(64, name="Mixed_5c")(x)                         # 35 x 35 x 288
        x = InceptionA(64, name="Mixed_5d")(x)                         # 35 x 35 x 288
        x = InceptionB(name="Mixed_6a")(x)                             # 17 x 17 x 768
        x = InceptionC(128, name="Mixed_6b")(x)
        x = InceptionC(160, name="Mixed_6c")(x)
        x = InceptionC(160, name="Mixed_6d")(x)
        x = InceptionC(192, name="Mixed_6e")(x)                        # 17 x 17 x 768
        x = InceptionD(name="Mixed_7a")(x)                             # 8 x 8 x 1280
        x = InceptionE(name="Mixed_7b")(x)                             # 8 x 8 x 2048
        x = InceptionE(max_pool=True, name="Mixed_7c")(x)              # 8 x 8 x 2048
        pool3 = x.mean(axis=(1, 2))
        logits = nn.Dense(NUM_CLASSES, name="fc")(pool3)   # always built: the converter fills it
        return (pool3, logits) if return_logits else pool3


@functools.cache
def variable_shapes() -> dict:
    """{'params': ..., 'batch_stats': ...} of ShapeDtypeStructs, traced once without allocating
    (read-only: shared by every caller)."""
    return jax.eval_shape(lambda: InceptionV3().init(jax.random.key(0), jnp.zeros((1, 75, 75, 3))))


# --- loading weights ------------------------------------------------------------------------------
def _flat(variables) -> dict:
    return {"/".join(k): np.asarray(v) for k, v in traverse_util.flatten_dict(variables).items()}


def save_params(path: str, variables) -> None:
    """Write converted variables as .safetensors or .npz ('/'-joined keys, e.g.
    'params/Mixed_5b/branch1x1/conv/kernel'); ``load_params`` reads both."""
    flat = _flat(jax.device_get(variables))
    if path.endswith(".safetensors"):
        from safetensors.numpy import save_file
        save_file({k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()}, path)
    elif path.endswith(".npz"):
        np.savez(path, **flat)
    else:
        raise ValueError(f"{path}: save converted Inception params as .safetensors or .npz")


def _from_flat(flat: dict, path: str) -> dict:
    """Check '/'-joined converted arrays against the network's variables and nest them."""
    from diffjax.convert.state_dict import ConvertError

    want = {"/".join(k): v for k, v in traverse_util.flatten_dict(variable_shapes()).items()}
    missing = sorted(set(want) - set(flat))
    extra = sorted(set(flat) - set(want))
    if missing or extra:
        raise ConvertError(f"{path}: not converted FID Inception params: missing "
                           f"{missing[:4] or 'none'}, unexpected {extra[:4] or 'none'} (pass "
                           f"pytorch-fid's {FID_WEIGHTS} itself to convert it)")
    for k, v in want.items():
        if tuple(flat[k].shape) != tuple(v.shape):
            raise ConvertError(f"{path}: {k!r} has shape {tuple(flat[k].shape)}, the FID Inception "
                               f"expects {tuple(v.shape)}")
    return traverse_util.unflatten_dict({tuple(k.split("/")): jnp.asarray(v, jnp.float32)
                                         for k, v in flat.items()})


def load_params(path: str) -> dict:
    """Variables {'params', 'batch_stats'} of the FID Inception from ``path``: pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth`` (or a .safetensors / .bin with its state-dict keys),
    converted by ``diffjax.convert.inception``, or a .safetensors / .npz written by ``save_params``."""
    path = os.fspath(path) if path else ""
    if not path or not os.path.exists(path):
        raise FileNotFoundError(
            f"FID Inception weights {path!r} not found: download {FID_WEIGHTS} from the "
            f"pytorch-fid release ({FID_WEIGHTS_URL}) and pass its path (diffjax never downloads)")
    if path.endswith(".npz"):
        with np.load(path) as f:
            return _from_flat({k: f[k] for k in f.files}, path)
    from diffjax.convert import inception as convert
    from diffjax.convert.state_dict import load_file

    tensors = load_file(path)
    if any(k.startswith(("params/", "batch_stats/")) for k in tensors):
        return _from_flat(tensors, path)
    return jax.tree.map(jnp.asarray, convert.convert(tensors, source=path))
