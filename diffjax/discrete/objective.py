"""The ``'radd'`` training objective: one of RADD's four losses (losses.py; Ou et al., ICLR 2025)
for a time-free token model (models/token_transformer.py) through the shared trainer.

    config.objective = dict(name='radd', loss='lambda_dce', eps=1e-3, t_min=1e-3)

The batch's 'x' holds token ids (float32, data/arrays.py convention; (B, L) or (B, L, 1)); the
mask id is the model's ``vocab_size``. The minimised value is the batch mean of the per-sequence
bound divided by L: nats per token (so the learning rate does not depend on L); the metric
``bits_per_token`` is the same in bits. The diffusion section and the denoiser the trainer builds
are not used (the process is absorbing.LogLinear(eps)).
"""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from diffjax.discrete import absorbing, losses
from diffjax.training.objectives import Context, Objective, register


def tokens_of(x):
    """int32 (B, L) token ids from the data layer's float32 (B, L) or (B, L, 1)."""
    x = jnp.asarray(x)
    x = x[..., 0] if x.ndim == 3 else x
    return jnp.round(x).astype(jnp.int32)


@register("radd", loss="lambda_dce", eps=1e-3, t_min=1e-3)
def radd(ctx: Context) -> Objective:
    f = ctx.fields
    if f["loss"] not in losses.LOSSES:
        raise ValueError(f"config.objective.loss: unknown RADD loss {f['loss']!r}; expected one of "
                         f"{', '.join(losses.LOSSES)}")
    if not 0.0 <= float(f["eps"]) < 1.0 or not 0.0 < float(f["t_min"]) < 1.0:
        raise ValueError(f"config.objective: need 0 <= eps < 1 and 0 < t_min < 1; got eps "
                         f"{f['eps']}, t_min {f['t_min']}")
    vocab = getattr(ctx.model, "vocab_size", None)
    if vocab is None or getattr(ctx.model, "takes_noise_level", True):
        raise ValueError("config.objective.name = 'radd' needs a time-free token model "
                         "(config.model.name = 'token_transformer')")
    schedule = absorbing.LogLinear(float(f["eps"]))
    length = ctx.example_shape[0]
    model = ctx.model

    def loss(params, extra, batch, key):
        x0 = tokens_of(batch["x"])
        per_seq = losses.radd_loss(f["loss"], lambda xt: model.apply({"params": params}, xt), x0,
                                   key, mask_id=vocab, schedule=schedule,
                                   t_min=float(f["t_min"]))
        per_token = per_seq / length
        value = jnp.mean(per_token)
        return value, {"per_token": per_token,
                       "metrics": {"bits_per_token": value / np.log(2.0)}}

    return Objective(loss=loss)
