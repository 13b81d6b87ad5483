"""Search over initial noises (Ma et al., CVPR 2025, "Inference-time scaling for diffusion models
beyond scaling denoising steps", Sec. 3.2): with a deterministic sampler the sample is a function
x0 = G(n) of the initial noise n ~ N(0, I), so extra compute can search over n for a higher verifier
score V(G(n), c).

    gen = ode_generator("dpmpp_2m", D, sigmas)            # n -> (x0, NFE per sample)
    out = best_of_n(key, gen, verifier, shape=(16, 16, 16, 1), n=8, cond={'label': y})
    out = zero_order(key, gen, verifier, shape=..., candidates=4, iterations=4, tau=0.95)
    out.x, out.noise, out.score, out.nfe                   # NFE: every network call, exactly

best_of_n (random search): N noises per example, keep the best. NFE = B N nfe(G).
zero_order: start from a random pivot; each of K iterations draws N neighbours of the pivot and
moves the pivot to the best of {pivot, neighbours} (so the score never falls). The neighbours are
the authors' sampler (``neighbours``, algorithms-verified.md Sec. 2): exactly the pivot's norm and
exactly cosine tau to it, y = ||n|| (tau u + sqrt(1 - tau^2) w) with u = n / ||n|| and w a random
unit vector orthogonal to u (tau 0.95: an angle of 18.2 degrees). NFE = B (1 + K N) nfe(G).
Candidates are generated in batches of ``batch_size`` through one jitted generator; everything is
explicit keys and pure functions.
"""
from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from diffjax.core import samplers
from diffjax.search.verifiers import set_scorer


class SearchResult(NamedTuple):
    x: Any            # (B, ...) the chosen samples
    noise: Any        # (B, ...) their initial noises (unit variance)
    score: Any        # (B,) their verifier scores
    nfe: int          # network evaluations spent, in total (all examples, all candidates)
    history: Any      # (iterations + 1, B) the best score after each round (best_of_n: 1 round)


def ode_generator(sampler: str, D: Callable, sigmas, **knobs) -> Callable:
    """``gen(noise (B, ...), cond) -> (x0, nfe per sample)``: the deterministic ``sampler`` from
    x_T = sigmas[0] noise. A stochastic sampler would make x0 depend on more than the noise:
    refused."""
    s = samplers.get(sampler)
    if s.uses_noise(**knobs):
        raise ValueError(f"noise search needs a deterministic sampler (x0 a function of the "
                         f"initial noise); {sampler!r} draws fresh noise at each step: use e.g. "
                         f"dpmpp_2m, heun, euler or ddim with eta 0")
    sig = jnp.asarray(sigmas)
    draw = _drawer(sampler, D, tuple(sorted(knobs.items())))

    def gen(noise, cond=None):
        x, nfe = draw(sig, noise, cond)
        return x, int(nfe)          # the sampler's own count: network evaluations per sample

    return gen


@functools.lru_cache(maxsize=32)
def _drawer(sampler: str, D: Callable, knobs: tuple):
    """One jitted draw per (sampler, denoiser, knobs): generators built again for the same model
    (a notebook, a sweep over budgets) reuse the compiled program; the grid is traced."""
    kn = dict(knobs)

    @jax.jit
    def draw(sig, noise, cond):
        out = samplers.sample(sampler, D, sig, x_init=noise * sig[0], cond=cond, **kn)
        return out.x, out.nfe
    return draw


def _repeat(cond, n: int):
    """cond with each example's entries repeated n times (candidates of one example adjacent)."""
    if cond is None:
        return None
    return jax.tree.map(lambda v: jnp.repeat(jnp.asarray(v), n, axis=0), cond)


def _generate(gen, noise, cond, batch_size: int):
    xs, nfe = [], 0
    for start in range(0, noise.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        c = None if cond is None else jax.tree.map(lambda v: v[sl], cond)
        x, per = gen(noise[sl], c)
        xs.append(x)
        nfe += per * x.shape[0]
    return jnp.concatenate(xs), nfe


def best_of_n(key, gen: Callable, verifier, *, shape, n: int, cond=None,
              batch_size: int = 256) -> SearchResult:
    """Random search: ``n`` noises for each of the ``shape[0]`` examples, the best kept (ties:
    the first candidate)."""
    if n < 1:
        raise ValueError(f"best_of_n: n must be >= 1, got {n}")
    b = shape[0]
    noise = jax.random.normal(key, (b * n,) + tuple(shape[1:]))
    cands = _repeat(cond, n)
    x, nfe = _generate(gen, noise, cands, batch_size)
    scores = set_scorer(verifier)(x, cands, n).reshape(b, n)
    best = jnp.argmax(scores, axis=1)
    pick = lambda a: a.reshape((b, n) + a.shape[1:])[jnp.arange(b), best]
    return SearchResult(pick(x), pick(noise), scores[jnp.arange(b), best], int(nfe),
                        jnp.max(scores, axis=1)[None])


def neighbours(key, pivot, num: int, tau: float = 0.95):
    """``num`` noises per example of ``pivot`` (B, ...) with exactly its norm and cosine ``tau``
    to it: (B, num, ...)."""
    if not -1.0 < tau < 1.0:
        raise ValueError(f"neighbours: tau (the cosine to the pivot) must lie in (-1, 1), got {tau}")
    b = pivot.shape[0]
    flat = pivot.reshape(b, -1).astype(jnp.float32)
    if flat.shape[1] < 2:
        raise ValueError("neighbours: an example of one dimension has no other noise of its norm "
                         "at cosine tau (only -n): zero-order search needs examples of >= 2 "
                         "dimensions")
    norm = jnp.linalg.norm(flat, axis=1, keepdims=True)
    u = flat / norm
    v = jax.random.normal(key, (b, num, flat.shape[1]))
    v = v - jnp.sum(v * u[:, None], -1, keepdims=True) * u[:, None]
    w = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
    y = norm[:, None] * (tau * u[:, None] + jnp.sqrt(1.0 - tau ** 2) * w)
    return y.reshape((b, num) + pivot.shape[1:])


def zero_order(key, gen: Callable, verifier, *, shape, candidates: int, iterations: int,
               tau: float = 0.95, cond=None, batch_size: int = 256) -> SearchResult:
    """Zero-order search over the noise (module docstring)."""
    if candidates < 1 or iterations < 0:
        raise ValueError(f"zero_order: need candidates >= 1 and iterations >= 0, got "
                         f"{candidates} and {iterations}")
    b = shape[0]
    score = set_scorer(verifier)
    k0, key = jax.random.split(key)
    pivot = jax.random.normal(k0, tuple(shape))
    x, nfe = _generate(gen, pivot, cond, batch_size)
    best = score(x, cond, 1)
    history = [best]
    cands_cond = _repeat(cond, candidates)
    for it in range(iterations):
        ys = neighbours(jax.random.fold_in(key, it), pivot, candidates, tau)
        flat = ys.reshape((b * candidates,) + tuple(shape[1:]))
        xc, used = _generate(gen, flat, cands_cond, batch_size)
        nfe += used
        sc = score(xc, cands_cond, candidates).reshape(b, candidates)
        j = jnp.argmax(sc, axis=1)
        better = sc[jnp.arange(b), j] > best
        pick = lambda a: a.reshape((b, candidates) + a.shape[1:])[jnp.arange(b), j]
        sel = lambda new, old: jnp.where(better.reshape((b,) + (1,) * (old.ndim - 1)), new, old)
        pivot, x = sel(pick(flat), pivot), sel(pick(xc), x)
        best = jnp.where(better, sc[jnp.arange(b), j], best)
        history.append(best)
    return SearchResult(x, pivot, best, int(nfe), jnp.stack(history))

