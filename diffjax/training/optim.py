"""The optimizer: optax chain of global-norm clipping and AdamW on a warmup + cosine/constant schedule.

    lr(k) = lr * k / warmup                                         k < warmup  (linear warmup)
    cosine:   lr(k) = lr * (f + (1 - f) (1 + cos(pi u)) / 2),  u = (k - warmup) / (total - warmup)
    constant: lr(k) = lr
with f = config.optim.end_lr_factor, and k the optimizer step. AdamW (Loshchilov & Hutter 2019)
decays only arrays with ndim >= 2 (kernels, embedding tables), not biases or norm scales.
Gradient accumulation over config.optim.accum_steps micro-batches uses ``optax.MultiSteps``: the
inner chain (and the schedule) advance once per accumulated step, on the mean of the micro-batch
gradients, and ``has_updated`` says when that happened (EMA updates follow it, not micro-steps).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("cosine", "constant")


def make_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Learning rate as a function of the optimizer step (see module docstring)."""
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"config.optim.schedule: unknown schedule {cfg.schedule!r}; expected one "
                         f"of {SCHEDULES}")
    warmup = int(cfg.warmup_steps)
    if warmup < 0:
        raise ValueError(f"config.optim.warmup_steps must be >= 0, got {warmup}")
    if cfg.schedule == "constant":
        after = optax.constant_schedule(cfg.lr)
    else:
        after = optax.cosine_decay_schedule(cfg.lr, max(total_steps - warmup, 1),
                                            alpha=cfg.end_lr_factor)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), after], [warmup])


def _decay_mask(params):
    return jax.tree.map(lambda p: jnp.ndim(p) >= 2, params)


def make_optimizer(cfg, total_steps: int, trainable=None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """``(tx, schedule)`` from config.optim; ``tx`` is wrapped in MultiSteps if accum_steps > 1.

    ``trainable(params) -> bool pytree`` (a training objective's mask): False leaves get
    ``optax.set_to_zero`` (no update, no optimizer state), the rest the chain above."""
    schedule = make_schedule(cfg, total_steps)
    parts = []
    if cfg.grad_clip and cfg.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip))
    parts.append(optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                             weight_decay=cfg.weight_decay, mask=_decay_mask))
    tx = optax.chain(*parts)
    if trainable is not None:
        labels = lambda params: jax.tree.map(lambda m: "train" if m else "frozen", trainable(params))
        tx = optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    k = int(cfg.accum_steps)
    if k < 1:
        raise ValueError(f"config.optim.accum_steps must be >= 1, got {k}")
    if k > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=k).gradient_transformation()
    return tx, schedule


def is_multisteps(opt_state) -> bool:
    return isinstance(opt_state, optax.MultiStepsState)


def optimizer_step(opt_state, micro_step, accum_steps: int):
    """Number of optimizer (accumulated) steps taken, given the micro-step count after the update."""
    if is_multisteps(opt_state):
        return opt_state.gradient_step
    return micro_step // accum_steps


def has_updated(opt_state):
    """True if the last ``tx.update`` applied an update (always, without accumulation)."""
    if is_multisteps(opt_state):
        return optax.MultiSteps.has_updated(None, opt_state)
    return jnp.bool_(True)
