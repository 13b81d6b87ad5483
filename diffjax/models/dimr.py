"""DiMR: Alleviating Distortion in Image Generation via Multi-Resolution Diffusion Models
(Liu et al., NeurIPS 2024), with Time-Dependent LayerNorm (TD-LN / TD-RMSNorm, see tdln.py).

A cascade of R branches, low to high resolution, each predicting eps at its own resolution:
    branch r input:  z_r = Conv_{p_r x p_r, stride p_r}(down_{a_r}(x)) + pos_r  [+ Up(F_{r-1})]
    Transformer branch: tokens [class token; z_r], U-ViT layout of 2 floor(n/2) + 1 blocks with long
        skips (concat + Linear 2d -> d); block: z + Attn(TDRMSN(z)), z + GatedMLP(TDRMSN(z)),
        GatedMLP(h) = W2(GELU(W0 h) * W1 h).
    ConvNeXt branch: same layout, block: z + DWConv_k(z), z + GatedMLP(TDRMSN(z)).
    F_r = concat of the branch input and every block output (2 floor(n/2) + 2 maps of width d_r);
    Up(F) = TDLN(PixelShuffle_2(Linear(TDLN(F)))) is added to the next branch input.
    eps_r = Conv_k(TDLN(z_final)) at branch resolution.
Time enters ONLY through the TD norms: tau = td_time(noise_label) (DiMR: tau = log_snr / 4).
Class conditioning is a prepended class token in Transformer branches (null id = num_classes).
Training loss (DiMR): sum_r c_r mean|eps_r - down_r(eps)|^2, c = (1/4, 1), down_r = r x r box sum / r.

Outputs: ``apply(...)`` -> last (highest-resolution) branch's eps (same shape as x).
``return_multiscale=True`` -> (out, [eps_1 .. eps_R]) for the multi-scale loss.
``return_intermediates=True`` -> (out, [pred per block of the LAST branch through its shared output
head]) (DeeDiff-style). ``remat`` rematerializes every block (models/remat.py); ``scan_layers=True``
runs each branch's first and last halves of blocks as two ``nn.scan``s over stacked params
('branch_r/in_blocks/block', 'branch_r/out_blocks/{skip,block}'; the middle block stays
'branch_r/block_h'; models/scan.py converts from the per-block layout). XL/2R (960/1920/16 heads/39 blocks; 480/960/k7/21 blocks) = 505M params.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

from diffjax import kernels
from diffjax.models import partitioning
from diffjax.models import remat as remat_lib
from diffjax.models.embeddings import cep_labelled, resolve_labels
from diffjax.models.layers import heads, hidden, trunc002
from diffjax.models.partitioning import gathered
from diffjax.models.tdln import TDLayerNorm, TDRMSNorm, td_time

Dtype = Any
BLOCK_TYPES = ("transformer", "convnext")


class GatedMLP(nn.Module):
    hidden: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, h):
        dense = lambda n, name: nn.Dense(n, kernel_init=trunc002, name=name, dtype=self.dtype,
                                         param_dtype=self.param_dtype,
                                         dot_general=gathered("row" if name == "w2" else "col"))
        return dense(h.shape[-1], "w2")(hidden(nn.gelu(dense(self.hidden, "w0")(h),
                                                       approximate=False)
                                               * dense(self.hidden, "w1")(h)))


class DiMRBlock(nn.Module):
    """Transformer block (attention mixer) or ConvNeXt block (depthwise conv mixer) with TD norms."""

    block_type: str
    mlp_dim: int
    num_heads: int = 16
    kernel_size: int = 7
    dropout: float = 0.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, tau, train: bool = False):
        d = x.shape[-1]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        drop = nn.Dropout(self.dropout, deterministic=not train)
        if self.block_type == "transformer":
            h = TDRMSNorm(name="norm1", **kw)(x, tau)
            qkv = nn.Dense(3 * d, use_bias=False, kernel_init=trunc002, name="qkv",
                           dot_general=gathered("col"), **kw)(h)
            q, k, v = (heads(a) for a in einops.rearrange(
                qkv, "b l (three h e) -> three b l h e", three=3, h=self.num_heads))
            h = einops.rearrange(heads(kernels.attention(q, k, v)), "b l h e -> b l (h e)")
            h = nn.Dense(d, kernel_init=trunc002, name="proj", dot_general=gathered("row"), **kw)(h)
        else:
            k = self.kernel_size
            h = nn.Conv(d, (k, k), padding=[(k // 2, k // 2)] * 2, feature_group_count=d,
                        name="dwconv", **kw)(x)
        x = x + drop(h)
        h = GatedMLP(self.mlp_dim, name="mlp", **kw)(TDRMSNorm(name="norm2", **kw)(x, tau))
        return x + drop(h)


class DiMRLayer(nn.Module):
    """One step of a scan over a branch's half of blocks (``scan_layers``): carry z, scanned input
    the long-skip tensor of the mirrored block (out half) or None (in half) -> (z, z)."""

    block_type: str
    mlp_dim: int
    num_heads: int
    kernel_size: int
    dropout: float
    remat: str
    train: bool
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, z, skip, tau):
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        if skip is not None:
            z = nn.Dense(z.shape[-1], kernel_init=trunc002, name="skip", **kw)(
                jnp.concatenate([z, skip], axis=-1))
        z = remat_lib.wrap(DiMRBlock, self.remat, (3,), scanned=True)(
            self.block_type, self.mlp_dim, self.num_heads, self.kernel_size, self.dropout,
            name="block", **kw)(z, tau, self.train)
        return z, z


def area_downsample(x: jax.Array, r: int) -> jax.Array:
    """r x r average pooling of (B, H, W, C) (DiMR's EvenDownInterpolate, 'area' mode)."""
    return x if r == 1 else nn.avg_pool(x, (r, r), strides=(r, r))


class DiMRBranch(nn.Module):
    """One resolution branch: input conv + pos-emb [+ Up(lowres features)] -> U-ViT-layout blocks."""

    block_type: str
    dim: int
    mlp_dim: int
    num_blocks: int
    patch_size: int
    input_ratio: int
    max_grid: int
    out_channels: int
    num_heads: int = 16
    kernel_size: int = 7
    final_kernel_size: int = 3
    num_classes: int = 0
    dropout: float = 0.0
    cep_gamma: float = 0.0
    cep_kind: str = "uniform"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: str = "none"
    scan_layers: bool = False

    @nn.compact
    def __call__(self, x, tau, labels, lowres, train: bool = False,
                 return_intermediates: bool = False):
        """Returns (eps at this branch's resolution, concatenated features F, per-block preds)."""
        d, p, b = self.dim, self.patch_size, x.shape[0]
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        z = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", name="input", **kw)(
            area_downsample(x, self.input_ratio))
        _, h, w, _ = z.shape
        m = self.max_grid
        if h > m or w > m:
            raise ValueError(f"branch grid {(h, w)} exceeds its maximum {m} (raise DiMR.max_size)")
        pos = self.param("pos_embed", trunc002, (m, m, d), self.param_dtype)
        z = z + pos[:h, :w].astype(self.dtype)[None]
        if lowres is not None:
            ratio = h // lowres.shape[1]
            u = TDLayerNorm(1e-5, name="up_norm1", **kw)(lowres, tau)
            u = nn.Dense(d * ratio * ratio, kernel_init=trunc002, name="up", **kw)(u)
            u = einops.rearrange(u, "b h w (p q c) -> b (h p) (w q) c", p=ratio, q=ratio)
            z = z + TDLayerNorm(1e-5, name="up_norm2", **kw)(u, tau)
        n_extra = 0
        if self.block_type == "transformer":
            z = z.reshape(b, h * w, d)
            if self.num_classes > 0:
                labels = resolve_labels(labels, b, self.num_classes)
                tok = partitioning.lookup(nn.Embed(self.num_classes + 1, d, embedding_init=trunc002,
                                                   name="class_embed", **kw), labels, self.dtype)
                if train and self.cep_gamma > 0:
                    tok = cep_labelled(self.make_rng("cep"), tok, labels, self.num_classes,
                                       self.cep_gamma, self.cep_kind)
                z = jnp.concatenate([tok[:, None], z], axis=1)
                n_extra = 1
        grid = lambda t: t[:, n_extra:].reshape(b, h, w, d)

        norm_out = TDLayerNorm(1e-5, name="out_norm", **kw)
        k = self.final_kernel_size
        out_conv = nn.Conv(self.out_channels, (k, k), padding=[(k // 2, k // 2)] * 2, name="out", **kw)
        head = lambda t: out_conv(norm_out(grid(t), tau)).astype(jnp.float32)

        half = self.num_blocks // 2
        block = remat_lib.wrap(DiMRBlock, self.remat, (3,))
        mk = lambda i: block(self.block_type, self.mlp_dim, self.num_heads, self.kernel_size,
                             self.dropout, name=f"block_{i}", **kw)
        if self.scan_layers:
            feats = self._scanned(z, tau, train, half, mk)
            z = feats[-1]
        else:
            feats, skips = [z], []
            for i in range(2 * half + 1):
                if i > half:
                    z = nn.Dense(d, kernel_init=trunc002, name=f"skip_{i - half - 1}", **kw)(
                        jnp.concatenate([z, skips.pop()], axis=-1))
                z = mk(i)(z, tau, train)
                if i < half:
                    skips.append(z)
                feats.append(z)
        preds = [head(f) for f in feats[1:-1]] if return_intermediates else []
        out = head(z)
        return out, jnp.concatenate([grid(f) for f in feats], axis=-1), preds + [out]

    def _scanned(self, z, tau, train, half, mk):
        """[input, block_0 .. block_2h outputs] with each half of blocks as one ``nn.scan``."""
        def scan(name, xs):
            in_axes = (nn.broadcast if xs is None else 0, nn.broadcast)
            Scan = nn.scan(DiMRLayer, variable_axes={"params": 0},
                           split_rngs={"params": True, "dropout": True}, in_axes=in_axes,
                           length=half)
            return Scan(self.block_type, self.mlp_dim, self.num_heads, self.kernel_size,
                        self.dropout, self.remat, bool(train), name=name, dtype=self.dtype,
                        param_dtype=self.param_dtype)(z, xs, tau)

        feats = [z]
        if half:
            z, ins = scan("in_blocks", None)
            feats += [ins[i] for i in range(half)]
        z = mk(half)(z, tau, train)
        feats.append(z)
        if half:
            z, outs = scan("out_blocks", ins[::-1])
            feats += [outs[i] for i in range(half)]
        return feats


class DiMR(nn.Module):
    """Multi-resolution diffusion network; branch fields are tuples, one entry per branch."""

    dims: Sequence[int] = (960, 480)
    mlp_dims: Sequence[int] = (1920, 960)
    num_blocks: Sequence[int] = (39, 20)
    block_types: Sequence[str] = ("transformer", "convnext")
    patch_sizes: Sequence[int] = (2, 1)
    input_ratios: Sequence[int] = (1, 1)
    num_heads: int = 16
    kernel_size: int = 7
    final_kernel_size: int = 3
    max_size: int = 32
    num_classes: int = 0
    learn_sigma: bool = False
    out_channels: Optional[int] = None
    dropout: float = 0.0
    td_time_scale: float = 0.002
    td_time_shift: float = -1.0
    cep_gamma: float = 0.0
    cep_kind: str = "uniform"
    remat: str = "none"               # per-block rematerialization policy (models/remat.py)
    scan_layers: bool = False         # each branch's halves of blocks as nn.scan (module doc)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def scan_layout(self) -> dict:
        """The stacked <-> per-block parameter layout (``models/scan.py``)."""
        out = {}
        for r, n in enumerate(self.num_blocks):
            h, b = n // 2, f"branch_{r}/"
            if h:
                out[b + "in_blocks/block"] = (b + "block_", range(h))
                out[b + "out_blocks/skip"] = (b + "skip_", range(h))
                out[b + "out_blocks/block"] = (b + "block_", range(h + 1, 2 * h + 1))
        return out

    @nn.compact
    def __call__(self, x: jax.Array, noise_labels: jax.Array, labels: Optional[jax.Array] = None,
                 context: Optional[jax.Array] = None, *, train: bool = False,
                 return_intermediates: bool = False, return_multiscale: bool = False):
        if return_intermediates and return_multiscale:
            raise ValueError("choose one of return_intermediates / return_multiscale")
        n = len(self.dims)
        for field in ("mlp_dims", "num_blocks", "block_types", "patch_sizes", "input_ratios"):
            if len(getattr(self, field)) != n:
                raise ValueError(f"DiMR.{field} must have {n} entries (one per branch)")
        for t in self.block_types:
            if t not in BLOCK_TYPES:
                raise ValueError(f"unknown block type {t!r}; expected one of {BLOCK_TYPES}")
        out_ch = (self.out_channels or x.shape[-1]) * (2 if self.learn_sigma else 1)
        tau = td_time(noise_labels, self.td_time_scale, self.td_time_shift)
        x = x.astype(self.dtype)
        lowres, outs, preds = None, [], []
        for r in range(n):
            scale = self.patch_sizes[r] * self.input_ratios[r]
            branch = DiMRBranch(
                self.block_types[r], self.dims[r], self.mlp_dims[r], self.num_blocks[r],
                self.patch_sizes[r], self.input_ratios[r], self.max_size // scale, out_ch,
                self.num_heads, self.kernel_size, self.final_kernel_size, self.num_classes,
                self.dropout, self.cep_gamma, self.cep_kind, self.dtype, self.param_dtype,
                remat=self.remat, scan_layers=self.scan_layers, name=f"branch_{r}")
            out, lowres, preds = branch(x, tau, labels, lowres, train,
                                        return_intermediates and r == n - 1)
            outs.append(out)
        if return_multiscale:
            return outs[-1], outs
        if return_intermediates:
            return outs[-1], preds
        return outs[-1]
