"""A VAE folder: the ``AutoencoderKL`` that maps images to the latents a latent model trains on.

    vae = load_vae(folder)            # folder: vae.json (module fields) + params.safetensors
    z = vae.encode(images, key)       # (B, H, W, 3) in [-1, 1] -> scaled latents (B, h, w, c)
    x = vae.decode(z)                 # scaled latents -> images, float32 (unclipped)
    save_vae(folder, fields, params)  # what ``diffjax convert`` writes for a diffusers VAE

The latents are the scaled ones the diffusion model sees: (z - shift_factor) * scaling_factor
(models/autoencoder.py). ``fingerprint`` (sha256 of the two files) ties a latent cache and a run to
the VAE that made them, so a run never decodes with a different VAE than it was trained on.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

FIELDS_FILE, PARAMS_FILE = "vae.json", "params.safetensors"


class Vae(NamedTuple):
    folder: str            # absolute path of the VAE folder
    module: Any            # models.autoencoder.AutoencoderKL
    params: dict
    fingerprint: str

    @property
    def downsample(self) -> int:
        """Image side / latent side."""
        return 2 ** (len(self.module.block_out_channels) - 1)

    def latent_shape(self, image_shape) -> tuple:
        """(h, w, latent_channels) of an (H, W, C) image."""
        h, w, c = tuple(image_shape)
        if c != self.module.in_channels:
            raise ValueError(f"VAE {self.folder} encodes {self.module.in_channels}-channel images; "
                             f"the data has {c} channels (set config.data.channels or use a VAE "
                             f"for this data)")
        f = self.downsample
        if h % f or w % f:
            raise ValueError(f"VAE {self.folder} downsamples by {f}: the image side must divide by "
                             f"{f}, got {h}x{w} (set config.data.resolution)")
        return (h // f, w // f, self.module.latent_channels)

    def encode(self, images, key: Optional[jax.Array] = None) -> jax.Array:
        """Scaled latents of ``images`` (B, H, W, C) in [-1, 1]: the posterior mean, or a draw."""
        return _encode(self.module, self.params, jnp.asarray(images, jnp.float32), key)

    def on_mesh(self, mesh) -> "Vae":
        """This VAE with its params replicated over ``mesh`` (every process), so it encodes and
        decodes batches sharded over that mesh."""
        from diffjax.inference.draws import global_arrays
        from diffjax.training import sharding

        if mesh is None:
            return self
        return self._replace(params=global_arrays(self.params, sharding.replicated(mesh)))

    def decode(self, latents) -> jax.Array:
        """Images (B, H, W, C) of scaled latents, float32 as the decoder gives them (unclipped)."""
        return _decode(self.module, self.params, jnp.asarray(latents, jnp.float32))


@functools.partial(jax.jit, static_argnums=0)
def _encode(module, params, x, key):
    return module.latents(params, x, key)


@functools.partial(jax.jit, static_argnums=0)
def _decode(module, params, z):
    return module.images(params, z)


def fingerprint(folder: str) -> str:
    h = hashlib.sha256()
    for name in (FIELDS_FILE, PARAMS_FILE):
        with open(os.path.join(folder, name), "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()[:16]


def _check_folder(folder: str) -> None:
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"VAE folder {folder!r} does not exist: convert a diffusers "
                                f"AutoencoderKL with `diffjax convert --from diffusers VAE_DIR "
                                f"--workdir {folder}`")
    missing = [n for n in (FIELDS_FILE, PARAMS_FILE) if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"VAE folder {folder!r} has no {' or '.join(missing)}: it is not a "
                                f"converted VAE (diffjax convert --from diffusers VAE_DIR "
                                f"--workdir {folder})")


def load_vae(folder: str) -> Vae:
    """The VAE in ``folder`` (``vae.json`` module fields + ``params.safetensors``)."""
    from flax import traverse_util
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from diffjax.models.autoencoder import AutoencoderKL

    folder = os.path.abspath(folder)
    _check_folder(folder)
    with open(os.path.join(folder, FIELDS_FILE), encoding="utf-8") as f:
        try:
            fields = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{folder}/{FIELDS_FILE} is not valid JSON ({e}); re-run diffjax "
                             f"convert for this VAE") from e
    known = set(AutoencoderKL.__dataclass_fields__) - {"parent", "name"}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(f"{folder}/{FIELDS_FILE}: unknown AutoencoderKL field(s) "
                         f"{', '.join(unknown)}; the fields are {', '.join(sorted(known))}")
    module = AutoencoderKL(**fields)
    try:
        flat = load_file(os.path.join(folder, PARAMS_FILE))
    except (SafetensorError, OSError) as e:
        raise ValueError(f"{folder}/{PARAMS_FILE} cannot be read ({e}): the file is corrupt; "
                         f"re-run diffjax convert for this VAE") from e
    params = traverse_util.unflatten_dict({tuple(k.split("/")): v for k, v in flat.items()})
    _check_params(module, params, folder)
    params = jax.tree.map(jnp.asarray, params)
    return Vae(folder=folder, module=module, params=params, fingerprint=fingerprint(folder))


def _check_params(module, params, folder: str) -> None:
    from diffjax.models.registry import tree_mismatch

    size = 2 ** (len(module.block_out_channels) - 1) * 2
    want = jax.eval_shape(lambda k: module.init(k, jnp.zeros((1, size, size, module.in_channels))),
                          jax.random.key(0))["params"]
    what = tree_mismatch(want, params, show=3)
    if what:
        raise ValueError(f"{folder}/{PARAMS_FILE} does not fit its {FIELDS_FILE} ({what}); "
                         f"re-run diffjax convert for this VAE")


def save_vae(folder: str, fields: dict, params: dict) -> str:
    """Write a VAE folder (``vae.json`` + ``params.safetensors``); returns its absolute path."""
    from flax import traverse_util
    from safetensors.numpy import save_file

    os.makedirs(folder, exist_ok=True)
    fields = {k: (list(v) if isinstance(v, tuple) else v) for k, v in fields.items()}
    with open(os.path.join(folder, FIELDS_FILE), "w", encoding="utf-8") as f:
        json.dump(fields, f, indent=2)
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in flat.items()},
              os.path.join(folder, PARAMS_FILE))
    return os.path.abspath(folder)


def find_vae(path: str, workdir: str | None = None) -> str:
    """The VAE folder ``config.latent.vae`` names: absolute, or relative to the workdir (a
    converted run's ``vae``), else to the current directory."""
    if os.path.isabs(path):
        _check_folder(path)
        return path
    tried = []
    for base in ([workdir] if workdir else []) + [os.getcwd()]:
        p = os.path.join(base, path)
        tried.append(p)
        if os.path.isdir(p):
            return os.path.abspath(p)
    raise FileNotFoundError(f"config.latent.vae = {path!r}: no such VAE folder (looked in "
                            f"{' and '.join(tried)}); convert one with `diffjax convert --from "
                            f"diffusers VAE_DIR --workdir FOLDER`")
