"""The ``multiscale`` objective: DiMR's loss over every resolution branch (Liu et al., NeurIPS 2024).

A multi-resolution network (models/dimr.py) predicts eps at each branch's resolution, low to high;
only the last (full-resolution) prediction samples, but all are trained:

    L = sum_r c_r mean || eps_r(x_t, t, c) - down_r(eps) ||^2,      c = (1/4, 1) for two branches

with x_t = alpha_t x0 + sigma_t eps, t drawn by ``config.diffusion.t_sampler`` and
down_r the r x r box filter whose sum is divided by r (not r^2), so that i.i.d. unit noise keeps
unit variance at every resolution (DiMR's train.py). The last term is the plain eps-MSE (DDPM's
L_simple, the denoising objective's 'native' weighting of an eps network). Label dropout trains the
null class as in the denoising objective; CEP noise comes from the 'cep' stream.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core import losses
from diffjax.core.conditioning import drop_labels
from diffjax.training.objectives import Context, Objective, register


def down(eps, r: int):
    """r x r box sum / r over the spatial axes of (B, H, W, C): unit-variance noise stays unit."""
    if r == 1:
        return eps
    b, h, w, c = eps.shape
    if h % r or w % r:
        raise ValueError(f"multiscale: noise of spatial size {(h, w)} does not divide into "
                         f"{r} x {r} blocks")
    return eps.reshape(b, h // r, r, w // r, r, c).sum(axis=(2, 4)) / r


@register("multiscale", coeffs=(0.25, 1.0))
def multiscale(ctx: Context) -> Objective:
    d = ctx.config.diffusion
    coeffs = tuple(float(c) for c in ctx.fields["coeffs"])
    if getattr(ctx.model, "num_blocks", None) is None or not hasattr(ctx.model, "dims"):
        raise ValueError(f"objective 'multiscale' trains every branch of a multi-resolution "
                         f"network (config.model.name = 'dimr'); {type(ctx.model).__name__} has "
                         f"one output")
    n = len(ctx.model.dims)
    if len(coeffs) != n:
        raise ValueError(f"config.objective.coeffs has {len(coeffs)} entries; the DiMR model has "
                         f"{n} branches (one coefficient each, low to high resolution)")
    if d.parameterization != "eps":
        raise ValueError(f"objective 'multiscale' is DiMR's eps loss: set "
                         f"config.diffusion.parameterization = 'eps' (got "
                         f"{d.parameterization!r})")
    if d.label_dropout > 0 and not ctx.num_classes:
        raise ValueError("config.diffusion.label_dropout > 0 needs a class-conditional model")
    if len(ctx.example_shape) != 3:
        raise ValueError(f"objective 'multiscale' needs images (H, W, C), got examples of shape "
                         f"{ctx.example_shape}")
    draw_t = losses.time_sampler(d.t_sampler, ctx.process, p_mean=d.p_mean, p_std=d.p_std)
    proc = ctx.process
    null = ctx.num_classes if ctx.num_classes else None

    def loss(params, extra, batch, key):
        x0 = batch["x"].astype(jnp.float32)
        b = x0.shape[0]
        k_t, k_n, k_l, k_d, k_c = jax.random.split(key, 5)
        t = draw_t(k_t, b)
        x_t, eps = proc.perturb(k_n, x0, t)
        labels = batch.get("label")
        if labels is not None and d.label_dropout > 0:
            labels = drop_labels(k_l, labels, d.label_dropout, null)
        _, outs = ctx.model.apply({"params": params}, x_t, proc.noise_label(t), labels,
                                  train=True, return_multiscale=True,
                                  rngs={"dropout": k_d, "cep": k_c})
        per_branch, total = {}, jnp.zeros((b,), jnp.float32)
        for r_idx, (c, out) in enumerate(zip(coeffs, outs)):
            out = out.astype(jnp.float32)[..., :x0.shape[-1]]     # (learned sigma: its eps half)
            r = x0.shape[1] // out.shape[1]
            err = jnp.mean((out - down(eps, r)) ** 2, axis=(1, 2, 3))
            per_branch[f"loss_branch_{r_idx}"] = jnp.mean(err)
            total = total + c * err
        return jnp.mean(total), {"loss_per_example": total, "t": t,
                                 "metrics": per_branch}

    return Objective(loss=loss)
