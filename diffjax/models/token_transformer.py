"""A time-free bidirectional transformer over token sequences: RADD's network (Ou et al., ICLR
2025; their small model is SEDD's DDiT with the time conditioning removed).

    h_0 = E[x] + P                       x (B, L) token ids in 0..V, the id V is the mask
    h   = h + Attn(LN(h));  h = h + MLP(LN(h))      (pre-LN blocks, ``depth`` of them)
    out = log_softmax(W LN(h))           (B, L, V): log p_theta(y | x^UM) over the V real tokens

No time or noise level enters (``takes_noise_level = False``): the output is the clean-data
conditional, and the concrete score is a(t) times it (diffjax/discrete/absorbing.py). The output
has no column for the mask, so it is never predicted. Learned absolute positions (the paper's DDiT
uses rotary ones). Inputs may be float (the data layer's convention, token ids stored exactly) or
int, (B, L) or (B, L, 1); ``t`` and ``label`` are ignored (accepted so the zoo's generic helpers,
registry.example_inputs / count_params, can call every model alike).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models.layers import Mlp, SelfAttention, normal002, zeros

Dtype = Any


class TokenBlock(nn.Module):
    hidden_size: int
    num_heads: int
    mlp_ratio: float
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        ln = lambda name: nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)
        h = h + SelfAttention(self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
                              name="attn")(ln("norm1")(h))
        return h + Mlp(int(self.hidden_size * self.mlp_ratio), dtype=self.dtype,
                       param_dtype=self.param_dtype, name="mlp")(ln("norm2")(h))


class TokenTransformer(nn.Module):
    vocab_size: int = 29          # real tokens; the mask id is vocab_size
    seq_len: int = 64
    hidden_size: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    takes_noise_level = False     # time-free: step.example_inputs passes x only

    @nn.compact
    def __call__(self, x, t=None, label=None) -> jax.Array:
        del t, label
        x = jnp.asarray(x)
        if x.ndim == 3:
            x = x[..., 0]
        tokens = jnp.round(x).astype(jnp.int32) if jnp.issubdtype(x.dtype, jnp.floating) else x
        if tokens.shape[-1] > self.seq_len:
            raise ValueError(f"sequence of {tokens.shape[-1]} tokens; the model has seq_len "
                             f"{self.seq_len}")
        h = nn.Embed(self.vocab_size + 1, self.hidden_size, embedding_init=normal002,
                     param_dtype=self.param_dtype, name="embed")(tokens).astype(self.dtype)
        pos = self.param("pos_embed", normal002, (self.seq_len, self.hidden_size), self.param_dtype)
        h = h + pos[: tokens.shape[-1]].astype(self.dtype)
        for i in range(self.depth):
            h = TokenBlock(self.hidden_size, self.num_heads, self.mlp_ratio, dtype=self.dtype,
                           param_dtype=self.param_dtype, name=f"block_{i}")(h)
        h = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name="norm_out")(h)
        logits = nn.Dense(self.vocab_size, kernel_init=zeros, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="head")(h)
        return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
