"""The ``sim`` objective: Score Implicit Matching (Luo et al. 2024, "One-Step Diffusion Distillation
through Score Implicit Matching"), a data-free one-step generator.

Generator x0 = g_theta(z) = D_theta(sigma_init z, sigma_init, c) (the teacher's network and
parameterization, started from its weights; sigma_init = 2.5 as in their inference code), labels c
drawn uniformly (no data is read). Its noised law q_t should match the teacher's p_t; the score
divergence E_{x_t ~ q_t} d(s_p(x_t) - s_q(x_t)) has, by their score-gradient theorem, the gradient of
the surrogate (EDM frame, x_t = x0 + sigma n, scores s = (D - x_t) / sigma^2):
    y   = (D_teacher(x_t) - D_fake(x_t)) / sigma^2
    L   = E w(sigma) / sigma^2 < d'(y), D_fake(x_t) - x0 >
with the teacher's and the fake-score network's parameters frozen in this step and gradients
flowing into theta through x0 and through x_t (the networks' inputs). d is the pseudo-Huber distance
sqrt(|y|^2 + c^2) - c, d'(y) = y / sqrt(|y|^2 + c^2) (norm over one example; c = 1e-3, the value
the authors suggest, since the paper gives none), or 'l2' (d' = 2y; SiD's generator loss with
alpha = 1). w(sigma) = sigma^2 ('sigma2', the form of the authors' Dive3D code: <d'(y), D_fake - x0>
in x0 space) or 1 ('one'). The fake-score network D_fake (started from the teacher) tracks q_t by
denoising score matching on detached generator samples, sigma ~ LogNormal(-1.2, 1.2), EDM weight:
    L_fake = lambda(sigma) |D_fake(x0 + sigma n, sigma) - sg(x0)|^2,
updated once per generator update with its own Adam (``update_extra``: after the generator's
update, on fresh samples from it; alternating 1:1). The generator-step noise distribution is
unverified (algorithms-verified.md section 3): 'lognormal' is Diff-Instruct's LogNormal(p_mean,
p_std), 'sid' is SiD's t ~ U[0, sid_t_max] on the Karras grid (sigma_min 0.002, sigma_max 80,
rho 7). The teacher, the fake-score network and its optimizer state live in TrainState.extra. A
class-conditional teacher may be classifier-free guided at a fixed ``guidance`` scale.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from diffjax.core.denoisers import bcast
from diffjax.distill import teacher as teacher_lib
from diffjax.distill.student import register_student
from diffjax.training.objectives import Context, Objective, register

DISTANCES = ("pseudo_huber", "l2")
GEN_SIGMAS = ("lognormal", "sid")
WEIGHTS = ("sigma2", "one")


def d_prime(y, kind: str, c: float):
    """d'(y) per example (y (B, ...)): pseudo-Huber y / sqrt(|y|^2 + c^2), or 2y for 'l2'."""
    if kind == "l2":
        return 2.0 * y
    norm2 = jnp.sum(jnp.square(y).reshape(y.shape[0], -1), axis=1)
    return y / bcast(jnp.sqrt(norm2 + c * c + 1e-20), y)


def generator_surrogate(x0, x_t, sigma, D_teacher, D_fake, kind: str, c: float, weight: str):
    """(B,) the SIM surrogate per example (module doc); gradients flow through x0 and x_t."""
    Dp, Dq = D_teacher(x_t, sigma), D_fake(x_t, sigma)
    s2 = bcast(jnp.square(sigma), x0)
    y = (Dp - Dq) / s2
    dot = jnp.sum((d_prime(y, kind, c) * (Dq - x0)).reshape(x0.shape[0], -1), axis=1)
    w = jnp.square(sigma) if weight == "sigma2" else jnp.ones_like(sigma)
    return w / jnp.square(sigma) * dot


def gen_sigma_sampler(kind: str, p_mean: float, p_std: float, t_max: float):
    if kind == "lognormal":
        return lambda key, b: jnp.exp(p_mean + p_std * jax.random.normal(key, (b,)))
    if kind == "sid":
        lo, hi, rho = 0.002 ** (1 / 7.0), 80.0 ** (1 / 7.0), 7.0
        return lambda key, b: (lo + jax.random.uniform(key, (b,), maxval=t_max) * (hi - lo)) ** rho
    raise ValueError(f"config.objective.gen_sigma: unknown {kind!r}; expected one of {GEN_SIGMAS}")


@register("sim", **teacher_lib.TEACHER_FIELDS, sigma_init=2.5, distance="pseudo_huber",
          huber_c=1e-3, weight="sigma2", gen_sigma="lognormal", p_mean=-1.2, p_std=1.2,
          sid_t_max=0.8, fake_lr=1e-4, fake_b1=0.0, fake_p_mean=-1.2, fake_p_std=1.2,
          guidance=1.0)
def sim(ctx: Context) -> Objective:
    f = ctx.fields
    if f["distance"] not in DISTANCES:
        raise ValueError(f"config.objective.distance: unknown {f['distance']!r}; expected one of "
                         f"{DISTANCES}")
    if f["weight"] not in WEIGHTS:
        raise ValueError(f"config.objective.weight: unknown {f['weight']!r}; expected one of "
                         f"{WEIGHTS}")
    draw_sigma = gen_sigma_sampler(f["gen_sigma"], float(f["p_mean"]), float(f["p_std"]),
                                   float(f["sid_t_max"]))
    guidance = float(f["guidance"])
    if guidance != 1.0 and not ctx.num_classes:
        raise ValueError("config.objective.guidance needs a class-conditional teacher")
    t = teacher_lib.load(f, "sim", ctx.example_shape)
    den, classes, sd = ctx.den, ctx.num_classes, float(ctx.config.diffusion.sigma_data)
    s_init, kind, c, weight = float(f["sigma_init"]), f["distance"], float(f["huber_c"]), f["weight"]
    fake_tx = optax.adam(float(f["fake_lr"]), b1=float(f["fake_b1"]))
    fm, fs = float(f["fake_p_mean"]), float(f["fake_p_std"])

    def generate(params, key, b, shape, train):
        k_z, k_y, k_d, k_c = jax.random.split(key, 4)
        z = jax.random.normal(k_z, (b,) + shape)
        cond = {"label": jax.random.randint(k_y, (b,), 0, classes)} if classes else None
        rngs = {"dropout": k_d, "cep": k_c} if train else None
        return den(params, s_init * z, jnp.full((b,), s_init), cond, train=train, rngs=rngs), cond

    def loss(params, extra, batch, key):
        b, shape = batch["x"].shape[0], tuple(batch["x"].shape[1:])
        k_g, k_s, k_n = jax.random.split(key, 3)
        x0, cond = generate(params, k_g, b, shape, True)
        sigma = draw_sigma(k_s, b)
        x_t = x0 + bcast(sigma, x0) * jax.random.normal(k_n, x0.shape)
        teacher = jax.lax.stop_gradient(extra["teacher"])
        fake = jax.lax.stop_gradient(extra["fake"])
        per_ex = generator_surrogate(
            x0, x_t, sigma, lambda x, s: t.D(teacher, x, s, cond, guidance),
            lambda x, s: den(fake, x, s, cond), kind, c, weight)
        return jnp.mean(per_ex), {"loss_per_example": per_ex}

    def fake_loss(fake, x0, cond, key):
        k_s, k_n = jax.random.split(key)
        sigma = jnp.exp(fm + fs * jax.random.normal(k_s, (x0.shape[0],)))
        x = x0 + bcast(sigma, x0) * jax.random.normal(k_n, x0.shape)
        lam = (jnp.square(sigma) + sd * sd) / jnp.square(sigma * sd)
        err = jnp.mean(jnp.square(den(fake, x, sigma, cond) - x0).reshape(x0.shape[0], -1), 1)
        return jnp.mean(lam * err)

    def init_extra(key, params):
        return {"teacher": jax.tree.map(jnp.asarray, t.params), "fake": params,
                "fake_opt": fake_tx.init(params)}

    def update_extra(extra, params, batch, key, metrics):
        b, shape = batch["x"].shape[0], tuple(batch["x"].shape[1:])
        k_g, k_f = jax.random.split(key)
        x0, cond = generate(params, k_g, b, shape, False)
        x0 = jax.lax.stop_gradient(x0)
        value, grads = jax.value_and_grad(fake_loss)(extra["fake"], x0, cond, k_f)
        updates, opt = fake_tx.update(grads, extra["fake_opt"], extra["fake"])
        fake = optax.apply_updates(extra["fake"], updates)
        return {**extra, "fake": fake, "fake_opt": opt}, {"fake_loss": value}

    return Objective(loss=loss, init_extra=init_extra, update_extra=update_extra,
                     init_params=lambda key, params: teacher_lib.into(params, t.params, "sim"))


@register_student("sim")
def _student(teacher_config, fields) -> dict:
    if teacher_config.diffusion.process != "edm":
        raise ValueError(f"objective 'sim' draws its generator's input at sigma_init on the EDM "
                         f"process (a one-step DDIM draw from sigma_init); the teacher's process "
                         f"is {teacher_config.diffusion.process!r}")
    out = {"diffusion.process_kwargs.sigma_max": float(fields["sigma_init"]),
           "sample.sampler": "ddim", "sample.steps": 1, "sample.spacing": "karras",
           "eval.sampler": "ddim", "eval.steps": 1}
    if not teacher_config.model.get("guidance_embed", False):
        out.update({"sample.guidance.scale": 1.0, "eval.guidance.scale": 1.0})
    return out
