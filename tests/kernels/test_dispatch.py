"""kernels.conv / group_norm / attention pick their form when lowered: the CPU form for CPU (under
jit, grad and eagerly), the plain form for TPU (a deviceless compile, as ``diffjax preflight`` does).

The forms are told apart by the multiset of StableHLO ops the lowering holds, leaving out the
constants, broadcasts and the case that ``lax.platform_dependent`` leaves around the chosen branch.
"""
import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax import kernels, preflight
from diffjax.kernels import cpu, reference
from tests.kernels.util import rand

needs_libtpu = pytest.mark.skipif(
    not preflight.libtpu_available(),
    reason="libtpu not installed: pip install -e '.[tpu]' to compile for deviceless TPU topologies")

SAME = ((1, 1), (1, 1))
MASK = jnp.arange(16)[None] < jnp.array([[11], [16]])   # (2, 16): the first 11 keys, all 16
_QKV = lambda: (rand(1, (2, 16, 4, 8)), rand(2, (2, 16, 4, 8)), rand(3, (2, 16, 4, 8)))
# op name -> (the dispatching op, its CPU form, its plain form, example arguments)
OPS = {
    "conv": (lambda x, w: kernels.conv(x, w, (1, 1), SAME),
             lambda x, w: cpu.conv(x, w, (1, 1), SAME),
             lambda x, w: reference.lax_conv(x, w, (1, 1), SAME),
             lambda: (rand(1, (2, 8, 8, 16)), rand(2, (3, 3, 16, 8)))),
    "conv_strided": (lambda x, w: kernels.conv(x, w, (2, 2), SAME),
                     lambda x, w: cpu.conv(x, w, (2, 2), SAME),
                     lambda x, w: reference.lax_conv(x, w, (2, 2), SAME),
                     lambda: (rand(1, (2, 8, 8, 16)), rand(2, (3, 3, 16, 8)))),
    "group_norm": (lambda *a: kernels.group_norm(*a, 8, activation="silu"),
                   lambda *a: cpu.group_norm(*a, 8, 1e-5, jnp.float32, "silu"),
                   lambda *a: reference.group_norm(*a, 8, 1e-5, jnp.float32, "silu"),
                   lambda: (rand(1, (2, 8, 8, 32), 2.0), rand(2, (32,), 0.3, 1.0), rand(3, (32,)))),
    "attention": (kernels.attention, cpu.attention, reference.attention, _QKV),
    "attention_masked": (lambda *a: kernels.attention(*a, MASK), lambda *a: cpu.attention(*a, MASK),
                         lambda *a: reference.attention(*a, MASK), _QKV),
}
_PLUMBING = {"constant", "broadcast_in_dim", "case", "return"}


def _grad_fn(f, n):
    return jax.grad(lambda *a: jnp.sum(jnp.sin(f(*a))), tuple(range(n)))


def _ops(lowered) -> collections.Counter:
    names = re.findall(r"stablehlo\.([a-z_]+)", lowered.as_text())
    return collections.Counter(n for n in names if n not in _PLUMBING)


@pytest.mark.parametrize("name", list(OPS))
def test_cpu_runs_the_cpu_form_exactly(name):
    """Eager and jitted values, and jitted gradients, equal the CPU form's to the bit."""
    op, cpu_form, _, args = OPS[name]
    args = args()
    want = jax.jit(cpu_form)(*args)
    np.testing.assert_array_equal(op(*args), want)
    np.testing.assert_array_equal(jax.jit(op)(*args), want)
    grads = [jax.jit(_grad_fn(f, len(args)))(*args) for f in (op, cpu_form)]
    for a, b in zip(*grads):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", list(OPS))
def test_cpu_lowering_holds_the_cpu_form_only(name):
    op, cpu_form, plain, args = OPS[name]
    args = args()
    lowered = lambda f: _ops(jax.jit(f).lower(*args))
    assert lowered(op) == lowered(cpu_form)
    assert lowered(_grad_fn(op, len(args))) == lowered(_grad_fn(cpu_form, len(args)))
    if name != "conv_strided":   # (a strided conv's forward is lax.conv in both forms)
        assert lowered(_grad_fn(op, len(args))) != lowered(_grad_fn(plain, len(args)))


@pytest.fixture(scope="module")
def tpu_sharding():
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    return NamedSharding(Mesh(np.array(preflight.devices("v5e:2x2")[:1]), ("d",)), PartitionSpec())


@needs_libtpu
@pytest.mark.parametrize("name", list(OPS))
def test_tpu_lowering_holds_the_plain_form_only(name, tpu_sharding):
    """Forward and gradient lowered for a deviceless TPU hold exactly the plain form's ops (no
    Winograd, no custom VJP), and XLA:TPU compiles them."""
    op, _, plain, args = OPS[name]
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=tpu_sharding),
                            args())
    lower = lambda f: jax.jit(f).lower(*abstract)
    for f, ref in [(op, plain), (_grad_fn(op, len(abstract)), _grad_fn(plain, len(abstract)))]:
        assert _ops(lower(f)) == _ops(lower(ref))
    lower(_grad_fn(op, len(abstract))).compile()


def _plain_cpu_forms(monkeypatch):
    """Replace the CPU forms by the plain ones (same signatures)."""
    monkeypatch.setattr(cpu, "conv", lambda x, w, strides, padding, winograd:
                        reference.lax_conv(x, w, strides, padding))
    monkeypatch.setattr(cpu, "group_norm", reference.group_norm)
    monkeypatch.setattr(cpu, "attention", lambda q, k, v, mask, chunk_bytes, chunk_bytes_grad:
                        reference.attention(q, k, v, mask))


@needs_libtpu
def test_unet_gradient_for_tpu_does_not_depend_on_the_cpu_forms(tpu_sharding, monkeypatch):
    """A whole U-Net's loss gradient (Conv, GroupNorm + SiLU, attention) lowered for TPU is the same
    program when the CPU forms are swapped for the plain ones; lowered for CPU it is not."""
    from diffjax.models import build_model, get_preset
    model = build_model(get_preset("unet_tiny16"))
    x, t = jnp.zeros((2, 16, 16, 3)), jnp.zeros((2,))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, t))
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=tpu_sharding),
                            (params, x))
    concrete = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), (params, x))
    # a new function each time: jax caches traces per function object
    lower = lambda args: _ops(jax.jit(jax.grad(lambda p, u: jnp.sum(model.apply(p, u, t) ** 2)))
                              .lower(*args))
    tpu, host = lower(abstract), lower(concrete)
    _plain_cpu_forms(monkeypatch)
    assert lower(abstract) == tpu
    assert lower(concrete) != host
    assert tpu["convolution"] > host["convolution"]
