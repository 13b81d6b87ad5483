"""diffjax.models: pure-functional Flax linen denoisers and classifiers, reachable by name.

Every denoiser is called as
    module.apply(variables, x, noise_labels, labels=None, context=None, *, train=False,
                 return_intermediates=False, rngs={'dropout': k1, 'cep': k2})
and returns float32 of x's shape (2x channels with learn_sigma). The model zoo (papers, presets,
conditioning) is described in docs/ARCHITECTURE.md; the ops the layers call (conv, group_norm,
attention) and their XLA:CPU forms are in ``diffjax.kernels``.
"""
from diffjax.models.registry import (MODELS, build_model, count_params, get_preset, list_models,
                                     list_presets, model_fields)

__all__ = ["MODELS", "build_model", "count_params", "get_preset", "list_models", "list_presets",
           "model_fields"]
