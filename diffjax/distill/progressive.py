"""The ``progressive`` objective: progressive distillation (Salimans & Ho 2022, Algorithm 2), and
stage 2 of guided distillation (Meng et al. 2023) when the teacher takes the guidance scale as input.

A student with N DDIM steps on the nested grid (core/timesteps.py: the N-step grid is every other
level of the 2N-step one) learns to reproduce two DDIM steps of its 2N-step teacher with one:
    i ~ U{0..N-1},  sigma_t = g((i+1)/N),  sigma_m = g((i+1/2)/N),  sigma_s = g(i/N)   (g(0) = 0)
    x_t = x0 + sigma_t eps
    x_m = DDIM(x_t; T(x_t, sigma_t)),  x_s = DDIM(x_m; T(x_m, sigma_m))            (the teacher T)
    L = w(sigma_t) |D_student(x_t, sigma_t) - x0_target|^2,
        x0_target = (x_s - (sigma_s/sigma_t) x_t) / (1 - sigma_s/sigma_t)   (targets.two_step_target)
with w the truncated-SNR weight max(1/sigma_t^2, 1) by default. Training halves N from
``start_steps / 2`` (a ``start_steps`` teacher) to ``end_steps``: total_steps is split evenly over
the log2(start_steps / end_steps) halvings, and at the end of each the student's weights become the
teacher's (``update_extra``; the student continues from them, as in the paper). The teacher's
weights and the step counter live in ``TrainState.extra``, so a resumed run continues the same
halving with the same teacher.

Teachers: a plain run (class-conditional or not) is distilled as is, or classifier-free guided at a
fixed ``guidance`` scale during the first halving (later teachers are students: already guided).
A teacher conditioned on the guidance scale (guided stage 1, ``guided.py``; model.guidance_embed)
is distilled for every w: each example draws w ~ U[w_min, w_max], given to teacher and student.
The student is sampled with DDIM (or the stochastic 'ddim_renoise' sampler of Meng et al.) on the
nested grid at end_steps steps; the student rule sets config.sample / config.eval to that.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from diffjax.core import timesteps
from diffjax.core.denoisers import bcast
from diffjax.distill import targets, teacher as teacher_lib
from diffjax.distill.student import register_student
from diffjax.training.objectives import Context, Objective, register

FIELDS = dict(teacher_lib.TEACHER_FIELDS, start_steps=64, end_steps=1, weighting="truncated_snr",
              guidance=1.0, w_min=1.0, w_max=5.0)


def halvings(start: int, end: int, objective: str = "progressive") -> int:
    """log2(start / end), checked: powers of two with start > end >= 1."""
    if end < 1 or start <= end or start & (start - 1) or end & (end - 1):
        raise ValueError(f"config.objective ({objective}): start_steps ({start}) and end_steps "
                         f"({end}) must be powers of two with start_steps > end_steps >= 1")
    return int(round(math.log2(start // end)))


def nested_grid(process):
    """u -> g(u), the nested sampling grid's level on ``process``'s noise range (as
    timesteps.sigmas makes it); call outside jit (the range is read on the host)."""
    lo, hi = process.sigma_tilde_range()
    return lambda u: timesteps.nested_level(u, max(lo, 1e-4), hi)


def w_conditioned(model) -> bool:
    return bool(getattr(model, "guidance_embed", False))


def draw_w(key, b, fields):
    return jax.random.uniform(key, (b,), jnp.float32, float(fields["w_min"]),
                              float(fields["w_max"]))


def check_w_range(fields, objective):
    if not 0 <= float(fields["w_min"]) <= float(fields["w_max"]):
        raise ValueError(f"config.objective ({objective}): need 0 <= w_min <= w_max, got "
                         f"[{fields['w_min']}, {fields['w_max']}]")


def progressive_loss(student_D, teacher_D, x0, key, n, level, weight):
    """(B,) the progressive-distillation loss of an n-step student (module doc): ``student_D`` and
    ``teacher_D`` map (x, sigma (B,)) to x0_hat, ``level`` is the nested grid's g, ``weight``
    sigma -> (B,) the loss weight; n may be traced."""
    b = x0.shape[0]
    k_i, k_e = jax.random.split(key)
    i = jax.random.randint(k_i, (b,), 0, n)
    nf = jnp.asarray(n, jnp.float32)
    s_t, s_m, s_s = (level(u) for u in ((i + 1) / nf, (i + 0.5) / nf, i / nf))
    x_t = x0 + bcast(s_t, x0) * jax.random.normal(k_e, x0.shape)
    T = lambda x, s: jax.lax.stop_gradient(teacher_D(x, s))
    x1 = T(x_t, s_t)
    x_m = targets.ddim_step(x_t, x1, s_t, s_m)
    x2 = T(x_m, s_m)
    x_s = targets.ddim_step(x_m, x2, s_m, s_s)
    target = targets.two_step_target(x_t, x_s, s_t, s_s, x2)
    return weight(s_t) * targets.per_example_mse(student_D(x_t, s_t), target)


@register("progressive", **FIELDS)
def progressive(ctx: Context) -> Objective:
    f = ctx.fields
    start, end = int(f["start_steps"]), int(f["end_steps"])
    n_halvings = halvings(start, end)
    total = int(ctx.config.total_steps)
    if total % n_halvings:
        raise ValueError(f"config.total_steps ({total}) must split evenly over the {n_halvings} "
                         f"halvings {start} -> {end} steps (a multiple of {n_halvings})")
    accum = int(ctx.config.optim.accum_steps)
    per_halving = total // n_halvings * accum            # train-step calls per halving
    t = teacher_lib.load(f, "progressive", ctx.example_shape)
    if t.model != ctx.model:
        raise ValueError("objective 'progressive': config.model must be the teacher's (the "
                         "student continues from its weights); diffjax distill copies it")
    wcond = w_conditioned(ctx.model)
    check_w_range(f, "progressive")
    guidance = float(f["guidance"])
    if guidance != 1.0 and (wcond or not ctx.num_classes):
        raise ValueError("config.objective.guidance (a fixed classifier-free scale for the first "
                         "teacher) needs a class-conditional teacher that does not take the scale "
                         "as input")
    den, process, kind = ctx.den, ctx.process, f["weighting"]
    level = nested_grid(process)
    sd = float(ctx.config.diffusion.sigma_data)

    def student_steps(step):
        halving = jnp.minimum(step // per_halving, n_halvings - 1)
        return (start // 2) // (2 ** halving), halving

    def loss(params, extra, batch, key):
        x0 = batch["x"].astype(jnp.float32)
        n, halving = student_steps(extra["step"])
        k_w, k_d, k_c, k_l = jax.random.split(key, 4)
        cond = {"label": batch["label"]} if ctx.num_classes else None
        if wcond:
            cond = {**(cond or {}), "guidance": draw_w(k_w, x0.shape[0], f)}
        scale = jnp.where(halving == 0, guidance, 1.0) if guidance != 1.0 else 1.0
        per_ex = progressive_loss(
            lambda x, s: den(params, x, s, cond, train=True, rngs={"dropout": k_d, "cep": k_c}),
            lambda x, s: t.D(extra["teacher"], x, s, cond, scale), x0, k_l, n, level,
            lambda s: targets.loss_weight(s, process, kind, sd))
        return jnp.mean(per_ex), {"loss_per_example": per_ex,
                                  "metrics": {"student_steps": n.astype(jnp.float32)}}

    def init_extra(key, params):
        return {"teacher": jax.tree.map(jnp.asarray, t.params), "step": jnp.zeros((), jnp.int32)}

    def update_extra(extra, params, batch, key, metrics):
        step = extra["step"] + 1
        swap = (step % per_halving == 0) & (step < n_halvings * per_halving)
        teacher = jax.tree.map(lambda p, q: jnp.where(swap, p, q), params, extra["teacher"])
        return {"teacher": teacher, "step": step}, {}

    return Objective(loss=loss, init_extra=init_extra, update_extra=update_extra,
                     init_params=lambda key, params: teacher_lib.into(params, t.params,
                                                                      "progressive"))


def sampling_rule(steps: int, baked_guidance: bool) -> dict:
    """config.sample / config.eval of a few-step DDIM student on the nested grid. A student that
    does not take the guidance scale as input is drawn without guidance: what it learned (the
    conditional model, or a fixed guided teacher) is baked in, and its null class was not trained."""
    out = {"sample.sampler": "ddim", "sample.steps": steps, "sample.spacing": "nested",
           "eval.sampler": "ddim", "eval.steps": steps}
    if baked_guidance:
        out.update({"sample.guidance.scale": 1.0, "eval.guidance.scale": 1.0})
    return out


@register_student("progressive")
def _student(teacher_config, fields) -> dict:
    wcond = bool(teacher_config.model.get("guidance_embed", False))
    return sampling_rule(int(fields["end_steps"]), baked_guidance=not wcond)
