"""The measurement-guided registry entries (guidance/measurement.py): options parsing, one operator
object per (name, shape, options), scale 0 is the model, and a draw without measurements is refused
with what to do."""
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import guidance, inference
from diffjax.core import analytic, processes
from diffjax.guidance import measurement
from diffjax.inverse import steering

SHAPE = (4, 4, 1)
GAUSS = analytic.gaussian_denoiser(jnp.zeros(SHAPE), jnp.full(SHAPE, 0.6))


def _run():
    return inference.Run(config=None, model=None, den=lambda p, x, s, c, **_: GAUSS(x, s),
                         process=processes.get("edm"), params={"params": {}}, step=0,
                         num_classes=0, example_shape=SHAPE)


def test_options_parse_to_typed_values_and_bad_ones_are_named():
    assert measurement.parse_options("factor=2, mask=random,keep=0.25,x=true") == {
        "factor": 2, "mask": "random", "keep": 0.25, "x": True}
    assert measurement.parse_options("") == {}
    with pytest.raises(ValueError, match="expected name=value, got 'factor'"):
        measurement.parse_options("factor")


def test_prepare_builds_one_operator_per_setting_and_scale_zero_is_the_model():
    sec = guidance.resolve({"name": "steer", "operator": "sr", "options": "factor=2"})
    op1 = guidance.prepare(sec, _run())[0][3]
    op2 = guidance.prepare(sec, _run())[0][3]
    assert op1 is op2 and op1.name == "sr"
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3,) + SHAPE), jnp.float32)
    y = op1.forward(x)
    static, _ = guidance.prepare(sec, _run())
    D = lambda z, s, c: GAUSS(z, s)
    got = guidance.apply(D, static, guidance.traced_values(sec), guidance.Context())(
        x, 1.0, {"measurement": y})
    np.testing.assert_allclose(got, steering.steer(D, op1, 1.0)(x, 1.0, {"measurement": y}))
    zero = guidance.split(guidance.resolve({**sec, "scale": 0.0}), op1)[0]
    assert guidance.apply(D, zero, {}, guidance.Context()) is D


def test_a_draw_without_measurements_says_to_use_restore():
    with pytest.raises(ValueError, match=r"needs cond\['measurement'\].*diffjax restore"):
        inference.generate(_run(), 2, steps=2, guidance={"name": "dps", "operator": "sr"},
                           params_name="params", spacing="karras", batch_size=2)
    with pytest.raises(ValueError, match=r"cond\['measurement'\] has shape \(3, 2, 2, 1\); "
                                         r"expected 2 examples"):
        inference.generate(_run(), 2, steps=2, guidance={"name": "dps", "operator": "sr"},
                           params_name="params", spacing="karras", batch_size=2,
                           cond={"measurement": np.zeros((3, 2, 2, 1))})
