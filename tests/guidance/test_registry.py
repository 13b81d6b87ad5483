"""The guidance registry: sections resolve with clear errors, classifier-free guidance follows its
equation, transforms compose, and the scale (any float field) is traced: no recompile."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import guidance, inference
from diffjax.core import processes

NULL = 3


def linear_denoiser(x, sigma, cond):
    """D(x, sigma, c) = x / (1 + sigma^2) + c: a different, known answer per label (null too)."""
    s = jnp.reshape(jnp.asarray(sigma, x.dtype), (-1,) + (1,) * (x.ndim - 1))
    lab = cond["label"].astype(x.dtype).reshape((-1,) + (1,) * (x.ndim - 1))
    return x / (1.0 + s ** 2) + lab


def test_classifier_free_is_its_equation():
    x = jnp.linspace(-1, 1, 8).reshape(4, 2)
    labels = jnp.array([0, 1, 2, 1])
    D = guidance.apply(linear_denoiser, guidance.split(guidance.resolve(2.5))[0], {"scale": 2.5},
                       guidance.Context(null_label=NULL))
    got = D(x, jnp.float32(0.5), {"label": labels})
    c = linear_denoiser(x, 0.5, {"label": labels})
    u = linear_denoiser(x, 0.5, {"label": jnp.full_like(labels, NULL)})
    np.testing.assert_allclose(got, u + 2.5 * (c - u), rtol=1e-6)


def test_scale_one_and_none_are_the_identity_statically():
    for value in (1.0, "none", None, {"name": "classifier_free", "scale": 1.0}):
        static, _ = guidance.split(guidance.resolve(value))
        assert static[1], value
        assert guidance.apply(linear_denoiser, static, {}, guidance.Context(NULL)) is linear_denoiser
    assert not guidance.split(guidance.resolve(1.5))[0][1]


@pytest.mark.parametrize("value, needle", [
    ({"name": "cfgg"}, "unknown guidance method 'cfgg'; the registered ones are auto, "
                       "classifier, classifier_free"),
    ({"name": "classifier_free", "tau": 1}, "has no field(s) tau; its fields: g.scale"),
    ({"scale": "x"}, "g.scale must be a number"),
    ({"scale": float("nan")}, "g.scale must be a finite number"),
    ([1, 2], "expected a section"),
])
def test_bad_sections_name_what_is_valid(value, needle):
    with pytest.raises(ValueError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        guidance.resolve(value, where="g")


def test_needs_classes_refuses_an_unconditional_model():
    static, vals = guidance.split(guidance.resolve(2.0))
    with pytest.raises(ValueError, match="needs a class-conditional model"):
        guidance.apply(linear_denoiser, static, vals, guidance.Context(null_label=None))


def test_transforms_compose_in_order():
    add = lambda D: (lambda x, s, c: D(x, s, c) + 1.0)
    double = lambda D: (lambda x, s, c: 2.0 * D(x, s, c))
    x, c = jnp.ones((2, 2)), {"label": jnp.array([0, 1])}
    got = guidance.compose(add, double)(linear_denoiser)(x, 0.0, c)
    np.testing.assert_allclose(got, 2.0 * (linear_denoiser(x, 0.0, c) + 1.0))


def test_a_registered_method_is_found_by_name_and_its_float_fields_are_traced():
    def shift(D, ctx, scale, offset, mode):
        return lambda x, s, c: D(x, s, c) + scale * offset * (1.0 if mode == "plus" else -1.0)
    m = guidance.register(guidance.Method(name="_test_shift", make=shift,
                                          fields=(("scale", 1.0), ("offset", 0.5), ("mode", "plus"))))
    try:
        sec = guidance.resolve({"name": "_test_shift", "offset": 2})
        assert sec == {"name": "_test_shift", "scale": 1.0, "offset": 2.0, "mode": "plus"}
        static, traced = guidance.split(sec)
        assert traced == {"scale": 1.0, "offset": 2.0} and ("mode", "plus") in static[2]
        fn = jax.jit(lambda vals, x: guidance.apply(linear_denoiser, static, vals,
                                                    guidance.Context())(x, 0.0, {"label": x[:, 0] * 0}))
        x = jnp.zeros((2, 1))
        outs = [fn({"scale": jnp.float32(a), "offset": jnp.float32(b)}, x) for a, b in
                ((1, 2), (3, 2), (1, -1))]
        assert fn._cache_size() == 1
        np.testing.assert_allclose([float(o[0, 0]) for o in outs], [2.0, 6.0, -1.0])
    finally:
        guidance.METHODS.pop(m.name)


def test_the_sampling_program_does_not_recompile_when_the_scale_changes():
    """The registry path as the CLI, grids and evaluation use it: one executable for every scale."""
    proc = processes.get("edm")
    den = lambda params, x, sigma, cond, **_: params * linear_denoiser(x, sigma, cond)
    prog = inference.build(den, proc, sampler="dpmpp_2m", steps=3, spacing="karras", batch=4,
                           example_shape=(2,), guidance=guidance.resolve(2.0), null_label=NULL)
    labels = jnp.array([0, 1, 2, 0], jnp.int32)
    outs = [prog(jnp.float32(1.0), jax.random.key(0), labels, 0, {"scale": jnp.float32(w)})
            for w in (2.0, 3.0, 7.5, 1.0)]
    assert prog.fn._cache_size() == 1
    assert not np.allclose(outs[0], outs[1])
    same = inference.build(den, proc, sampler="dpmpp_2m", steps=3, spacing="karras", batch=4,
                           example_shape=(2,), guidance={"name": "classifier_free", "scale": 9.0},
                           null_label=NULL)
    assert same.fn is prog.fn          # the static part selects the program, not the scale
