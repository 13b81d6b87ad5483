"""The ``consistency`` objective: consistency distillation (Song et al. 2023, "Consistency Models",
Algorithm 2), the few-step family diffusers ships as LCM.

The consistency function f_theta(x, sigma) maps every point of a probability-flow ODE trajectory to
its origin. Its boundary condition f(x, sigma_min) = x holds by construction: the student is the
teacher's network under the 'consistency' parameterization (core/denoisers.py; EDM's skip/output
scalings with the boundary shifted to sigma_min). On the Karras levels sigma_1 > ... > sigma_N
(``num_scales`` = N, rho = 7, the process's range):
    n ~ U{1..N-1},  x_n = x0 + sigma_n z,
    x_{n+1} = one teacher ODE step sigma_n -> sigma_{n+1} from x_n ('heun' or 'euler'; EDM frame),
    L = d(f_theta(x_n, sigma_n), stopgrad f_theta-(x_{n+1}, sigma_{n+1})),
    theta- <- mu theta- + (1 - mu) theta   after every update (the target network, ``target_decay``)
with d the per-example mean squared error ('l2') or the pseudo-Huber distance
sqrt(|a - b|^2 + c^2) - c (Song & Dhariwal 2024, c = 0.00054 sqrt(dim) when ``huber_c`` is 0). The
student and its target start from the teacher's weights. A class-conditional teacher is distilled
with its labels, optionally classifier-free guided at a fixed ``guidance`` scale (baked into the
student). Sampling: the 'consistency' sampler (core/samplers/distilled.py), one step on the grid
(sigma_max, 0) or several on the nested grid.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core import timesteps
from diffjax.core.denoisers import bcast
from diffjax.distill import teacher as teacher_lib
from diffjax.distill.student import register_student
from diffjax.training.objectives import Context, Objective, register

SOLVERS = ("heun", "euler")
DISTANCES = ("l2", "pseudo_huber")


def ode_step(D, x, sigma, sigma_next, solver: str):
    """One probability-flow ODE step of the EDM frame, dx/dsigma = (x - D(x, sigma)) / sigma;
    sigma_next > 0 (Heun's corrector evaluates there)."""
    d = (x - D(x, sigma)) / bcast(sigma, x)
    h = bcast(sigma_next - sigma, x)
    x_e = x + h * d
    if solver == "euler":
        return x_e
    d2 = (x_e - D(x_e, sigma_next)) / bcast(sigma_next, x)
    return x + h * 0.5 * (d + d2)


def distance(a, b, kind: str, c: float = 0.0):
    """(B,) per-example distance: 'l2' mean squared error, 'pseudo_huber' sqrt(|a-b|^2 + c^2) - c
    (c = 0.00054 sqrt(dim) when c is 0)."""
    diff = (a - b).reshape(a.shape[0], -1)
    if kind == "l2":
        return jnp.mean(jnp.square(diff), axis=1)
    if kind == "pseudo_huber":
        c = c or 0.00054 * float(diff.shape[1]) ** 0.5
        return jnp.sqrt(jnp.sum(jnp.square(diff), axis=1) + c * c) - c
    raise ValueError(f"config.objective.distance: unknown distance {kind!r}; expected one of "
                     f"{DISTANCES}")


def consistency_loss(f_student, f_target, teacher_D, x0, key, levels, solver="heun", kind="l2",
                     c=0.0):
    """(B,) the consistency-distillation loss (module doc): ``f_student`` / ``f_target`` the
    consistency function under the online / target weights and ``teacher_D`` the teacher's
    denoiser, each (x, sigma (B,)) -> x0; ``levels`` the decreasing Karras levels."""
    b = x0.shape[0]
    k_n, k_z = jax.random.split(key)
    n = jax.random.randint(k_n, (b,), 0, levels.shape[0] - 1)
    s_hi, s_lo = levels[n], levels[n + 1]
    x_hi = x0 + bcast(s_hi, x0) * jax.random.normal(k_z, x0.shape)
    x_lo = jax.lax.stop_gradient(ode_step(teacher_D, x_hi, s_hi, s_lo, solver))
    target = jax.lax.stop_gradient(f_target(x_lo, s_lo))
    return distance(f_student(x_hi, s_hi), target, kind, c)


@register("consistency", **teacher_lib.TEACHER_FIELDS, num_scales=18, solver="heun",
          target_decay=0.95, distance="l2", huber_c=0.0, guidance=1.0)
def consistency(ctx: Context) -> Objective:
    f = ctx.fields
    if ctx.config.diffusion.parameterization != "consistency":
        raise ValueError("objective 'consistency': the student needs "
                         "config.diffusion.parameterization = 'consistency' (diffjax distill "
                         "sets it)")
    if f["solver"] not in SOLVERS:
        raise ValueError(f"config.objective.solver: unknown solver {f['solver']!r}; expected one "
                         f"of {SOLVERS}")
    distance(jnp.zeros((1, 1)), jnp.zeros((1, 1)), f["distance"])   # an unknown one fails here
    n_scales = int(f["num_scales"])
    if n_scales < 2:
        raise ValueError(f"config.objective.num_scales must be >= 2, got {n_scales}")
    mu = float(f["target_decay"])
    if not 0.0 <= mu < 1.0:
        raise ValueError(f"config.objective.target_decay must be in [0, 1), got {mu}")
    guidance = float(f["guidance"])
    if guidance != 1.0 and not ctx.num_classes:
        raise ValueError("config.objective.guidance needs a class-conditional teacher")
    t = teacher_lib.load(f, "consistency", ctx.example_shape)
    lo, hi = ctx.process.sigma_tilde_range()
    levels = timesteps.karras(n_scales, max(lo, 1e-4), hi)[:-1]       # sigma_max .. sigma_min
    den, solver, kind, c = ctx.den, f["solver"], f["distance"], float(f["huber_c"])

    def loss(params, extra, batch, key):
        x0 = batch["x"].astype(jnp.float32)
        k_l, k_d, k_c = jax.random.split(key, 3)
        cond = {"label": batch["label"]} if ctx.num_classes else None
        per_ex = consistency_loss(
            lambda x, s: den(params, x, s, cond, train=True, rngs={"dropout": k_d, "cep": k_c}),
            lambda x, s: den(extra["target"], x, s, cond),
            lambda x, s: t.D(extra["teacher"], x, s, cond, guidance), x0, k_l, levels, solver,
            kind, c)
        return jnp.mean(per_ex), {"loss_per_example": per_ex}

    def init_extra(key, params):
        return {"teacher": jax.tree.map(jnp.asarray, t.params), "target": params}

    def update_extra(extra, params, batch, key, metrics):
        target = jax.tree.map(lambda a, p: mu * a + (1.0 - mu) * p, extra["target"], params)
        return {**extra, "target": target}, {}

    return Objective(loss=loss, init_extra=init_extra, update_extra=update_extra,
                     init_params=lambda key, params: teacher_lib.into(params, t.params,
                                                                      "consistency"))


@register_student("consistency")
def _student(teacher_config, fields) -> dict:
    if teacher_config.diffusion.parameterization != "edm":
        raise ValueError(f"objective 'consistency' starts the consistency function from an "
                         f"EDM-parameterized teacher (its network keeps EDM's input and output "
                         f"scalings); the teacher's is "
                         f"{teacher_config.diffusion.parameterization!r}")
    out = {"diffusion.parameterization": "consistency", "sample.sampler": "consistency",
           "sample.steps": 1, "sample.spacing": "nested", "eval.sampler": "consistency",
           "eval.steps": 1}
    if not teacher_config.model.get("guidance_embed", False):
        out.update({"sample.guidance.scale": 1.0, "eval.guidance.scale": 1.0})
    return out
