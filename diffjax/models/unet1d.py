"""1-D U-Net / temporal backbone for sequences x (B, L, C) (the ADM U-Net with 1-D convolutions,
as used for time-series and trajectory diffusion, e.g. Janner et al. 2022 "Diffuser", Tashiro et al.
2021 "CSDI" for imputation with an observed mask).

Same equations as ``unet.UNet`` (the block code is rank-generic); this subclass only changes defaults:
an observed-mask input of ``mask_channels`` channels is concatenated to x before the first conv
(``apply(..., mask=m)``, m (B, L, mask_channels), zeros when omitted). Callers that also condition on
observed values can pack them into the mask channels (e.g. [m, m * x_obs], mask_channels = 1 + C).
L must be divisible by 2^(len(channel_mult) - 1); attention runs where the current length is in
``attn_resolutions``.
"""
from __future__ import annotations

from typing import Sequence

import jax

from diffjax.models.unet import UNet


class UNet1D(UNet):
    """Sequence U-Net: ``apply(v, x[B,L,C], noise_labels, labels=None, *, mask=None, train=False)``."""

    model_channels: int = 64
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = ()
    mask_channels: int = 1

    def _check_input(self, x: jax.Array):
        if x.ndim != 3:
            raise ValueError(f"UNet1D expects (B, L, C) sequences, got shape {x.shape}")
        super()._check_input(x)
