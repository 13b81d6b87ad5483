"""The XLA:CPU forms of ``diffjax.kernels``' ops: same functions, faster on XLA:CPU (BENCHMARKS.md).

    conv        conv.py + winograd.py: Winograd F(2x2, 3x3) for 'same' 3x3 convs, per-tap kernel
                gradients for the others (custom VJP)
    group_norm  group_norm.py: per-channel then per-group sums, the backward written out (custom VJP)
    attention   attention.py: batch chunks whose logits stay in cache, FlashAttention-style backward

``diffjax.kernels`` picks these only when lowering for CPU (``lax.platform_dependent``); calling them
directly runs them on any backend (the tests do, against ``diffjax.kernels.reference``).
"""
from diffjax.kernels.cpu.attention import CHUNK_BYTES, CHUNK_BYTES_GRAD, attention
from diffjax.kernels.cpu.conv import conv, conv_kernel_grad
from diffjax.kernels.cpu.group_norm import group_norm

__all__ = ["CHUNK_BYTES", "CHUNK_BYTES_GRAD", "attention", "conv", "conv_kernel_grad", "group_norm"]
