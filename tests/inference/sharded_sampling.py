"""Train the tiny digits config on 8 simulated devices (data 4 x fsdp 2), then sample it sharded
over all 8 devices and on one device; save both (and the draw of a live, FSDP-sharded train state).

Usage (from the tests, in a fresh process):
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python tests/inference/sharded_sampling.py W
"""
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.getcwd())  # run from the repository root
from tests.training.util import tiny_config  # noqa: E402

from diffjax import inference  # noqa: E402
from diffjax.training import trainer  # noqa: E402

DRAW = dict(sampler="euler", steps=3, guidance=2.0, seed=5, knobs={"s_churn": 10.0})
NUM = 12   # not a multiple of 8: the last rows of the sharded batch are padding


def main(workdir):
    config = tiny_config(**{"mesh.data": 4, "mesh.fsdp": 2, "sharding.min_size": 0,
                            "total_steps": 2})
    captured = {}

    def grab(step, state, metrics):   # the last live state, params FSDP-sharded over 8 devices
        if step == config.total_steps:
            captured["state"] = state

    summary = trainer.train(config, workdir, callbacks=[grab])
    run8 = inference.load(workdir, params="all")
    one = inference.default_mesh(jax.devices()[:1])
    run1 = inference.load(workdir, params="all", mesh=one)
    x8 = inference.generate(run8, NUM, batch_size=NUM, **DRAW)
    x1 = inference.generate(run1, NUM, batch_size=5, **DRAW)      # other batches, one device
    p8 = jax.tree.leaves(run8.params["params"])[0]
    out = {"devices": len(jax.devices()), "mesh": dict(run8.mesh.shape),
           "param_sharding": str(p8.sharding.spec), "step": summary["step"]}
    state = captured.get("state")
    if state is not None:
        from diffjax.training import step as step_lib
        from diffjax.models import registry
        model = registry.build_model(config.model)
        ts = step_lib.make_train_step(config, model, run8.mesh,
                                      example_shape=run8.example_shape)
        live = inference.from_state(ts, state, config, run8.num_classes, run8.example_shape)
        out["live_param_spec"] = str(jax.tree.leaves(state.params)[0].sharding.spec)
        np.save(os.path.join(workdir, "x_live.npy"),
                inference.generate(live, NUM, batch_size=8, params_name="power_0.1", **DRAW))
    np.save(os.path.join(workdir, "x8.npy"), x8)
    np.save(os.path.join(workdir, "x1.npy"), x1)
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
