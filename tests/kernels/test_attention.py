"""kernels.cpu.attention (batch chunks, own VJP) and jax.nn.dot_product_attention against the formula."""
import jax
import jax.numpy as jnp
import pytest

from diffjax import kernels
from diffjax.kernels import cpu, reference
from diffjax.kernels.cpu.attention import chunk_size
from tests.kernels.util import close, rand, value_and_grads

MASK = jnp.array([[1, 1, 0, 1, 0], [1, 1, 1, 1, 1], [0, 1, 0, 0, 0]], bool)


def _formula(q, k, v, mask=None):
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    if mask is not None:
        logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    return jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, -1), v)


def _qkv():
    return rand(1, (3, 7, 4, 8), 3.0), rand(2, (3, 5, 4, 8), 3.0), rand(3, (3, 5, 4, 8))


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("chunk_bytes", [None, (1, 1), (1120, 1), (1, 1120)])
def test_cpu_form_matches_the_formula(masked, chunk_bytes):
    """Values and gradients (q, k, v); chunk budgets (inference, gradient): 1 = one example per
    chunk, 1120 = 2 of the 3, None = the defaults (the whole batch)."""
    mask = MASK if masked else None
    opts = dict(zip(("chunk_bytes", "chunk_bytes_grad"), chunk_bytes)) if chunk_bytes else {}
    close(value_and_grads(lambda *a: cpu.attention(*a, mask, **opts), _qkv()),
          value_and_grads(lambda *a: _formula(*a, mask), _qkv()), 2e-5)


@pytest.mark.parametrize("masked", [True, False])
def test_plain_form_matches_the_formula(masked):
    """jax.nn.dot_product_attention, the form TPU and GPU lowerings take."""
    mask = MASK if masked else None
    close(value_and_grads(lambda *a: reference.attention(*a, mask), _qkv()),
          value_and_grads(lambda *a: _formula(*a, mask), _qkv()), 2e-5)


def test_chunks_keep_logits_under_the_budget():
    q, kt = jnp.zeros((32, 16, 256, 8)), jnp.zeros((32, 16, 8, 256))   # 4 MiB of logits per example
    assert chunk_size(q, kt, kernels.CHUNK_BYTES) == 2
    assert chunk_size(q, kt, kernels.CHUNK_BYTES_GRAD) == 1
    assert chunk_size(jnp.zeros((3, 4, 7, 8)), jnp.zeros((3, 4, 8, 5)), 1120) == 2   # 2 of 3 above
    assert chunk_size(q[:, :, :64], kt[..., :64], kernels.CHUNK_BYTES) == 32   # a small batch at once
    assert chunk_size(jnp.zeros((1, 16, 4096, 8)), jnp.zeros((1, 16, 8, 4096)), 2 ** 20) == 1


def test_chunk_options_reach_the_cpu_form():
    """One example per chunk: the lax.map runs 3 chunks of 1 instead of 1 chunk of the 3 (q is
    mapped as (chunks, examples, H, Lq, d)); under differentiation chunk_bytes_grad decides."""
    q, k, v = _qkv()
    lowered = lambda f, **o: jax.jit(lambda *a: f(lambda *b: kernels.attention(*b, **o), a)).lower(
        q, k, v).as_text()
    fwd = lambda g, a: g(*a)
    grad = lambda g, a: jax.grad(lambda *b: jnp.sum(g(*b)), (0, 1, 2))(*a)
    whole, single = "tensor<1x3x4x7x8xf32>", "tensor<3x1x4x7x8xf32>"
    assert whole in lowered(fwd) and single not in lowered(fwd)
    assert single in lowered(fwd, chunk_bytes=1) and single not in lowered(grad, chunk_bytes=1)
    assert single in lowered(grad, chunk_bytes_grad=1) and single not in lowered(fwd, chunk_bytes_grad=1)
    close(jax.jit(lambda *a: kernels.attention(*a, chunk_bytes=1))(q, k, v), _formula(q, k, v), 2e-5)


def test_bfloat16_stays_close():
    q, k, v = (rand(i, (2, 16, 4, 8), 2.0) for i in (1, 2, 3))
    bf = tuple(t.astype(jnp.bfloat16) for t in (q, k, v))
    out, grads = value_and_grads(kernels.attention, bf)
    assert out.dtype == jnp.bfloat16
    ref_out, ref_grads = value_and_grads(_formula, (q, k, v))
    close(out, ref_out, 3e-2)
    close(grads, ref_grads, 5e-2)


def test_implementation_option_goes_to_the_gpu_form_only():
    """``implementation`` adds a 'cuda' branch (jax.nn.dot_product_attention(implementation=...));
    lowered for CPU the op is still the CPU form, bit for bit."""
    q, k, v = _qkv()
    want = jax.jit(cpu.attention)(q, k, v, MASK)
    got = jax.jit(lambda *a: kernels.attention(*a, implementation="xla"))(q, k, v, MASK)
    assert jnp.array_equal(got, want)
