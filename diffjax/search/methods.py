"""The search methods by name, on one signature and one budget: ``budget`` network evaluations
in total for ``num`` samples of one condition. The registry behind ``diffjax search`` and the
experiments; a new method is a function here plus a line in ``METHODS``.

    out = methods.run("dts", key, D, sigmas, verifier, num=16, example_shape=(16, 16, 1),
                      budget=20000, cond={'label': jnp.array([3])})
    out.x (num, ...), out.nfe (<= budget), out.reward (num,), out.settings (what the budget bought)

Per method, what the budget buys (``nfe``: the sampler's NFE per sample):
    dts, dts_star   one tree of ``budget`` NFE (search/dts.py); ``num`` samples from it at 0 NFE
    dts_uniform     DTS with uniform selection: unbiased soft values at any budget (not in the
                    paper; search/tree.py ``select``, measured in docs/SEARCH.md)
    bon             best-of-N over initial noises, deterministic sampler: N = budget // (num nfe)
    random          best-of-N over whole stochastic trajectories (the DTS paper's BoN baseline)
    zero_order      4 neighbours per iteration: K = (budget // (num nfe) - 1) // 4 iterations
    paths           search over paths, 2 branches per round: as many paths as the budget pays for
    smc             FK steering with K = budget // (num nfe) particles per sample
``sampler`` None picks the method's kind: 'ddpm' (ancestral, eta 1) for the stochastic methods
(dts, dts_star, random, smc), 'dpmpp_2m' for the noise and path searches.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core import samplers
from diffjax.search import dts, noise_search, paths, smc
from diffjax.search.noise_search import _repeat as _rep

STOCHASTIC = ("dts", "dts_star", "dts_uniform", "random", "smc")
DETERMINISTIC = ("bon", "zero_order", "paths")


class Searched(NamedTuple):
    x: Any               # (num, ...) samples
    nfe: int             # network evaluations spent in total
    reward: Any          # (num,) their rewards
    settings: dict       # what the budget bought (N, K, particles, tree size, ...)
    extra: Any = None    # the method's own result (DTSResult, SMCResult, SearchResult)


def default_sampler(method: str) -> str:
    return "ddpm" if method in STOCHASTIC else "dpmpp_2m"


def _per_sample_nfe(sampler, sigmas, example_shape, **knobs) -> int:
    st = samplers.stepper(sampler, lambda x, s, c=None: jnp.zeros_like(x), sigmas, **knobs)
    return int(dts._level_nfe(st, example_shape, (st.num_steps,), knobs)[0])


def _count(budget, num, per, method, what):
    k = budget // (num * per)
    if k < 1:
        raise ValueError(f"search {method}: a budget of {budget} NFE does not pay for one "
                         f"{what} per sample ({num} samples x {per} NFE = {num * per})")
    return int(k)


def _dts(greedy, selection=None):
    def method(key, D, sigmas, verifier, *, num, example_shape, budget, cond, sampler, progress,
               lam, **knobs):
        k_tree, k_draw = jax.random.split(key)
        steps = len(sigmas) - 1
        every = max(steps // 5, 1)             # the paper's schedule: 5 branch levels
        res = dts.dts(k_tree, sampler, D, sigmas, verifier, example_shape=example_shape,
                      budget=budget, branch_steps=tuple(range(0, steps, every)), greedy=greedy,
                      selection=selection, lam=lam, cond=cond, progress=progress, **knobs)
        x = dts.sample(k_draw, res, num)
        r = verifier(x, _rep(cond, num))
        return Searched(x, res.nfe, r, {"nodes": int(res.tree.size),
                                        "leaves": int(res.tree.leaves().size),
                                        "branch_every": every}, res)
    return method


def _bon(key, D, sigmas, verifier, *, num, example_shape, budget, cond, sampler, progress,
         lam, **knobs):
    n = _count(budget, num, _per_sample_nfe(sampler, sigmas, example_shape, **knobs), "bon",
               "candidate")
    gen = noise_search.ode_generator(sampler, D, sigmas, **knobs)
    out = noise_search.best_of_n(key, gen, verifier, shape=(num,) + example_shape, n=n,
                                 cond=_rep(cond, num))
    return Searched(out.x, out.nfe, out.score, {"n": n}, out)


def _zero_order(key, D, sigmas, verifier, *, num, example_shape, budget, cond, sampler,
                progress, lam, **knobs):
    per = _per_sample_nfe(sampler, sigmas, example_shape, **knobs)
    k = (_count(budget, num, per, "zero_order", "candidate") - 1) // 4
    gen = noise_search.ode_generator(sampler, D, sigmas, **knobs)
    out = noise_search.zero_order(key, gen, verifier, shape=(num,) + example_shape, candidates=4,
                                  iterations=k, cond=_rep(cond, num))
    return Searched(out.x, out.nfe, out.score, {"candidates": 4, "iterations": k}, out)


def _paths(key, D, sigmas, verifier, *, num, example_shape, budget, cond, sampler, progress,
           lam, **knobs):
    steps = len(sigmas) - 1
    start, fwd, bwd = max(steps // 2, 1), max(steps // 10, 1), max(steps // 10, 1) + 1
    bwd = min(bwd, steps)
    fwd = min(fwd, bwd - 1)
    kw = dict(branches=2, start=start, forward=fwd, backward=bwd, **knobs)
    zero = lambda x, s, c=None: jnp.zeros_like(x)
    one = paths.search_paths(key, sampler, zero, sigmas, lambda x, c=None: jnp.zeros(x.shape[0]),
                             shape=(1, 1), paths=1, **kw).nfe
    p = _count(budget, num, int(one), "paths", "path")
    out = paths.search_paths(key, sampler, D, sigmas, verifier, shape=(num,) + example_shape,
                             paths=p, cond=_rep(cond, num), **kw)
    return Searched(out.x, out.nfe, out.score, {"paths": p, "branches": 2, "start": start,
                                                "forward": fwd, "backward": bwd}, out)


def _particles(pick, resample):
    def method(key, D, sigmas, verifier, *, num, example_shape, budget, cond, sampler, progress,
               lam, **knobs):
        name = "smc" if resample else "random"
        k = _count(budget, num, _per_sample_nfe(sampler, sigmas, example_shape, **knobs), name,
                   "particle" if resample else "candidate")
        steps = len(sigmas) - 1
        out = smc.fk_steering(key, sampler, D, sigmas, verifier, shape=(num,) + example_shape,
                              particles=k, pick=pick, cond=_rep(cond, num), lam=lam,
                              resample_every=1 if resample else steps + 1, **knobs)
        return Searched(out.x, out.nfe, out.reward, {"particles" if resample else "n": k}, out)
    return method


METHODS: dict[str, Callable] = {
    "dts": _dts(False), "dts_star": _dts(True), "dts_uniform": _dts(False, "uniform"),
    "bon": _bon, "random": _particles("max", False),
    "zero_order": _zero_order, "paths": _paths, "smc": _particles("sample", True),
}


def run(method: str, key, D, sigmas, verifier, *, num: int, example_shape, budget: int,
        cond=None, sampler: str | None = None, progress: Callable | None = None,
        lam: float = 1.0, **knobs) -> Searched:
    """``num`` samples by ``method`` within ``budget`` NFE (module docstring). ``cond``: one
    example's conditioning (leading axis 1), shared by all samples. ``lam``: the inverse
    temperature of the target p exp(lam r) (dts, dts_star, smc). ``knobs``: the sampler's."""
    if method not in METHODS:
        raise ValueError(f"unknown search method {method!r}; valid: {', '.join(METHODS)}")
    if num < 1 or budget < 1:
        raise ValueError(f"search: need num >= 1 and budget >= 1, got {num} and {budget}")
    sampler = sampler or default_sampler(method)
    s = samplers.get(sampler)
    if method in STOCHASTIC and not s.uses_noise(**knobs):
        raise ValueError(f"search {method} needs a stochastic sampler; {sampler!r} is "
                         f"deterministic here: use ddpm (the default) or ddim with eta > 0")
    if method in DETERMINISTIC and s.uses_noise(**knobs):
        raise ValueError(f"search {method} searches over the initial noise of a deterministic "
                         f"sampler; {sampler!r} draws noise: use dpmpp_2m (the default), heun "
                         f"or euler")
    out = METHODS[method](key, D, jnp.asarray(sigmas), verifier, num=num,
                          example_shape=tuple(example_shape), budget=int(budget), cond=cond,
                          sampler=sampler, progress=progress, lam=lam, **knobs)
    if out.nfe > budget:
        raise RuntimeError(f"search {method}: spent {out.nfe} NFE of a {budget} budget "
                           f"(internal error)")
    return out._replace(settings={"sampler": sampler, **out.settings})


def diversity(x) -> float:
    """Mean pairwise RMS distance between the samples (0: all the same)."""
    f = np.asarray(x, np.float64).reshape(len(x), -1)
    if len(f) < 2:
        return 0.0
    sq = (f ** 2).sum(1)
    d2 = np.clip(sq[:, None] + sq[None] - 2 * f @ f.T, 0, None) / f.shape[1]
    iu = np.triu_indices(len(f), 1)
    return float(np.sqrt(d2[iu]).mean())

