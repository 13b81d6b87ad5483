"""Data sources by name: ``get_source(config)`` dispatches on ``config.name``.

Every source is random access: ``len(src)``, ``src[i] -> {'x': float32, 'label': int32}`` and
``src.num_classes``. Config fields read (missing ones take these defaults; others are ignored):
    name          one of ``names()``: digits, shapes, toy2d, tfds, folder, npz, latents
    split         'train'    digits: all|train|test; tfds: any TFDS split string
    resolution    None       image side (int) or (h, w); digits default 16, shapes 32;
                             required for folder
    seed          0          shapes, toy2d
    num_examples  10000      shapes, toy2d (toy2d draws a fixed sample; labels = mixture component)
    toy           'gmm_8'    toy2d: a name in ``diffjax.data.toy.TOYS``
    dataset       --         tfds: the TFDS name; data_dir (None), image_key ('image'),
                             label_key ('label')
    path          --         folder, npz, latents (a ``diffjax encode`` cache directory; its
                             latents are not range-checked: latent/cache.py); channels (3) for
                             folder
"""
from __future__ import annotations

from typing import Any, Callable

from diffjax.data.arrays import ArraySource

_SOURCES: dict[str, Callable[[Any], Any]] = {}


def register_source(name: str):
    """Decorator adding ``fn(config) -> source`` to the registry under ``name``."""
    def wrap(fn):
        _SOURCES[name] = fn
        return fn
    return wrap


def names() -> tuple[str, ...]:
    """Names ``get_source`` accepts."""
    return tuple(sorted(_SOURCES))


def _get(config, key: str, default=None):
    getter = getattr(config, "get", None)
    return getter(key, default) if getter is not None else getattr(config, key, default)


def _required(config, key: str):
    value = _get(config, key)
    if value in (None, ""):
        raise ValueError(f"data source {_get(config, 'name')!r} needs config.{key}")
    return value


def get_source(config) -> Any:
    """Build the source named by ``config.name`` (a ConfigDict, dict or any attribute object)."""
    name = _get(config, "name")
    if name not in _SOURCES:
        raise ValueError(f"unknown data source {name!r}; valid names: {names()}")
    return _SOURCES[name](config)


@register_source("digits")
def _digits(config) -> ArraySource:
    from diffjax.data.digits import load_digits
    images, labels = load_digits(_get(config, "split", "train"), _get(config, "resolution") or 16)
    return ArraySource(images, labels, class_names=[str(d) for d in range(10)])


@register_source("shapes")
def _shapes(config) -> ArraySource:
    from diffjax.data.shapes import make_shapes
    data = make_shapes(_get(config, "num_examples", 10_000), seed=_get(config, "seed", 0),
                       resolution=_get(config, "resolution") or 32)
    return ArraySource(data.images, data.labels, class_names=data.class_names)


@register_source("toy2d")
def _toy2d(config) -> ArraySource:
    import jax

    from diffjax.data.toy import GaussianMixture, get_toy
    toy = get_toy(_get(config, "toy", "gmm_8"))
    key, n = jax.random.key(_get(config, "seed", 0)), _get(config, "num_examples", 10_000)
    if isinstance(toy, GaussianMixture):
        x, comp = toy.sample_with_components(key, n)
        return ArraySource(jax.device_get(x), jax.device_get(comp), num_classes=len(toy.weights))
    return ArraySource(jax.device_get(toy.sample(key, n)))


@register_source("tfds")
def _tfds(config):
    from diffjax.data.tfds_source import load_tfds
    return load_tfds(_required(config, "dataset"), split=_get(config, "split", "train"),
                     data_dir=_get(config, "data_dir"),
                     image_key=_get(config, "image_key", "image"),
                     label_key=_get(config, "label_key", "label"),
                     resolution=_get(config, "resolution"))


@register_source("folder")
def _folder(config) -> ArraySource:
    from diffjax.data.folders import load_image_folder
    images, labels, class_names = load_image_folder(
        _required(config, "path"), _required(config, "resolution"), _get(config, "channels", 3))
    return ArraySource(images, labels, class_names=class_names)


@register_source("npz")
def _npz(config) -> ArraySource:
    from diffjax.data.npz import load_npz
    images, labels = load_npz(_required(config, "path"), _get(config, "resolution"))
    return ArraySource(images, labels)


@register_source("series")
def _series(config) -> ArraySource:
    from diffjax.timeseries.series import source
    return source(config)


@register_source("eeg_sim")
def _eeg_sim(config) -> ArraySource:
    from diffjax.timeseries.signals import source
    return source(config)


@register_source("text")
def _text(config) -> ArraySource:
    from diffjax.discrete.text_data import text_source
    return text_source(config)


@register_source("latents")
def _latents(config) -> ArraySource:
    from diffjax.latent.cache import load_cache
    return load_cache(_required(config, "path"))[0]
