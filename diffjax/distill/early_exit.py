"""DeeDiff early exit (Tang et al., "DeeDiff: Dynamic Uncertainty-Aware Early Exiting for Accelerating
Diffusion Model Generation", arXiv 2309.17074; the official code is the AdaDiff release, ECCV 2024,
Tangshengku/AdaDiff ``libs/uvit.py`` and ``sde.py``): the ``deediff`` training objective, its
student rule and the ``early_exit`` guidance method that samples the student.

    diffjax distill --config configs/distill_deediff.py --teacher BASE --workdir STUDENT
    diffjax sample --workdir STUDENT --guidance early_exit --guidance.threshold 0.9

Network (models/dit.py, ``early_exit=True``): ONE shared output head (the backbone's final layer)
gives every block's prediction F_i = head(z_i), and one confidence module (UEM) per block gives
c_i = unpatchify(sigmoid(Linear_i(sg[z_i]))) in (0, 1), a map of F_i's shape.

Loss, as ``sde.LSimple`` = ``mos`` + ``mos_lte`` + ``mos_layer_wise`` of the release (every
coefficient 1, the paper's lambda = beta = 1), on the network's own output F and its target F*:
    L        = mean_pix (F* - F_L)^2                                             (L_simple)
             + (1/L) sum_i mean_pix (c_i - sg[1 - tanh |F_i - F*|])^2           (L_u, confidence)
             + sum_i w_i mean_pix (F* - F_i)^2,  w_i = cbar_i / sum_j cbar_j    (L_UAL, layer-wise)
    cbar_i = mean of c_i over the whole batch and every pixel (one scalar per layer)
averaged over the batch. w is NOT detached: L_UAL also trains the UEMs, moving confidence towards
the layers with low error; the UEM input is detached, so the backbone learns only through the F_i
(both as in the release). The sums run over every layer including the last (F_L is the output).

The frame of F. The error is measured on the network output F of the run's parameterization
(``config.diffusion.parameterization``; core/denoisers.py), against what F should equal:
    edm : F* = (x0 - c_skip x) / c_out   (the EDM preconditioned target; D = c_skip x + c_out F)
    eps : F* = eps (the paper's setting: an eps-predicting U-ViT), x0: x0, v: alpha eps - sigma x0,
    flow: alpha' x0 + sigma' eps
For EDM the F-space MSE is the 'native' weighting of core/losses.py (lambda(sigma) = 1 / c_out^2
times the x0-space MSE), so L_simple is the base run's own loss; other weightings are refused.

Training starts from another run (``teacher_workdir``, the pretrained network it fine-tunes; all
weights train, as in the release: ``freeze_backbone`` trains the UEMs only, the reproduction's
setting): ``init_params`` copies its parameter set ``teacher_params`` (default: the set it samples
with) into the student's structure leaf by leaf, with fresh UEMs. Noise levels, label dropout and
CEP are the run's ``config.diffusion`` (as for the denoising objective).

Sampling (``early_exit`` guidance): cond['exit_threshold'] = threshold reaches the network
(core/denoisers.CALL_INPUTS), which exits at the first block whose mean confidence over the whole
(B, H, W, C) map is > threshold (the release's rule: confidence, thr > 1 never exits; in the
paper's uncertainty convention u = 1 - c this is mean u < tau = 1 - thr, tau = 0 the full model).
The whole batch exits together, so the blocks after the exit are really skipped; the release
samples one image at a time (``mini_batch_size = 1``), where the batch rule is per sample.
``scale`` != 1 is classifier-free guidance around it (conditional and null rows decide together).
The patience rule (AdaDiff's: in the first half a layer exits the second time its test holds) is
the model field ``exit_patience``, set by this objective's field of the same name; off by default.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from diffjax.core import denoisers, losses
from diffjax.core.conditioning import drop_labels
from diffjax.distill import student, teacher
from diffjax.guidance.classifier_free import classifier_free
from diffjax.guidance.registry import Method, register as register_guidance
from diffjax.training.objectives import Context, Objective, register

UEM_PREFIX = "uem_"                          # the student's new parameters (models/dit.py)
EXIT_FIELDS = ("early_exit", "exit_patience")  # model fields the student may differ in


# ---- the loss -------------------------------------------------------------------------------------
def network_io(parameterization: str, process, t, x_t, x0, eps, sigma_data: float = 0.5):
    """(network input, noise label, target F*) for data x0 noised to x_t = alpha x0 + sigma eps at
    process time t: what ``denoisers.from_network`` feeds the network at the EDM-frame point
    (x_t / alpha, sigma_tilde), and what its output F should equal (module doc)."""
    if parameterization == "edm":
        x = x_t / denoisers.bcast(process.alpha(t), x_t)
        s = denoisers.bcast(process.sigma_tilde(t), x_t)
        c_skip = sigma_data ** 2 / (s ** 2 + sigma_data ** 2)
        c_out = s * sigma_data / jnp.sqrt(s ** 2 + sigma_data ** 2)
        c_in = 1.0 / jnp.sqrt(s ** 2 + sigma_data ** 2)
        return c_in * x, jnp.log(process.sigma_tilde(t)) / 4.0, (x0 - c_skip * x) / c_out
    if parameterization not in denoisers.PARAMETERIZATIONS:
        raise ValueError(f"unknown parameterization {parameterization!r}; expected one of "
                         f"{denoisers.PARAMETERIZATIONS}")
    return x_t, process.noise_label(t), denoisers.network_target(parameterization, process, t, x0,
                                                                 eps)


def _mean_pix(a):
    return jnp.mean(a, axis=tuple(range(1, a.ndim)))


def deediff_terms(preds, confs, target) -> dict:
    """The three DeeDiff / AdaDiff loss terms per example (module doc) from the per-layer
    predictions F_1..F_L, confidences c_1..c_L (each shaped like ``target``) and the target F*.
    Returns {'simple', 'confidence', 'layerwise', 'per_example'}: (B,) arrays, and 'weights' (L,),
    the layer weights w_i (they sum to 1)."""
    if len(preds) != len(confs) or not preds:
        raise ValueError(f"deediff_terms needs one confidence map per prediction; got "
                         f"{len(preds)} predictions and {len(confs)} confidence maps")
    for i, (f, c) in enumerate(zip(preds, confs)):
        if f.shape != target.shape or c.shape != target.shape:
            raise ValueError(f"deediff_terms: layer {i + 1}'s prediction {f.shape} and confidence "
                             f"{c.shape} must have the target's shape {target.shape}")
    mse = [_mean_pix((target - f) ** 2) for f in preds]                                  # (B,)
    conf_mse = [_mean_pix((c - jax.lax.stop_gradient(1.0 - jnp.tanh(jnp.abs(f - target)))) ** 2)
                for f, c in zip(preds, confs)]
    cbar = jnp.stack([jnp.mean(c) for c in confs])                                       # (L,)
    w = cbar / jnp.sum(cbar)
    simple = mse[-1]
    confidence = sum(conf_mse) / len(confs)
    layerwise = sum(w[i] * m for i, m in enumerate(mse))
    return {"simple": simple, "confidence": confidence, "layerwise": layerwise,
            "per_example": simple + confidence + layerwise, "weights": w}


# ---- the teacher (the run it fine-tunes) ----------------------------------------------------------
def _model_fields(model) -> dict:
    return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
            if f.init and f.name not in ("parent", "name") + EXIT_FIELDS}


def load_teacher(fields: dict, model, example_shape=None):
    """The pretrained run's parameters (host arrays, ``distill.teacher``), its network checked to
    be ``model`` without the confidence modules (every other field equal)."""
    t = teacher.load(fields, "deediff", example_shape)
    if type(t.model) is not type(model):
        raise ValueError(f"objective 'deediff': the run in {fields['teacher_workdir']!r} is a "
                         f"{type(t.model).__name__}, the student a {type(model).__name__}; the "
                         f"student is the teacher's network with confidence modules")
    a, b = _model_fields(t.model), _model_fields(model)
    diff = sorted(k for k in a if a[k] != b.get(k))
    if diff:
        raise ValueError("objective 'deediff': config.model differs from the teacher's in "
                         + ", ".join(f"{k} ({b.get(k)!r}; the teacher's {a[k]!r})" for k in diff)
                         + "; the student is the teacher's network (diffjax distill copies it)")
    return t.params


def start_from(student_params, teacher_params):
    """The student's parameters with every leaf of ``teacher_params`` copied in
    (``distill.teacher.into``: a teacher leaf with no place in the student, or of another shape,
    is an error naming its path); the leaves the teacher has not must be confidence modules
    (``uem_*``), which keep their fresh init."""
    if not any(k.startswith(UEM_PREFIX) for k in student_params):
        raise ValueError("objective 'deediff': the student has no confidence modules (set "
                         "config.model.early_exit=True)")
    new = sorted(k for k in student_params if k not in teacher_params)
    if any(not k.startswith(UEM_PREFIX) for k in new):
        raise ValueError(f"objective 'deediff': the student's parameters "
                         f"{', '.join(k for k in new if not k.startswith(UEM_PREFIX))} are not in "
                         f"the teacher (only confidence modules, {UEM_PREFIX}*, are new)")
    return teacher.into(student_params, teacher_params, "deediff")


def uems_only(params):
    """The trainable mask of ``freeze_backbone``: True on the confidence modules only."""
    return {k: jax.tree.map(lambda _: k.startswith(UEM_PREFIX), v) for k, v in params.items()}


# ---- the objective --------------------------------------------------------------------------------
@register("deediff", teacher_workdir="", teacher_params="", teacher_step=-1, freeze_backbone=False,
          exit_patience=False)
def deediff(ctx: Context) -> Objective:
    """DeeDiff / AdaDiff fine-tuning of a pretrained run into an early-exit network (module doc)."""
    f, d, model, process = ctx.fields, ctx.config.diffusion, ctx.model, ctx.process
    if not getattr(model, "early_exit", False):
        raise ValueError("objective 'deediff' trains an early-exit network: config.model must be "
                         "a DiT with early_exit=True (diffjax distill sets it)")
    if bool(model.exit_patience) != bool(f["exit_patience"]):
        raise ValueError(f"config.objective.exit_patience ({f['exit_patience']}) and "
                         f"config.model.exit_patience ({model.exit_patience}) differ; the student "
                         f"rule sets the model's from the objective's")
    if d.weighting != "native":
        raise ValueError(f"objective 'deediff' minimises the plain MSE of the network output (the "
                         f"'native' weighting); config.diffusion.weighting is {d.weighting!r}")
    if d.label_dropout > 0 and not ctx.num_classes:
        raise ValueError("config.diffusion.label_dropout > 0 needs a class-conditional model")
    param, sd = d.parameterization, float(d.sigma_data)
    draw_t = losses.time_sampler(d.t_sampler, process, p_mean=d.p_mean, p_std=d.p_std)

    teacher_params = load_teacher(f, model, ctx.example_shape)   # host-side, before any trace

    def init_params(key, params):
        return start_from(params, teacher_params)

    def loss(params, extra, batch, key):
        x0 = batch["x"].astype(jnp.float32)
        k_t, k_n, k_l, k_d, k_c = jax.random.split(key, 5)
        t = draw_t(k_t, x0.shape[0])
        x_t, eps = process.perturb(k_n, x0, t)
        x_in, noise_label, target = network_io(param, process, t, x_t, x0, eps, sd)
        labels = batch.get("label") if ctx.num_classes else None
        if labels is not None and d.label_dropout > 0:
            labels = drop_labels(k_l, labels, d.label_dropout, ctx.num_classes)
        _, preds, confs = model.apply({"params": params}, x_in, noise_label, labels=labels,
                                      train=True, return_confidences=True,
                                      rngs={"dropout": k_d, "cep": k_c})
        terms = deediff_terms(preds, confs, target)
        per_ex = terms["per_example"]
        metrics = {k: jnp.mean(terms[k]) for k in ("simple", "confidence", "layerwise")}
        metrics.update(confidence_first=jnp.mean(confs[0]), confidence_last=jnp.mean(confs[-1]))
        return jnp.mean(per_ex), {"loss_per_example": per_ex, "t": t, "metrics": metrics}

    return Objective(loss=loss, init_params=init_params,
                     trainable=uems_only if f["freeze_backbone"] else None)


@student.register_student("deediff")
def _student(teacher_config, fields) -> dict:
    """The student is the teacher's DiT with a confidence module after every block."""
    name = teacher_config.model.get("name")
    if name != "dit":
        raise ValueError(f"objective 'deediff': the teacher's model is {name!r}; early exit is "
                         f"implemented for DiT (config.model.name 'dit')")
    return {"model.early_exit": True, "model.exit_patience": bool(fields["exit_patience"])}


# ---- sampling: the 'early_exit' guidance method ---------------------------------------------------
def early_exit(D, threshold):
    """D with cond['exit_threshold'] = threshold: an early-exit network's exit test (module doc)."""
    def exiting(x, sigma, cond):
        return D(x, sigma, {**(cond or {}), "exit_threshold": threshold})
    return exiting


def _prepare(section, run):
    """Refuse a run without confidence modules; classifier-free guidance around the exit when the
    scale is not 1 (static: scale 1 runs no null branch)."""
    model = run.config.model      # (the trainer's live runs have no module: read the config)
    if not model.get("early_exit", False):
        raise ValueError(f"guidance 'early_exit' samples an early-exit network; this run's "
                         f"{model.get('name')!r} model has none (train one: diffjax distill "
                         f"--config configs/distill_deediff.py --teacher THIS_RUN --workdir "
                         f"STUDENT)")
    guided = float(section["scale"]) != 1.0
    if guided and not run.num_classes:
        raise ValueError(f"guidance 'early_exit' with scale {section['scale']:g}: this run is "
                         f"unconditional; leave the scale at 1")
    return ("classifier_free" if guided else "conditional"), None


def _make(D, ctx, static, state, threshold, scale):
    D = early_exit(D, threshold)
    return classifier_free(D, ctx.null_label, scale, ctx.label_key) if static == \
        "classifier_free" else D


register_guidance(Method(
    name="early_exit", make=_make, fields=(("threshold", 0.9), ("scale", 1.0)),
    prepare=_prepare, needs_classes=False,
    help="DeeDiff / AdaDiff early exit of a run trained with objective deediff: every network call "
         "stops at the first block whose mean confidence (over the batch) is > threshold (> 1: "
         "never, the full network); scale: classifier-free guidance around it (1: none)"))
