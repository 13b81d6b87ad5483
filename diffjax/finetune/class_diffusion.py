"""The ``class_diffusion`` objective: semantic preservation (ClassDiffusion, Huang et al., ICLR 2025).

Fine-tuning a new concept "[V] class" drifts its condition embedding away from the class's, and the
model loses the class's semantics (it can no longer compose it). ClassDiffusion adds the semantic
preservation loss (SPL) on the condition embeddings:

    L = L_DM + lambda_SPL (1 - cos(E(c_new), E(c_class)))

with the gradient of the SPL reaching only the new concept's embedding (the paper's frozen text
encoder; the class's embedding is held fixed). For a class-conditional model here E is the row of
the class-embedding table (the one leaf ``.../table/embedding`` of shape (classes [+ null], d)), so
c_new = ``new_label`` (an id the pretrained model never saw) and c_class = ``class_label``. L_DM
is the denoising objective's loss on the instance images (``config.data``, labelled new_label).
Default lambda_SPL = 1 (the official train_class_diffusion.py's ``spl_weight``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.training.objectives import Context, Objective, denoising, register


def embedding_table_path(params, num_classes: int) -> tuple:
    """The key path of the model's class-embedding table (one leaf ending in table/embedding)."""
    from diffjax.models.lora import path_name

    hits = [p for p, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
            if path_name(p).endswith("table/embedding") and leaf.ndim == 2
            and leaf.shape[0] in (num_classes, num_classes + 1)]
    if len(hits) != 1:
        raise ValueError(f"objective 'class_diffusion' needs one class-embedding table "
                         f"(.../table/embedding, {num_classes} [+ 1] rows) in the model's params; "
                         f"found {len(hits)}")
    return hits[0]


def _get(tree, path):
    for k in path:
        tree = tree[getattr(k, "key", k)]
    return tree


def spl(table, new_label: int, class_label: int):
    """1 - cos(table[new], stop_gradient(table[class])): in [0, 2], 0 for parallel rows."""
    a, b = table[new_label], jax.lax.stop_gradient(table[class_label])
    cos = jnp.dot(a, b) / (jnp.linalg.norm(a) * jnp.linalg.norm(b) + 1e-12)
    return 1.0 - cos


@register("class_diffusion", new_label=-1, class_label=-1, spl_weight=1.0)
def class_diffusion(ctx: Context) -> Objective:
    f = ctx.fields
    new, cls, lam = int(f["new_label"]), int(f["class_label"]), float(f["spl_weight"])
    if not ctx.num_classes:
        raise ValueError("objective 'class_diffusion' needs a class-conditional model")
    for name, v in (("new_label", new), ("class_label", cls)):
        if not 0 <= v < ctx.num_classes:
            raise ValueError(f"config.objective.{name} must be a class id in [0, "
                             f"{ctx.num_classes}), got {v}")
    if new == cls:
        raise ValueError("config.objective.new_label and class_label must differ")
    base = denoising(ctx).loss
    found = {}

    def loss(params, extra, batch, key):
        if "path" not in found:
            found["path"] = embedding_table_path(params, ctx.num_classes)
        l_dm, aux = base(params, None, batch, key)
        s = spl(_get(params, found["path"]), new, cls)
        return l_dm + lam * s, {**aux, "metrics": {"loss_dm": l_dm, "spl": s}}

    return Objective(loss=loss)
