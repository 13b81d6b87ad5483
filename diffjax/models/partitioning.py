"""Activation sharding constraints inside the models, by logical axis names.

The models stay mesh-agnostic: ``constrain(x, 'batch', None, 'tensor', None)`` is the identity
unless a mesh is set while tracing (the train step, the sampling program and the preflight trace
under ``training.sharding.tracing_mesh``). Under a mesh the logical names map onto its axes:

    'batch'   the data-parallel axes ('data', 'fsdp'): every device its own examples
    'tensor'  the model-parallel axis: attention heads and MLP hidden units (Megatron-style, with
              the column/row rules of training/sharding.py on the weights)
    None      not split (gathered)

A name whose axes do not divide that dimension (or are absent from the mesh) is dropped, so a
constraint never forces uneven shards. Used at the points where XLA's propagation otherwise picks a
costly layout: q/k/v and the attention output (heads), the MLP hidden layer, and the adaLN
modulation (B, n D), gathered along its features so that splitting it into n chunks needs no
all-to-all when its kernel is FSDP-sharded along n D.
"""
from __future__ import annotations

import math

import jax
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")
TENSOR_AXIS = "tensor"


def _mesh():
    m = jax.sharding.get_abstract_mesh()
    return None if m is None or m.empty else m


def spec(shape, names) -> P | None:
    """The PartitionSpec of ``names`` for an array of ``shape`` under the current mesh (None: no
    mesh is set)."""
    mesh = _mesh()
    if mesh is None:
        return None
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    out = []
    for dim, name in zip(shape, names):
        axes = (BATCH_AXES if name == "batch" else (TENSOR_AXIS,) if name == "tensor" else ())
        axes = tuple(a for a in axes if a in sizes)
        n = math.prod(sizes[a] for a in axes)
        out.append(None if not axes or n == 1 and name == "tensor" or dim % n else
                   (axes if len(axes) > 1 else axes[0]))
    return P(*out)


def constrain(x: jax.Array, *names) -> jax.Array:
    """``x`` constrained to the logical layout ``names`` (one per dimension; module doc)."""
    if len(names) != x.ndim:
        raise ValueError(f"constrain: {len(names)} axis names for an array of rank {x.ndim}")
    s = spec(x.shape, names)
    return x if s is None else jax.lax.with_sharding_constraint(x, s)


def gathered(kind: str | None = None):
    """A ``dot_general`` for ``nn.Dense(dot_general=...)`` that gathers the weight (rhs) over
    'fsdp' before the matmul when a mesh is set, keeping only its 'tensor' split: ``kind`` 'col'
    (output units over 'tensor'), 'row' (input units over 'tensor') or None (whole). This is FSDP
    in its plain form (ZeRO-3: all-gather the layer's weights, reduce-scatter their gradient);
    without it XLA may instead move the activations between batch- and feature-split layouts
    around an FSDP-sharded kernel (an all-to-all per layer) or replicate the computation."""
    names = {None: (None, None), "col": (None, "tensor"), "row": ("tensor", None)}[kind]

    def dot(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None, **kw):
        s = spec(rhs.shape, (None,) * (rhs.ndim - 2) + names) if rhs.ndim >= 2 else None
        if s is not None:
            rhs = jax.lax.with_sharding_constraint(rhs, s)
        return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                                   preferred_element_type=preferred_element_type, **kw)

    return dot


gathered_dot = gathered(None)


def lookup(embed, ids: jax.Array, dtype) -> jax.Array:
    """``embed(ids)`` for an ``nn.Embed`` with its table gathered first when a mesh is set (an
    FSDP-sharded table would otherwise come out feature-split and need an all-to-all)."""
    table = embed.embedding
    if _mesh() is not None:
        table = jax.lax.with_sharding_constraint(table, P())
    return jax.numpy.take(jax.numpy.asarray(table, dtype), ids, axis=0)
