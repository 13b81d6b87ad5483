"""diffusers UNet2DModel -> diffjax UNet2D: the converted model computes what diffusers computes.

Each diffusers model is built at a small config with every parameter random (norms too), saved with
``save_pretrained`` (safetensors), read back with our ``read_config`` / ``load_file`` /
``StateDict``, converted, and run on the same inputs. Measured max |ours - diffusers| (outputs of
order 1; float32, CPU): ddpm 2.6e-6, adm 2.4e-6, cond 8e-7, fourier 2.1e-6; a DDIM step through
diffjax's sampler vs ``DDIMScheduler.step`` 2e-6. Tolerance 1e-4.
"""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffjax.convert import unet2d as cu  # noqa: E402
from diffjax.convert.state_dict import (  # noqa: E402
    ConvertError, StateDict, load_file, read_config, weights_path)
from diffjax.core import denoisers, processes, samplers, timesteps  # noqa: E402
from diffjax.models import registry  # noqa: E402
from diffjax.models.unet2d import UNet2D  # noqa: E402
from tests.models.util import FastJit  # noqa: E402

TOL = 1e-4
B = 2
CONFIGS = {
    # DDPM's CIFAR-10 U-Net in miniature (google/ddpm-cifar10-32's settings: [sin, cos], freq
    # shift 1, bottom/right-padded downsampling, one head per attention, eps 1e-6)
    "ddpm": dict(sample_size=16, block_out_channels=(32, 64, 64),
                 down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                 norm_num_groups=8, attention_head_dim=None, flip_sin_to_cos=False, freq_shift=1,
                 downsample_padding=0, norm_eps=1e-6),
    # ADM-like: scale-shift norm, resnet up/down-sampling, multi-head attention, a mid-block
    # attention without GroupNorm (diffusers' rule for scale_shift)
    "adm": dict(sample_size=16, block_out_channels=(16, 32, 32),
                down_block_types=("ResnetDownsampleBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"),
                up_block_types=("AttnUpBlock2D", "ResnetUpsampleBlock2D", "UpBlock2D"),
                layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
                resnet_time_scale_shift="scale_shift", downsample_type="resnet",
                upsample_type="resnet"),
    # class-conditional, with the rarer knobs set
    "cond": dict(sample_size=8, block_out_channels=(16, 32),
                 down_block_types=("AttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "AttnUpBlock2D"), layers_per_block=2,
                 norm_num_groups=4, num_class_embeds=5, center_input_sample=True,
                 mid_block_scale_factor=1.414, time_embedding_dim=48, attn_norm_num_groups=2,
                 attention_head_dim=8),
    # NCSN++-style Gaussian Fourier time embedding (the output divided by t), no mid block
    "fourier": dict(sample_size=8, block_out_channels=(16, 32),
                    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                    up_block_types=("AttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                    norm_num_groups=4, time_embedding_type="fourier", mid_block_type=None),
}


def diffusers_module():
    """diffusers, with a torchvision that cannot load its ops (a build for another torch) hidden
    from it: diffusers imports torchvision only for video models, but at import time."""
    import diffusers
    import diffusers.utils.import_utils as iu

    try:
        importlib.import_module("torchvision")
    except Exception:
        iu._torchvision_available = False
    return diffusers


def randomise(m: "torch.nn.Module", seed: int = 0) -> None:
    """Every parameter random: weights N(0, 1/fan_in), norm scales 1 + 0.2 N, biases 0.2 N,
    class tables N(0, 1), so no zero-initialised layer hides a wrong mapping."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.named_parameters():
            z = torch.randn(p.shape, generator=g)
            if name.startswith("class_embedding"):
                p.copy_(z)
            elif p.ndim >= 2:
                p.copy_(z / math.sqrt(p[0].numel()))
            elif "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * z)
            else:
                p.copy_(0.2 * z)


def nchw(a):
    return torch.from_numpy(np.ascontiguousarray(np.transpose(a, (0, 3, 1, 2))))


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).numpy()


def assert_same_tree(params, model, *args):
    """params has exactly the structure, shapes and dtype of model.init's params."""
    want = jax.eval_shape(model.init, jax.random.PRNGKey(0), *args)["params"]
    assert jax.tree_util.tree_structure(params) == jax.tree_util.tree_structure(want)
    for a, w in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(want)):
        assert a.shape == w.shape and a.dtype == w.dtype == np.float32


class Case:
    """A random diffusers model saved to disk, its conversion, and our compiled apply."""

    def __init__(self, name: str, root):
        diffusers = diffusers_module()
        torch.manual_seed(0)
        self.name, self.dir = name, str(root / name)
        self.torch = diffusers.UNet2DModel(**CONFIGS[name]).eval()
        randomise(self.torch)
        self.torch.save_pretrained(self.dir)          # safetensors by default
        self.hf_config = read_config(self.dir)
        self.tensors = load_file(weights_path(self.dir))
        self.params = cu.convert(self.hf_config, StateDict(self.tensors, self.dir))
        self.model = registry.build_model(cu.model_config(self.hf_config))
        self.apply = FastJit(self.model.apply)
        s = self.hf_config["sample_size"]
        rs = np.random.RandomState(1)
        self.x = rs.randn(B, s, s, 3).astype(np.float32)
        self.t = np.array([0.7, 30.5] if name == "fourier" else [10.0, 700.5], np.float32)
        self.y = np.array([1, 4], np.int32) if CONFIGS[name].get("num_class_embeds") else None

    def ours(self, x, t, y=None):
        return np.asarray(self.apply({"params": self.params}, jnp.asarray(x), jnp.asarray(t),
                                     None if y is None else jnp.asarray(y, jnp.int32)))

    def theirs(self, x, t, y=None):
        with torch.no_grad():
            return nhwc(self.torch(nchw(x), torch.from_numpy(np.asarray(t)),
                                   None if y is None else torch.from_numpy(y).long()).sample)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Case(name, tmp_path_factory.mktemp("unet2d"))
        return cache[name]
    return get


@pytest.mark.parametrize("name", list(CONFIGS))
def test_forward_matches_diffusers(case, name):
    c = case(name)
    assert_same_tree(c.params, c.model, c.x, c.t, c.y)
    ref, out = c.theirs(c.x, c.t, c.y), c.ours(c.x, c.t, c.y)
    assert out.shape == ref.shape and out.dtype == np.float32
    assert 0.3 < np.abs(ref).max() < 20, "outputs of order 1, so the tolerance means something"
    diff = float(np.abs(out - ref).max())
    print(f"{name}: max |ours - diffusers| = {diff:.2e} (max |out| {np.abs(ref).max():.2f})")
    assert diff < TOL


def test_labels_and_null_class(case):
    """Labels select the class row; labels=None (the appended zero null row) is diffusers' model
    without its class embedding."""
    c = case("cond")
    other = np.array([3, 0], np.int32)
    assert np.abs(c.ours(c.x, c.t, other) - c.ours(c.x, c.t, c.y)).max() > 1e-2
    assert np.abs(c.ours(c.x, c.t, other) - c.theirs(c.x, c.t, other)).max() < TOL
    table = c.params["class_embedding"]["embedding"]
    assert table.shape == (6, 48) and not table[-1].any()
    emb, c.torch.class_embedding = c.torch.class_embedding, None
    try:
        ref = c.theirs(c.x, c.t)
    finally:
        c.torch.class_embedding = emb
    assert np.abs(c.ours(c.x, c.t, None) - ref).max() < TOL


@pytest.mark.parametrize("i", [0, 9])
def test_ddim_step_matches_scheduler(case, i):
    """Step i of 10 DDIM steps (eta = 0, 'leading' spacing) through diffjax's process, grid,
    eps-denoiser and sampler equals DDIMScheduler.step on the converted model; step 9 goes from
    t = 0 to alpha_bar = 1 (set_alpha_to_one), our step into sigma = 0."""
    diffusers = diffusers_module()
    c, n = case("cond"), 10
    sch = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                  clip_sample=False, set_alpha_to_one=True,
                                  timestep_spacing="leading")
    sch.set_timesteps(n)
    t = int(sch.timesteps[i])
    x_t = np.random.RandomState(2 + i).randn(*c.x.shape).astype(np.float32)
    with torch.no_grad():
        eps = c.torch(nchw(x_t), t, torch.from_numpy(c.y).long()).sample
        ref = nhwc(sch.step(eps, t, nchw(x_t), eta=0.0).prev_sample)

    process = processes.get("vp_discrete")              # DDPM linear betas, 1000 steps
    grid = timesteps.sigmas(process, n, "leading")
    net = lambda p, x, s, labels=None, context=None, train=False: c.apply(p, x, s, labels)
    D = denoisers.bind(denoisers.from_network(net, process, "eps"), {"params": c.params})
    st = samplers.stepper("ddim", D, grid, cond={"label": jnp.asarray(c.y)})
    ab = process.alphas_cumprod()
    prev = t - 1000 // n
    x_next = st.step(st.init(jnp.asarray(x_t / np.sqrt(ab[t]))), i).x      # EDM frame x_t / alpha
    ours = np.asarray(x_next) * np.sqrt(ab[prev] if prev >= 0 else 1.0)
    diff = float(np.abs(ours - ref).max())
    print(f"DDIM step {i} (t={t}): max |ours - diffusers| = {diff:.2e}")
    assert 0.3 < np.abs(ref).max() and diff < TOL


def test_registry_builds_and_counts(case):
    c = case("ddpm")
    cfg = cu.model_config(c.hf_config)
    assert cfg["name"] == "unet2d" and cfg["input_shape"] == (16, 16, 3)
    assert isinstance(c.model, UNet2D)
    n_torch = sum(p.numel() for p in c.torch.parameters())
    assert registry.count_params(cfg) == n_torch                  # at cfg's input_shape
    cond = case("cond")
    # our class table has one more row than diffusers' (the null class)
    assert registry.count_params(cond.model, (8, 8, 3)) == \
        sum(p.numel() for p in cond.torch.parameters()) + 48


def test_legacy_attention_names(case):
    """Checkpoints saved before diffusers renamed attention weights (query/key/value/proj_attn)."""
    c = case("ddpm")
    old = {}
    for k, v in c.tensors.items():
        for new, legacy in cu.LEGACY_ATTENTION.items():
            k = k.replace(f".{new}.", f".{legacy}.")
        old[k] = v
    assert any(".proj_attn." in k for k in old)
    params = cu.convert(c.hf_config, StateDict(old))
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(c.params)):
        np.testing.assert_array_equal(a, b)


def test_errors_name_what_is_wrong(case):
    c = case("ddpm")
    key = "down_blocks.1.attentions.0.to_k.weight"
    missing = {k: v for k, v in c.tensors.items() if k != key}
    with pytest.raises(ConvertError, match=f"missing tensor '{key}'"):
        cu.convert(c.hf_config, StateDict(missing))
    bad = dict(c.tensors)
    bad["mid_block.resnets.1.conv2.weight"] = np.zeros((64, 64, 1, 1), np.float32)
    with pytest.raises(ConvertError, match=r"'mid_block.resnets.1.conv2.weight' has shape "
                                           r"\(64, 64, 1, 1\).*expects \(64, 64, 3, 3\)"):
        cu.convert(c.hf_config, StateDict(bad))
    extra = {**c.tensors, "mid_block.extra.weight": np.zeros(3, np.float32)}
    with pytest.raises(ConvertError, match="mid_block.extra.weight"):
        cu.convert(c.hf_config, StateDict(extra))

    cases = [({"cross_attention_dim": 768}, "'cross_attention_dim'"),
             ({"time_embedding_type": "learned"}, "'time_embedding_type' = 'learned'"),
             ({"class_embed_type": "timestep"}, "'class_embed_type' = 'timestep'"),
             ({"act_fn": "gelu"}, "'act_fn' = 'gelu'"),
             ({"norm_num_groups": None}, "'norm_num_groups'"),
             ({"down_block_types": ["SkipDownBlock2D", "DownBlock2D", "DownBlock2D"]},
              "'down_block_types' holds 'SkipDownBlock2D'"),
             ({"up_block_types": ["UpBlock2D", "UpBlock2D"]}, "2 up_block_types"),
             ({"_class_name": "UNet2DConditionModel"}, "UNet2DConditionModel")]
    for change, msg in cases:
        with pytest.raises(ConvertError, match=msg):
            cu.model_config({**c.hf_config, **change})


def test_module_checks_its_input(case):
    c = case("cond")
    with pytest.raises(ValueError, match="4 channels, in_channels is 3"):
        c.model.init(jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 4)), jnp.zeros((1,)))
    with pytest.raises(ValueError, match="not divisible by 2"):
        c.model.init(jax.random.PRNGKey(0), jnp.zeros((1, 7, 8, 3)), jnp.zeros((1,)))
