"""FID, its statistics files, precision / recall and the Inception's conventions, without torch:
closed forms, scipy references, hand-computed k-NN answers, sharded == one device."""
import json
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from flax import traverse_util

from diffjax.convert.state_dict import ConvertError
from diffjax.metrics import fid, inception, precision_recall as pr
from diffjax.training import evaluation

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# --- the Frechet distance -------------------------------------------------------------------------
def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
    rng = np.random.default_rng(0)
    m1, m2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.5, 2, size=6), rng.uniform(0.5, 2, size=6)
    want = np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2)     # W2^2 of commuting Gaussians
    got = fid.frechet_distance(m1, np.diag(s1 ** 2), m2, np.diag(s2 ** 2))
    assert got == pytest.approx(want, rel=1e-10)


def test_frechet_distance_equals_scipy_sqrtm_on_a_random_spd_pair():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 40, 40))
    c1, c2 = a @ a.T / 40 + 0.1 * np.eye(40), b @ b.T / 40 + 0.1 * np.eye(40)
    m1, m2 = rng.normal(size=(2, 40))
    covmean = scipy.linalg.sqrtm(c1 @ c2).real                   # pytorch-fid's formula
    want = np.sum((m1 - m2) ** 2) + np.trace(c1 + c2 - 2 * covmean)
    assert fid.frechet_distance(m1, c1, m2, c2) == pytest.approx(want, rel=1e-9)
    assert fid.frechet_distance(m2, c2, m1, c1) == pytest.approx(want, rel=1e-9)   # symmetric


def test_frechet_distance_of_identical_stats_is_zero_and_shapes_must_agree():
    f = np.random.default_rng(2).normal(size=(300, 16)) @ np.random.default_rng(3).normal(
        size=(16, 16))
    mu, sigma = fid.feature_stats(f)
    assert abs(fid.frechet_distance(mu, sigma, mu, sigma)) < 1e-9 * np.trace(sigma)
    with pytest.raises(ValueError, match="statistics of different features"):
        fid.frechet_distance(mu, sigma, mu[:8], sigma[:8, :8])
    # the trainer's evaluation keeps its names, now the metrics' functions
    assert evaluation.frechet_distance is fid.frechet_distance
    assert evaluation.feature_stats is fid.feature_stats


def test_streaming_moments_equal_numpy_mean_and_unbiased_cov():
    f = np.random.default_rng(4).normal(3.0, 2.0, size=(103, 7))
    acc = fid.Moments()
    for s in range(0, 103, 10):
        acc.add(f[s:s + 10])
    mu, sigma = acc.stats()
    np.testing.assert_allclose(mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="at least 2 images"):
        one = fid.Moments()
        one.add(f[:1])
        one.stats()


# --- statistics files -----------------------------------------------------------------------------
def test_stats_npz_round_trip_and_bad_files(tmp_path):
    mu, sigma = np.arange(3.0), np.eye(3) * 2
    p = str(tmp_path / "stats.npz")
    fid.save_stats(p, mu, sigma)
    got = fid.load_stats(p)
    np.testing.assert_array_equal(got[0], mu)
    np.testing.assert_array_equal(got[1], sigma)
    assert fid.frechet_distance(*got, *fid.as_stats((mu, sigma))) == pytest.approx(0, abs=1e-12)
    with np.load(p) as f:                       # the pytorch-fid / clean-fid / EDM key names
        assert sorted(f.files) == ["mu", "sigma"]

    np.savez(tmp_path / "bad.npz", mu=mu, cov=sigma)
    with pytest.raises(ValueError, match=r"missing 'sigma' \(the file holds \['cov', 'mu'\]\)"):
        fid.load_stats(str(tmp_path / "bad.npz"))
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=np.eye(4))
    with pytest.raises(ValueError, match=r"expected \(D,\) and \(D, D\)"):
        fid.load_stats(str(tmp_path / "shape.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        fid.load_stats(str(tmp_path / "text.npz"))
    with pytest.raises(FileNotFoundError, match="missing.npz not found"):
        fid.load_stats(str(tmp_path / "missing.npz"))
    with pytest.raises(ValueError, match="saved as .npz"):
        fid.save_stats(str(tmp_path / "stats"), mu, sigma)


# --- precision and recall -------------------------------------------------------------------------
def test_precision_recall_of_identical_and_of_far_disjoint_sets():
    x = np.random.default_rng(5).normal(size=(50, 8))
    assert pr.precision_recall(x, x) == {"precision": 1.0, "recall": 1.0}
    assert pr.precision_recall(x, x + 1000.0) == {"precision": 0.0, "recall": 0.0}


def test_precision_recall_hand_computed_one_dimensional_case():
    """R = 0..9 (3rd-neighbour radius 2, 3 at the ends); G = 0, .1, .2, .3, .4 (radii .3, .2, .2,
    .2, .3): every g lies within 3 of r = 0 -> precision 1; only r = 0 lies in G's balls
    (r = 1 is .6 from .4) -> recall 1/10."""
    real = np.arange(10.0)[:, None]
    fake = np.array([0.0, 0.1, 0.2, 0.3, 0.4])[:, None]
    np.testing.assert_allclose(pr.kth_radii(real), [9.0] + [4.0] * 8 + [9.0], rtol=1e-6)
    np.testing.assert_allclose(pr.kth_radii(fake), np.array([.3, .2, .2, .2, .3]) ** 2, rtol=1e-5)
    assert pr.precision_recall(real, fake) == pytest.approx({"precision": 1.0, "recall": 0.1})


def test_precision_recall_equal_a_brute_force_numpy_reference_in_uneven_batches():
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(70, 5)), rng.normal(0.7, 1.3, size=(45, 5))

    def ref(a, b, k=3):   # f(x, Phi) with all pairwise distances at once, float64
        d_bb = np.linalg.norm(b[:, None] - b[None], axis=-1)
        radii = np.sort(d_bb, axis=1)[:, k]
        return np.mean((np.linalg.norm(a[:, None] - b[None], axis=-1) <= radii).any(1))

    got = pr.precision_recall(real, fake, row_batch=16)      # 70 and 45 rows: padded last batches
    assert got["precision"] == pytest.approx(ref(fake, real))
    assert got["recall"] == pytest.approx(ref(real, fake))
    assert 0.1 < got["precision"] < 0.95 and 0.1 < got["recall"] < 0.95   # a non-trivial case
    with pytest.raises(ValueError, match="N > 3"):
        pr.precision_recall(real[:3], fake)


# --- images as the network reads them -------------------------------------------------------------
def test_quantization_is_the_saved_png_convention():
    x = np.random.default_rng(7).uniform(-1.2, 1.2, size=(4, 5, 6, 3)).astype(np.float32)
    edm = np.clip(x * 127.5 + 128, 0, 255).astype(np.uint8)           # EDM's generate.py
    to_tensor = lambda u: u.astype(np.float32) / np.float32(255)     # torchvision's ToTensor
    np.testing.assert_array_equal(fid.prepare(x), to_tensor(edm))    # bit for bit
    x01 = (x + 1) / 2                                                # torchvision's save_image
    tv = np.clip(x01 * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(fid.prepare(x01, (0, 1)), to_tensor(tv))
    assert (tv != edm).sum() <= 2                                     # the same convention
    np.testing.assert_array_equal(fid.prepare(edm), fid.prepare(x))  # uint8 in: used as is
    ties = np.array([0.5, 1.5, 254.5], np.float32)                   # halves round up
    got = np.asarray(fid.prepare(ties.reshape(1, 1, 3, 1), (0, 255))) * 255
    np.testing.assert_allclose(got[0, 0, :, 0], [1, 2, 255], rtol=1e-6)
    raw = np.asarray(fid.prepare(x, quantize=False))
    np.testing.assert_allclose(raw, x01, rtol=1e-6, atol=1e-7)       # not quantized, not clipped
    gray = np.asarray(fid.prepare(x[..., :1]))
    assert gray.shape == (4, 5, 6, 3) and (gray == gray[..., :1]).all()   # PIL's convert('RGB')
    with pytest.raises(ValueError, match=r"channel-last.*\(4, 3, 5, 6\)"):
        fid.prepare(x.transpose(0, 3, 1, 2))


def test_resize_is_bilinear_on_ramps_with_each_alignment():
    """On a ramp x[i] = i, 2-tap linear interpolation returns the (clamped) source coordinate."""
    n, m = 7, 19
    ramp = jnp.broadcast_to(jnp.arange(n, dtype=jnp.float32)[None, :, None, None], (1, n, 3, 1))
    up = np.asarray(inception.resize_bilinear(ramp, (m, 3)))[0, :, 0, 0]
    np.testing.assert_allclose(up, np.clip((np.arange(m) + 0.5) * n / m - 0.5, 0, n - 1), atol=1e-5)
    tf = np.asarray(inception.resize_bilinear(ramp, (m, 3), "tf1"))[0, :, 0, 0]
    np.testing.assert_allclose(tf, np.minimum(np.arange(m) * n / m, n - 1), atol=1e-5)
    x = jnp.asarray(np.random.default_rng(8).normal(size=(2, 8, 6, 3)), jnp.float32)
    half = np.asarray(inception.resize_bilinear(x, (4, 3)))        # 2x down: mean of 2x2 blocks
    blocks = np.asarray(x).reshape(2, 4, 2, 3, 2, 3).mean((2, 4))
    np.testing.assert_allclose(half, blocks, atol=1e-6)
    assert inception.resize_bilinear(x, (8, 6)) is x                 # equal size: identity


def test_same_padded_pools_ignore_the_padding():
    ones = jnp.full((1, 5, 5, 2), 3.0)
    np.testing.assert_array_equal(inception._avg_pool_same(ones), ones)   # corners too: / 4, not / 9
    neg = jnp.full((1, 5, 5, 2), -2.0)
    np.testing.assert_array_equal(inception._max_pool(neg, 1, 1), neg)   # padding is -inf, not 0
    assert inception._max_pool(jnp.zeros((1, 35, 35, 1))).shape == (1, 17, 17, 1)


# --- the Inception network and its weight files ---------------------------------------------------
def random_variables(seed: int = 0) -> dict:
    """Random FID Inception variables (He conv kernels, BatchNorm params and running stats that
    matter) drawn with numpy from the network's shapes: much faster than ``model.init``."""
    rng = np.random.default_rng(seed)
    out = {}
    for path, s in traverse_util.flatten_dict(inception.variable_shapes()).items():
        shape, name = s.shape, path[-1]
        if name == "kernel":
            a = rng.normal(0, math.sqrt(2.0 / math.prod(shape[:-1])), shape)
        elif name in ("scale", "var"):
            a = rng.uniform(0.5, 1.5, shape)
        else:
            a = rng.normal(0, 0.2, shape)
        out[path] = jnp.asarray(a, jnp.float32)
    return traverse_util.unflatten_dict(out)


def to_torch_layout(variables) -> dict:
    """The inverse of the converter, written from torchvision's names: pytorch-fid's state dict."""
    sd = {}
    for path, a in traverse_util.flatten_dict(jax.device_get(variables)).items():
        coll, *mod, name = path
        a = np.asarray(a)
        key = ".".join(mod)
        if mod[-1] == "conv":
            sd[key + ".weight"] = a.transpose(3, 2, 0, 1)
        elif mod == ["fc"]:
            sd["fc." + ("weight" if name == "kernel" else "bias")] = a.T if name == "kernel" else a
        else:
            sd[key + "." + {"scale": "weight", "bias": "bias", "mean": "running_mean",
                            "var": "running_var"}[name]] = a
            if name == "mean":
                sd[key + ".num_batches_tracked"] = np.zeros((), np.int64)
    return {k: np.ascontiguousarray(v) for k, v in sd.items()}


@pytest.fixture(scope="module")
def variables():
    return random_variables()


def test_inception_forward_shapes_logits_and_parameter_count(variables):
    # torchvision's Inception3 (27,161,264 params) without its aux head (3,326,696), 1008 classes
    assert sum(a.size for a in jax.tree.leaves(variables["params"])) == 23_850_960
    x = jnp.asarray(np.random.default_rng(9).uniform(size=(2, 40, 52, 3)), jnp.float32)
    f = jax.jit(lambda v, a: inception.InceptionV3().apply(v, a, True))
    pool3, logits = f(variables, x)
    t0 = time.time()
    jax.block_until_ready(f(variables, x))
    assert time.time() - t0 < 20            # a 299x299 batch of 2 on a CPU (measured ~0.4 s)
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
    assert (np.asarray(pool3) >= 0).all() and np.asarray(pool3).std() > 0.05   # a ReLU mean
    fc = variables["params"]["fc"]
    np.testing.assert_allclose(logits, pool3 @ fc["kernel"] + fc["bias"], rtol=1e-5, atol=1e-5)
    shifted = jax.tree.map(lambda a: a, variables)
    shifted["batch_stats"]["Mixed_7c"]["branch_pool"]["bn"]["mean"] += 1.0
    assert np.abs(np.asarray(f(shifted, x)[0]) - np.asarray(pool3)).max() > 1e-3   # stats used


def test_load_params_converts_a_state_dict_and_reads_converted_files(variables, tmp_path):
    from safetensors.numpy import save_file

    p = str(tmp_path / "fid_inception.safetensors")             # pytorch-fid's keys, no torch
    save_file(to_torch_layout(variables), p)
    def same(a, b):
        fa, fb = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
        return fa.keys() == fb.keys() and all(np.array_equal(fa[k], fb[k]) for k in fa)

    assert same(inception.load_params(p), variables)
    for name in ("converted.npz", "converted.safetensors"):
        inception.save_params(str(tmp_path / name), variables)
        assert same(inception.load_params(str(tmp_path / name)), variables)
    np.savez(tmp_path / "partial.npz", **{"params/fc/kernel": np.zeros((2048, 1008))})
    with pytest.raises(ConvertError, match="not converted FID Inception params: missing"):
        inception.load_params(str(tmp_path / "partial.npz"))
    with pytest.raises(FileNotFoundError, match="download pt_inception-2015-12-05-6726825d.pth "
                                                "from the pytorch-fid release"):
        inception.load_params(str(tmp_path / "pt_inception-2015-12-05-6726825d.pth"))


# --- features, sharded, and the FID of samplers ---------------------------------------------------
def fake_net(v, x):
    """A tiny feature network for the extraction tests: spatial mean of tanh(x W), (B, 4)."""
    return jnp.tanh(x @ v["w"]).mean(axis=(1, 2))


FAKE = {"w": np.random.default_rng(10).normal(size=(3, 4)).astype(np.float32)}


def fake_reference(images, value_range=(-1, 1)):
    x01 = np.floor(np.clip((images - value_range[0]) / (value_range[1] - value_range[0]) * 255
                           + 0.5, 0, 255)) / 255
    return np.tanh(x01 @ FAKE["w"]).mean(axis=(1, 2))


SHARDED = r"""
import json, sys
import jax, numpy as np
sys.path.insert(0, ".")
from tests.metrics.test_fid import FAKE, fake_net
from diffjax.metrics import fid
x = np.random.default_rng(11).uniform(-1, 1, size=(13, 6, 5, 3)).astype(np.float32)
f8 = fid.Features(fake_net, FAKE, batch_size=6)
f1 = fid.Features(fake_net, FAKE, batch_size=5, devices=jax.devices()[:1])
y8 = f8(x)
np.save(sys.argv[1], np.stack([y8, f1(x)]))
print(json.dumps({"devices": len(jax.devices()), "mesh": int(f8.mesh.devices.size),
                  "batch": f8.batch_size, "spec": str(f8._rows.spec)}))
"""


def test_sharded_features_equal_one_device_and_the_reference(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = str(tmp_path / "y.npy")
    p = subprocess.run([sys.executable, "-c", SHARDED, out], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    info = json.loads(p.stdout.strip().splitlines()[-1])
    assert info == {"devices": 8, "mesh": 8, "batch": 8, "spec": "P('batch',)"}
    y8, y1 = np.load(out)
    x = np.random.default_rng(11).uniform(-1, 1, size=(13, 6, 5, 3)).astype(np.float32)
    assert y8.shape == (13, 4)                          # 2 batches of 8, the last one padded
    np.testing.assert_allclose(y8, y1, rtol=0, atol=1e-6)
    np.testing.assert_allclose(y8, fake_reference(x), rtol=0, atol=1e-5)


def test_fid_of_images_and_of_a_sampler_by_seeds(tmp_path):
    feats = fid.Features(fake_net, FAKE, batch_size=4)

    def image(seed):   # one image per seed, whatever the batch
        return np.random.default_rng(seed).uniform(-1, 1, size=(6, 5, 3)).astype(np.float32)

    calls = []

    def sample_fn(seeds):
        calls.append(list(seeds))
        return np.stack([image(s) for s in seeds])

    ref_images = np.stack([image(1000 + i) for i in range(40)])
    p = str(tmp_path / "ref.npz")
    fid.save_stats(p, *feats.stats(ref_images))
    np.testing.assert_allclose(fid.load_stats(p)[0], fake_reference(ref_images).mean(0), atol=1e-6)
    a = fid.fid_of_sampler(sample_fn, p, feats, num=23, batch_size=7)
    assert [s for c in calls for s in c] == list(range(23))          # seeds 0 .. N-1, once each
    assert [len(c) for c in calls] == [7, 7, 7, 2]
    b = fid.fid_of_sampler(sample_fn, p, feats, num=23, batch_size=5)
    assert a["fid"] == pytest.approx(b["fid"], rel=1e-6) and a["num"] == 23
    images = np.stack([image(s) for s in range(23)])
    want = fid.frechet_distance(*fid.feature_stats(fake_reference(images)),
                                *fid.feature_stats(fake_reference(ref_images)))
    assert a["fid"] == pytest.approx(want, rel=1e-4) and want > 0
    assert fid.fid(images, p, feats) == pytest.approx(want, rel=1e-4)
    assert fid.fid(ref_images, p, feats) == pytest.approx(0, abs=1e-9)
    with pytest.raises(ValueError, match="returned 3 images for 7 seeds"):
        fid.fid_of_sampler(lambda s: images[:3], p, feats, num=10, batch_size=7)
