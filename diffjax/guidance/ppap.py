"""PPAP (Go et al., CVPR 2023, "Towards practical plug-and-play diffusion models"): guidance from
several experts, each responsible for a range of noise levels, made from ONE off-the-shelf classifier
(trained on clean data only, ``configs/digits_clean_classifier.py``) by parameter-efficient
fine-tuning (LoRA, models/lora.py) with data-free knowledge transfer (the ``ppap`` objective,
training/ppap_objective.py; ``configs/digits_ppap.py``).

Experts. The noise range [sigma_min, sigma_max] is split into n ranges evenly in log sigma (their
code splits the DDPM timesteps evenly; log sigma is the EDM frame's analogue), bounds b_0 < ... <
b_n; the expert of sigma is the first i with b_i <= sigma <= b_{i+1} (inclusive bounds, as theirs).
Expert i's parameters are the frozen classifier's, with
    every conv kernel W -> W + (alpha / r) A_i B_i    (LoRA, B_i = 0 at the start)
    every norm scale / bias and conv bias              its own copy (their BatchNorm and non-fc
                                                        biases); the head stays frozen
stored stacked over the experts: params = {'base': classifier params, 'experts': {'lora': {path:
{'a': (n, in, r), 'b': (n, r, out)}}, 'free': {path: (n, ...)}}}.

Guidance. Standard classifier guidance with the expert of the current noise level, on the noisy x
(their cond_fn on x_t), the expert reading the VP-scaled input c_in x = x / sqrt(sigma^2 + 0.25):
    D' = D + s sigma^2 grad_x log softmax(f_{i(sigma)}(c_in x))_y
Registered as ``ppap``:

    diffjax sample --workdir RUN --guidance ppap --guidance.experts_workdir PPAP --guidance.scale 2
"""
from __future__ import annotations

import functools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.guidance import other_runs
from diffjax.guidance.classifier import classifier_guidance, classifier_inputs
from diffjax.guidance.registry import Method, register
from diffjax.models import lora

LORA_TARGETS = r".*conv.*/kernel"
FREE = r".*norm.*/(scale|bias)|.*conv.*/bias"


def bounds(n: int, sigma_min: float, sigma_max: float) -> np.ndarray:
    """The n + 1 expert boundaries, evenly spaced in log sigma."""
    if n < 1 or not 0 < sigma_min < sigma_max:
        raise ValueError(f"ppap: need experts >= 1 and 0 < sigma_min < sigma_max, got {n}, "
                         f"{sigma_min:g}, {sigma_max:g}")
    return np.exp(np.linspace(math.log(sigma_min), math.log(sigma_max), n + 1))


def route(sigma, edges) -> jax.Array:
    """Expert index of each sigma: the first i with b_i <= sigma <= b_{i+1}, clipped to 0..n-1."""
    edges = jnp.asarray(edges, jnp.float32)
    i = jnp.searchsorted(edges, jnp.asarray(sigma, jnp.float32), side="left") - 1
    return jnp.clip(i, 0, edges.shape[0] - 2)


def _select(params, pattern: str) -> dict:
    pat = re.compile(pattern)
    return {lora.path_name(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if pat.fullmatch(lora.path_name(p))}


def init_experts(key, base, n: int, rank: int) -> dict:
    """{'base': base, 'experts': stacked adapters and free copies} (module docstring); each expert
    starts as the base classifier exactly (B = 0, free copies = the base's values)."""
    ads = [lora.init(jax.random.fold_in(key, i), base, rank, LORA_TARGETS) for i in range(n)]
    stacked = jax.tree.map(lambda *a: jnp.stack(a), *ads)
    free = {k: jnp.broadcast_to(v, (n,) + v.shape) for k, v in _select(base, FREE).items()}
    return {"base": base, "experts": {"lora": stacked, "free": free}}


def trainable(params) -> dict:
    """The objective's mask: the experts train, the base classifier is frozen."""
    return {"base": jax.tree.map(lambda _: False, params["base"]),
            "experts": jax.tree.map(lambda _: True, params["experts"])}


def expert(params, i, alpha: float):
    """Full classifier params of expert ``i`` (may be traced): base + its free copies + its LoRA."""
    ex = jax.tree.map(lambda a: a[i], params["experts"])
    free = ex["free"]
    base = jax.tree_util.tree_map_with_path(
        lambda p, w: free.get(lora.path_name(p), w), params["base"])
    return lora.merge(base, ex["lora"], alpha=alpha)


def num_experts(params) -> int:
    return int(jax.tree.leaves(params["experts"])[0].shape[0])


def expert_logits(apply_fn, params, x_in, sigma, edges, alpha: float):
    """Logits (B, C) of the expert of each example's sigma (``apply_fn(params, x) -> logits``).
    One forward when sigma is one number (the samplers' case), else every expert's, selected."""
    if jnp.ndim(sigma) == 0:
        return apply_fn(expert(params, route(sigma, edges), alpha), x_in)
    idx = route(jnp.broadcast_to(sigma, (x_in.shape[0],)), edges)
    every = jnp.stack([apply_fn(expert(params, i, alpha), x_in)
                       for i in range(num_experts(params))])
    return jnp.take_along_axis(every, idx[None, :, None], axis=0)[0]


def ppap_guidance(D, apply_fn, params, edges, alpha, num_classes, scale, sigma_data=0.5,
                  label_key="label"):
    """D' of the module docstring: classifier guidance (guidance/classifier.py) whose
    log-likelihood is the expert of the noise level, on the classifier's preconditioned input."""

    def logp(experts, z, sigma, cond):
        x_in, _ = classifier_inputs(z, sigma, sigma_data)
        logits = expert_logits(apply_fn, experts, x_in, sigma, edges, alpha)
        if logits.shape != (z.shape[0], num_classes):
            raise ValueError(f"guidance ppap: the experts returned logits of shape {logits.shape} "
                             f"for a batch of {z.shape[0]}; expected ({z.shape[0]}, "
                             f"{num_classes})")
        lp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return jnp.take_along_axis(lp, cond[label_key][:, None], axis=1)[:, 0]

    return classifier_guidance(D, logp, params, scale)


def prepare(section, run):
    ex, name = other_runs.load("ppap", "experts_workdir", section["experts_workdir"],
                               section["experts_params"], section["experts_step"], run,
                               what="the PPAP experts' run", config_file="configs/digits_ppap.py")
    workdir = section["experts_workdir"]
    obj = ex.config.get("objective", {})
    if obj.get("name") != "ppap":
        raise ValueError(f"guidance ppap: the run in {workdir!r} was not trained with objective "
                         f"'ppap' (config.objective.name); train the experts with "
                         f"configs/digits_ppap.py")
    other_runs.check_compatible("ppap", workdir, ex, run, "the experts' run")
    edges = tuple(float(b) for b in bounds(int(obj["experts"]), float(obj["sigma_min"]),
                                           float(obj["sigma_max"])))
    static = _static(ex.model, edges, float(obj["alpha"]), int(ex.config.model.num_classes),
                     float(ex.config.diffusion.sigma_data))   # as the experts were trained
    return static, ex.params[name]


@functools.lru_cache(maxsize=8)
def _static(model, edges, alpha, num_classes, sigma_data):
    return (lambda p, x: model.apply({"params": p}, x)), edges, alpha, num_classes, sigma_data


def make(D, ctx, prepared, params, *, scale, **_):
    apply_fn, edges, alpha, num_classes, sigma_data = prepared
    return ppap_guidance(D, apply_fn, params, np.asarray(edges), alpha, num_classes, scale,
                         sigma_data, ctx.label_key)


register(Method(
    name="ppap", needs_classes=True, prepare=prepare, make=make,
    identity=lambda f: f["scale"] == 0.0,
    fields=(("scale", 0.0), ("experts_workdir", ""), ("experts_params", ""),
            ("experts_step", -1)),
    help="PPAP (Go et al. 2023): classifier guidance by noise-range experts LoRA-tuned from one "
         "off-the-shelf classifier with data-free distillation (--guidance.experts_workdir DIR, "
         "trained with configs/digits_ppap.py); scale s: 0 = none"))
