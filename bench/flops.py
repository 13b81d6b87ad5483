"""Model FLOPs counted from the jaxpr: 2 x multiply-adds of every dot_general and convolution.

    flops = sum over dot_general   2 * |out| * prod(contracting dims)
          + sum over convolutions  2 * |out| * C_in_per_group * prod(kernel spatial dims)
Loops count their body ``length`` times (scan); conditionals count their most expensive branch.
Element-wise work (normalization, activations, softmax) is not counted: this is the convention of
MFU ("model FLOPs utilization", Chowdhery et al. 2022, App. B) and matches what a matmul peak measures.
"""
from __future__ import annotations

import math

import jax
from jax.extend import core as jcore


def _sub_jaxprs(value):
    if isinstance(value, jcore.ClosedJaxpr):
        yield value.jaxpr
    elif isinstance(value, jcore.Jaxpr):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _sub_jaxprs(v)


def _eqn_flops(eqn) -> int:
    name = eqn.primitive.name
    if name == "dot_general":
        (lc, _), _ = eqn.params["dimension_numbers"]
        lhs = eqn.invars[0].aval.shape
        return 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs[d] for d in lc)
    if name == "conv_general_dilated":
        rhs = eqn.invars[1].aval.shape
        spec = eqn.params["dimension_numbers"].rhs_spec   # (out feature, in feature, *spatial)
        per_out = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
        return 2 * math.prod(eqn.outvars[0].aval.shape) * per_out
    return 0


def jaxpr_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        total += _eqn_flops(eqn)
        if eqn.primitive.name == "cond":
            total += max(jaxpr_flops(b.jaxpr) for b in eqn.params["branches"])
            continue
        mult = eqn.params.get("length", 1) if eqn.primitive.name == "scan" else 1
        for value in eqn.params.values():
            for sub in _sub_jaxprs(value):
                total += mult * jaxpr_flops(sub)
    return total


def count(fn, *args, **kwargs) -> int:
    """Matmul + convolution FLOPs of one call ``fn(*args, **kwargs)`` (traced, never run)."""
    return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs).jaxpr)


def xla_flops(compiled) -> float:
    """XLA's own estimate from a compiled executable's cost analysis (all ops, not just matmuls)."""
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))
