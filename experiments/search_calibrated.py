"""Calibrated (SDM) verification with an adaptive best-of-N budget, on a 2-D toy with exact answers.

    python experiments/search_calibrated.py
    python experiments/search_calibrated.py --num 512 --alpha 0.9 --n-max 32

Data: three overlapping classes N(mu_k, 0.7^2 I) at the corners of a triangle; the diffusion
model is the mixture's exact denoiser (diffjax/core/analytic.py) sampled with DPM-Solver++(2M);
the classifier is the Bayes one (logits = log-responsibilities, features = x). SDM
(search/calibrated.py) is fitted on 3000 training and 3000 calibration draws; the target is class
``--target``. Softmax best-of-N pushes samples into the sparse far tail of the target class,
where softmax is certain but few calibration points are as near to the training data (small d),
so SDM admits fewer of them; SDM best-of-N picks samples inside the bulk of the class.

Rows: best-of-N with the softmax verifier (verifiers.class_logprob) and with the SDM verifier, and
the adaptive budget (n_min .. n_max, more candidates only while the chosen one is not admitted as
the target with confidence >= alpha'). Columns: NFE per sample; ``admitted``, the fraction of
samples the calibrated verifier admits as the target; ``p_target``, the exact posterior probability
that a sample came from the target class, averaged (what "the sample is of the target" means here);
and its mean over the admitted samples, which SDM's region promises to be >= alpha'.
"""
from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffjax.core import analytic, processes, timesteps
from diffjax.search import calibrated, noise_search, verifiers

MEANS = np.array([[0.0, 1.0], [0.87, -0.5], [-0.87, -0.5]], np.float32)
STD = 0.7


def logits_fn(x):
    """log p(k | x) up to a constant: the Bayes classifier of the equal-weight mixture."""
    return -jnp.sum((x[:, None, :] - MEANS[None]) ** 2, -1) / (2 * STD ** 2)


def draw(key, n):
    k1, k2 = jax.random.split(key)
    y = jax.random.randint(k1, (n,), 0, len(MEANS))
    x = jnp.asarray(MEANS)[y] + STD * jax.random.normal(k2, (n, 2))
    return np.asarray(x), np.asarray(y), np.asarray(logits_fn(x))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num", type=int, default=256, help="samples per row")
    ap.add_argument("--alpha", type=float, default=0.95, help="alpha' of the SDM region")
    ap.add_argument("--target", type=int, default=0)
    ap.add_argument("--n-min", type=int, default=1)
    ap.add_argument("--n-max", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    key = jax.random.key(args.seed)
    t0 = time.time()
    cal = calibrated.fit_sdm(*draw(jax.random.fold_in(key, 1), 3000),
                             *draw(jax.random.fold_in(key, 2), 3000), alpha=args.alpha)
    print(f"SDM fitted in {time.time() - t0:.1f} s: q~_min = {float(cal.q_tilde_min):.3f}, "
          f"thresholds = {', '.join(f'{t:.3f}' for t in np.asarray(cal.thresholds))}")

    gm = analytic.isotropic_mixture(MEANS, STD)
    gen = noise_search.ode_generator("dpmpp_2m", gm.denoise,
                                     timesteps.sigmas(processes.get("edm"), args.steps, "karras"))
    softmax_v = verifiers.class_logprob(logits_fn, [args.target])
    sdm_v = calibrated.calibrated_verifier(cal, lambda x: x, logits_fn, classes=[args.target])
    shape = (args.num, 2)
    sk = jax.random.fold_in(key, 3)
    rows = []
    for n in sorted({args.n_min, 4, args.n_max}):
        rows.append((f"best_of_n softmax N={n}",
                     noise_search.best_of_n(sk, gen, softmax_v, shape=shape, n=n)))
        rows.append((f"best_of_n sdm N={n}",
                     noise_search.best_of_n(sk, gen, sdm_v, shape=shape, n=n)))
    rows.append((f"adaptive sdm N={args.n_min}..{args.n_max}",
                 calibrated.adaptive_best_of_n(sk, gen, sdm_v, sdm_v.confidence, shape=shape,
                                               n_min=args.n_min, n_max=args.n_max,
                                               threshold=args.alpha)))

    print(f"\n{'row':<28} {'NFE/sample':>10} {'admitted':>9} {'p_target':>9} {'p | admitted':>13}")
    for name, out in rows:
        post = np.asarray(jax.nn.softmax(logits_fn(out.x), -1))[:, args.target]
        adm = np.asarray(sdm_v.confidence(out.x)) >= args.alpha
        inside = f"{post[adm].mean():.3f}" if adm.any() else "-"
        print(f"{name:<28} {out.nfe / args.num:>10.1f} {adm.mean():>9.3f} {post.mean():>9.3f} "
              f"{inside:>13}")


if __name__ == "__main__":
    main()
