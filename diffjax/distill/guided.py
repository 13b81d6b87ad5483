"""The ``guided`` objective: stage 1 of guided distillation (Meng et al. 2023, "On Distillation of
Guided Diffusion Models", Sec. 3.1), and the ``guidance_input`` transform that samples its student.

A classifier-free guided teacher needs two network calls per step, D_w = D_null + w (D_c - D_null)
(this library's scale: w = 1 is the conditional model; Meng et al.'s w is ours minus 1). One student,
given w as an input (model.guidance_embed: a Fourier embedding of w added to the condition,
models/embeddings.py), learns the combination for a whole range of w:
    L = E_{w ~ U[w_min, w_max], sigma, x0, eps} lambda(sigma) |D_student(x, sigma, c, w) - D_w^teacher(x, sigma, c)|^2,
    x = x0 + sigma eps,  sigma from the run's training noise distribution (config.diffusion),
lambda the truncated-SNR weight by default (the progressive-distillation weight; which weighting the
paper uses in stage 1 is unverified, algorithms-verified.md section 4). The student starts from
the teacher's weights; its w embedding starts at zero (the conditional model for every w). Stage 2
is ``progressive`` with this run as the teacher. The w range default [1, 5] is the paper's pixel-
space [0, 4] in our convention (also unverified); the student is only trained inside it.

Sampling the student: ``guidance_input`` (scale w) puts w into cond['guidance']; a draw from a run
whose model takes the scale turns classifier-free guidance at scale w into it (inference's
``resolve_for``), so ``diffjax sample --guidance 3`` means the same on teacher and student, at half
the network calls.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core import losses
from diffjax.core.denoisers import bcast
from diffjax.distill import targets, teacher as teacher_lib
from diffjax.distill.progressive import check_w_range, w_conditioned
from diffjax.distill.student import register_student
from diffjax.guidance.registry import Method, register as register_guidance
from diffjax.training.objectives import Context, Objective, register


def guided_loss(student_D, teacher_guided_D, x0, sigma, key, w_range, weight):
    """(B,) the stage-1 loss (module doc): ``student_D(x, sigma, w)`` and ``teacher_guided_D(x,
    sigma, w)`` (the teacher's classifier-free combination at scale w, labels bound) map to x0_hat;
    sigma (B,) the noise levels, ``weight`` (B,) their loss weights."""
    k_e, k_w = jax.random.split(key)
    w = jax.random.uniform(k_w, sigma.shape, jnp.float32, w_range[0], w_range[1])
    x = x0 + bcast(sigma, x0) * jax.random.normal(k_e, x0.shape)
    target = jax.lax.stop_gradient(teacher_guided_D(x, sigma, w))
    return weight * targets.per_example_mse(student_D(x, sigma, w), target)


@register("guided", **teacher_lib.TEACHER_FIELDS, w_min=1.0, w_max=5.0,
          weighting="truncated_snr")
def guided(ctx: Context) -> Objective:
    f = ctx.fields
    if not ctx.num_classes:
        raise ValueError("objective 'guided' distils classifier-free guidance: the teacher must "
                         "be class-conditional (config.model.num_classes > 0, trained with "
                         "config.diffusion.label_dropout > 0)")
    if not w_conditioned(ctx.model):
        raise ValueError("objective 'guided': the student takes the guidance scale as input: set "
                         "config.model.guidance_embed = True (diffjax distill sets it)")
    check_w_range(f, "guided")
    t = teacher_lib.load(f, "guided", ctx.example_shape)
    if w_conditioned(t.model):
        raise ValueError(f"objective 'guided': the teacher in {f['teacher_workdir']!r} already "
                         f"takes the guidance scale as input (a stage-1 student); distil it "
                         f"further with configs/distill_progressive.py")
    d = ctx.config.diffusion
    draw_t = losses.time_sampler(d.t_sampler, ctx.process, p_mean=d.p_mean, p_std=d.p_std)
    den, process, kind, sd = ctx.den, ctx.process, f["weighting"], float(d.sigma_data)

    def loss(params, extra, batch, key):
        x0 = batch["x"].astype(jnp.float32)
        k_t, k_l, k_d, k_c = jax.random.split(key, 4)
        cond = {"label": batch["label"]}
        sigma = process.sigma_tilde(draw_t(k_t, x0.shape[0]))
        per_ex = guided_loss(
            lambda x, s, w: den(params, x, s, {**cond, "guidance": w}, train=True,
                                rngs={"dropout": k_d, "cep": k_c}),
            lambda x, s, w: t.D(extra["teacher"], x, s, cond, w), x0, sigma, k_l,
            (float(f["w_min"]), float(f["w_max"])),
            targets.loss_weight(sigma, process, kind, sd))
        return jnp.mean(per_ex), {"loss_per_example": per_ex}

    return Objective(
        loss=loss,
        init_extra=lambda key, params: {"teacher": jax.tree.map(jnp.asarray, t.params)},
        init_params=lambda key, params: teacher_lib.into(params, t.params, "guided"))


@register_student("guided")
def _student(teacher_config, fields) -> dict:
    if teacher_config.model.name not in ("unet", "dit", "pixart", "dico"):
        raise ValueError(f"objective 'guided': a {teacher_config.model.name!r} teacher cannot take "
                         f"the guidance scale as input (guidance_embed exists for unet, dit, "
                         f"pixart and dico)")
    return {"model.guidance_embed": True}


def guidance_input(D, ctx, scale):
    """D(x, sigma, {..., 'guidance': scale}): the student computes the guided x0 in one call."""
    def guided_D(x, sigma, cond):
        cond = dict(cond or {})
        cond["guidance"] = jnp.broadcast_to(jnp.asarray(scale, jnp.float32), (x.shape[0],))
        return D(x, sigma, cond)
    return guided_D


register_guidance(Method(
    name="guidance_input", make=guidance_input, fields=(("scale", 1.0),), needs_classes=True,
    help="the guidance scale as the input of a guidance-distilled student (Meng et al. 2023): one "
         "network call per step; classifier-free guidance at scale w on such a run means this"))
