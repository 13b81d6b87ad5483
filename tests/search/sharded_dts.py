"""Grow the same DTS tree over a mesh of all devices and on one device; print a JSON line.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/search/sharded_dts.py
"""
import json

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core import analytic, processes, timesteps
from diffjax.inference import loading
from diffjax.search import dts
from diffjax.search import verifiers as V


def grow(mesh):
    D = analytic.gaussian_denoiser(0.0, 1.0)
    reward = V.from_fn(lambda x: -0.5 * jnp.sum((x - 1.5) ** 2, axis=-1))
    sig = timesteps.sigmas(processes.get("edm"), 20, "karras")
    return dts.dts(jax.random.key(3), "ddim", D, sig, reward, example_shape=(2,), budget=3000,
                   branch_steps=(0, 5, 10, 15), eta=1.0, batch=24, mesh=mesh)


if __name__ == "__main__":
    mesh = loading.default_mesh()
    a, b = grow(mesh), grow(None)
    n = a.tree.size
    same = {k: bool(np.array_equal(getattr(a.tree, k)[:n], getattr(b.tree, k)[:b.tree.size]))
            for k in ("parent", "level", "visits", "rollout")}
    print(json.dumps({
        "devices": jax.device_count(), "sizes": [n, b.tree.size], "nfe": [a.nfe, b.nfe],
        "same": same,
        "value_diff": float(np.abs(a.tree.value[:n] - b.tree.value[:n]).max()),
        "x_diff": float(np.abs(np.asarray(a.states.x[:n]) - np.asarray(b.states.x[:n])).max()),
        "rows_sharded": len(a.states.x.sharding.device_set)}))
