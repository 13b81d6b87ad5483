"""Latent diffusion end to end on a tiny image folder the test writes and a tiny random VAE:
diffjax encode -> the cache holds exactly the VAE's latents (posterior draws from per-example
keys, the flipped images' latents), sharded encoding equals one device, diffjax train reads the
cache (and refuses a stale one), diffjax sample decodes with the run's VAE."""
import json
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from diffjax import latent
from diffjax.models.autoencoder import AutoencoderKL
from tests.training.util import run_cli, run_python

VAE_FIELDS = dict(block_out_channels=(8, 16), layers_per_block=1, latent_channels=4,
                  norm_num_groups=4, scaling_factor=0.5, shift_factor=0.1)
CONFIG = """
import ml_collections
from diffjax.training.config import base

def get_config(arg=None):
    c = base("dit_tiny")
    c.model.update(dict(input_shape=(8, 8, 4), num_classes=2, patch_size=2, hidden_size=32,
                        depth=2, num_heads=2))
    c.data = ml_collections.ConfigDict(dict(name="folder", path={images!r}, resolution=16,
                                            flip=True))
    c.latent.vae = {vae!r}
    c.latent.batch_size = 12
    c.total_steps, c.batch_size, c.log_every = 3, 8, 1
    c.checkpoint.every = 3
    c.sample.num, c.sample.batch_size, c.sample.steps = 0, 4, 2
    c.eval.at_end = False
    return c
"""


def _shape(c, rng):
    im = np.zeros((16, 16, 3), np.uint8)
    cx, cy = rng.integers(5, 11, 2)
    yy, xx = np.mgrid[:16, :16]
    mask = ((xx - cx) ** 2 + (yy - cy) ** 2 < 16) if c == 0 else (
        (abs(xx - cx) < 4) & (abs(yy - cy) < 4))
    im[mask] = rng.integers(100, 255, 3)
    return im


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("latent")
    rng = np.random.default_rng(0)
    for c, name in enumerate(["disc", "square"]):
        os.makedirs(root / "images" / name)
        for i in range(10):
            Image.fromarray(_shape(c, rng)).save(root / "images" / name / f"{i}.png")
    module = AutoencoderKL(**VAE_FIELDS)
    params = module.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))["params"]
    latent.save_vae(str(root / "vae"), VAE_FIELDS, params)
    cfg = root / "cfg.py"
    cfg.write_text(CONFIG.format(images=str(root / "images"), vae=str(root / "vae")))
    return root


@pytest.fixture(scope="module")
def encoded(setup):
    w = str(setup / "run")
    p = run_cli("encode", "--config", str(setup / "cfg.py"), "--workdir", w)
    assert p.returncode == 0, p.stderr[-3000:]
    return w, json.loads(p.stdout.strip().splitlines()[-1])


def _images(root):
    from diffjax.data.folders import load_image_folder
    x, y, _ = load_image_folder(str(root / "images"), 16)
    return x, y


def test_cache_holds_the_vae_posterior_draws(setup, encoded):
    """latents[i] = (mean_i + exp(logvar_i / 2) n_i - shift) * scale, n_i ~ fold_in(key(seed), i);
    the second half is the mirrored images' (flip), labels repeat."""
    w, summary = encoded
    src, meta = latent.load_cache(os.path.join(w, "latents"))
    x, y = _images(setup)
    assert summary["num"] == 2 * len(x) == len(src) and summary["latent_shape"] == [8, 8, 4]
    assert meta["flip"] and meta["posterior"] == "sample" and meta["num_classes"] == 2
    module = AutoencoderKL(**VAE_FIELDS)
    vae = latent.load_vae(str(setup / "vae"))
    xx = np.concatenate([x, x[:, :, ::-1]])
    mean, logvar = module.apply({"params": vae.params}, jnp.asarray(xx), method=module.encode)
    key = jax.random.key(0)    # config.seed
    noise = np.stack([np.asarray(jax.random.normal(jax.random.fold_in(key, i), mean.shape[1:]))
                      for i in range(len(xx))])
    want = (np.asarray(mean) + np.exp(0.5 * np.asarray(logvar)) * noise - 0.1) * 0.5
    np.testing.assert_allclose(src.x, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(src.labels, np.concatenate([y, y]))
    # the same latents through the registry's 'latents' source
    from diffjax.data import registry
    direct = registry.get_source({"name": "latents", "path": os.path.join(w, "latents")})
    np.testing.assert_array_equal(direct.x, src.x)


def test_sharded_encode_equals_one_device(setup, tmp_path):
    """8 simulated devices, batch 12 (rounded to 16) vs one device, batch 5: the same latents."""
    x, _ = _images(setup)
    np.save(tmp_path / "x.npy", x)
    code = textwrap.dedent(f"""
        import sys, jax, numpy as np
        from diffjax import latent
        vae = latent.load_vae({str(setup / 'vae')!r})
        x = np.load({str(tmp_path / 'x.npy')!r})
        z = latent.encode_images(vae, x, batch_size=int(sys.argv[1]), key=jax.random.key(3))
        m = latent.encode_images(vae, x, batch_size=int(sys.argv[1]), posterior="mean")
        np.savez(sys.argv[2], z=z, m=m, n=len(jax.devices()))
    """)
    for devices, batch in ((8, 12), (None, 5)):
        p = run_python(code, devices=devices, args=(str(batch), str(tmp_path / f"{batch}.npz")))
        assert p.returncode == 0, p.stderr[-3000:]
    a, b = np.load(tmp_path / "12.npz"), np.load(tmp_path / "5.npz")
    assert int(a["n"]) == 8 and int(b["n"]) == 1
    np.testing.assert_allclose(a["z"], b["z"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a["m"], b["m"], rtol=1e-5, atol=1e-6)
    assert np.abs(a["z"] - a["m"]).max() > 1e-3   # the draws are draws


@pytest.fixture(scope="module")
def trained(setup, encoded):
    w, _ = encoded
    p = run_cli("train", "--config", str(setup / "cfg.py"), "--workdir", w)
    assert p.returncode == 0, p.stderr[-3000:]
    return w


@pytest.mark.slow
@pytest.mark.ci
def test_train_reads_the_cache_and_sample_decodes(setup, trained, tmp_path):
    """The run trains on 8x8x4 latents; `diffjax sample` writes decoded 16x16 RGB images, equal
    to the VAE's decode of the run's latent samples."""
    from diffjax import inference

    w = trained
    assert json.load(open(os.path.join(w, "run.json")))["example_shape"] == [8, 8, 4]
    npz = str(tmp_path / "s.npz")
    p = run_cli("sample", "--workdir", w, "--num", "4", "--steps", "2", "--npz", npz,
                "--out", str(tmp_path / "g.png"))
    assert p.returncode == 0, p.stderr[-3000:]
    assert json.loads(p.stdout.strip().splitlines()[-1])["vae"] == str(setup / "vae")
    x = np.load(npz)["x"]
    assert x.shape == (4, 16, 16, 3) and x.min() >= -1 and x.max() <= 1
    run = inference.load(w)
    assert run.vae is not None and run.vae.fingerprint == latent.fingerprint(str(setup / "vae"))
    z = inference.generate(run, 4, sampler="heun", steps=2, decode=False)
    assert z.shape == (4, 8, 8, 4)
    want = np.clip(np.asarray(run.vae.decode(z)), -1, 1)
    np.testing.assert_allclose(x, want, atol=2e-4)
    # EDM's fixed-seed protocol: two calls with first_index give the samples of one call
    parts = np.concatenate([inference.generate(run, 2, sampler="heun", steps=2, decode=False),
                            inference.generate(run, 2, sampler="heun", steps=2, decode=False,
                                               first_index=2)])
    np.testing.assert_allclose(parts, z, atol=1e-5)


@pytest.mark.slow
@pytest.mark.ci
def test_stale_or_missing_cache_is_refused(setup, trained, tmp_path):
    cfg = str(setup / "cfg.py")
    p = run_cli("train", "--config", cfg, "--workdir", str(tmp_path / "new"))
    assert p.returncode == 1 and "no latent cache at" in p.stderr and "diffjax encode" in p.stderr
    p = run_cli("train", "--config", cfg, "--workdir", trained, "--config.total_steps=4",
                "--config.latent.posterior=mean")
    assert p.returncode == 1 and "latent.posterior" in p.stderr, p.stderr[-2000:]
    # another VAE under the same path: the fingerprint no longer matches
    other = str(tmp_path / "vae2")
    module = AutoencoderKL(**VAE_FIELDS)
    latent.save_vae(other, VAE_FIELDS,
                    module.init(jax.random.key(9), jnp.zeros((1, 16, 16, 3)))["params"])
    p = run_cli("train", "--config", cfg, "--workdir", trained, "--config.total_steps=4",
                f"--config.latent.vae={other}")
    assert p.returncode == 1 and "another VAE" in p.stderr, p.stderr[-2000:]
    p = run_cli("search", "--workdir", trained, "--budget", "4", "--reward", "class:1")
    assert p.returncode == 1 and "latent run" in p.stderr, p.stderr[-2000:]


def test_vae_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        latent.load_vae(str(tmp_path / "nope"))
    module = AutoencoderKL(**VAE_FIELDS)
    params = module.init(jax.random.key(1), jnp.zeros((1, 16, 16, 3)))["params"]
    d = latent.save_vae(str(tmp_path / "v"), {**VAE_FIELDS, "latent_channels": 3}, params)
    with pytest.raises(ValueError, match="does not fit"):
        latent.load_vae(d)
    d = latent.save_vae(str(tmp_path / "w"), {**VAE_FIELDS, "latent_chanels": 4}, params)
    with pytest.raises(ValueError, match="unknown AutoencoderKL field"):
        latent.load_vae(d)
    with open(os.path.join(d, "params.safetensors"), "wb") as f:
        f.write(b"garbage")
    with open(os.path.join(d, "vae.json"), "w") as f:
        json.dump(VAE_FIELDS, f)
    with pytest.raises(ValueError, match="corrupt"):
        latent.load_vae(d)
