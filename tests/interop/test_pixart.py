"""diffusers PixArtTransformer2DModel -> diffjax 'pixart' (diffjax/convert/pixart.py): a small PixArt
with random weights, converted, computes diffusers' forward (T5-like context, its attention mask,
the 1024 models' resolution / aspect micro-conditions) to float32 round-off, in both layer layouts;
the converted run samples with a context through inference.generate; bad checkpoints are refused."""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffjax import convert  # noqa: E402
from diffjax.models import registry, scan  # noqa: E402

CFG = dict(num_attention_heads=2, attention_head_dim=12, in_channels=4, out_channels=8,
           num_layers=3, sample_size=8, patch_size=2, cross_attention_dim=24, caption_channels=10,
           use_additional_conditions=False, interpolation_scale=None)
CTX = 5


def _diffusers_pixart(seed=0, **over):
    torch.manual_seed(seed)
    m = diffusers.PixArtTransformer2DModel(**{**CFG, **over}).eval()
    with torch.no_grad():
        for p in m.parameters():          # every weight random: zero-init layers hide no bug
            p.normal_(0, 0.15)
    return m


def _inputs(n=3, size=8):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, size, size, 4)).astype(np.float32)
    t = np.array([0.0, 333.0, 999.0][:n], np.float32)
    ctx = rng.standard_normal((n, CTX, CFG["caption_channels"])).astype(np.float32)
    mask = np.ones((n, CTX), bool)
    mask[1, 3:] = False                    # a short caption: its padding tokens ignored
    mask[2, 1:] = False
    return x, t, ctx, mask


def _torch_out(m, x, t, ctx, mask, size=8):
    kw = {}
    if m.use_additional_conditions:
        n = x.shape[0]
        kw["added_cond_kwargs"] = {"resolution": torch.tensor([[size * 8.0, size * 8.0]] * n),
                                   "aspect_ratio": torch.tensor([[1.0]] * n)}
    with torch.no_grad():
        out = m(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()),
                encoder_hidden_states=torch.from_numpy(ctx), timestep=torch.from_numpy(t),
                encoder_attention_mask=torch.from_numpy(mask.astype(np.float32)), **kw).sample
    return out.numpy().transpose(0, 2, 3, 1)


def _ours(conv, x, t, ctx, mask, **fields):
    model = registry.build_model(dict(conv.model_config, **fields))
    params = scan.to_model(conv.params, model)
    return np.asarray(model.apply({"params": jax.tree.map(jnp.asarray, params)}, jnp.asarray(x),
                                  jnp.asarray(t), None, jnp.asarray(ctx),
                                  context_mask=jnp.asarray(mask)))


@pytest.mark.parametrize("scan_layers", [False, True])
def test_converted_forward_equals_diffusers(tmp_path, scan_layers):
    m = _diffusers_pixart()
    m.save_pretrained(str(tmp_path / "pixart"))
    conv = convert.convert_model_dir(str(tmp_path / "pixart"))
    assert conv.model_config["micro_conditions"] is False
    x, t, ctx, mask = _inputs()
    ours = _ours(conv, x, t, ctx, mask, scan_layers=scan_layers)
    ref = _torch_out(m, x, t, ctx, mask)
    assert ours.shape == ref.shape == (3, 8, 8, 8)
    scale = np.abs(ref).max()
    assert scale > 0.1
    assert np.abs(ours - ref).max() < 1e-4 * max(scale, 1.0), (np.abs(ours - ref).max(), scale)
    # the mask matters (so the equality above checks its convention)
    unmasked = _ours(conv, x, t, ctx, np.ones_like(mask))
    assert np.abs(unmasked[1:] - ref[1:]).max() > 1e-3


def test_micro_conditions_and_interpolation_scale(tmp_path):
    """PixArt-XL-2-1024-MS's layout: resolution + aspect-ratio embedders (hidden divisible by 3) and
    an interpolation_scale other than 1."""
    m = _diffusers_pixart(use_additional_conditions=True, interpolation_scale=2)
    m.save_pretrained(str(tmp_path / "pixart"))
    conv = convert.convert_model_dir(str(tmp_path / "pixart"))
    assert conv.model_config["micro_conditions"] is True and conv.model_config["pe_scale"] == 2.0
    x, t, ctx, mask = _inputs()
    ref = _torch_out(m, x, t, ctx, mask)
    ours = _ours(conv, x, t, ctx, mask)
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() < 1e-4 * max(scale, 1.0), (np.abs(ours - ref).max(), scale)
    # without its micro-conditions the same weights compute something else
    conv.params.pop("resolution_embedder"), conv.params.pop("aspect_ratio_embedder")
    assert np.abs(_ours(conv, x, t, ctx, mask, micro_conditions=False) - ref).max() > 1e-2


def test_convert_run_then_generate_with_context(tmp_path):
    """A pipeline folder (transformer/ + scheduler/) -> run -> diffjax sample, and generate with
    T5-like tokens as cond['context'] (the null context is zeros: no T5 in the checkpoint)."""
    from diffjax import inference
    from tests.training.util import run_cli

    src = tmp_path / "pipe"
    _diffusers_pixart().save_pretrained(str(src / "transformer"))
    diffusers.DPMSolverMultistepScheduler().save_pretrained(str(src / "scheduler"))
    (src / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    w = str(tmp_path / "run")
    p = run_cli("convert", "--from", "diffusers", str(src), "--workdir", w)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["architecture"] == "PixArtTransformer2DModel" and info["model"] == "pixart"
    out = str(tmp_path / "grid.png")
    p = run_cli("sample", "--workdir", w, "--num", "2", "--steps", "2", "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    r = inference.load(w)
    assert np.all(np.asarray(r.params["params"]["null_context"]) == 0)
    rng = np.random.default_rng(1)
    ctx = rng.standard_normal((2, 7, CFG["caption_channels"])).astype(np.float32)
    kw = dict(sampler="ddim", steps=2, decode=False, clip=False)
    a = inference.generate(r, 2, cond={"context": ctx}, **kw)
    b = inference.generate(r, 2, cond={"context": ctx}, **kw)
    c = inference.generate(r, 2, **kw)
    assert a.shape == (2, 8, 8, 4) and np.array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3             # the context reaches the network


def test_bad_checkpoints_are_refused_by_name(tmp_path):
    from safetensors.numpy import load_file, save_file

    d = str(tmp_path / "pixart")
    _diffusers_pixart().save_pretrained(d)
    wpath = os.path.join(d, "diffusion_pytorch_model.safetensors")
    sd = load_file(wpath)
    bad = dict(sd)
    del bad["transformer_blocks.2.attn2.to_v.weight"]
    save_file(bad, wpath)
    with pytest.raises(convert.ConvertError, match="transformer_blocks.2.attn2.to_v.weight"):
        convert.convert_model_dir(d)
    bad = dict(sd, **{"transformer_blocks.0.scale_shift_table": np.zeros((5, 24), np.float32)})
    save_file(bad, wpath)
    with pytest.raises(convert.ConvertError, match="scale_shift_table.*shape"):
        convert.convert_model_dir(d)
    save_file(sd, wpath)
    cfg = json.load(open(os.path.join(d, "config.json")))
    for over, msg in [({"caption_channels": None}, "caption_channels"),
                      ({"cross_attention_dim": 32}, "cross_attention_dim"),
                      ({"norm_eps": 1e-5}, "norm_eps"),
                      ({"qk_norm": "rms"}, "qk_norm")]:
        json.dump(dict(cfg, **over), open(os.path.join(d, "config.json"), "w"))
        with pytest.raises(convert.ConvertError, match=msg):
            convert.convert_model_dir(d)
