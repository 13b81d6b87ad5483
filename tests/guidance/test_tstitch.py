"""T-Stitch (Pan et al. 2024) against its switching rule, with two different exact Gaussian
denoisers: fraction 0 / 1 are the large / small model alone, identical models give identical
samples, the small model runs exactly on the first ceil(r N) steps (and only one network runs per
evaluation), the fraction is traced, and the small run must be of the same task."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffjax import guidance, inference
from diffjax.core import denoisers, processes, timesteps
from diffjax.guidance import tstitch

NULL = 3
N = 10
SHAPE = (6,)
LABELS = jnp.array([0, 1, 2, 0], jnp.int32)
LARGE = {"m": jnp.float32(0.3), "s": jnp.float32(0.8)}
SMALL = {"m": jnp.float32(-0.4), "s": jnp.float32(1.4)}


def gauss_den(params, x, sigma, cond, **_):
    """The exact denoiser of N(m_c, s^2) per coordinate, m_c = m + 0.25 c (the null class too):
    D(x, sigma) = m_c + s^2 / (s^2 + sigma^2) (x - m_c)."""
    sig = jnp.broadcast_to(jnp.asarray(sigma, x.dtype), (x.shape[0],))[:, None]
    m = params["m"] + 0.25 * cond["label"].astype(x.dtype)[:, None]
    s2 = params["s"] ** 2
    return m + s2 / (s2 + sig ** 2) * (x - m)


def section(fraction=0.4, scale=3.0):
    return guidance.resolve({"name": "tstitch", "fraction": fraction, "scale": scale,
                             "small_workdir": "unused"})


def stitched_program(sampler, small_den=gauss_den, den=gauss_den):
    static, _ = guidance.split(section(), small_den)
    return inference.build(den, processes.get("edm"), sampler=sampler, steps=N, spacing="karras",
                           batch=4, example_shape=SHAPE, guidance=static, null_label=NULL)


def stitched(sampler, fraction, scale=3.0, small=SMALL, small_den=gauss_den, den=gauss_den):
    prog = stitched_program(sampler, small_den, den)
    return prog(LARGE, jax.random.key(0), LABELS, 0,
                {"fraction": jnp.float32(fraction), "scale": jnp.float32(scale)},
                guidance_state=small)


def alone(sampler, params, scale=3.0):
    prog = inference.build(gauss_den, processes.get("edm"), sampler=sampler, steps=N,
                           spacing="karras", batch=4, example_shape=SHAPE,
                           guidance=guidance.resolve(scale), null_label=NULL)
    return prog(params, jax.random.key(0), LABELS, 0, {"scale": jnp.float32(scale)})


@pytest.mark.parametrize("sampler", ["ddim", "heun"])
def test_fraction_0_is_the_large_model_and_1_the_small_one_bit_for_bit(sampler):
    large, small = alone(sampler, LARGE), alone(sampler, SMALL)
    assert not np.allclose(large, small)
    np.testing.assert_array_equal(stitched(sampler, 0.0), large)
    np.testing.assert_array_equal(stitched(sampler, 1.0), small)
    mid = stitched(sampler, 0.5)
    assert not np.allclose(mid, large) and not np.allclose(mid, small)


@pytest.mark.parametrize("sampler", ["ddim", "heun"])
def test_two_identical_models_give_the_same_samples_at_any_fraction(sampler):
    large = alone(sampler, LARGE)
    for r in (0.0, 0.3, 0.55, 1.0):
        np.testing.assert_array_equal(stitched(sampler, r, small=LARGE), large)


def _counting(tag, counts):
    def den(params, x, sigma, cond, **_):
        jax.debug.callback(lambda: counts.__setitem__(tag, counts[tag] + 1))
        return gauss_den(params, x, sigma, cond)
    return den


@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun"])
def test_the_small_model_runs_on_the_first_ceil_r_n_steps_and_one_network_per_evaluation(sampler):
    counts = {"small": 0, "large": 0}
    small_den, den = _counting("small", counts), _counting("large", counts)
    prog = stitched_program(sampler, small_den, den)
    for r in (0.0, 0.1, 0.25, 0.4, 0.75, 0.99, 1.0):
        counts.update(small=0, large=0)
        jax.block_until_ready(prog(LARGE, jax.random.key(0), LABELS, 0,
                                   {"fraction": jnp.float32(r), "scale": jnp.float32(3.0)},
                                   guidance_state=SMALL))
        jax.effects_barrier()
        k = math.ceil(round(r * N, 9))                   # steps i < ceil(r N)
        if sampler == "dpmpp_2m":                        # one evaluation per step
            assert counts == {"small": k, "large": N - k}, (r, counts)
        else:    # Heun: the step into sigma_k takes the small predictor and the large corrector
            small = 2 * k - 1 if k else 0
            assert counts == {"small": small, "large": 2 * N - 1 - small}, (r, counts)


def test_changing_the_fraction_or_the_scale_does_not_recompile():
    prog = stitched_program("dpmpp_2m")
    outs = [prog(LARGE, jax.random.key(0), LABELS, 0,
                 {"fraction": jnp.float32(r), "scale": jnp.float32(w)}, guidance_state=SMALL)
            for r, w in ((0.2, 3.0), (0.5, 3.0), (0.9, 3.0), (0.9, 1.5))]
    assert prog.fn._cache_size() == 1
    for a, b in zip(outs, outs[1:]):
        assert not np.allclose(a, b)


def test_the_rule_per_evaluation_scalar_and_per_example_sigma():
    grid = timesteps.sigmas(processes.get("edm"), N, "karras")
    sec = section(fraction=0.4)
    static, vals = guidance.split(sec, gauss_den)
    ctx = guidance.Context(null_label=NULL, sigmas=grid)
    D = guidance.apply(denoisers.bind(gauss_den, LARGE), static, guidance.traced_values(sec), ctx,
                       SMALL)
    cfg = lambda p: guidance.classifier_free(denoisers.bind(gauss_den, p), NULL, 3.0)
    x = jnp.linspace(-2, 2, 4 * 6).reshape(4, 6)
    cond = {"label": LABELS}
    for i in range(N):                                   # k = 4: small at sigma_0 .. sigma_3
        want = cfg(SMALL if i < 4 else LARGE)(x, grid[i], cond)
        np.testing.assert_allclose(D(x, grid[i], cond), want, rtol=1e-6, atol=1e-6)   # eager:
        #                                         1 ulp from the compiled cond branch
    rows = jnp.array([0, 3, 4, 9])                       # (B,) sigma: both run, rows select
    got = D(x, grid[rows], cond)
    small, large = cfg(SMALL)(x, grid[rows], cond), cfg(LARGE)(x, grid[rows], cond)
    np.testing.assert_allclose(got[:2], small[:2], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got[2:], large[2:], rtol=1e-6, atol=1e-6)
    assert not np.allclose(small, large, atol=1e-3)
    assert tstitch.switch_point(grid, jnp.float32(0.3))[0] == 3        # not ceil(3.0000001) = 4
    with pytest.raises(ValueError, match="needs the sampling grid"):
        guidance.apply(denoisers.bind(gauss_den, LARGE), static, vals,
                       guidance.Context(null_label=NULL), SMALL)


def test_fields_and_a_missing_small_run_are_clear_errors():
    grid = np.asarray([80.0, 10.0, 1.0, 0.0])
    guidance.check(section(fraction=1.0), grid)
    with pytest.raises(ValueError, match=r"fraction 1.5 must be in \[0, 1\]"):
        guidance.check(section(fraction=1.5), grid)
    with pytest.raises(ValueError, match="needs the small model's run: --guidance.small_workdir"):
        guidance.prepare(guidance.resolve({"name": "tstitch", "scale": 3.0}), run=None)
    static, _ = guidance.split(guidance.resolve({"name": "tstitch", "fraction": 0.0}))
    assert static[1]            # fraction 0 at scale 1 is the large model itself: nothing loaded


def _run(shape=(8, 8, 1), classes=10, process="edm", parameterization="edm"):
    cfg = ml_collections.ConfigDict({"diffusion": {"process": process,
                                                   "parameterization": parameterization}})
    return inference.Run(config=cfg, model=None, den=None, process=None, params={}, step=0,
                         num_classes=classes, example_shape=shape)


def test_a_small_run_of_another_task_is_refused_naming_both_values():
    tstitch.check_same_task("S", _run(), _run())
    cases = [(dict(shape=(16, 16, 1)), r"examples of shape \(16, 16, 1\), this run \(8, 8, 1\)"),
             (dict(classes=5), "5 classes, this run 10"),
             (dict(process="vp"), "diffusion.process 'vp', this run 'edm'"),
             (dict(parameterization="eps"), "diffusion.parameterization 'eps', this run 'edm'")]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=f"^guidance tstitch: the small run in 'S' has {msg}"):
            tstitch.check_same_task("S", _run(**kw), _run())


@pytest.mark.slow
def test_prepare_loads_a_trained_small_run_and_checks_it(tiny_digits_run):
    run = inference.load(tiny_digits_run)
    sec = guidance.resolve({"name": "tstitch", "scale": 2.0, "small_workdir": tiny_digits_run})
    static, state = guidance.prepare(sec, run)
    assert static[3] is not None and state is not None
    with pytest.raises(ValueError, match="has 10 classes, this run 5"):
        guidance.prepare(sec, run._replace(num_classes=5))
    with pytest.raises(ValueError, match=r"this run \(16, 16, 1\)"):
        guidance.prepare(sec, run._replace(example_shape=(16, 16, 1)))
    same = inference.generate(run, 8, sampler="dpmpp_2m", steps=4, guidance=2.0, seed=3)
    for r in (0.0, 0.5, 1.0):     # the same run as its own small model: the same samples
        got = inference.generate(run, 8, sampler="dpmpp_2m", steps=4, seed=3,
                                 guidance={**sec, "fraction": r})
        np.testing.assert_allclose(got, same, atol=1e-5)
