"""diffusers AutoencoderKL -> diffjax AutoencoderKL: encode (mean, logvar), decode, and the scaled
latents / images helpers compute what diffusers computes.

Random diffusers VAEs at small configs (every parameter random) saved with ``save_pretrained``,
read back and converted. Measured max |ours - diffusers| (float32, CPU, outputs of order 1):
sd-like mean 2e-6, logvar 1.9e-6, decode 1.8e-6; lean (no quant convs, no mid attention) of the
same order. Tolerance 1e-4.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffjax.convert import vae as cv  # noqa: E402
from diffjax.convert.state_dict import (  # noqa: E402
    ConvertError, StateDict, load_file, read_config, weights_path)
from diffjax.models.autoencoder import AutoencoderKL  # noqa: E402
from tests.interop.test_unet2d import (assert_same_tree, diffusers_module, nchw, nhwc,  # noqa: E402
                                       randomise)
from tests.models.util import FastJit  # noqa: E402

TOL = 1e-4
CONFIGS = {
    # Stable Diffusion's layout in miniature, with an SD3/Flux-style shift factor
    "sd": dict(block_out_channels=(16, 32), down_block_types=("DownEncoderBlock2D",) * 2,
               up_block_types=("UpDecoderBlock2D",) * 2, layers_per_block=1, latent_channels=4,
               norm_num_groups=8, sample_size=16, scaling_factor=0.5, shift_factor=0.1),
    # three levels, two layers, no quant convs, no mid-block attention
    "lean": dict(block_out_channels=(8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 3,
                 up_block_types=("UpDecoderBlock2D",) * 3, layers_per_block=2, latent_channels=3,
                 norm_num_groups=4, sample_size=16, use_quant_conv=False,
                 use_post_quant_conv=False, mid_block_add_attention=False),
}


class Case:
    def __init__(self, name, root):
        diffusers = diffusers_module()
        torch.manual_seed(0)
        self.dir = str(root / name)
        self.torch = diffusers.AutoencoderKL(**CONFIGS[name]).eval()
        randomise(self.torch)
        self.torch.save_pretrained(self.dir)
        self.hf_config = read_config(self.dir)
        self.tensors = load_file(weights_path(self.dir))
        self.params = cv.convert(self.hf_config, StateDict(self.tensors, self.dir))
        self.model = AutoencoderKL(**cv.model_config(self.hf_config))
        lat, f = self.model.latent_channels, 2 ** (len(self.model.block_out_channels) - 1)
        rs = np.random.RandomState(1)
        self.x = rs.randn(2, 16, 16, 3).astype(np.float32)
        self.z = rs.randn(2, 16 // f, 16 // f, lat).astype(np.float32)
        self.encode = FastJit(lambda p, x: self.model.apply({"params": p}, x, method="encode"))
        self.decode = FastJit(lambda p, z: self.model.apply({"params": p}, z, method="decode"))

    def theirs_encode(self, x):
        with torch.no_grad():
            post = self.torch.encode(nchw(x)).latent_dist
            return nhwc(post.mean), nhwc(post.logvar)

    def theirs_decode(self, z):
        with torch.no_grad():
            return nhwc(self.torch.decode(nchw(z)).sample)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Case(name, tmp_path_factory.mktemp("vae"))
        return cache[name]
    return get


def _diff(a, b, what):
    d = float(np.abs(np.asarray(a) - b).max())
    print(f"{what}: max |ours - diffusers| = {d:.2e} (max |ref| {np.abs(b).max():.2f})")
    assert a.shape == b.shape and 0.3 < np.abs(b).max() < 50
    return d


@pytest.mark.parametrize("name", list(CONFIGS))
def test_encode_decode_match_diffusers(case, name):
    c = case(name)
    assert_same_tree(c.params, c.model, c.x)
    mean, logvar = c.encode(c.params, jnp.asarray(c.x))
    ref_mean, ref_logvar = c.theirs_encode(c.x)
    assert _diff(mean, ref_mean, f"{name} mean") < TOL
    assert _diff(logvar, ref_logvar, f"{name} logvar") < TOL
    assert _diff(c.decode(c.params, jnp.asarray(c.z)), c.theirs_decode(c.z),
                 f"{name} decode") < TOL


def test_latents_and_images_apply_scale_and_shift(case):
    """latents = (z - shift) * scale with z the mean or mean + std n; images = decode(l / scale +
    shift): what diffusers' SD3 / Flux pipelines do around the VAE."""
    c = case("sd")
    scale, shift = 0.5, 0.1
    assert (c.model.scaling_factor, c.model.shift_factor) == (scale, shift)
    ref_mean, ref_logvar = c.theirs_encode(c.x)
    latents, images = FastJit(c.model.latents), FastJit(c.model.images)   # jit-able helpers
    lat = latents(c.params, jnp.asarray(c.x))
    assert _diff(lat, (ref_mean - shift) * scale, "latents (mean)") < TOL
    key = jax.random.PRNGKey(3)
    n = np.asarray(jax.random.normal(key, ref_mean.shape))
    drawn = latents({"params": c.params}, jnp.asarray(c.x), key)   # variables work too
    want = (ref_mean + np.exp(0.5 * ref_logvar) * n - shift) * scale
    assert _diff(drawn, want, "latents (sampled)") < TOL
    img = images(c.params, jnp.asarray(c.z))
    assert _diff(img, c.theirs_decode(c.z / scale + shift), "images") < TOL


def test_logvar_is_clipped(case):
    """DiagonalGaussianDistribution clips logvar to [-30, 20]: push the quant conv's logvar bias."""
    c = case("sd")
    p = jax.tree.map(np.array, c.params)
    p["quant_conv"]["bias"][4:] = 100.0
    _, logvar = c.encode(p, jnp.asarray(c.x))
    assert float(np.max(logvar)) == 20.0


def test_force_upcast_computes_in_float32():
    """force_upcast (diffusers' default) keeps every op in float32 whatever ``dtype`` says."""
    x = jnp.zeros((1, 8, 8, 3))

    def ops(**kw):
        m = AutoencoderKL(block_out_channels=(8,), norm_num_groups=4, dtype=jnp.bfloat16, **kw)
        v = jax.eval_shape(m.init, jax.random.PRNGKey(0), x)
        return str(jax.make_jaxpr(lambda v, x: m.apply(v, x))(v, x))
    assert "bf16" not in ops() and "bf16" in ops(force_upcast=False)


def test_errors_name_what_is_wrong(case):
    c = case("sd")
    key = "decoder.mid_block.attentions.0.to_v.bias"
    with pytest.raises(ConvertError, match=f"missing tensor '{key}'"):
        cv.convert(c.hf_config, StateDict({k: v for k, v in c.tensors.items() if k != key}))
    bad = {**c.tensors, "encoder.conv_out.weight": np.zeros((8, 32, 1, 1), np.float32)}
    with pytest.raises(ConvertError, match=r"'encoder.conv_out.weight' has shape \(8, 32, 1, 1\)"
                                           r".*expects \(8, 32, 3, 3\)"):
        cv.convert(c.hf_config, StateDict(bad))
    for change, msg in [({"norm_type": "spatial"}, "'norm_type'"),
                        ({"act_fn": "relu"}, "'act_fn' = 'relu'"),
                        ({"latents_mean": [0.0] * 4}, "'latents_mean'"),
                        ({"up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D"]},
                         "'up_block_types' holds 'AttnUpDecoderBlock2D'"),
                        ({"_class_name": "AutoencoderTiny"}, "AutoencoderTiny")]:
        with pytest.raises(ConvertError, match=msg):
            cv.model_config({**c.hf_config, **change})
