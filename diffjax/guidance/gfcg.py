"""GFCG, gradient-free classifier guidance (Shenoy, Pan, Balakrishnan, Cheng, Jeon, Yang & Kim,
WACV 2026, arXiv:2411.15393) - EXPERIMENTAL: a reconstruction from the abstract, the paper's text
and code were not available (../shared/research/algorithms-verified.md section 1).

A classifier trained on clean data, used in inference mode only (no gradient: it is called under
``stop_gradient``), reads the denoised estimate x0 = D(x, sigma, y) at each step and picks a
time-adaptive *reference class*, the class the sample is most confused with; the conditional
prediction for that class is the negative of a CFG-style contrast, with a scale that grows with
the confusion:

    p     = softmax(f(x0)),     c_ref = argmax_{k != y} p_k
    s_t   = s p_ref / (p_y + p_ref)                 (0 when sure of y, -> s when c_ref wins)
    D'    = B(x, sigma, y) + s_t (G(x, sigma, y) - G(x, sigma, c_ref))

B is the base guidance (``base``): 'none' (B = D), 'cfg' (B = classifier-free guidance with
``base_scale``) or 'auto' (B = autoguidance with the weak run ``weak_workdir`` and ``base_scale``).
G is the model itself (``contrast='main'``, the default) or, with base 'auto', the weak model D0
(``contrast='guide'``: the guiding network evaluated at c_ref, one reading of the abstract's "no
additional overhead"; measured on the digits, the weak model's class contrast is too small to
move the samples). What is reconstructed, not read: the c_ref rule (here argmax over k != y of
the classifier on x0), the scale rule s_t (here the confusion ratio above) and G. Network calls
per evaluation: 2 for 'none', 3 for 'cfg' and 'auto' (the classifier is extra). Registered as
``gfcg``:

    diffjax sample --workdir RUN --guidance gfcg --guidance.classifier_workdir CLEAN \\
        --guidance.scale 2 [--guidance.base cfg --guidance.base_scale 2]
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core import denoisers
from diffjax.guidance import autoguidance, elucd
from diffjax.guidance.classifier_free import _both
from diffjax.guidance.registry import Method, register

BASES = ("none", "cfg", "auto")
CONTRASTS = ("main", "guide")


def reference(logits, y):
    """(c_ref, s_t / s) from classifier logits (B, C) and labels (B,): the most probable class other
    than y and the confusion p_ref / (p_y + p_ref)."""
    logits = jax.lax.stop_gradient(logits.astype(jnp.float32))
    p = jax.nn.softmax(logits, axis=-1)
    others = jnp.where(jax.nn.one_hot(y, p.shape[-1], dtype=bool), -jnp.inf, logits)
    c_ref = jnp.argmax(others, axis=-1)
    p_y = jnp.take_along_axis(p, y[:, None], 1)[:, 0]
    p_ref = jnp.take_along_axis(p, c_ref[:, None], 1)[:, 0]
    return c_ref.astype(y.dtype), p_ref / jnp.maximum(p_y + p_ref, 1e-30)


def gfcg(D, logits, clf_params, *, scale, base, base_scale, null_label, D0=None,
         contrast="main", label_key="label", rule=None):
    """The GFCG-guided denoiser of the module docstring (``logits(params, x, beta) -> (B, C)``).
    ``rule(logits, y) -> (c_ref, s_t / s)`` replaces the reconstructed reference rule
    (``reference``): the paper's rule is not known, so it is an argument."""
    rule = reference if rule is None else rule
    if base not in BASES:
        raise ValueError(f"guidance gfcg: base must be one of {', '.join(BASES)}, got {base!r}")
    if base == "auto" and D0 is None:
        raise ValueError("guidance gfcg: base 'auto' needs the weak run (--guidance.weak_workdir)")
    if contrast not in CONTRASTS or (contrast == "guide" and base != "auto"):
        raise ValueError(f"guidance gfcg: contrast must be 'main', or 'guide' with base 'auto'; "
                         f"got contrast {contrast!r} with base {base!r}")

    def guided(x, sigma, cond):
        y = cond[label_key]
        if base == "cfg":
            c, u = _both(D, x, sigma, cond, null_label, label_key)
            b = u + jnp.asarray(base_scale, c.dtype) * (c - u)
        else:
            c = D(x, sigma, cond)
            b = c
        x0 = jnp.clip(jax.lax.stop_gradient(c), -1.0, 1.0)
        c_ref, confusion = rule(jax.lax.stop_gradient(logits(clf_params, x0, 0.0)), y)
        ref_cond = {**cond, label_key: c_ref}
        if contrast == "guide":
            d0, d0_ref = jnp.split(D0(jnp.concatenate([x, x]), _twice(sigma, x),
                                      {k: _cat(v, ref_cond[k], x) for k, v in cond.items()}), 2)
            b = d0 + jnp.asarray(base_scale, c.dtype) * (c - d0)
            g, g_ref = d0, d0_ref
        else:
            if base == "auto":
                d0 = D0(x, sigma, cond)
                b = d0 + jnp.asarray(base_scale, c.dtype) * (c - d0)
            g, g_ref = c, D(x, sigma, ref_cond)
        s_t = (scale * confusion).astype(c.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
        return b + s_t * (g - g_ref)

    return guided


def _twice(sigma, x):
    s = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))
    return jnp.concatenate([s, s])


def _cat(a, b, x):
    return jnp.concatenate([a, b]) if getattr(a, "shape", ())[:1] == (x.shape[0],) else a


def prepare(section, run):
    logits, clf_params = elucd.load_clean_classifier("gfcg", section, run)
    if section["base"] != "auto":
        return (logits, None), {"classifier": clf_params}
    weak_den, weak_params = autoguidance.prepare(section, run, "gfcg")
    return (logits, weak_den), {"classifier": clf_params, "weak": weak_params}


def make(D, ctx, prepared, state, *, scale, base, base_scale, contrast, **_):
    logits, weak_den = prepared
    D0 = None if weak_den is None else denoisers.bind(weak_den, state["weak"])
    return gfcg(D, logits, state["classifier"], scale=scale, base=base, base_scale=base_scale,
                null_label=ctx.null_label, D0=D0, contrast=contrast, label_key=ctx.label_key)


def check(f, sigmas):
    if f["base"] not in BASES:
        raise ValueError(f"guidance gfcg: base must be one of {', '.join(BASES)}, got "
                         f"{f['base']!r}")
    if f["contrast"] not in CONTRASTS or (f["contrast"] == "guide" and f["base"] != "auto"):
        raise ValueError(f"guidance gfcg: contrast must be 'main', or 'guide' with base 'auto'; "
                         f"got contrast {f['contrast']!r} with base {f['base']!r}")
    if f["base"] == "auto" and not f["weak_workdir"]:
        raise ValueError("guidance gfcg: base 'auto' guides with a weak run too: "
                         "--guidance.weak_workdir DIR (e.g. one trained with configs/digits_weak.py)")


register(Method(
    name="gfcg", needs_classes=True, prepare=prepare, make=make, check=check,
    identity=lambda f: f["scale"] == 0.0 and f["base"] == "none",
    fields=(("scale", 0.0), ("base", "none"), ("base_scale", 1.0), ("contrast", "main"))
    + elucd.CLASSIFIER_FIELDS
    + (("weak_workdir", ""), ("weak_params", ""), ("weak_step", -1)),
    help="EXPERIMENTAL gradient-free classifier guidance (Shenoy et al. 2024, reconstructed from "
         "the abstract): a clean classifier on x0 picks the confused class c_ref; D' = base + "
         "s conf (D(y) - D(c_ref)); --guidance.classifier_workdir DIR, base none|cfg|auto "
         "(--guidance.base_scale, --guidance.weak_workdir)"))
