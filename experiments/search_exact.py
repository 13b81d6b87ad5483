"""Search methods against exact tilted targets: how close do their samples come to
p(x0) exp(lambda r(x0)) / Z at equal NFE, as the budget grows?

    python experiments/search_exact.py [--num 200] [--budgets 4000 20000 100000 400000]

Two problems with closed-form targets, both sampled by ancestral DDPM (eta 1) on the exact
denoiser of the prior (core/analytic.py), 50 steps, DTS branching every 10 steps:
- gauss1d: prior N(0, 1), r(x) = -(x - 2)^2 / 2, lambda 1. The sampler's own marginal is
  N(0, v_p) exactly (a linear chain; v_p measured by the coefficients, as tests/search/test_dts.py
  does), so the target is N(v 2, v) with 1/v = 1/v_p + 1. Metric: Kolmogorov-Smirnov distance.
- gmm2d: prior 1/2 N((-2, 0), 0.5^2 I) + 1/2 N((2, 0), 0.5^2 I) and r(x) = -|x - (2, 1)|^2 / 2:
  the tilt is a two-component mixture in closed form (each component tilted, reweighted by its
  N(a; mu_k, (s^2 + 1/lambda) I)), up to the sampler's own bias (its energy distance at no search,
  the 'floor' column, is shown). Metric: energy distance to 20000 target draws.
Every method draws --num samples: DTS and DTS with uniform selection from one tree of the whole
budget (samples cost 0 NFE), SMC with budget / (num x 50) particles per sample, best-of-N over the
stochastic sampler ('random') with as many candidates. Prints a table; --json writes the rows.

The DTS paper (Prop. 1) promises the tilted distribution as the iterations grow; here its
Boltzmann selection leaves a finite-budget bias towards the prior (search/tree.py ``select``), so
uniform selection is shown next to it.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

from diffjax.core import analytic, processes, samplers, timesteps  # noqa: E402
from diffjax.search import dts, smc  # noqa: E402
from diffjax.search import verifiers as V  # noqa: E402

STEPS, BRANCH = 50, (0, 10, 20, 30, 40)
SIG = timesteps.sigmas(processes.get("edm"), STEPS, "karras")


def sampler_variance(D) -> float:
    """Var of the DDPM chain's samples on a linear (Gaussian) denoiser, exactly (see module)."""
    st = samplers.stepper("ddpm", D, SIG)
    k = jnp.arange(STEPS)
    zs = jnp.zeros((STEPS, STEPS + 1, 1)).at[k, k + 1, 0].set(1.0)
    s = st.init(jnp.zeros((STEPS + 1, 1)).at[0, 0].set(1.0))
    for i in range(STEPS):
        s = st.step(s, i, zs[i])
    coef = np.asarray(s.x)[:, 0]
    return float(coef[0] ** 2 * SIG[0] ** 2 + np.sum(coef[1:] ** 2))


def energy_distance(x, y, max_n: int = 4000) -> float:
    x, y = np.asarray(x, np.float64)[:max_n], np.asarray(y, np.float64)[:max_n]
    d = lambda a, b: np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1)).mean()
    return float(2 * d(x, y) - d(x, x) - d(y, y))


def problems():
    g = analytic.gaussian_denoiser(0.0, 1.0)
    vp = sampler_variance(g)
    v = 1.0 / (1.0 / vp + 1.0)
    target1 = stats.norm(v * 2.0, math.sqrt(v))
    yield ("gauss1d", g, (1,), V.from_fn(lambda x: -0.5 * jnp.sum((x - 2.0) ** 2, -1)),
           lambda x: float(stats.kstest(np.ravel(x), target1.cdf).statistic), "KS")
    mu, s, a = np.array([[-2.0, 0.0], [2.0, 0.0]]), 0.5, np.array([2.0, 1.0])
    gm = analytic.isotropic_mixture(mu, s)
    vt = 1.0 / (1.0 / s ** 2 + 1.0)
    means = vt * (mu / s ** 2 + a)
    logw = -((a - mu) ** 2).sum(1) / (2 * (s ** 2 + 1.0))
    w = np.exp(logw - logw.max())
    w /= w.sum()
    rng = np.random.default_rng(0)
    comp = rng.choice(2, 20000, p=w)
    target2 = means[comp] + math.sqrt(vt) * rng.standard_normal((20000, 2))
    yield ("gmm2d", gm.denoise, (2,), V.from_fn(lambda x: -0.5 * jnp.sum((x - a) ** 2, -1)),
           lambda x: energy_distance(x, target2), "energy")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=200)
    ap.add_argument("--budgets", type=int, nargs="+", default=[4000, 20000, 100000, 400000])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    rows = []
    for name, D, shape, reward, metric, mname in problems():
        base = samplers.sample("ddpm", D, SIG, keys=samplers.example_keys(jax.random.key(7),
                                                                          a.num),
                               shape=(a.num,) + shape).x
        floor = metric(base)
        for budget in a.budgets:
            row = {"problem": name, "metric": mname, "budget": budget, "no_search": floor}
            for label, sel in (("dts", "boltzmann"), ("dts_uniform", "uniform")):
                res = dts.dts(jax.random.key(a.seed), "ddpm", D, SIG, reward, example_shape=shape,
                              budget=budget, branch_steps=BRANCH, selection=sel, batch=256)
                row[label] = metric(dts.sample(jax.random.key(a.seed + 1), res, a.num))
            k = budget // (a.num * STEPS)
            for label, pick, every in (("smc", "sample", 1), ("random", "max", STEPS + 1)):
                if k < 1:
                    row[label] = None
                    continue
                out = smc.fk_steering(jax.random.key(a.seed), "ddpm", D, SIG, reward,
                                      shape=(a.num,) + shape, particles=k, pick=pick,
                                      resample_every=every)
                row[label] = metric(out.x)
            row["particles"] = k
            rows.append(row)
            print(json.dumps(row), flush=True)
    cols = ("no_search", "dts", "dts_uniform", "smc", "random")
    for name in dict.fromkeys(r["problem"] for r in rows):
        sub = [r for r in rows if r["problem"] == name]
        print(f"\n{name}: {sub[0]['metric']} distance to the tilted target, {a.num} samples "
              f"(lower is better)")
        print("| NFE | particles / N per sample | " + " | ".join(cols) + " |")
        print("|---|---|" + "---|" * len(cols))
        for r in sub:
            cells = ["-" if r[c] is None else f"{r[c]:.3f}" for c in cols]
            print(f"| {r['budget']} | {r['particles']} | " + " | ".join(cells) + " |")
    if a.json:
        with open(a.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
