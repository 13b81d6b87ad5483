"""Training objectives: what the train step minimises, and the state it needs beyond the params.

    obj = objectives.build(ctx)         # ctx: config, model, den, process, example shape, classes
    (loss, aux), grads = value_and_grad(obj.loss)(params, extra, batch, key)
    extra, metrics     = obj.update_extra(extra, new_params, batch, key, step_metrics)  # optional

``config.objective.name`` picks the entry of ``OBJECTIVES`` (default ``'denoising'``; run configs
saved before the section existed get it too); the section's other fields are the objective's own
and are checked against what it declares. An ``Objective`` holds pure functions:

    loss(params, extra, batch, key) -> (loss, aux)     aux: per-example arrays; an optional
                                                       aux['metrics'] dict of scalars is logged
    init_extra(key, params) -> extra                   extra state, None if the objective has none:
                                                       frozen networks (a teacher, a classifier),
                                                       auxiliary networks with their own optimizer
                                                       state (a fake-score network), target nets
    update_extra(extra, params, batch, key, metrics) -> (extra, metrics)
                                                       after the params' update: an auxiliary net's
                                                       own optimizer step, an EMA target, a
                                                       curriculum's pacing (``metrics``: the step's
                                                       loss, grad_norm, lr and aux['metrics'])
    trainable(params) -> bool pytree                   None: every leaf trains; False leaves get no
                                                       gradient, no optimizer state and no update
                                                       (LoRA: only the adapters train)
    init_params(key, params) -> params                 None: train the model's fresh init; else
                                                       what training starts from, built from it:
                                                       another run's weights, or a new structure
                                                       such as PPAP's {'base', 'experts'} (then
                                                       register it with new_param_structure=True)

The train step (step.py) owns the params, their optimizer and EMAs; an objective owns ``extra``
entirely. ``extra`` is part of the TrainState, so it is born sharded by the same rules as the params
(``config.sharding.rules``), checkpointed, restored and shown by the preflight. A new objective is
a function ``ctx -> Objective`` decorated with ``@register(name, field=default, ...)``.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple, Optional

import jax

from diffjax.core import losses
from diffjax.training import curriculum


class Context(NamedTuple):
    """What an objective is built from."""
    config: Any              # the run's ConfigDict
    model: Any               # the flax module being trained
    den: Callable            # den(params, x, sigma, cond, train, rngs) -> x0_hat (core/denoisers)
    process: Any             # core.processes.Process
    example_shape: tuple     # one example's shape
    num_classes: int         # 0: unconditional
    fields: dict             # config.objective without 'name', defaults filled in


class Objective(NamedTuple):
    loss: Callable                                    # (params, extra, batch, key) -> (loss, aux)
    init_extra: Callable = lambda key, params: None   # (key, params) -> extra pytree or None
    update_extra: Optional[Callable] = None           # (extra, params, batch, key, metrics)
                                                      #   -> (extra, metrics)
    trainable: Optional[Callable] = None              # params -> bool pytree
    init_params: Optional[Callable] = None            # (key, model's init params) -> params


OBJECTIVES: dict[str, tuple[Callable, dict]] = {}
# Objectives whose ``init_params`` gives the params another structure than the model's (PPAP's
# {'base', 'experts'}): loading such a run builds the objective to learn the structure. Every other
# run loads with the model's own structure, without building its objective (a student never needs
# its teacher's checkpoint to be sampled).
NEW_PARAM_STRUCTURE: set[str] = set()
# Objectives that draw their noise levels through the difficulty curriculum (curriculum.py) when
# config.diffusion.curriculum.clusters > 0; the others refuse it rather than ignore it.
CURRICULUM_OBJECTIVES = {"denoising"}


def register(name: str, *, new_param_structure: bool = False, **fields):
    """Decorator: ``@register('name', field=default, ...)`` over ``build(ctx) -> Objective``;
    ``new_param_structure=True`` when its ``init_params`` changes the params' structure."""
    def deco(fn):
        OBJECTIVES[name] = (fn, dict(fields))
        if new_param_structure:
            NEW_PARAM_STRUCTURE.add(name)
        return fn
    return deco


def section(config) -> dict:
    """``config.objective`` as a dict (``{'name': 'denoising'}`` for configs without it)."""
    sec = config.get("objective", None) if hasattr(config, "get") else None
    if sec is None:
        return {"name": "denoising"}
    return dict(sec.to_dict() if hasattr(sec, "to_dict") else sec)


def build(config, *, model, den, process, example_shape, num_classes) -> Objective:
    """The objective named by ``config.objective.name``; unknown names or fields are errors."""
    sec = section(config)
    name = sec.pop("name", "denoising")
    if name not in OBJECTIVES:
        raise ValueError(f"config.objective.name: unknown objective {name!r}; expected one of "
                         f"{sorted(OBJECTIVES)}")
    fn, defaults = OBJECTIVES[name]
    unknown = sorted(set(sec) - set(defaults))
    if unknown:
        known = ", ".join(sorted(defaults)) or "none"
        raise ValueError(f"config.objective: objective {name!r} has no field(s) "
                         f"{', '.join(unknown)}; its fields: {known}")
    if name not in CURRICULUM_OBJECTIVES and curriculum.enabled(config):
        raise ValueError(f"config.diffusion.curriculum.clusters > 0: the difficulty curriculum "
                         f"draws the noise levels of {sorted(CURRICULUM_OBJECTIVES)}, not of "
                         f"objective {name!r}; set clusters = 0")
    ctx = Context(config=config, model=model, den=den, process=process,
                  example_shape=tuple(example_shape), num_classes=int(num_classes),
                  fields={**defaults, **sec})
    return fn(ctx)


def trainable_mask(obj: Objective, params) -> Any:
    """The objective's bool mask over ``params`` (all True without one), checked for structure."""
    if obj.trainable is None:
        return jax.tree.map(lambda _: True, params)
    mask = obj.trainable(params)
    if jax.tree.structure(mask) != jax.tree.structure(params):
        raise ValueError("objective.trainable(params) must return a bool pytree with the params' "
                         "structure")
    return mask


# ---- the denoising objective (the default) --------------------------------------------------------
@register("denoising")
def denoising(ctx: Context) -> Objective:
    """Denoising score matching (core/losses.py make_loss; Ho et al. 2020, Karras et al. 2022):
    L = E_t w(t) || D_params(x0 + sigma eps, sigma, c) - x0 ||^2, with the weighting, noise-level
    sampler and label dropout of ``config.diffusion``. With ``config.diffusion.curriculum.clusters``
    > 0, t comes from the difficulty curriculum over that sampler's quantiles (curriculum.py); its
    state is ``extra``, paced by each step's loss."""
    d = ctx.config.diffusion
    if d.label_dropout > 0 and not ctx.num_classes:
        raise ValueError("config.diffusion.label_dropout > 0 needs a class-conditional model "
                         "(config.model.num_classes > 0)")
    kw = dict(weighting=d.weighting, min_snr_gamma=d.min_snr_gamma, sigma_data=d.sigma_data,
              label_dropout=d.label_dropout, null_label=ctx.num_classes if ctx.num_classes else None,
              p_mean=d.p_mean, p_std=d.p_std)
    cur = curriculum.settings(ctx.config)
    if not cur.clusters:
        loss_fn = losses.make_loss(ctx.den, ctx.process, t_sampler=d.t_sampler, **kw)
        return Objective(loss=lambda params, extra, batch, key: loss_fn(params, batch, key))
    curriculum.t_from_quantile(d.t_sampler, ctx.process, 0.5, p_mean=d.p_mean, p_std=d.p_std)

    def loss(params, extra, batch, key):
        draw = curriculum.sampler(extra, cur, d.t_sampler, ctx.process, p_mean=d.p_mean,
                                  p_std=d.p_std)
        value, aux = losses.make_loss(ctx.den, ctx.process, t_sampler=draw, **kw)(params, batch,
                                                                                  key)
        return value, {**aux, "metrics": {"curriculum_stage": extra["stage"] + 1}}

    def update_extra(extra, params, batch, key, metrics):
        return curriculum.update(extra, metrics["loss"], cur), {}

    return Objective(loss=loss, init_extra=lambda key, params: curriculum.init_state(),
                     update_extra=update_extra)


from diffjax.training import classifier_objective as _classifier_objective  # noqa: E402,F401
from diffjax.training import ppap_objective as _ppap_objective  # noqa: E402,F401
from diffjax.training import multiscale_objective as _multiscale  # noqa: E402,F401
from diffjax import distill as _distill  # noqa: E402,F401  (the distillation objectives)
from diffjax import discrete as _discrete  # noqa: E402,F401  (the 'radd' objective)
from diffjax import finetune as _finetune  # noqa: E402,F401  (few-shot fine-tuning objectives)
