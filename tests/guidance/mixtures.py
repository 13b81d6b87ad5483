"""Shared by the guidance tests: how often samples of a two-component mixture (means at x = -1.5
and +1.5) land in the component their label asks for."""
import jax
import jax.numpy as jnp

from diffjax.core import processes, samplers, timesteps


def label_accuracy(D, n: int = 2000) -> float:
    """Share of n Heun samples (18 steps, labels 0, 1, 0, ...) on the label's side of x = 0."""
    sig = timesteps.sigmas(processes.get("edm"), 18, "karras")
    y = jnp.arange(n) % 2
    x = samplers.sample("heun", D, sig, key=jax.random.key(3), shape=(n, 2), cond={"label": y}).x
    return float(jnp.mean((x[:, 0] > 0) == (y == 1)))
