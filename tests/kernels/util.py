"""Shared helpers for the kernel tests: random inputs, a float32 tolerance check, value + gradient."""
import jax
import jax.numpy as jnp
import numpy as np


def rand(key, shape, scale=1.0, shift=0.0, dtype=jnp.float32):
    return (shift + scale * jax.random.normal(jax.random.key(key), shape, jnp.float32)).astype(dtype)


def close(a, b, tol):
    """Every leaf of a within tol of b's (relative, and absolute relative to b's largest entry)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb)
    for u, v in zip(la, lb):
        assert u.shape == v.shape, (u.shape, v.shape)
        np.testing.assert_allclose(np.asarray(u, np.float32), np.asarray(v, np.float32),
                                   rtol=tol, atol=tol * float(jnp.max(jnp.abs(v)) + 1e-6))


def value_and_grads(f, args, seed=9):
    """Jitted (f(*args), d/d args of sum(f(*args) * dy)) for a fixed random cotangent dy."""
    dy = rand(seed, jax.eval_shape(f, *args).shape)
    loss = lambda *a: jnp.sum(f(*a).astype(jnp.float32) * dy)
    return jax.jit(lambda *a: (f(*a), jax.grad(loss, tuple(range(len(a))))(*a)))(*args)
