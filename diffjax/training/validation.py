"""Range checks for every numeric config value, as data: one rule per dotted key.

    check(config)    # ValueError naming the first key out of range, e.g.
                     # "config.checkpoint.keep must be >= 1 (the number of checkpoints kept), got 0"

A type check (the locked ConfigDict) catches ``--config.batch_size=many``; these rules catch values
of the right type that would break or silently spoil a run: ``checkpoint.keep=0`` deletes every
checkpoint, ``optim.lr=nan`` trains garbage, ``diffusion.label_dropout=1`` never sees a label.
Rules apply to keys that are present (data and model sections differ per source and family); a
tuple value is checked element by element. Non-finite floats are refused everywhere.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple


class Range(NamedTuple):
    """lo/hi bounds (None: unbounded); ``open_lo``/``open_hi`` exclude the bound; ``what`` is shown
    in the error; ``integer`` requires an int; ``optional`` allows None."""
    lo: float | None = None
    hi: float | None = None
    open_lo: bool = False
    open_hi: bool = False
    integer: bool = False
    what: str = ""
    optional: bool = False

    def ok(self, v) -> bool:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return False
        if self.integer and not (isinstance(v, int) or float(v).is_integer()):
            return False
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v < self.lo or (self.open_lo and v == self.lo)):
            return False
        if self.hi is not None and (v > self.hi or (self.open_hi and v == self.hi)):
            return False
        return True

    def describe(self) -> str:
        parts = []
        if self.lo is not None:
            parts.append(f"{'>' if self.open_lo else '>='} {self.lo:g}")
        if self.hi is not None:
            parts.append(f"{'<' if self.open_hi else '<='} {self.hi:g}")
        kind = "an integer" if self.integer else "a finite number"
        bounds = " and ".join(parts)
        text = f"{kind} {bounds}" if bounds else kind
        return f"{text} ({self.what})" if self.what else text


def count(lo=0, what=""):
    return Range(lo=lo, integer=True, what=what)


def positive(what=""):
    return Range(lo=0, open_lo=True, what=what)


def fraction(what="", open_hi=True):
    return Range(lo=0, hi=1, open_hi=open_hi, what=what)


RULES: dict[str, Range] = {
    "seed": count(0, "PRNG seed"),
    "total_steps": count(1, "optimizer steps"),
    "batch_size": count(1, "examples per optimizer step"),
    "log_every": count(0, "0 = only at the end"),
    # data
    "data.resolution": Range(lo=1, integer=True, optional=True, what="pixels per side"),
    "data.num_examples": count(1, "examples"),
    "data.channels": count(1, "image channels"),
    # model (keys shared by several families; a family's own errors catch the rest)
    "model.num_classes": count(0, "0 = unconditional"),
    "model.model_channels": count(1, "base width"),
    "model.num_res_blocks": count(1, "blocks per level"),
    "model.hidden_size": count(1, "width"),
    "model.depth": count(1, "blocks"),
    "model.num_heads": count(1, "attention heads"),
    "model.patch_size": count(1, "pixels per patch side"),
    "model.dropout": fraction("a probability"),
    # diffusion
    "diffusion.sigma_data": positive("data standard deviation"),
    "diffusion.p_std": positive("log-normal noise-level spread"),
    "diffusion.p_mean": Range(what="log-normal noise-level mean"),
    "diffusion.min_snr_gamma": positive("Min-SNR clamp"),
    "diffusion.label_dropout": fraction("probability of the null label; 1 would never see a label"),
    # optimizer
    "optim.lr": positive("learning rate"),
    "optim.warmup_steps": count(0, "optimizer steps"),
    "optim.end_lr_factor": fraction("final rate / peak rate", open_hi=False),
    "optim.b1": fraction("Adam first-moment decay"),
    "optim.b2": fraction("Adam second-moment decay"),
    "optim.eps": positive("Adam epsilon"),
    "optim.weight_decay": Range(lo=0, what="AdamW decay"),
    "optim.grad_clip": Range(lo=0, what="global-norm clip; 0 = none"),
    "optim.accum_steps": count(1, "micro-batches per optimizer step"),
    "optim.grad_slices": count(1, "slices of one micro-batch's gradient"),
    # EMA
    "ema.decays": fraction("EMA decay"),
    "ema.power_stds": Range(lo=0, hi=0.2887, open_lo=True, open_hi=True,
                            what="EDM2 power-EMA sigma_rel"),
    # checkpoints
    "checkpoint.every": count(0, "optimizer steps; 0 = only at the end"),
    "checkpoint.keep": count(1, "the number of checkpoints kept; 0 would delete every checkpoint"),
    # sampling and evaluation
    "sample.every": count(0, "optimizer steps; 0 = only at the end"),
    "sample.num": count(0, "samples in the grid; 0 = none"),
    "sample.batch_size": count(1, "examples per sampling call"),
    "sample.steps": count(1, "sampler steps"),
    "sample.guidance.scale": Range(lo=0, what="guidance scale; 1 = none"),
    "sample.max_batch": count(0, "rows per network call; 0 = whole batch"),
    "eval.every": count(0, "optimizer steps; 0 = only at the end"),
    "eval.num_samples": count(1, "generated samples"),
    "eval.steps": count(1, "sampler steps"),
    "eval.guidance.scale": Range(lo=0, what="guidance scale; 1 = none"),
    "eval.classifier_steps": count(1, "classifier training steps"),
    "eval.classifier_resolution": Range(lo=1, integer=True, optional=True,
                                        what="pixels per side; unset = the data's"),
}


def _lookup(config, dotted: str):
    node: Any = config
    for part in dotted.split("."):
        try:
            if part not in node:
                return False, None
            node = node[part]
        except TypeError:
            return False, None
    return True, node


def check(config, rules: dict[str, Range] = RULES) -> None:
    """Raise ValueError naming the first key whose value is out of its range (see module doc)."""
    for key, rule in rules.items():
        present, value = _lookup(config, key)
        if not present or (value is None and rule.optional):
            continue
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        for v in values:
            if not rule.ok(v):
                got = repr(value) if len(values) > 1 else repr(v)
                each = "each entry " if len(values) > 1 else ""
                raise ValueError(f"config.{key}: {each}must be {rule.describe()}, got {got}")
    for key in SECTIONS:
        present, value = _lookup(config, key)
        if present:
            SECTIONS[key](value, where=f"config.{key}")


def _guidance(value, where):
    from diffjax import guidance
    guidance.resolve(value, where=where)   # a known method with known, typed fields


# Sections checked by their registry: key -> check(value, where=...) raising ValueError.
SECTIONS = {"sample.guidance": _guidance, "eval.guidance": _guidance}
