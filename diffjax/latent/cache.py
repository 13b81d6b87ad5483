"""Cached latents: an image dataset encoded once by a VAE, the data a latent model trains on.

    summary = encode_config(config, workdir)     # what ``diffjax encode`` runs
    z = encode_images(vae, images, batch_size=64, mesh=mesh, key=key)   # sharded over the mesh
    source, meta = load_cache(path)              # a random-access source of the latents

A cache is a directory (default ``WORKDIR/latents``; ``config.latent.cache``):
    latents.npy   (N, h, w, c) float32 scaled latents, (z - shift) * scale (read memory-mapped)
    labels.npy    (N,) int32
    meta.json     the VAE (folder, fingerprint), the posterior, the seed, the flip, the data section
                  that made it, the class names
``config.latent.posterior``: 'sample' caches one draw z = mean + exp(logvar / 2) n per image (the
draw DiT trains on, fixed here: example i's noise is key fold_in(seed, i), so the cache does not
depend on the batch size or the device count), 'mean' the posterior mean. With ``config.data.flip``
the mirrored images are encoded too (2N latents): a flip of a latent is not the latent of the
flipped image, so the trainer does not flip latents.
"""
from __future__ import annotations

import json
import os
import shutil
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.data.arrays import source_arrays
from diffjax.latent.vae import Vae, find_vae, fingerprint, load_vae

LATENTS_FILE, LABELS_FILE, META_FILE = "latents.npy", "labels.npy", "meta.json"
DEFAULT_CACHE = "latents"
POSTERIORS = ("sample", "mean")
FORMAT = 1


# ---- encoding ----------------------------------------------------------------------------------
def _encode_fn(module, posterior: str):
    def fn(params, x, index, key):
        from diffjax.models.autoencoder import AutoencoderKL

        mean, logvar = module.apply({"params": params}, x, method=AutoencoderKL.encode)
        z = mean
        if posterior == "sample":
            keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
            noise = jax.vmap(lambda k: jax.random.normal(k, mean.shape[1:], mean.dtype))(keys)
            z = mean + jnp.exp(0.5 * logvar) * noise
        return (z - module.shift_factor) * module.scaling_factor
    return fn


def encode_images(vae: Vae, images: np.ndarray, *, batch_size: int = 64, mesh=None,
                  key=None, posterior: str = "sample", progress=None) -> np.ndarray:
    """Scaled latents (N, h, w, c) of ``images`` (N, H, W, C) in [-1, 1], computed in batches of
    ``batch_size`` (rounded up to a multiple of the mesh's batch shards) with the batch split
    over ``mesh``'s data axes (default: every device) and the VAE replicated. Every process holds
    ``images`` and gets all latents. ``posterior``: 'sample' (example i draws with fold_in(key, i))
    or 'mean'."""
    from diffjax.inference.draws import global_arrays
    from diffjax.inference.loading import default_mesh
    from diffjax.training import sharding

    if posterior not in POSTERIORS:
        raise ValueError(f"config.latent.posterior = {posterior!r}; valid: {', '.join(POSTERIORS)}")
    if int(batch_size) < 1:
        raise ValueError(f"config.latent.batch_size must be >= 1, got {batch_size}")
    images = np.asarray(images, np.float32)
    n = images.shape[0]
    shape = vae.latent_shape(images.shape[1:])
    mesh = default_mesh() if mesh is None else mesh
    div = sharding.batch_divisor(mesh)
    b = -(-min(int(batch_size), n) // div) * div
    bsh, rep = sharding.batch_sharding(mesh), sharding.replicated(mesh)
    key = jax.random.key(0) if key is None else key
    fn = jax.jit(_encode_fn(vae.module, posterior), out_shardings=bsh)
    params, key = global_arrays((vae.params, key), rep)
    out = np.empty((n,) + shape, np.float32)
    for start in range(0, n, b):
        m = min(b, n - start)
        x = np.zeros((b,) + images.shape[1:], np.float32)
        x[:m] = images[start:start + m]
        idx = np.arange(start, start + b, dtype=np.int32)
        z = fn(params, *global_arrays((x, idx), bsh), key)
        if not z.is_fully_addressable:
            from jax.experimental import multihost_utils
            z = multihost_utils.process_allgather(z, tiled=True)
        out[start:start + m] = np.asarray(jax.device_get(z))[:m]
        if progress is not None:
            progress(start + m, n)
    return out


def cache_path(config, workdir: str | None) -> str:
    """The cache directory of ``config``: ``config.latent.cache`` (relative: inside the workdir),
    default ``WORKDIR/latents``."""
    path = config.latent.get("cache") or DEFAULT_CACHE
    if os.path.isabs(path):
        return path
    if not workdir:
        raise ValueError("config.latent.cache is relative and there is no workdir: pass --workdir "
                         "or an absolute config.latent.cache")
    return os.path.join(workdir, path)


def encode_config(config, workdir: str | None, *, mesh=None, progress=None) -> dict:
    """Encode ``config.data`` (an image source) with ``config.latent.vae`` into the cache
    (``cache_path``); returns a summary (printed by ``diffjax encode``)."""
    from diffjax.data import registry as data_registry

    if not config.latent.get("vae"):
        raise ValueError("config.latent.vae is not set: name a converted VAE folder "
                         "(--config.latent.vae=DIR; diffjax convert --from diffusers VAE_DIR "
                         "--workdir DIR makes one)")
    if config.data.name == "latents":
        raise ValueError("config.data is already a latent cache (name 'latents'): encode an image "
                         "source (folder, npz, tfds, digits, shapes)")
    vae = load_vae(find_vae(config.latent.vae, workdir))
    t0 = time.time()
    source = data_registry.get_source(config.data)
    images, labels = source_arrays(source)
    if images.ndim != 4:
        raise ValueError(f"data source {config.data.name!r} gives examples of shape "
                         f"{images.shape[1:]}: a VAE encodes images (H, W, C)")
    flip = bool(config.data.get("flip", False))
    if flip:
        images = np.concatenate([images, images[:, :, ::-1]])
        labels = np.concatenate([labels, labels])
    posterior = config.latent.get("posterior", "sample")
    z = encode_images(vae, images, batch_size=int(config.latent.get("batch_size", 64)), mesh=mesh,
                      key=jax.random.key(int(config.seed)), posterior=posterior, progress=progress)
    meta = dict(format=FORMAT, vae=vae.folder, vae_fingerprint=vae.fingerprint,
                posterior=posterior, seed=int(config.seed), flip=flip,
                data=json.loads(config.data.to_json_best_effort()),
                class_names=list(getattr(source, "class_names", None) or []),
                num_classes=int(source.num_classes), image_shape=list(images.shape[1:]),
                scaling_factor=float(vae.module.scaling_factor),
                shift_factor=float(vae.module.shift_factor))
    path = cache_path(config, workdir)
    if jax.process_index() == 0:
        write_cache(path, z, labels, meta)
    return dict(cache=path, num=int(z.shape[0]), latent_shape=list(z.shape[1:]),
                image_shape=list(images.shape[1:]), vae=vae.folder, posterior=posterior, flip=flip,
                latent_mean=float(z.mean()), latent_std=float(z.std()),
                seconds=round(time.time() - t0, 2))


# ---- the cache on disk ---------------------------------------------------------------------------
def write_cache(path: str, latents: np.ndarray, labels: np.ndarray, meta: dict) -> str:
    """Write the cache directory atomically (a partial write never replaces a good cache)."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = f"{os.path.abspath(path)}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    np.save(os.path.join(tmp, LATENTS_FILE), np.asarray(latents, np.float32))
    np.save(os.path.join(tmp, LABELS_FILE), np.asarray(labels, np.int32))
    with open(os.path.join(tmp, META_FILE), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
    old = f"{os.path.abspath(path)}.old-{os.getpid()}"
    if os.path.exists(path):
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def read_meta(path: str) -> dict:
    p = os.path.join(path, META_FILE)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"{path} is not a latent cache (no {META_FILE}); make one with "
                                f"`diffjax encode --config CONFIG --workdir WORKDIR`")
    with open(p, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{p} is corrupt ({e}); re-run diffjax encode") from e


def load_cache(path: str):
    """(ArraySource of the latents (memory-mapped), meta) of the cache directory ``path``."""
    from diffjax.data.arrays import ArraySource

    if not os.path.isdir(path):
        raise FileNotFoundError(f"no latent cache at {path}: encode the images once with "
                                f"`diffjax encode --config CONFIG --workdir WORKDIR`")
    meta = read_meta(path)
    try:
        z = np.load(os.path.join(path, LATENTS_FILE), mmap_mode="r", allow_pickle=False)
        y = np.load(os.path.join(path, LABELS_FILE), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"latent cache {path} cannot be read ({e}); re-run diffjax encode") from e
    if z.ndim != 4 or y.shape != z.shape[:1]:
        raise ValueError(f"latent cache {path}: latents {z.shape} and labels {y.shape} do not "
                         f"match; re-run diffjax encode")
    src = ArraySource(z, y, class_names=meta.get("class_names") or None,
                      num_classes=meta.get("num_classes"))
    return src, meta


def _data_changes(cached: dict, data: dict) -> list[str]:
    keys = sorted(set(cached) | set(data))
    return [f"data.{k}: {cached.get(k)!r} (cache) vs {data.get(k)!r} (config)" for k in keys
            if cached.get(k) != data.get(k)]


def training_source(config, workdir: str | None):
    """(source, flip) the trainer reads: the data itself in pixel space; with
    ``config.latent.vae``, the latent cache (checked against the VAE and the data section)."""
    from diffjax.data import registry as data_registry

    latent = config.get("latent") or {}
    vae_path = latent.get("vae")
    if config.data.name == "latents":   # a cache named directly (data.path)
        src, meta = load_cache(config.data.get("path") or "")
        if not vae_path:
            raise ValueError(f"config.data is a latent cache made with the VAE {meta['vae']}: set "
                             f"config.latent.vae to that folder so samples decode to images")
        _check_vae(meta, find_vae(vae_path, workdir), config.data.path)
        return src, False
    if not vae_path:
        return data_registry.get_source(config.data), bool(config.data.get("flip", False))
    vae_dir = find_vae(vae_path, workdir)
    path = cache_path(config, workdir)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"config.latent.vae is set but there is no latent cache at {path}: "
                                f"encode the images once with `diffjax encode` and the same "
                                f"--config and --workdir")
    src, meta = load_cache(path)
    _check_vae(meta, vae_dir, path)
    data = json.loads(config.data.to_json_best_effort())
    changes = _data_changes(meta.get("data", {}), data)
    posterior = latent.get("posterior", "sample")
    if meta.get("posterior") != posterior:
        changes.append(f"latent.posterior: {meta.get('posterior')!r} (cache) vs {posterior!r}")
    if changes:
        raise ValueError(f"the latent cache {path} was made from other settings ({'; '.join(changes)}"
                         f"): re-run diffjax encode with this config")
    return src, False


def _check_vae(meta: dict, vae_dir: str, where: str) -> None:
    got = fingerprint(vae_dir)
    if meta.get("vae_fingerprint") != got:
        raise ValueError(f"the latent cache {where} was made with another VAE ({meta.get('vae')}, "
                         f"fingerprint {meta.get('vae_fingerprint')}) than config.latent.vae "
                         f"({vae_dir}, {got}): re-run diffjax encode")


def image_data(config):
    """The image data section behind ``config.data`` (the cache's for a 'latents' source): what
    decoded samples compare with."""
    import ml_collections

    if config.data.name != "latents":
        return config.data
    return ml_collections.ConfigDict(read_meta(config.data.path)["data"])
