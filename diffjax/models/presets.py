"""Named model configurations (published sizes and tiny CPU-trainable ones).

``registry.get_preset(name)`` turns a preset into a locked ``ml_collections.ConfigDict``: ``name``
picks the model class in the registry, ``input_shape`` (H, W, C) or (L, C) records the input it was
published for (used only for parameter counting), and every other key is a field of that model.
Published-size presets use ``learn_sigma=False`` so their output matches x (what the core denoiser
expects); set it to True for the papers' exact parameter counts (the difference is one output layer).
"""
from __future__ import annotations

from typing import Callable, Dict

_PRESETS: Dict[str, Callable[[], dict]] = {}


def _register(preset: str, **fields):
    _PRESETS[preset] = lambda: dict(fields)


# ---- U-Nets (Ho et al. 2020; Dhariwal & Nichol 2021) --------------------------------------------
_register("unet_tiny16", name="unet", input_shape=(16, 16, 3), model_channels=32, channel_mult=(1, 2),
          num_res_blocks=1, attn_resolutions=(8,), num_head_channels=32, dropout=0.0)
_register("unet_small32", name="unet", input_shape=(32, 32, 3), model_channels=64,
          channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16,), num_head_channels=32,
          dropout=0.1)
# DDPM CIFAR-10 (Ho et al. 2020, App. B): 35.7M params.
_register("ddpm_cifar10", name="unet", input_shape=(32, 32, 3), model_channels=128,
          channel_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), num_heads=1,
          dropout=0.1, use_scale_shift_norm=False, resblock_updown=False)
# ADM ImageNet-64 class-conditional (Dhariwal & Nichol 2021, Table 14 / released flags): ~296M.
_register("adm_imagenet64", name="unet", input_shape=(64, 64, 3), model_channels=192,
          channel_mult=(1, 2, 3, 4), num_res_blocks=3, attn_resolutions=(32, 16, 8),
          num_head_channels=64, dropout=0.1, use_scale_shift_norm=True, resblock_updown=True,
          num_classes=1000)

# ---- 1-D U-Net ----------------------------------------------------------------------------------
_register("unet1d_tiny", name="unet1d", input_shape=(32, 2), model_channels=32, channel_mult=(1, 2),
          num_res_blocks=1, attn_resolutions=(), mask_channels=1)
_register("unet1d_small", name="unet1d", input_shape=(128, 1), model_channels=64,
          channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(32,), num_head_channels=32,
          mask_channels=1)

# ---- DiT (Peebles & Xie 2023, Table 1): S 33M, B 130M, L 458M, XL 675M at patch 2 ---------------
_DIT_SIZES = {"s": (384, 12, 6), "b": (768, 12, 12), "l": (1024, 24, 16), "xl": (1152, 28, 16)}
for _size, (_d, _depth, _heads) in _DIT_SIZES.items():
    for _p in (2, 4, 8):
        _register(f"dit_{_size}_{_p}", name="dit", input_shape=(32, 32, 4), patch_size=_p,
                  hidden_size=_d, depth=_depth, num_heads=_heads, num_classes=1000)
_register("dit_tiny", name="dit", input_shape=(16, 16, 3), patch_size=2, hidden_size=64, depth=2,
          num_heads=4)
_register("dit_tiny_tdln", name="dit", input_shape=(16, 16, 3), patch_size=2, hidden_size=64,
          depth=2, num_heads=4, norm="tdln")

# ---- PixArt-alpha (Chen et al. 2024): XL/2 with T5-XXL tokens (120 x 4096), ~611M ----------------
_register("pixart_xl_2", name="pixart", input_shape=(32, 32, 4), patch_size=2, hidden_size=1152,
          depth=28, num_heads=16, context_dim=4096, context_len=120)
_register("pixart_tiny", name="pixart", input_shape=(16, 16, 3), patch_size=2, hidden_size=64,
          depth=2, num_heads=4, context_dim=32, context_len=8)

# ---- DiCo (Ai et al. 2025): S 33.1M, B 130.0M, L 463.9M, XL 701.2M, H ~1.04B -------------------
_DICO_SIZES = {"s": (128, (5, 4, 4, 4, 4), 2.0), "b": (256, (5, 4, 4, 4, 4), 2.0),
               "l": (352, (9, 8, 9, 8, 9), 2.0), "xl": (416, (9, 9, 10, 9, 9), 2.0),
               "h": (416, (14, 12, 10, 12, 14), 4.0)}
for _size, (_c, _depths, _m) in _DICO_SIZES.items():
    _register(f"dico_{_size}", name="dico", input_shape=(32, 32, 4), hidden_size=_c, depths=_depths,
              mlp_ratio=_m, num_classes=1000)
_register("dico_tiny", name="dico", input_shape=(16, 16, 3), hidden_size=16, depths=(1, 1, 1, 1, 2),
          mlp_ratio=2.0)

# ---- DiMR (Liu et al. 2024): XL/2R 505M, G/2R 1.06B ---------------------------------------------
_register("dimr_xl_2r", name="dimr", input_shape=(32, 32, 4), dims=(960, 480), mlp_dims=(1920, 960),
          num_blocks=(39, 20), num_heads=16, kernel_size=7, max_size=32, num_classes=1000)
_register("dimr_g_2r", name="dimr", input_shape=(32, 32, 4), dims=(1152, 576),
          mlp_dims=(2304, 1152), num_blocks=(57, 29), num_heads=16, kernel_size=7, max_size=32,
          num_classes=1000)
_register("dimr_tiny", name="dimr", input_shape=(16, 16, 3), dims=(32, 16), mlp_dims=(64, 32),
          num_blocks=(1, 2), num_heads=4, kernel_size=3, max_size=16)

# ---- Classifiers --------------------------------------------------------------------------------
_register("noisy_classifier_tiny", name="noisy_classifier", input_shape=(16, 16, 3), num_classes=10,
          model_channels=32, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
          num_head_channels=32, pool="attention")
_register("noisy_classifier32", name="noisy_classifier", input_shape=(32, 32, 3), num_classes=10,
          model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(16, 8),
          num_head_channels=32, pool="attention")
_register("classifier_tiny", name="classifier", input_shape=(8, 8, 1), num_classes=10,
          channels=(16, 32), num_res_blocks=1)
_register("classifier_relu16", name="classifier", input_shape=(16, 16, 1), num_classes=10,
          channels=(32, 64), num_res_blocks=1, activation="relu")
_register("classifier_small", name="classifier", input_shape=(32, 32, 3), num_classes=10,
          channels=(32, 64, 128), num_res_blocks=2)


# ---- Time-free token transformer (RADD, Ou et al. 2025): character-level text ---------------
_register("token_transformer_mini", name="token_transformer", input_shape=(64,), vocab_size=29,
          seq_len=64, hidden_size=128, depth=4, num_heads=4, mlp_ratio=4.0)


def list_presets():
    return sorted(_PRESETS)


def raw_preset(name: str) -> dict:
    """The preset's own keys (use ``registry.get_preset`` for the full, locked ConfigDict)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known: {', '.join(list_presets())}")
    return _PRESETS[name]()
