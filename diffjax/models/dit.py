"""DiT: Scalable Diffusion Models with Transformers (Peebles & Xie 2023), with a TD-LN option.

Tokens z_0 = Linear(patchify_p(x)) + sincos_2d;  c = t_emb(noise_label) + y_emb(label).
adaLN-Zero block (Sec. 3.2), (shift1, scale1, gate1, shift2, scale2, gate2) = Linear0(SiLU(c)):
    z = z + gate1 * Attn(LN(z) (1 + scale1) + shift1)
    z = z + gate2 * MLP(LN(z) (1 + scale2) + shift2)
Final layer: (shift, scale) = Linear0(SiLU(c)); out = Linear0(LN(z)(1 + scale) + shift) -> unpatchify.
Gates and the output linear start at zero, so every block is the identity and the output is 0 at init.

norm='tdln' replaces each adaLN-Zero by TD-LN (Liu et al. 2024, DiMR; see tdln.py): no time MLP, no
per-block Linear(D, 6D); time enters only through tau = td_time(noise_label); the class embedding is
prepended as a token (DiMR / U-ViT style) and dropped before the output head.

``return_intermediates=True`` returns (out, [pred_1 .. pred_L]): the prediction of every block's tokens
through the SAME final layer (the shared output head of DeeDiff / AdaDiff, Tang et al. 2023).

Early exit (DeeDiff, Tang et al., arXiv 2309.17074; the official code is the AdaDiff release,
Tangshengku/AdaDiff libs/uvit.py). ``early_exit=True`` adds one confidence module (UEM; AdaDiff's
"LTE") after every block i = 1..L: c_i = unpatchify(sigmoid(Linear_i(sg[z_i]))), one confidence in
(0, 1) per output pixel and channel, read from block i's patch tokens with the gradient stopped
(sg: the backbone learns only through the predictions). Confidence, not uncertainty: c = 1 - u.
    exit_threshold=None         the full network (no UEM computed): out = head(z_L)
    exit_threshold=thr          run blocks until mean(c_i) > thr, the mean over the whole
                                (B, H, W, C) map (one decision for the batch), then return head(z_i);
                                the blocks after the exit are skipped (``nn.cond``: XLA does not
                                execute them). Layer L never tests (exiting there is the full
                                network). thr >= 1 never exits (c <= 1, the test is strict): the
                                full network exactly (the uncertainty convention's tau = 1 - thr
                                = 0); thr < 0 exits at the first eligible layer (block 1; block 2
                                with patience). The number of blocks run is sown as
                                ('intermediates', 'exit_layer'), an int32 scalar in 1..L.
    return_confidences=True     (out, [pred_1 .. pred_L], [c_1 .. c_L]) for the DeeDiff loss.
``exit_patience=True`` is AdaDiff's patience rule: in the first half (blocks 1..L//2) a layer exits
only the second time the test holds (the first hit is remembered, never reset); from block
L//2 + 1 on a hit exits at once. Off by default (the paper's rule).

Scale (issue 18): ``remat`` rematerializes every block by a ``models/remat.py`` policy;
``scan_layers=True`` runs the L blocks (and their UEMs) as one ``nn.scan`` over stacked params
('blocks/block/...', 'blocks/uem/...' with a leading axis L; ``models/scan.py`` converts to and from
the per-block 'block_i' layout). Every path (plain, intermediates, confidences, early exit) works in
both forms and gives the same outputs for converted params.

Published counts (latent 32x32x4, 1000 classes, learned sigma): S/2 33M, B/2 130M, L/2 458M, XL/2 675M.
"""
from __future__ import annotations

from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax.models import remat as remat_lib
from diffjax.models.embeddings import LabelEmbedder, condition_embedding, sincos_2d
from diffjax.models.layers import (AdaLNModulation, Mlp, SelfAttention, modulate, patchify,
                                   plain_layer_norm, trunc002, unpatchify, xavier, zeros)
from diffjax.models.tdln import TDLayerNorm, TDModulation, td_time

Dtype = Any
NORMS = ("adaln_zero", "tdln")


class DiTBlock(nn.Module):
    """One DiT block; ``c`` (B, D) conditions adaLN-Zero, ``tau`` (B,) conditions TD-LN."""

    num_heads: int
    mlp_ratio: float = 4.0
    norm: str = "adaln_zero"
    dropout: float = 0.0
    mlp_norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: Optional[jax.Array], tau: Optional[jax.Array],
                 train: bool = False) -> jax.Array:
        d = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = SelfAttention(self.num_heads, name="attn", **kw)
        mlp = Mlp(int(d * self.mlp_ratio), dropout=self.dropout, name="mlp", **kw)
        drop = nn.Dropout(self.dropout, deterministic=not train)
        if self.norm == "adaln_zero":
            s1, sc1, g1, s2, sc2, g2 = AdaLNModulation(6, d, name="adaLN", **kw)(c)
            x = x + g1[:, None] * drop(attn(modulate(plain_layer_norm(self.dtype)(x), s1, sc1)))
            h = modulate(plain_layer_norm(self.dtype, self.mlp_norm_eps)(x), s2, sc2)
            return x + g2[:, None] * mlp(h, train)
        if self.norm == "tdln":
            h, g1 = TDModulation(name="norm1", **kw)(x, tau)
            x = x + g1[:, None] * drop(attn(h))
            h, g2 = TDModulation(name="norm2", **kw)(x, tau)
            return x + g2[:, None] * mlp(h, train)
        raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")


class FinalLayer(nn.Module):
    """Output head shared by the last block and (DeeDiff) every intermediate block."""

    patch_size: int
    out_channels: int
    norm: str = "adaln_zero"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, c: Optional[jax.Array], tau: Optional[jax.Array]) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if self.norm == "adaln_zero":
            shift, scale = AdaLNModulation(2, x.shape[-1], name="adaLN", **kw)(c)
            x = modulate(plain_layer_norm(self.dtype)(x), shift, scale)
        else:
            x = TDLayerNorm(name="norm", **kw)(x, tau)
        return nn.Dense(self.patch_size ** 2 * self.out_channels, kernel_init=zeros, name="linear",
                        **kw)(x)


class ConfidenceHead(nn.Module):
    """DeeDiff's UEM (AdaDiff's LTE): patch tokens (B, N, D) -> sigmoid(Linear(sg[tokens])) ->
    unpatchify -> (B, H, W, C) confidences in (0, 1). The input is detached (stop_gradient); no
    timestep input (the released code drops the paper's Eq. 5 timestep term). Init as AdaDiff's
    Linear: truncated normal(0.02) weights, zero bias, so every confidence starts near 0.5."""

    patch_size: int
    out_channels: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array, gh: int, gw: int) -> jax.Array:
        h = nn.Dense(self.patch_size ** 2 * self.out_channels, kernel_init=trunc002, name="linear",
                     dtype=self.dtype, param_dtype=self.param_dtype)(jax.lax.stop_gradient(tokens))
        return unpatchify(jax.nn.sigmoid(h.astype(jnp.float32)), self.patch_size, gh, gw)


class DiTLayer(nn.Module):
    """One step of the scan over DiT's blocks (``scan_layers``): block i and its UEM, named 'block'
    and 'uem' inside the scanned 'blocks' so their params stack along axis 0.
    mode 'plain': carry z -> (z, None); 'collect': -> (z, (z, confidence or None)) for the
    intermediates / DeeDiff loss; 'exit': carry (z, done, seen, ran) -> the early-exit rule of
    ``DiT._exit_early`` with the layer index i as the scanned input (``nn.cond`` skips the block)."""

    num_heads: int
    mlp_ratio: float
    norm: str
    dropout: float
    remat: str
    train: bool
    mode: str
    with_conf: bool
    patch_size: int
    conf_channels: int
    n_extra: int
    grid: tuple
    depth: int
    exit_patience: bool = False
    mlp_norm_eps: float = 1e-6
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def _block(self):
        cls = remat_lib.wrap(DiTBlock, self.remat, (4,), scanned=True)
        return cls(self.num_heads, self.mlp_ratio, self.norm, self.dropout, self.mlp_norm_eps,
                   name="block", dtype=self.dtype, param_dtype=self.param_dtype)

    def _conf(self, z):
        return ConfidenceHead(self.patch_size, self.conf_channels, name="uem", dtype=self.dtype,
                              param_dtype=self.param_dtype)(z[:, self.n_extra:], *self.grid)

    @nn.compact
    def __call__(self, carry, i, c, tau, thr):
        if self.mode != "exit":
            z = self._block()(carry, c, tau, self.train)
            conf = self._conf(z) if self.with_conf else None
            return z, ((z, conf) if self.mode == "collect" else None)
        z, done, seen, ran = carry
        half, last = self.depth // 2, i == self.depth - 1

        def run(mdl, z, done, seen):
            z = self._block()(z, c, tau, False)
            hit = jnp.mean(self._conf(z)) > thr
            if self.exit_patience:
                hit, seen = jnp.where(i < half, hit & seen, hit), jnp.where(i < half, seen | hit,
                                                                           seen)
            return z, jnp.where(last, done, hit), seen

        ran = ran + jnp.where(done, 0, 1).astype(jnp.int32)
        z, done, seen = nn.cond(done, lambda mdl, *a: a, run, self, z, done, seen)
        return (z, done, seen, ran), None


class DiT(nn.Module):
    """Diffusion Transformer. ``apply(v, x[B,H,W,C], noise_labels[B], labels=None, *, train)``."""

    patch_size: int = 2
    hidden_size: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    num_classes: int = 0
    learn_sigma: bool = False
    out_channels: Optional[int] = None
    norm: str = "adaln_zero"
    dropout: float = 0.0
    freq_dim: int = 256
    freq_shift: float = 0.0           # 1: diffusers' DiT port (embeddings.sinusoidal_embedding)
    mlp_norm_eps: float = 1e-6        # the LayerNorm before the MLP (diffusers' DiT port: 1e-5)
    noise_embedding: str = "positional"
    noise_label_scale: float = 1.0
    td_time_scale: float = 0.002
    td_time_shift: float = -1.0
    cep_gamma: float = 0.0
    cep_kind: str = "uniform"
    guidance_embed: bool = False      # a guidance-distilled student: w enters the condition
    early_exit: bool = False          # DeeDiff: a confidence module (UEM) after every block
    exit_patience: bool = False       # AdaDiff's patience rule in the first half (module doc)
    remat: str = "none"               # per-block rematerialization policy (models/remat.py)
    scan_layers: bool = False         # the blocks as one nn.scan over stacked params
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def scan_layout(self) -> dict:
        """The stacked <-> per-block parameter layout (``models/scan.py``)."""
        out = {"blocks/block": ("block_", range(self.depth))}
        if self.early_exit:
            out["blocks/uem"] = ("uem_", range(self.depth))
        return out

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array, labels: Optional[jax.Array] = None,
                 context: Optional[jax.Array] = None, *, train: bool = False,
                 return_intermediates: bool = False, guidance: Optional[jax.Array] = None,
                 exit_threshold: Optional[jax.Array] = None, return_confidences: bool = False):
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; expected one of {NORMS}")
        b, hgt, wid, cin = x.shape
        p, d = self.patch_size, self.hidden_size
        if hgt % p or wid % p:
            raise ValueError(f"image size {(hgt, wid)} not divisible by patch size {p}")
        gh, gw = hgt // p, wid // p
        out_ch = (self.out_channels or cin) * (2 if self.learn_sigma else 1)
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)

        z = nn.Dense(d, kernel_init=xavier, name="x_embedder", **kw)(patchify(x.astype(self.dtype), p))
        z = z + sincos_2d(gh, gw, d).astype(self.dtype)[None]
        c = tau = None
        n_extra = 0
        if self.norm == "adaln_zero":
            c = condition_embedding(self, d, noise_labels, labels, train, guidance=guidance)
        else:
            if self.guidance_embed:
                raise ValueError("DiT guidance_embed needs norm='adaln_zero' (the guidance scale "
                                 "enters the adaLN condition)")
            tau = td_time(noise_labels, self.td_time_scale, self.td_time_shift)
            if self.num_classes > 0:
                y = LabelEmbedder(self.num_classes, d, self.cep_gamma, self.cep_kind,
                                  name="y_embedder", **kw)(labels, b, train)
                z = jnp.concatenate([y[:, None].astype(self.dtype), z], axis=1)
                n_extra = 1

        final = FinalLayer(p, out_ch, self.norm, name="final_layer", **kw)
        head = lambda t: unpatchify(final(t[:, n_extra:], c, tau), p, gh, gw).astype(jnp.float32)
        remat_lib.check(self.remat)
        block = lambda i: remat_lib.wrap(DiTBlock, self.remat, (4,))(
            self.num_heads, self.mlp_ratio, self.norm, self.dropout, self.mlp_norm_eps,
            name=f"block_{i}", **kw)
        # one UEM per block; its channels are the prediction's (without a learned-sigma half)
        conf = lambda i, t: ConfidenceHead(p, self.out_channels or cin, name=f"uem_{i}", **kw)(
            t[:, n_extra:], gh, gw)
        if (exit_threshold is not None or return_confidences) and not self.early_exit:
            raise ValueError("DiT got " + ("exit_threshold" if exit_threshold is not None else
                             "return_confidences") + " but has no confidence modules: set its "
                             "early_exit field (a DeeDiff student, diffjax/distill/early_exit.py)")
        if exit_threshold is not None and not self.is_initializing():
            if train or return_intermediates or return_confidences:
                raise ValueError("DiT exit_threshold is an inference path: it takes no train=True, "
                                 "return_intermediates or return_confidences")
            if self.scan_layers:
                return self._scan(z, c, tau, "exit", train, False, n_extra, (gh, gw), head,
                                  self.out_channels or cin, exit_threshold)
            return self._exit_early(z, block, conf, head, c, tau, exit_threshold)
        with_conf = self.early_exit and (return_confidences or self.is_initializing())
        if self.scan_layers:
            collect = return_intermediates or return_confidences
            out = self._scan(z, c, tau, "collect" if collect else "plain", train, with_conf,
                             n_extra, (gh, gw), head, self.out_channels or cin)
            if not collect:
                return out
            out, preds, confs = out
            if return_confidences:
                return out, preds, confs
            return out, preds
        preds, confs = [], []
        for i in range(self.depth):
            z = block(i)(z, c, tau, train)
            if (return_intermediates or return_confidences) and i < self.depth - 1:
                preds.append(head(z))
            if with_conf:
                confs.append(conf(i, z))
        out = head(z)
        if return_confidences:
            return out, preds + [out], confs
        if return_intermediates:
            return out, preds + [out]
        return out

    def _scan(self, z, c, tau, mode, train, with_conf, n_extra, grid, head, conf_ch, thr=None):
        """The blocks as one ``nn.scan`` of ``DiTLayer`` (``scan_layers``). Returns head(z_L); in
        mode 'collect' (out, [pred_1 .. pred_L], [c_1 .. c_L] or []); in mode 'exit' the early-exit
        prediction (sowing 'exit_layer' like the unrolled path)."""
        Scan = nn.scan(DiTLayer, variable_axes={"params": 0},
                       split_rngs={"params": True, "dropout": True},
                       in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast), length=self.depth)
        layers = Scan(self.num_heads, self.mlp_ratio, self.norm, self.dropout, self.remat,
                      bool(train), mode, with_conf, self.patch_size, conf_ch, n_extra, grid,
                      self.depth, self.exit_patience, self.mlp_norm_eps, name="blocks", dtype=self.dtype,
                      param_dtype=self.param_dtype)
        idx = jnp.arange(self.depth)
        if mode == "exit":
            thr = jnp.asarray(thr, jnp.float32)
            if thr.ndim:
                raise ValueError(f"DiT exit_threshold must be a scalar (one exit for the whole "
                                 f"batch); got shape {thr.shape}")
            carry = (z, jnp.bool_(False), jnp.bool_(False), jnp.int32(0))
            (z, _, _, ran), _ = layers(carry, idx, c, tau, thr)
            self.sow("intermediates", "exit_layer", ran)
            return head(z)
        z, ys = layers(z, idx, c, tau, None)
        out = head(z)
        if mode == "plain":
            return out
        zs, cs = ys
        preds = [head(zs[i]) for i in range(self.depth - 1)] + [out]
        return out, preds, ([cs[i] for i in range(self.depth)] if with_conf else [])

    def _exit_early(self, z, block, conf, head, c, tau, exit_threshold):
        """The early-exit forward pass (module doc): block i + 1 runs under ``nn.cond`` only while no
        earlier layer exited, so XLA executes none of the blocks after the exit (nor their UEMs);
        the skipped blocks pass the tokens through unchanged, so head(z) at the end is the exit
        layer's prediction. ``block``, ``conf`` and ``head`` are ``__call__``'s constructors of
        its named submodules (block_i, uem_i, final_layer)."""
        thr = jnp.asarray(exit_threshold, jnp.float32)
        if thr.ndim:
            raise ValueError(f"DiT exit_threshold must be a scalar (one exit for the whole batch); "
                             f"got shape {thr.shape}")
        half = self.depth // 2

        def test(i, z, seen):
            hit = jnp.mean(conf(i, z)) > thr
            if self.exit_patience and i < half:
                return hit & seen, seen | hit
            return hit, seen

        z = block(0)(z, c, tau, False)
        done, seen = test(0, z, jnp.bool_(False)) if self.depth > 1 else (jnp.bool_(True),) * 2
        ran = jnp.int32(1)
        for i in range(1, self.depth):
            def run(mdl, z, done, seen, i=i):
                z = block(i)(z, c, tau, False)
                return (z,) + (test(i, z, seen) if i < self.depth - 1 else (done, seen))

            ran = ran + jnp.where(done, 0, 1).astype(jnp.int32)
            z, done, seen = nn.cond(done, lambda mdl, *a: a, run, self, z, done, seen)
        self.sow("intermediates", "exit_layer", ran)
        return head(z)
