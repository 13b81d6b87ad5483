"""Search over paths (Ma et al., CVPR 2025, Sec. 3.2, "search over paths"): keep N partial
sampling paths per example and, round by round, branch each into M by re-noising and re-denoising,
keeping the N whose clean estimates score best.

On the sampler's grid sigma_0 > ... > sigma_S = 0 (indices), with a deterministic sampler:
1. run the N paths from x_T to index ``start``;
2. each round at index i: every path gets M fresh noises and is forward-noised to index i - f,
   x' = x + sqrt(sigma_{i-f}^2 - sigma_i^2) z (the EDM frame's forward kernel), then denoised with
   the sampler from i - f to i - f + b (b > f: net progress b - f indices per round);
3. the N M branches are scored by the verifier on the sampler's clean estimate x0 (verifiers do
   not take noisy inputs) and the best N per example are kept;
4. at the end of the grid the best of the N survivors is returned (random search over them).
With ``branches=1`` and ``forward=0`` it is the plain sampler split into segments (tested).
NFE: every network call of every branch, counted by the sampler (``state.nfe``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffjax.core import samplers
from diffjax.search.noise_search import SearchResult
from diffjax.search.verifiers import set_scorer


def search_paths(key, sampler: str, D, sigmas, verifier, *, shape, paths: int, branches: int,
                 start: int, forward: int, backward: int, cond=None, **knobs) -> SearchResult:
    """Search over paths for ``shape[0]`` examples (module docstring); returns the best path's
    sample per example. ``history``: the best score per example after each round."""
    sig = jnp.asarray(sigmas)
    steps = sig.shape[0] - 1
    if not (0 < start <= steps and 0 <= forward < backward and forward <= start):
        raise ValueError(f"search_paths: need 0 < start <= {steps} (the grid's steps), "
                         f"0 <= forward < backward and forward <= start; got start {start}, "
                         f"forward {forward}, backward {backward}")
    if paths < 1 or branches < 1:
        raise ValueError("search_paths: need paths >= 1 and branches >= 1")
    st = samplers.stepper(sampler, D, sig, cond=None, **knobs)
    if st.needs_noise:
        raise ValueError(f"search_paths needs a deterministic sampler between re-noisings; "
                         f"{sampler!r} with these knobs draws noise: use e.g. euler or dpmpp_2m")
    b = shape[0]
    score = set_scorer(verifier)
    rep = lambda c, n: None if c is None else jax.tree.map(
        lambda v: jnp.repeat(jnp.asarray(v), n, 0), c)

    @jax.jit
    def segment(x, c, i0, i1):
        """Run the sampler from grid index i0 to i1 (a fresh state: multistep history restarts);
        the indices are traced: one compile for every round."""
        s = samplers.stepper(sampler, D, sig, cond=c, **knobs)
        state = s.init(x)
        state = jax.lax.fori_loop(i0, i1, lambda i, st_: s.step(st_, i, None), state)
        return state.x, state.x0, state.nfe

    k0, key = jax.random.split(key)
    n = b * paths
    x = sig[0] * jax.random.normal(k0, (n,) + tuple(shape[1:]))
    c_paths = rep(cond, paths)
    x, _, nfe = segment(x, c_paths, jnp.int32(0), jnp.int32(start))
    total = int(nfe) * n
    i, history, rnd = start, [], 0
    c_branch = rep(c_paths, branches)
    while i < steps:
        lo = i - forward
        hi = min(lo + backward, steps)
        xb = jnp.repeat(x, branches, 0)
        z = jax.random.normal(jax.random.fold_in(key, rnd), xb.shape)
        xb = xb + jnp.sqrt(jnp.maximum(sig[lo] ** 2 - sig[i] ** 2, 0.0)) * z
        xb, x0b, nfe = segment(xb, c_branch, jnp.int32(lo), jnp.int32(hi))
        total += int(nfe) * xb.shape[0]
        sc = score(x0b, c_branch, paths * branches).reshape(b, paths * branches)
        keep = jnp.argsort(-sc, axis=1)[:, :paths]                      # the best N per example
        flat = (keep + jnp.arange(b)[:, None] * paths * branches).reshape(-1)
        x = xb[flat]
        history.append(jnp.take_along_axis(sc, keep[:, :1], 1)[:, 0])
        i, rnd = hi, rnd + 1
    final = score(x, c_paths, paths).reshape(b, paths)
    j = jnp.argmax(final, axis=1)
    pick = lambda a: a.reshape((b, paths) + a.shape[1:])[jnp.arange(b), j]
    hist = jnp.stack(history) if history else final.max(1)[None]
    return SearchResult(pick(x), None, final[jnp.arange(b), j], total, hist)
