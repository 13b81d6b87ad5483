"""Model registry: ``build_model(config)`` picks a Flax module by ``config.name``.

Every key of the config other than the meta keys ``name`` and ``input_shape`` must be a field of the
chosen module; unknown names and unknown fields raise ValueError naming them. Strings are accepted
for ``dtype`` / ``param_dtype`` ('bfloat16', 'float32'); lists become tuples (modules are frozen).
``get_preset(name)`` returns a locked ConfigDict holding every field of the model (preset values
over the module's defaults), so ``cfg.field = v`` overrides work and typos fail loudly.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffjax.models import presets as _presets
from diffjax.models.classifier import Classifier, NoisyClassifier
from diffjax.models.dico import DiCo
from diffjax.models.dimr import DiMR
from diffjax.models.dit import DiT
from diffjax.models.pixart import PixArt
from diffjax.models.unet import UNet
from diffjax.models.unet2d import UNet2D
from diffjax.models.unet1d import UNet1D
from diffjax.models.token_transformer import TokenTransformer

MODELS: Dict[str, type] = {
    "unet": UNet,
    "unet1d": UNet1D,
    "unet2d": UNet2D,
    "dit": DiT,
    "pixart": PixArt,
    "dico": DiCo,
    "dimr": DiMR,
    "noisy_classifier": NoisyClassifier,
    "classifier": Classifier,
    "token_transformer": TokenTransformer,
}
META_KEYS = ("name", "input_shape")
DTYPE_FIELDS = ("dtype", "param_dtype")


def list_models():
    return sorted(MODELS)


def list_presets():
    return _presets.list_presets()


def model_class(name: str) -> type:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return MODELS[name]


def model_fields(name: str) -> Dict[str, Any]:
    """{field: default} of the module registered as ``name`` (Flax's parent/name excluded)."""
    out = {}
    for f in dataclasses.fields(model_class(name)):
        if f.name in ("parent", "name") or not f.init:
            continue
        out[f.name] = f.default
    return out


def _to_plain(v):
    if isinstance(v, (list, tuple)):
        return tuple(_to_plain(u) for u in v)
    return v


def _dtype_name(v) -> str:
    return np.dtype(v).name if v is not None else None


def build_model(config: ml_collections.ConfigDict | dict) -> nn.Module:
    """Instantiate the module named ``config.name`` with the config's fields."""
    cfg = dict(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config)
    if "name" not in cfg:
        raise ValueError("model config needs a 'name' key; known models: " + ", ".join(list_models()))
    name = cfg["name"]
    fields = model_fields(name)
    kwargs = {}
    for key, value in cfg.items():
        if key in META_KEYS:
            continue
        if key not in fields:
            raise ValueError(f"unknown field {key!r} for model {name!r}; fields: {', '.join(fields)}")
        if key in DTYPE_FIELDS:
            value = jnp.dtype(value)
        kwargs[key] = _to_plain(value)
    return model_class(name)(**kwargs)


def get_preset(name: str) -> ml_collections.ConfigDict:
    """Locked ConfigDict of preset ``name`` with every model field filled in (ValueError if unknown)."""
    raw = _presets.raw_preset(name)
    full = {"name": raw["name"], "input_shape": raw.get("input_shape")}
    for field, default in model_fields(raw["name"]).items():
        value = raw.get(field, default)
        full[field] = _dtype_name(value) if field in DTYPE_FIELDS else _to_plain(value)
    for key in raw:
        if key not in full:
            raise ValueError(f"preset {name!r} has unknown field {key!r}")
    config = ml_collections.ConfigDict(full)
    config.lock()
    return config


def example_inputs(module: nn.Module, input_shape: Sequence[int], batch: int = 1):
    """Zero inputs matching ``module``'s call signature, for init / eval_shape."""
    x = jnp.zeros((batch,) + tuple(input_shape), jnp.float32)
    t = jnp.zeros((batch,), jnp.float32)
    if isinstance(module, Classifier):
        return (x,)
    if isinstance(module, NoisyClassifier):
        return (x, t)
    return (x, t, jnp.zeros((batch,), jnp.int32))


def param_shapes(module: nn.Module, input_shape: Sequence[int]):
    """Parameter ShapeDtypeStructs via ``jax.eval_shape`` (nothing is allocated)."""
    args = example_inputs(module, input_shape)
    return jax.eval_shape(lambda k: module.init(k, *args), jax.random.PRNGKey(0))["params"]


def tree_mismatch(want, got, show: int = 4) -> str:
    """How the params ``got`` differ from the shapes ``want`` (nested dicts): 'missing: ...;
    unexpected: ...; wrong shape: ...' naming up to ``show`` paths each, '' when they fit."""
    from flax import traverse_util

    want = traverse_util.flatten_dict(want, sep="/")
    got = traverse_util.flatten_dict(got, sep="/")
    missing, extra = sorted(set(want) - set(got)), sorted(set(got) - set(want))
    bad = sorted(k for k in set(want) & set(got)
                 if tuple(want[k].shape) != tuple(np.shape(got[k])))
    return "; ".join(f"{t}: {', '.join(v[:show])}" for t, v in
                     (("missing", missing), ("unexpected", extra), ("wrong shape", bad)) if v)


def count_params(config_or_module, input_shape: Optional[Sequence[int]] = None) -> int:
    """Number of parameters of a config (its ``input_shape`` by default) or module, via eval_shape."""
    if isinstance(config_or_module, nn.Module):
        module = config_or_module
    else:
        module = build_model(config_or_module)
        input_shape = input_shape or config_or_module["input_shape"]
    if input_shape is None:
        raise ValueError("count_params needs an input_shape")
    leaves = jax.tree_util.tree_leaves(param_shapes(module, input_shape))
    return int(sum(np.prod(a.shape) for a in leaves))
