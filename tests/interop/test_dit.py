"""diffusers DiTTransformer2DModel -> diffjax 'dit' (diffjax/convert/dit.py): a small DiT with
random weights, converted, computes diffusers' forward to float32 round-off, in both layer layouts;
the converted run directory samples through the CLI; bad checkpoints are refused by name."""
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

CFG = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
           num_layers=3, sample_size=8, patch_size=2, num_embeds_ada_norm=10)


def _diffusers_dit(seed=0, **over):
    torch.manual_seed(seed)
    m = diffusers.DiTTransformer2DModel(**{**CFG, **over}).eval()
    with torch.no_grad():
        for p in m.parameters():          # every weight random: zero-init layers hide no bug
            p.normal_(0, 0.15)
        emb0 = m.transformer_blocks[0].norm1.emb.state_dict()
        for blk in m.transformer_blocks[1:]:   # the released weights' equal copies
            blk.norm1.emb.load_state_dict(emb0)
    return m


def _save(m, path):
    m.save_pretrained(str(path))
    return str(path)


def _torch_out(m, x, t, y):
    with torch.no_grad():
        out = m(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), timestep=torch.from_numpy(t),
                class_labels=torch.from_numpy(y)).sample
    return out.numpy().transpose(0, 2, 3, 1)


def _inputs(n=4):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 8, 8, 4)).astype(np.float32)
    t = np.array([0.0, 17.0, 500.0, 999.0][:n], np.float32)
    y = np.array([0, 3, 9, 10][:n], np.int64)      # 10: the null (CFG) row
    return x, t, y


@pytest.mark.parametrize("scan_layers", [False, True])
def test_converted_forward_equals_diffusers(tmp_path, scan_layers):
    m = _diffusers_dit()
    conv = convert.convert_model_dir(_save(m, tmp_path / "dit"))
    fields = dict(conv.model_config, scan_layers=scan_layers)
    model = registry.build_model(fields)
    params = scan.to_model(conv.params, model)
    x, t, y = _inputs()
    ours = np.asarray(model.apply({"params": jax.tree.map(jnp.asarray, params)}, jnp.asarray(x),
                                  jnp.asarray(t), jnp.asarray(y, np.int32)))
    ref = _torch_out(m, x, t, y)
    assert ours.shape == ref.shape == (4, 8, 8, 8)
    scale = np.abs(ref).max()
    assert scale > 0.1                        # a real signal, not zeros
    # float32 round-off (attention and LayerNorm sum in other orders): 2e-6 of the output's scale
    assert np.abs(ours - ref).max() < 1e-4 * max(scale, 1.0), (np.abs(ours - ref).max(), scale)


def test_the_position_table_and_time_embedding_conventions_matter(tmp_path):
    """The two conventions the port differs in (x-first sincos table, freq_shift=1): changing either
    breaks parity, so the test above checks them."""
    m = _diffusers_dit()
    conv = convert.convert_model_dir(_save(m, tmp_path / "dit"))
    x, t, y = _inputs()
    ref = _torch_out(m, x, t, y)
    wrong = registry.build_model(dict(conv.model_config, freq_shift=0.0))
    out = np.asarray(wrong.apply({"params": jax.tree.map(jnp.asarray, conv.params)},
                                 jnp.asarray(x), jnp.asarray(t), jnp.asarray(y, np.int32)))
    assert np.abs(out - ref).max() > 1e-2


def test_convert_run_then_sample(tmp_path):
    """A pipeline folder (transformer/ + scheduler/) -> run directory -> diffjax sample."""
    from tests.training.util import run_cli

    src = tmp_path / "pipe"
    _save(_diffusers_dit(), src / "transformer")
    diffusers.DDIMScheduler(beta_schedule="linear", timestep_spacing="trailing").save_pretrained(
        str(src / "scheduler"))
    (src / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    w = str(tmp_path / "run")
    p = run_cli("convert", "--from", "diffusers", str(src), "--workdir", w)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info["architecture"] == "DiTTransformer2DModel" and info["num_classes"] == 10
    cfg = json.load(open(os.path.join(w, "config.json")))
    assert cfg["diffusion"]["process"] == "vp_discrete" and cfg["sample"]["spacing"] == "trailing"
    out = str(tmp_path / "grid.png")
    p = run_cli("sample", "--workdir", w, "--num", "4", "--steps", "3", "--out", out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert os.path.getsize(out) > 0
    # the run's params are the converted ones, bit for bit
    from diffjax import inference
    r = inference.load(w)
    conv = convert.convert_model_dir(str(src / "transformer"))
    got = jax.tree_util.tree_leaves(r.params["params"])
    want = jax.tree_util.tree_leaves(conv.params)
    assert all(np.array_equal(np.asarray(a), b) for a, b in zip(got, want))
    p = run_cli("convert", "--from", "diffusers", str(src), "--workdir", w)
    assert p.returncode == 1 and "already holds a run" in p.stderr


def test_bad_checkpoints_are_refused_by_name(tmp_path):
    from safetensors.numpy import load_file, save_file

    d = _save(_diffusers_dit(), tmp_path / "dit")
    wpath = os.path.join(d, "diffusion_pytorch_model.safetensors")
    sd = load_file(wpath)
    bad = dict(sd)
    del bad["transformer_blocks.1.attn1.to_k.weight"]
    save_file(bad, wpath)
    with pytest.raises(convert.ConvertError, match="transformer_blocks.1.attn1.to_k.weight"):
        convert.convert_model_dir(d)
    bad = dict(sd, **{"proj_out_2.weight": np.zeros((5, 16), np.float32)})
    save_file(bad, wpath)
    with pytest.raises(convert.ConvertError, match="proj_out_2.weight.*shape"):
        convert.convert_model_dir(d)
    bad = dict(sd, **{"transformer_blocks.2.norm1.emb.timestep_embedder.linear_1.bias":
                      sd["transformer_blocks.2.norm1.emb.timestep_embedder.linear_1.bias"] + 1})
    save_file(bad, wpath)
    with pytest.raises(convert.ConvertError, match="differs from block 0"):
        convert.convert_model_dir(d)
    bad = dict(sd, **{"extra.weight": np.zeros((2,), np.float32)})
    save_file(bad, wpath)
    with pytest.raises(convert.ConvertError, match="extra.weight"):
        convert.convert_model_dir(d)
    save_file(sd, wpath)
    cfg = json.load(open(os.path.join(d, "config.json")))
    json.dump(dict(cfg, rope_theta=10000), open(os.path.join(d, "config.json"), "w"))
    with pytest.raises(convert.ConvertError, match="rope_theta"):
        convert.convert_model_dir(d)
    json.dump(dict(cfg, _class_name="SD3Transformer2DModel"), open(os.path.join(d, "config.json"),
                                                                  "w"))
    with pytest.raises(convert.ConvertError, match="SD3Transformer2DModel"):
        convert.convert_model_dir(d)


def test_finetune_a_converted_run(tmp_path):
    """diffjax convert, then diffjax train --config configs/finetune.py:RUN on an .npz of the
    model's example shape: training starts at the converted weights (no optimizer state needed)."""
    from diffjax import inference
    from tests.training.util import ROOT, run_cli

    src = tmp_path / "dit"
    _save(_diffusers_dit(), src)
    run = str(tmp_path / "run")
    assert run_cli("convert", "--from", "diffusers", str(src), "--workdir", run).returncode == 0
    rng = np.random.default_rng(0)
    data = str(tmp_path / "data.npz")
    np.savez(data, images=rng.uniform(-1, 1, (16, 8, 8, 4)).astype(np.float32),
             labels=rng.integers(0, 10, 16))
    ft = str(tmp_path / "ft")
    p = run_cli("train", "--config", os.path.join(ROOT, "configs", "finetune.py") + ":" + run,
                "--workdir", ft, f"--config.data.path={data}", "--config.total_steps=2",
                "--config.batch_size=4", "--config.checkpoint.every=2")
    assert p.returncode == 0, p.stderr[-3000:]
    conv = jax.tree_util.tree_leaves(inference.load(run).params["params"])
    tuned = jax.tree_util.tree_leaves(inference.load(ft, params="params").params["params"])
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max()) for a, b in zip(conv, tuned))
    assert 0 < diff < 1e-3            # 2 AdamW steps of lr <= 1e-4 from the converted weights
