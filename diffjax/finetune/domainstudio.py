"""The ``domainstudio`` objective: few-shot domain adaptation that keeps the source's diversity
(DomainStudio, Zhu et al. 2023; its unconditional form, the official Unconditional/ code).

An adapted model (initialised from the frozen source run, ``source_workdir``) is fine-tuned on ~10
target images. Plain fine-tuning collapses onto the few shots; DomainStudio keeps the *relative*
distances between samples as the source model sees them. For a batch of noisy inputs x_t both
models predict x0, and for each i the similarities to the other samples become a distribution

    p_i^m = softmax_{j != i} cos(x0_hat_i^m, x0_hat_j^m),     m in {ada, sou}

    L_img    = KL(p^sou || p^ada)               mean over the B (B - 1) entries (PyTorch's
                                                KLDivLoss(log p_ada, p_sou), 'mean', as the code)
    L_hf     = the same on hf(x0_hat), hf = LH + HL + HH of a one-level Haar transform
    L_hfmse  = mean || hf(x0_hat^ada) - hf(x0) ||^2      (the clean sample's high frequencies)
    L        = L_simple + l_img L_img + l_hf L_hf + l_hfmse L_hfmse

L_simple is the denoising loss (weighting of ``config.diffusion``) of the adapted model's x0_hat at
the same x_t. Defaults: the released unconditional weights 4, 4, 1 (``--pair_weight 4.0
--hf_pair_weight 4.0 --hf_mse_weight 1.0``; its learned-variance vb term has no counterpart in a
fixed-variance model). The source's weights are frozen in ``extra``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core import losses
from diffjax.core.denoisers import bcast
from diffjax.distill import teacher as teacher_lib
from diffjax.training.objectives import Context, Objective, register

SOURCE_FIELDS = {"source_workdir": "", "source_params": "", "source_step": -1}


def haar_hf(x):
    """LH + HL + HH of the one-level Haar transform of (B, H, W, C) (filters [1, 1]/sqrt 2 and
    [-1, 1]/sqrt 2 along each axis, stride 2): (B, H/2, W/2, C); zero for a constant image."""
    a, b = x[:, 0::2, 0::2], x[:, 0::2, 1::2]
    c, d = x[:, 1::2, 0::2], x[:, 1::2, 1::2]
    lh = (-a + b - c + d) / 2.0
    hl = (-a - b + c + d) / 2.0
    hh = (a - b - c + d) / 2.0
    return lh + hl + hh


def similarity_rows(f):
    """(B, B - 1): row i is softmax over j != i of cos(f_i, f_j); f (B, ...)."""
    v = f.reshape(f.shape[0], -1)
    v = v / (jnp.linalg.norm(v, axis=1, keepdims=True) + 1e-8)
    cos = v @ v.T
    b = cos.shape[0]
    off = ~jnp.eye(b, dtype=bool)
    rows = cos[off].reshape(b, b - 1)
    return jax.nn.softmax(rows, axis=1)


def kl_mean(p, q):
    """KL(p || q) summed per entry and averaged over all entries (PyTorch's
    ``KLDivLoss()(log q, p)``, reduction 'mean')."""
    return jnp.mean(p * (jnp.log(p + 1e-12) - jnp.log(q + 1e-12)))


@register("domainstudio", **SOURCE_FIELDS, image_weight=4.0, hf_weight=4.0, hfmse_weight=1.0)
def domainstudio(ctx: Context) -> Objective:
    f = ctx.fields
    if len(ctx.example_shape) != 3 or ctx.example_shape[0] % 2 or ctx.example_shape[1] % 2:
        raise ValueError(f"objective 'domainstudio' needs images (H, W, C) of even size, got "
                         f"{ctx.example_shape}")
    tf = {"teacher_workdir": f["source_workdir"], "teacher_params": f["source_params"],
          "teacher_step": f["source_step"]}
    if not tf["teacher_workdir"]:
        raise ValueError("objective 'domainstudio' adapts a trained source run: set "
                         "config.objective.source_workdir")
    src = teacher_lib.load(tf, "domainstudio", ctx.example_shape)
    d = ctx.config.diffusion
    draw_t = losses.time_sampler(d.t_sampler, ctx.process, p_mean=d.p_mean, p_std=d.p_std)
    param = getattr(ctx.den, "parameterization", "x0")
    lam = (float(f["image_weight"]), float(f["hf_weight"]), float(f["hfmse_weight"]))
    proc = ctx.process

    def loss(params, extra, batch, key):
        x0 = batch["x"].astype(jnp.float32)
        b = x0.shape[0]
        if b < 3:
            raise ValueError(f"objective 'domainstudio' compares samples within a batch: it needs "
                             f"a batch of at least 3, got {b}")
        k_t, k_n, k_d, k_c = jax.random.split(key, 4)
        t = draw_t(k_t, b)
        x_t, _ = proc.perturb(k_n, x0, t)
        x = x_t / bcast(proc.alpha(t), x_t)
        sigma = proc.sigma_tilde(t)
        cond = {k: v for k, v in batch.items() if k != "x"}
        ada = ctx.den(params, x, sigma, cond, train=True, rngs={"dropout": k_d, "cep": k_c})
        sou = jax.lax.stop_gradient(src.den(extra["source"], x, sigma, cond))
        w = losses.weight(d.weighting, proc, t, parameterization=param, gamma=d.min_snr_gamma,
                          sigma_data=d.sigma_data)
        per_ex = jnp.mean((ada - x0) ** 2, axis=(1, 2, 3)) * w
        l_simple = jnp.mean(per_ex)
        l_img = kl_mean(similarity_rows(sou), similarity_rows(ada))
        hf_ada, hf_sou = haar_hf(ada), haar_hf(sou)
        l_hf = kl_mean(similarity_rows(hf_sou), similarity_rows(hf_ada))
        l_hfmse = jnp.mean((hf_ada - haar_hf(x0)) ** 2)
        total = l_simple + lam[0] * l_img + lam[1] * l_hf + lam[2] * l_hfmse
        return total, {"loss_per_example": per_ex,
                       "metrics": {"loss_simple": l_simple, "loss_img": l_img, "loss_hf": l_hf,
                                   "loss_hfmse": l_hfmse}}

    return Objective(
        loss=loss,
        init_extra=lambda key, params: {"source": jax.tree.map(jnp.asarray, src.params)},
        init_params=lambda key, params: teacher_lib.into(params, src.params, "domainstudio"))
