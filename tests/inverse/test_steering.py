"""The measurement-guided denoisers: each reduces exactly to D at its neutral strength, passes the
rest of the condition through, a new strength never recompiles, and bad measurements are clear
errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic, samplers, timesteps
from diffjax.inverse import operators as ops
from diffjax.inverse import steering

SHAPE = (3, 4, 4, 1)
MU = jnp.linspace(-0.5, 0.5, 16).reshape(4, 4, 1)
SD = jnp.linspace(0.3, 1.0, 16).reshape(4, 4, 1)
GAUSS = analytic.gaussian_denoiser(MU, SD)


def D_label(x, sigma, cond):
    """A denoiser that reads its label (and must never see the measurement)."""
    assert set(cond) == {"label"}, cond
    return GAUSS(x, sigma) + 0.1 * cond["label"].reshape(-1, 1, 1, 1)


def _ops():
    op_in = ops.make("inpaint", (4, 4, 1), mask="random", keep=0.5, seed=0)
    op_sr = ops.make("sr", (4, 4, 1), factor=2)
    no_proj = ops.Operator("sr_grad", op_sr.forward, op_sr.measurement_shape)   # no project
    return {"inpaint": op_in, "sr": op_sr, "deblur": ops.make("deblur", (4, 4, 1), kernel_size=3),
            "sr_grad": no_proj}


TRANSFORMS = {"steer": steering.steer, "steer_grad": steering.steer_grad,
              "dps": steering.dps, "dps_unnormalized": lambda D, op, s: steering.dps(
                  D, op, s, normalize=False)}


def _inputs(op):
    x = jax.random.normal(jax.random.PRNGKey(1), SHAPE) * 2.0
    y = op.forward(jax.random.uniform(jax.random.PRNGKey(2), SHAPE, minval=-1, maxval=1))
    return x, {"measurement": y, "label": jnp.array([0, 3, 9])}


@pytest.mark.parametrize("opname", ["inpaint", "sr", "deblur", "sr_grad"])
@pytest.mark.parametrize("method", sorted(TRANSFORMS))
def test_neutral_strength_is_exactly_D(method, opname):
    op = _ops()[opname]
    x, cond = _inputs(op)
    sigma = jnp.array([0.3, 2.0, 40.0])
    base = D_label(x, sigma, {"label": cond["label"]})
    guided = TRANSFORMS[method](D_label, op, 0.0)
    np.testing.assert_array_equal(np.asarray(guided(x, sigma, cond)), np.asarray(base))
    f = jax.jit(lambda x, s, c, w: TRANSFORMS[method](D_label, op, w)(x, s, c))
    np.testing.assert_array_equal(np.asarray(f(x, sigma, cond, 0.0)),
                                  np.asarray(jax.jit(D_label)(x, sigma, {"label": cond["label"]})))
    moved = np.asarray(f(x, sigma, cond, 0.7))       # a nonzero strength does change D
    assert np.max(np.abs(moved - np.asarray(base))) > 1e-3


@pytest.mark.parametrize("method", sorted(TRANSFORMS))
def test_guidance_reduces_the_residual_of_x0_hat(method):
    op = _ops()["sr"]
    x, cond = _inputs(op)
    sigma = 1.0
    r = lambda w: float(jnp.sum(steering.residual_norms(op, TRANSFORMS[method](D_label, op, w)(
        x, sigma, cond), cond["measurement"])))
    assert r(0.3) < r(0.0)


@pytest.mark.parametrize("method", sorted(TRANSFORMS))
def test_a_new_strength_does_not_recompile(method):
    op = _ops()["inpaint"]
    sig = timesteps.karras(4, 0.01, 10.0)
    _, cond = _inputs(op)

    @jax.jit
    def draw(key, y, strength):
        D = TRANSFORMS[method](lambda x, s, c: GAUSS(x, s), op, strength)
        return samplers.sample("heun", D, sig, key=key, shape=SHAPE, cond={"measurement": y}).x

    a = draw(jax.random.PRNGKey(0), cond["measurement"], 0.5)
    b = draw(jax.random.PRNGKey(0), cond["measurement"], 2.0)
    c = draw(jax.random.PRNGKey(1), cond["measurement"], 3.0)
    assert draw._cache_size() == 1
    assert not np.allclose(a, b) and np.isfinite(np.asarray(c)).all()


def test_missing_measurement_is_a_clear_error():
    op = _ops()["sr"]
    x, _ = _inputs(op)
    with pytest.raises(ValueError, match=r"needs cond\['measurement'\] = y.*got cond \['label'\]"):
        steering.steer(GAUSS, op)(x, 1.0, {"label": jnp.zeros(3, jnp.int32)})


@pytest.mark.parametrize("method", sorted(TRANSFORMS))
def test_a_measurement_of_the_wrong_shape_names_both_shapes(method):
    op = _ops()["sr"]
    x, _ = _inputs(op)
    bad = {"measurement": jnp.zeros((3, 4, 4, 1))}
    with pytest.raises(ValueError, match=r"measurement has shape \(4, 4, 1\).*to \(2, 2, 1\)"):
        TRANSFORMS[method](lambda x, s, c: GAUSS(x, s), op, 1.0)(x, 1.0, bad)


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="unknown restoration method 'dsp'.*steer, steer_grad, dps"):
        steering.transform("dsp", GAUSS, _ops()["sr"], 1.0)
