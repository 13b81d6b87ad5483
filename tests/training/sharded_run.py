"""Run a few train steps of the tiny digits config on several meshes; print losses and params as JSON.

Usage (from the tests, in a fresh process with 8 simulated CPU devices):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/training/sharded_run.py
"""
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.getcwd())  # run from the repository root (tests/training/util.ROOT)
from tests.training.util import tiny_config  # noqa: E402

from diffjax.data import pipeline, registry as data_registry  # noqa: E402
from diffjax.models import registry as model_registry  # noqa: E402
from diffjax.training import sharding, step as step_lib  # noqa: E402

MESHES = {"1dev": ({"data": 1, "fsdp": 1}, 1), "dp8": ({"data": -1, "fsdp": 1}, 8),
          "dp4_fsdp2": ({"data": 4, "fsdp": 2}, 8), "fsdp8": ({"data": 1, "fsdp": -1}, 8)}


def run(mesh_axes, n_dev, steps=3):
    config = tiny_config(**{"sharding.min_size": 0, "optim.accum_steps": 1})
    mesh = sharding.make_mesh(mesh_axes, jax.devices()[:n_dev])
    source = data_registry.get_source(config.data)
    model = model_registry.build_model(config.model)
    ts = step_lib.make_train_step(config, model, mesh, example_shape=source[0]["x"].shape)
    state = ts.jit_init()(jax.random.key(0))
    step = ts.jit_step()
    step.lower(ts.abstract_state, ts.abstract_batch).compile()  # AOT on this device list
    it = pipeline.make_iterator(source, ts.micro_batch, seed=0)
    losses = []
    for _ in range(steps):
        batch = sharding.to_global(next(it), ts.batch_sharding)
        with jax.transfer_guard("disallow"):
            state, m = step(state, batch)
        losses.append(float(jax.device_get(m["loss"])))
    kernel = state.params["conv_in"]["kernel"]
    sharded = [str(x.sharding.spec) for x in jax.tree.leaves(state.params)
               if any(p is not None for p in x.sharding.spec)]
    flat = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state.params))])
    ema = np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(state.ema))])
    return {"losses": losses, "params": flat, "ema": ema, "num_sharded": len(sharded),
            "kernel_shards": len(kernel.addressable_shards),
            "kernel_shard_shape": list(kernel.addressable_shards[0].data.shape),
            "devices": len(mesh.devices.flat)}


if __name__ == "__main__":
    assert len(jax.devices()) == 8, jax.devices()
    out = {name: run(*spec) for name, spec in MESHES.items()}
    ref = {k: out["1dev"][k] for k in ("params", "ema")}
    for r in out.values():  # relative differences to the single-device run, not the arrays
        for k in ("params", "ema"):
            r[k + "_max_rel_diff"] = float(np.max(np.abs(r.pop(k) - ref[k])) / np.max(np.abs(ref[k])))
    print("RESULT " + json.dumps(out))
