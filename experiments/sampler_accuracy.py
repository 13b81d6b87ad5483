"""Sampler accuracy vs NFE on Gaussian data, where the probability-flow ODE has an exact solution.

Reproduces the qualitative claims of the solver papers on a case with a known answer: DPM-Solver++
(Lu et al. 2022) and UniPC (Zhao et al. 2023) beat Euler/DDIM at low NFE; Heun (Karras et al. 2022)
is second order at twice the cost per step; EVODiff (Li et al. 2025) against DPM-Solver++(2M).

    python experiments/sampler_accuracy.py [--dim 3072] [--batch 256]

Prints a table of RMS error against the exact ODE map from sigma_max to 0 (lower is better).
"""
from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp

from diffjax.core import analytic, samplers, timesteps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 40])
    args = ap.parse_args()
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
    mu = jax.random.normal(k1, (args.dim,)) * 0.5
    s = jnp.exp(jax.random.uniform(k2, (args.dim,), minval=-2.5, maxval=0.0))
    D = analytic.gaussian_denoiser(mu, s)
    s_max, s_min = 80.0, 0.002
    x_T = s_max * jax.random.normal(k3, (args.batch, args.dim))
    exact = analytic.gaussian_ode_solution(x_T, s_max, 0.0, mu, s)
    names = ["ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc", "evodiff"]
    rows = {}
    for name in names:
        rows[name] = []
        for nfe in args.nfe:
            steps = (nfe + 1) // 2 if name == "heun" else nfe
            sig = timesteps.karras(steps, s_min, s_max)
            keys = samplers.example_keys(jax.random.PRNGKey(1), args.batch)
            out = samplers.run(samplers.get(name), D, x_T, sig, keys=keys)
            rows[name].append((int(out.nfe), float(jnp.sqrt(jnp.mean((out.x - exact) ** 2)))))
    print(f"{'sampler':<10}" + "".join(f"{'NFE~' + str(n):>14}" for n in args.nfe))
    for name in names:
        print(f"{name:<10}" + "".join(f"{e:>10.2e}({n:>2})" for n, e in rows[name]))
    print(json.dumps({"rms_error": {k: [e for _, e in v] for k, v in rows.items()},
                      "nfe": {k: [n for n, _ in v] for k, v in rows.items()}}))


if __name__ == "__main__":
    main()
