"""The diffusion classifier (Li et al. 2023; diffjax/classify): exact ties under shared noise, the
card's timestep subsets and NFE, Bayes-optimality with exact Gaussian denoisers, elimination, and
``diffjax classify`` on a tiny trained run."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.classify import diffusion_classifier as dc
from diffjax.cli import classify as cli_classify
from diffjax.core import processes as P
from diffjax.core.denoisers import bcast
from diffjax.inference import save_run_info
from tests.test_cli import _json, assert_error
from tests.training.util import load_config, run_cli

KEY = jax.random.key(0)


def label_blind(params, x, sigma, cond):
    """A nonlinear denoiser that ignores the label: every class is the same model."""
    s = bcast(sigma, x)
    return jnp.tanh(x * (1.0 + 0.3 * jnp.mean(x, axis=tuple(range(1, x.ndim)), keepdims=True))) \
        / (1.0 + s ** 2)


def label_noise(params, x, sigma, cond):
    """A denoiser whose output depends on the label in an arbitrary way (distinct class models)."""
    c = bcast(cond["label"].astype(jnp.float32), x)
    return jnp.sin(3.0 * x + 1.7 * c) * 0.5 + 0.1 * c / (1.0 + bcast(sigma, x))


def gaussian_classes(mus, s):
    """The exact class-conditional denoiser of x0 | c ~ N(mus[c], s^2 I):
    E[x0 | x, c] = (s^2 x + sigma^2 mu_c) / (s^2 + sigma^2)."""
    mus = jnp.asarray(mus, jnp.float32)

    def den(params, x, sigma, cond):
        mu = mus[cond["label"]]
        sg2 = bcast(sigma, x) ** 2
        return (s * s * x + sg2 * mu) / (s * s + sg2)

    return den


# ---- the schedule: subsets, NFE -------------------------------------------------------------------
def test_card_grid_subsets_and_nfe():
    # the base grid: T = 1000, n_max = 500: t = 1, 3, ..., 999 (start = T // n_max // 2)
    t = dc.time_grid(P.DiscreteVP(), 500)
    np.testing.assert_array_equal(t, np.arange(1, 1000, 2))
    # CIFAR-10 (to_keep 5, 1; n_samples 50, 500): round 1 grid[5::10], round 2 the other 450
    r1, r2 = dc.round_indices((50, 500))
    np.testing.assert_array_equal(r1, np.arange(5, 500, 10))
    assert len(r2) == 450 and not set(r1) & set(r2) and set(r1) | set(r2) == set(range(500))
    np.testing.assert_array_equal(t[r1][:3], [11, 31, 51])
    assert dc.nfe("cifar10", 10) == 10 * 50 + 5 * 450 == 2750
    # ImageNet: 1000 x 50 + 500 x 100 + 50 x 400 + 10 x 450 = 124,500 (naive: 10^6)
    rounds = dc.round_indices((50, 100, 500, 1000))
    assert [len(r) for r in rounds] == [50, 100, 400, 450]
    assert len(set(np.concatenate(rounds))) == 1000            # extended, never repeated
    for k, n in enumerate((50, 100, 500, 1000)):                # nested: rounds <= k = subset k
        stride = 1000 // n
        assert set(np.concatenate(rounds[:k + 1])) >= set(range(stride // 2, 1000, stride))
    assert dc.nfe("imagenet", 1000) == 124_500
    # the DiT evaluation: t = 2, 6, ..., 998 (250 timesteps)
    np.testing.assert_array_equal(dc.time_grid(P.DiscreteVP(), 250), np.arange(2, 1000, 4))


def test_run_counts_match_the_schedule():
    x0 = np.random.RandomState(0).randn(3, 2).astype(np.float32)
    res = dc.diffusion_classify(label_noise, None, P.DiscreteVP(), x0, key=KEY,
                                schedule="cifar10", classes=10, batch_size=700)
    assert res.nfe == 2750
    assert (res.counts.sum(1) == 2750).all()
    for n in range(3):
        survivors = set(res.kept[0][n])
        assert len(survivors) == 5
        for c in range(10):
            assert res.counts[n, c] == (500 if c in survivors else 50)


def test_continuous_grid_is_the_training_noise_quantiles():
    edm = P.EDM()
    t = dc.time_grid(edm, 100, "lognormal", p_mean=-1.2, p_std=1.2)
    z = (np.log(t) + 1.2) / 1.2                                   # back to N(0, 1) quantiles
    u = (np.arange(100) + 0.5) / 100
    from statistics import NormalDist
    np.testing.assert_allclose(z, [NormalDist().inv_cdf(v) for v in u], atol=2e-4)
    ve = P.VE()
    np.testing.assert_allclose(dc.time_grid(ve, 4), [0.125, 0.375, 0.625, 0.875], atol=1e-7)
    with pytest.raises(ValueError, match="unknown time sampler"):
        dc.time_grid(ve, 4, "beta")


@pytest.mark.parametrize("bad,match", [
    (((10, 50), (3,)), "equal length"), (((10, 50), (3, 2)), "end in 1"),
    (((10, 50), (2, 3, 1)), "equal length"), (((10, 50), (1, 2)), "non-increasing"),
    ("cifar100", "unknown schedule 'cifar100'"), (((10,), (1,), "l3"), "unknown loss")])
def test_bad_schedules_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        dc.get_schedule(bad)


def test_the_cli_names_every_schedule():
    assert cli_classify.SCHEDULE_NAMES == tuple(dc.SCHEDULES)


# ---- shared noise, ties, elimination --------------------------------------------------------------
SLOW_CI = [pytest.mark.slow, pytest.mark.ci]     # the second process: CI's slow subset


@pytest.mark.parametrize("process", [P.EDM(), pytest.param(P.DiscreteVP(), marks=SLOW_CI)],
                         ids=["edm", "vp_discrete"])
def test_identical_class_models_tie_bit_for_bit(process):
    x0 = np.random.RandomState(1).uniform(-1, 1, (4, 4, 4, 1)).astype(np.float32)
    res = dc.diffusion_classify(label_blind, None, process, x0, key=KEY, schedule="fast",
                                classes=[7, 2, 5, 0], batch_size=37)   # batches cut across classes
    first = res.errors[:, :1]
    surv = res.counts == res.counts.max(1, keepdims=True)
    assert np.array_equal(np.where(surv, res.errors, 0), np.where(surv, first, 0))
    assert np.isfinite(res.errors).all() and (res.errors > 0).all()
    # ties go to the class listed first, in every round
    assert (res.pred == 7).all()
    assert (res.kept[0] == [7, 2, 5]).all()


def test_results_do_not_depend_on_the_batch_or_the_other_images():
    x0 = np.random.RandomState(2).randn(5, 3).astype(np.float32)
    a = dc.diffusion_classify(label_noise, None, P.VE(), x0, key=KEY, schedule="fast", classes=6,
                              batch_size=1000)
    b = dc.diffusion_classify(label_noise, None, P.VE(), x0[3:], key=KEY, schedule="fast",
                              classes=6, batch_size=7, first_index=3)
    np.testing.assert_allclose(a.errors[3:], b.errors, rtol=1e-6, equal_nan=True)
    np.testing.assert_array_equal(a.pred[3:], b.pred)
    c = dc.diffusion_classify(label_noise, None, P.VE(), x0, key=jax.random.key(1),
                              schedule="fast", classes=6)
    assert not np.allclose(a.errors, c.errors, equal_nan=True)   # the key matters


def test_elimination_never_revives_and_ends_with_one_class():
    x0 = np.random.RandomState(3).randn(6, 2).astype(np.float32)
    sched = ((5, 10, 20, 40), (6, 4, 2, 1), "l1")
    res = dc.diffusion_classify(label_noise, None, P.EDM(), x0, key=KEY, schedule=sched,
                                classes=8, batch_size=64)
    assert [k.shape for k in res.kept] == [(6, 6), (6, 4), (6, 2), (6, 1)]
    for n in range(6):
        for before, after in zip(res.kept, res.kept[1:]):
            assert set(after[n]) <= set(before[n])
        assert res.pred[n] == res.kept[-1][n, 0]
        # the kept classes are the lowest-mean ones among those evaluated on all pairs so far
        best = res.counts[n] == res.counts[n].max()
        assert res.errors[n, res.pred[n]] == np.min(res.errors[n][best])
    # new pairs per round: 5 (grid[4::8]), 10 (grid[2::4]), 20 (the odd ones), 5 (the rest of 40)
    assert [len(i) for i in dc.round_indices(sched[0])] == [5, 10, 20, 5]
    assert res.nfe == dc.nfe(sched, 8) == 8 * 5 + 6 * 10 + 4 * 20 + 2 * 5


# ---- Bayes-optimality with exact denoisers --------------------------------------------------------
@pytest.mark.parametrize("process,t_sampler", [(P.EDM(), "lognormal"),
                                               pytest.param(P.DiscreteVP(), "uniform",
                                                            marks=SLOW_CI)],
                         ids=["edm", "vp_discrete"])
def test_exact_gaussian_classes_approach_the_bayes_rule(process, t_sampler):
    """Three 2-D Gaussian classes N(mu_c, s^2 I) with the exact E[x0 | x, c]: the Bayes rule is
    the nearest mean. With paired noise, E[err_c] = mean_j [(1 - a_j)^2 |mu_c - x0|^2 / sigma_j^2
    + d a_j^2], a_j = s^2 / (s^2 + sigma_j^2), so the classifier's limit is exactly the Bayes rule;
    the disagreement must shrink as the number of (t, eps) pairs grows."""
    s = 0.6
    mus = np.array([[0.0, 0.0], [1.0, 0.3], [0.2, 1.1]], np.float32)
    rng = np.random.RandomState(4)
    lab = np.arange(600) % 3
    x0 = (mus[lab] + s * rng.randn(600, 2)).astype(np.float32)
    logp = -((x0[:, None, :] - mus[None]) ** 2).sum(-1) / (2 * s * s)   # log N(x0; mu_c, s^2 I)
    bayes = logp.argmax(1)
    den = gaussian_classes(mus, s)
    agree = {}
    for n in (1, 400):
        grid = dc.time_grid(process, n, t_sampler)
        res = dc.diffusion_classify(den, None, process, x0, key=KEY, schedule=((n,), (1,)),
                                    classes=3, t_grid=grid, batch_size=4096)
        agree[n] = float(np.mean(res.pred == bayes))
        if n == 400:   # the Monte Carlo means match the analytic expectation
            sig = np.asarray(process.sigma_tilde(jnp.asarray(grid)), np.float64)
            a = s * s / (s * s + sig ** 2)
            d2 = ((x0[:, None, :] - mus[None]) ** 2).sum(-1)         # (N, C)
            expect = (((1 - a) ** 2 / sig ** 2).mean() * d2 + (a ** 2).mean() * 2) / 2
            diff = (res.errors - res.errors[:, :1]) - (expect - expect[:, :1])
            scale = np.abs(expect - expect[:, :1]).mean()
            assert np.abs(diff).mean() < 0.15 * scale, (np.abs(diff).mean(), scale)
    bayes_acc, acc = float(np.mean(bayes == lab)), float(np.mean(res.pred == lab))
    assert agree[400] >= 0.96 and agree[400] > agree[1] + 0.02, agree
    assert abs(acc - bayes_acc) < 0.03, (acc, bayes_acc)


# ---- the run-level API and the CLI ----------------------------------------------------------------
@pytest.fixture(scope="module")
def workdir(tiny_digits_run):
    return tiny_digits_run


def test_classify_a_trained_run(workdir):
    from diffjax import inference
    from diffjax.data.digits import load_digits

    run = inference.load(workdir)
    x, y = load_digits("test", run.example_shape[0])
    res = dc.classify(run, x[:4], key=KEY, schedule=((8,), (1,)), classes=[3, 1, 4, 7])
    assert res.pred.shape == (4,) and set(res.pred) <= {3, 1, 4, 7}
    assert res.nfe == 4 * 8 and res.errors.shape == (4, 4) and (res.counts == 8).all()
    # the grid is the run's training noise distribution (EDM's log-normal sigma)
    assert run.config.diffusion.t_sampler == "lognormal"
    with pytest.raises(ValueError, match="out of range"):
        dc.classify(run, x[:1], key=KEY, classes=[10])
    with pytest.raises(ValueError, match="this run's examples are"):
        dc.classify(run, x[:1, :4], key=KEY)


def test_cli_classifies_the_held_out_split_and_an_npz(workdir, tmp_path):
    npz = str(tmp_path / "pred.npz")
    p = run_cli("classify", "--workdir", workdir, "--split", "test", "--num", "6",
                "--schedule", "fast", "--npz", npz)
    assert p.returncode == 0, p.stderr[-3000:]
    res = _json(p.stdout)
    assert res["num"] == 6 and res["nfe_per_image"] == 10 * 10 + 3 * 40 == 220
    assert res["nfe"] == 6 * 220 and 0.0 <= res["accuracy"] <= 1.0 and len(res["pred"]) == 6
    assert "diffjax classify: 6 images from digits split test" in p.stderr
    with np.load(npz) as f:
        assert f["errors"].shape == (6, 10) and f["pred"].shape == (6,)
        np.testing.assert_array_equal(f["pred"], res["pred"])


@pytest.mark.slow
@pytest.mark.ci
def test_cli_classifies_image_files_and_folders(workdir, tmp_path):
    from PIL import Image

    # a uint8 .npy at 16x16, resized to the run's 8x8; no labels, so no accuracy
    imgs = str(tmp_path / "x.npy")
    np.save(imgs, np.zeros((2, 16, 16, 1), np.uint8))
    p = run_cli("classify", "--workdir", workdir, "--images", imgs, "--schedule", "fast")
    assert p.returncode == 0, p.stderr[-3000:]
    res = _json(p.stdout)
    assert res["num"] == 2 and "accuracy" not in res and len(res["pred"]) == 2
    # a folder with one sub-folder per class id: the labels come from the names
    for c in ("3", "5"):
        os.makedirs(tmp_path / "dir" / c)
        Image.new("L", (8, 8), 40 * int(c)).save(tmp_path / "dir" / c / "a.png")
    p = run_cli("classify", "--workdir", workdir, "--images", str(tmp_path / "dir"),
                "--schedule", "fast")
    assert p.returncode == 0, p.stderr[-3000:]
    res = _json(p.stdout)
    assert res["num"] == 2 and 0.0 <= res["accuracy"] <= 1.0


def _fake_run(path, **overrides):
    """A workdir with config.json and run.json only (the checks run before a checkpoint loads)."""
    c = load_config("digits")
    for k, v in overrides.items():
        node = c
        *parents, leaf = k.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = v
    num_classes = 0 if overrides.get("model.num_classes") == 0 else 10
    save_run_info(str(path), c, (16, 16, 1), num_classes)
    return str(path)


@pytest.mark.slow
@pytest.mark.ci
def test_cli_mistakes_are_one_line(workdir, tmp_path):
    npy = str(tmp_path / "x.npy")
    np.save(npy, np.zeros((1, 8, 8, 1), np.float32))
    base = ["classify", "--workdir", workdir]
    assert_error(run_cli(*base, "--images", npy, "--schedule", "cifar100"), "classify",
                 "unknown --schedule 'cifar100'", "cifar10, pets")
    assert_error(run_cli(*base, "--images", str(tmp_path / "nope.npz")), "classify",
                 "nope.npz: no such file")
    assert_error(run_cli(*base), "classify", "needs exactly one of --images")
    assert_error(run_cli(*base, "--images", npy, "--num", "0"), "classify",
                 "--num must be a positive integer")
    txt = str(tmp_path / "x.txt")
    open(txt, "w").close()
    assert_error(run_cli(*base, "--images", txt), "classify", "unknown file type '.txt'")
    bad = str(tmp_path / "rgb.npy")
    np.save(bad, np.zeros((1, 8, 8, 3), np.float32))
    assert_error(run_cli(*base, "--images", bad), "classify", "3 channels")
    uncond = _fake_run(tmp_path / "uncond", **{"model.num_classes": 0})
    assert_error(run_cli("classify", "--workdir", uncond, "--images", npy), "classify",
                 "needs a class-conditional run", "unconditional")
    latent = _fake_run(tmp_path / "latent", **{"latent.vae": "/some/vae"})
    assert_error(run_cli("classify", "--workdir", latent, "--images", npy), "classify",
                 "latent run")
    shapes = _fake_run(tmp_path / "shapes", **{"data.name": "shapes"})
    assert_error(run_cli("classify", "--workdir", shapes, "--split", "test"), "classify",
                 "has no splits")


def test_cli_help_lists_the_classify_flags():
    p = run_cli("classify", "--help")
    assert p.returncode == 0, p.stderr[-2000:]
    for flag in ("--images", "--split", "--schedule", "--max_batch", "--num", "--seed"):
        assert flag in p.stdout, flag
    assert "--operator" not in p.stdout


SHARDED = """
import jax, numpy as np
from diffjax import inference
from diffjax.classify import diffusion_classifier as dc
from diffjax.core import processes as P
from tests.classify.test_diffusion_classifier import label_noise
assert jax.device_count() == 2
x0 = np.random.RandomState(5).randn(3, 4, 4, 1).astype(np.float32)
kw = dict(key=jax.random.key(0), schedule="fast", classes=5, batch_size=33)
a = dc.diffusion_classify(label_noise, None, P.EDM(), x0, **kw)
b = dc.diffusion_classify(label_noise, None, P.EDM(), x0, mesh=inference.default_mesh(), **kw)
np.testing.assert_allclose(a.errors, b.errors, rtol=1e-5, equal_nan=True)
assert (a.pred == b.pred).all() and a.nfe == b.nfe
print("ok")
"""


@pytest.mark.slow
@pytest.mark.ci
def test_sharded_over_the_mesh_equals_one_device():
    from tests.training.util import run_python

    p = run_python(SHARDED, devices=2, timeout=300)
    assert p.returncode == 0 and "ok" in p.stdout, p.stderr[-3000:]
