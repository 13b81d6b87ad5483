"""Reading PyTorch / diffusers checkpoints as numpy, and taking tensors from them with checks.

A diffusers model directory holds ``config.json`` (the constructor's arguments, with ``_class_name``)
and its weights as ``diffusion_pytorch_model.safetensors`` (read with the ``safetensors`` package;
no torch needed) or ``diffusion_pytorch_model.bin`` (a pickled torch state dict: torch is imported
only then, and loaded with ``weights_only=True``). Sharded checkpoints (``*.safetensors.index.json``)
are read shard by shard. Nothing is downloaded: the user points at files they already have.

``StateDict`` hands tensors out by key (``take``), checking each shape against what the diffjax
module expects and remembering what was used, so a converter ends with ``finish()``: a missing key,
a wrong shape or a leftover tensor the converter did not understand is a ``ConvertError`` naming
the key (a leftover means the checkpoint has a part the converted model would silently drop).
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "model.safetensors",
                "diffusion_pytorch_model.bin", "pytorch_model.bin")


class ConvertError(ValueError):
    """A checkpoint that cannot be converted: the message names the key, file or field."""


def _load_safetensors(path: str) -> dict:
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except Exception as e:  # a corrupt or truncated file, or a bf16 tensor numpy cannot hold
        if "bf16" in str(e).lower() or "bfloat16" in str(e).lower():
            return _load_safetensors_via_torch(path)
        raise ConvertError(f"{path}: not a readable safetensors file ({e})") from e


def _load_safetensors_via_torch(path: str) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError as e:
        raise ConvertError(f"{path} holds bfloat16 tensors, which numpy cannot read: install torch "
                           f"(pip install 'diffjax[interop]') to convert it") from e
    return {k: v.float().numpy() for k, v in load_file(path).items()}


def _load_bin(path: str) -> dict:
    try:
        import torch
    except ImportError as e:
        raise ConvertError(f"{path} is a pickled torch state dict: install torch to read it (pip "
                           f"install 'diffjax[interop]'), or convert it to .safetensors") from e
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ConvertError(f"{path}: not a readable torch checkpoint ({e})") from e
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    if not isinstance(sd, Mapping):
        raise ConvertError(f"{path}: expected a state dict (a mapping of names to tensors), got "
                           f"{type(sd).__name__}")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in sd.items() if hasattr(v, "numpy")}


def load_file(path: str) -> dict:
    """{name: np.ndarray} from one .safetensors, .bin / .pt / .pth file, or a sharded index."""
    if not os.path.exists(path):
        raise ConvertError(f"{path} not found")
    if path.endswith(".index.json"):
        with open(path, encoding="utf-8") as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        out = {}
        for s in shards:
            out.update(load_file(os.path.join(os.path.dirname(path), s)))
        return out
    if path.endswith(".safetensors"):
        return _load_safetensors(path)
    if path.endswith((".bin", ".pt", ".pth", ".ckpt")):
        return _load_bin(path)
    raise ConvertError(f"{path}: unknown weight file type (expected .safetensors, .bin, .pt or "
                       f".pth)")


def weights_path(model_dir: str) -> str:
    """The weight file of a diffusers model directory (safetensors preferred, sharded or not)."""
    for name in WEIGHT_FILES:
        for cand in (name + ".index.json", name):
            p = os.path.join(model_dir, cand)
            if os.path.exists(p):
                return p
    raise ConvertError(f"{model_dir} holds no weights: expected one of {', '.join(WEIGHT_FILES)}")


def read_config(model_dir: str) -> dict:
    p = os.path.join(model_dir, "config.json")
    if not os.path.exists(p):
        raise ConvertError(f"{p} not found: a diffusers model directory has config.json next to "
                           f"its weights (for a pipeline, point at its transformer/, unet/ or vae/ "
                           f"folder, or at the pipeline folder with model_index.json)")
    try:
        with open(p, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ConvertError(f"{p} is not valid JSON ({e})") from e


class StateDict:
    """Tensors by name; ``take`` checks and records, ``finish`` refuses what was not used."""

    def __init__(self, tensors: Mapping[str, np.ndarray], source: str = "checkpoint",
                 ignore: Iterable[str] = ()):
        self.tensors = dict(tensors)
        self.source = source
        self.used: set[str] = set()
        self.ignore = tuple(ignore)   # key suffixes the model does not hold (buffers)

    def has(self, key: str) -> bool:
        return key in self.tensors

    def keys_under(self, prefix: str) -> list[str]:
        return sorted(k for k in self.tensors if k.startswith(prefix))

    def take(self, key: str, shape: Optional[Sequence[int]] = None) -> np.ndarray:
        if key not in self.tensors:
            near = sorted(k for k in self.tensors if k.rsplit(".", 1)[0] == key.rsplit(".", 1)[0])
            hint = f" (tensors under that module: {', '.join(near)})" if near else ""
            raise ConvertError(f"{self.source}: missing tensor {key!r}{hint}")
        a = np.asarray(self.tensors[key])
        if shape is not None and tuple(a.shape) != tuple(shape):
            raise ConvertError(f"{self.source}: tensor {key!r} has shape {tuple(a.shape)}, the "
                               f"model built from config.json expects {tuple(shape)}")
        self.used.add(key)
        return a.astype(np.float32) if np.issubdtype(a.dtype, np.floating) else a

    def linear(self, prefix: str, n_in: int, n_out: int, bias: bool = True) -> dict:
        """torch Linear (out, in) -> Flax Dense {'kernel': (in, out), 'bias': (out,)}."""
        out = {"kernel": self.take(prefix + ".weight", (n_out, n_in)).T}
        if bias:
            out["bias"] = self.take(prefix + ".bias", (n_out,))
        return out

    def conv(self, prefix: str, n_in: int, n_out: int, k: int, bias: bool = True) -> dict:
        """torch Conv2d (out, in, k, k) -> Flax Conv {'kernel': (k, k, in, out), 'bias'}."""
        out = {"kernel": self.take(prefix + ".weight", (n_out, n_in, k, k)).transpose(2, 3, 1, 0)}
        if bias:
            out["bias"] = self.take(prefix + ".bias", (n_out,))
        return out

    def norm(self, prefix: str, n: int, bias: bool = True) -> dict:
        """torch LayerNorm / GroupNorm (weight, bias) -> Flax {'scale', 'bias'}."""
        out = {"scale": self.take(prefix + ".weight", (n,))}
        if bias:
            out["bias"] = self.take(prefix + ".bias", (n,))
        return out

    def skip(self, prefix: str) -> None:
        """Mark every tensor under ``prefix`` as deliberately unused (e.g. equal copies)."""
        self.used.update(self.keys_under(prefix))

    def finish(self) -> None:
        left = sorted(k for k in self.tensors if k not in self.used
                      and not any(k.endswith(s) for s in self.ignore))
        if left:
            more = f" and {len(left) - 8} more" if len(left) > 8 else ""
            raise ConvertError(f"{self.source}: {len(left)} tensors the converter does not know "
                               f"(the converted model would drop them): {', '.join(left[:8])}{more}")


def check_fields(cfg: Mapping, known: Mapping[str, object], arch: str) -> None:
    """Refuse a config.json field we do not convert unless its value is the one we implement.

    ``known`` maps a field to the value diffjax implements, or to None when any value is handled.
    Fields starting with '_' (diffusers' bookkeeping) are ignored."""
    for k, v in cfg.items():
        if k.startswith("_"):
            continue
        if k not in known:
            raise ConvertError(f"{arch}: unknown architecture field {k!r} = {v!r} in config.json "
                               f"(diffjax converts: {', '.join(sorted(known))})")
        want = known[k]
        if want is not None and v != want and not (isinstance(want, tuple) and v in want):
            raise ConvertError(f"{arch}: config.json field {k!r} = {v!r} is not supported (diffjax "
                               f"implements {want!r})")


def config_with_defaults(hf: Mapping, known: Mapping[str, object], defaults: Mapping, arch: str
                         ) -> dict:
    """config.json's fields (checked by ``check_fields``) over the architecture's defaults."""
    check_fields(hf, known, arch)
    return {**defaults, **{k: v for k, v in hf.items() if not k.startswith("_")}}


def learned_sigma(arch: str, in_channels: int, out_channels) -> bool:
    """Whether a transformer predicting ``out_channels`` of ``in_channels`` learns its variance
    (2x: DiT's and PixArt's learned sigma, the first half eps); any other count is refused."""
    cin = int(in_channels)
    if out_channels is None or int(out_channels) == cin:
        return False
    if int(out_channels) == 2 * cin:
        return True
    raise ConvertError(f"{arch}: out_channels = {out_channels} with in_channels = {cin}: diffjax "
                       f"predicts in_channels (or 2x: learned sigma)")
