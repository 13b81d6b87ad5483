"""Shared helpers for the model tests: tiny configs, cached jitted init/apply (one compile per model
and call signature for the whole session), and parameter randomisation that breaks zero-inits."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.models import build_model, get_preset

B = 4  # one batch size everywhere, so jitted functions are compiled once per model
TINY = {  # preset -> input shape used by the tests (smaller than the presets' where harmless)
    "unet_tiny16": (8, 8, 3),
    "unet1d_tiny": (16, 2),
    "dit_tiny": (8, 8, 3),
    "dit_tiny_tdln": (8, 8, 3),
    "pixart_tiny": (8, 8, 3),
    "dico_tiny": (8, 8, 3),
    "dimr_tiny": (8, 8, 3),
}
DENOISER_PRESETS = tuple(TINY)
STATIC = ("train", "return_intermediates", "return_multiscale", "return_features")


def config(preset: str, **overrides):
    cfg = get_preset(preset)
    for k, v in overrides.items():
        cfg[k] = v
    return cfg


@functools.lru_cache(maxsize=None)
def model(preset: str, **overrides):
    return build_model(config(preset, **overrides))


def inputs(preset: str, key=0, labels=None):
    shape = TINY[preset]
    k1, k2 = jax.random.split(jax.random.PRNGKey(key))
    x = jax.random.normal(k1, (B,) + shape)
    t = jax.random.uniform(k2, (B,), minval=0.0, maxval=1000.0)
    return x, t, labels


def key(seed: int = 0):
    """A PRNG key for model init in tests. The 'unsafe_rbg' implementation compiles ~4x faster on
    CPU than threefry when a network has many parameters (init draws one stream per parameter)."""
    return jax.random.key(seed, impl="unsafe_rbg")


FAST_COMPILE = {"xla_backend_optimization_level": 0}  # ~2x faster XLA:CPU compiles, tiny nets
# For loops of training steps: level 0 makes conv backward passes ~10x slower; level 1 compiles about
# 2x faster than the default and runs as fast.
TRAIN_COMPILE = {"xla_backend_optimization_level": 1}


class FastJit:
    """jax.jit compiled with XLA ``options`` (default ``FAST_COMPILE``), one executable per static
    flags + argument shapes.

    The tests run each tiny network a handful of times, so compile time dominates; the options
    apply only to these executables (nothing global is changed)."""

    def __init__(self, fn, static=(), options=None):
        self.static = tuple(static)
        self.options = FAST_COMPILE if options is None else options
        self.jitted = jax.jit(fn, static_argnames=self.static)
        self.cache = {}

    def __call__(self, *args, **kwargs):
        static = {k: kwargs.pop(k) for k in list(kwargs) if k in self.static}
        leaves, tree = jax.tree_util.tree_flatten((args, kwargs))
        sig = (tuple(sorted(static.items())), tree,
               tuple((jnp.shape(a), jnp.result_type(a)) for a in leaves))
        if sig not in self.cache:
            lowered = self.jitted.lower(*args, **kwargs, **static)
            self.cache[sig] = lowered.compile(compiler_options=self.options)
        return self.cache[sig](*args, **kwargs)


@functools.lru_cache(maxsize=None)
def _jit_init(m):
    return FastJit(lambda k, x, t: m.init(k, x, t, None))


@functools.lru_cache(maxsize=None)
def _init(m, shape, seed):
    return _jit_init(m)(key(seed), jnp.zeros((B,) + shape), jnp.zeros((B,)))


def init(m, preset: str, seed: int = 0):
    """Real initial variables of module ``m`` at the preset's test input shape (cached)."""
    return _init(m, TINY[preset], seed)


@functools.lru_cache(maxsize=None)
def apply_fn(m):
    """m.apply compiled once per module and call signature (boolean flags static)."""
    return FastJit(m.apply, STATIC)


@functools.lru_cache(maxsize=None)
def shapes(m, shape):
    """Variable shapes via eval_shape (no compilation, no allocation)."""
    return jax.eval_shape(lambda k: m.init(k, jnp.zeros((B,) + shape), jnp.zeros((B,))),
                          jax.random.PRNGKey(0))


def _random_leaf(rng, path, s):
    names = [getattr(p, "key", str(p)) for p in path]
    name, parent = names[-1], names[-2] if len(names) > 1 else ""
    z = rng.standard_normal(s.shape).astype(np.float32)
    if name == "kernel":
        return z / np.sqrt(max(1, int(np.prod(s.shape[:-1]))))
    if name == "scale" or (name in ("p0", "p1") and parent in ("weight", "scale")):
        return 1.0 + 0.1 * z
    if name in ("embedding", "null_context"):
        return 0.5 * z
    return 0.1 * z


def random_tree(tree, seed: int = 1):
    """Random values for a tree of ShapeDtypeStructs (numpy: nothing to compile)."""
    rng = np.random.RandomState(seed)
    return jax.tree_util.tree_map_with_path(
        lambda path, s: jnp.asarray(_random_leaf(rng, path, s), s.dtype), tree)


@functools.lru_cache(maxsize=None)
def random_vars(m, preset: str, seed: int = 1):
    """Random (non-zero-init) variables for ``m``: every path of the network is live."""
    return random_tree(shapes(m, TINY[preset]), seed)


def randomize(variables, seed: int = 1):
    """Random values with the structure, shapes and dtypes of ``variables`` (arrays or shapes)."""
    return random_tree(jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype),
                                              variables), seed)
