"""Parameter trees (every path, shape and dtype) of each model family are pinned: checkpoints are
restored by path, so a renamed or re-nested parameter must fail here, not at a user's restore.

The digests were taken from the code before the condition embedding was shared
(``embeddings.condition_embedding``) and the ops moved to ``diffjax.kernels``; published counts are
pinned in test_param_counts.py. To re-pin after a deliberate change, print ``_digest(preset)``.
"""
import hashlib

import jax
import pytest

from diffjax.models import build_model, get_preset
from diffjax.models.registry import param_shapes

COND = dict(num_classes=10, cep_gamma=1.0)
# preset (+ conditioning overrides) -> (sha256 prefix of the sorted "path shape dtype" lines, leaves)
PINNED = {
    ("unet_tiny16", False): ("4977d5e6766f42d0", 128),
    ("unet_tiny16", True): ("d6d3eebf099a9bd0", 129),
    ("unet1d_tiny", False): ("1f511d4fb559c132", 110),
    ("unet1d_tiny", True): ("9ef2bd9707a6a389", 111),
    ("dit_tiny", False): ("9f5d699b635f29ab", 30),
    ("dit_tiny", True): ("29bd147aa5bd524d", 31),
    ("dit_tiny_tdln", False): ("db8d8eb5931df79a", 76),
    ("dit_tiny_tdln", True): ("c7a406a537b49dd4", 77),
    ("pixart_tiny", False): ("c327f06ea161e9e4", 46),
    ("pixart_tiny", True): ("004885f99cf1ebbd", 47),
    ("dico_tiny", False): ("d2904c908f8d7a83", 110),
    ("dico_tiny", True): ("54dd9166ec64b224", 113),
    ("dimr_tiny", False): ("cff6c91be0d17362", 99),
    ("dimr_tiny", True): ("2508da87ed3dd701", 100),
    ("noisy_classifier_tiny", False): ("ecca1eaeaa808d24", 77),
    ("classifier_tiny", False): ("5f5109c51729d281", 24),
    ("unet_small32", False): ("04d343b380d772ba", 244),
}


def _lines(preset: str, cond: bool):
    cfg = get_preset(preset)
    for k, v in (COND if cond else {}).items():
        cfg[k] = v
    flat = jax.tree_util.tree_flatten_with_path(param_shapes(build_model(cfg), cfg.input_shape))[0]
    return sorted("/".join(p.key for p in path) + f" {tuple(s.shape)} {s.dtype}" for path, s in flat)


def _digest(preset: str, cond: bool):
    lines = _lines(preset, cond)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16], len(lines)


@pytest.mark.parametrize("preset, cond", sorted(PINNED))
def test_parameter_tree_is_pinned(preset, cond):
    assert _digest(preset, cond) == PINNED[(preset, cond)]


@pytest.mark.parametrize("preset, names", [
    ("unet_tiny16", {"time_embed/fc1/kernel", "time_embed/fc2/bias", "label_embed/table/embedding"}),
    ("dit_tiny", {"t_embedder/fc1/kernel", "t_embedder/fc2/bias", "y_embedder/table/embedding"}),
    ("dit_tiny_tdln", {"y_embedder/table/embedding"}),
    ("pixart_tiny", {"t_embedder/fc1/kernel", "y_embedder/table/embedding", "t_block/kernel"}),
    ("dico_tiny", {f"{e}_{k}/{p}" for k in (1, 2, 3) for e, p in
                   [("t_embedder", "fc1/kernel"), ("y_embedder", "table/embedding")]}),
    ("dimr_tiny", {"branch_0/class_embed/embedding", "branch_1/input/kernel"})])
def test_condition_embedders_keep_their_names(preset, names):
    """The shared condition embedding adds no scope: its embedders stay the model's children."""
    paths = {line.split(" ")[0] for line in _lines(preset, True)}
    assert names <= paths, sorted(names - paths)
