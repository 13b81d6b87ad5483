"""The train state: one pytree holding everything a resumed run needs from the device side.

    step       int32, number of train-step calls so far (micro-steps with gradient accumulation)
    params     the network's parameters (float32 master weights, even under bf16 compute)
    opt_state  the optax state (moments; MultiSteps' gradient accumulator)
    ema        {name: averaged params} for every average in config.ema (see ema.py)
    rng        raw uint32 key data; step k uses fold_in(rng, k), so it never changes and a resumed
               run draws exactly the same noise as an uninterrupted one
    extra      the training objective's own state (objectives.py): frozen or auxiliary networks and
               their optimizer state; None for the denoising objective
The data-iterator position is host-side state and is checkpointed beside it (checkpoint.py).
"""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any
    ema: dict
    rng: jax.Array
    extra: Any = None

    def step_key(self) -> jax.Array:
        """The PRNG key of this step: fold_in(rng, step)."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def create(params: Any, tx, ema_params: dict, seed_key: jax.Array, extra: Any = None) -> TrainState:
    """A fresh state at step 0 (call inside ``jax.jit(..., out_shardings=...)`` to be born sharded)."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=ema_params, rng=jax.random.key_data(seed_key), extra=extra)


def num_params(params: Any) -> int:
    return int(sum(x.size for x in jax.tree.leaves(params)))
