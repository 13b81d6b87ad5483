"""RADD caching (Ou et al., ICLR 2025, Sec. 3.2): network evaluations saved by reusing the
time-free network's output while no token changed, and sample quality, against the number of
sampling steps, for a character-level RADD model (configs/text_radd.py).

    python experiments/radd_caching.py --quick            # ~300 training steps + a small table
    python experiments/radd_caching.py --workdir /tmp/text_radd --steps 16 64 256 1024

Run: configs/text_radd.py trained into WORKDIR unless it has a checkpoint (``diffjax train``;
--quick: 300 steps). Per sampler (tau_leaping, euler) and step count K, ``--num`` sequences of 64
characters are drawn twice with the same key, with and without the cache (identical samples:
checked), and the AO-ARM sampler once (64 calls). Columns:
    nfe       mean calls per sequence with the cache (the calls drawing it alone makes;
              without the cache it is K); nfe_batch = calls for the whole batch together
    saved     1 - nfe / K
    same      the cached and uncached samples are identical
    model     the samples' -log p_theta in bits per character under the model itself (the AO-ARM
              NLL of one random order, losses.aoarm_nll)
    ngram     their bits per character under an independent interpolated character 4-gram fitted
              to the training text (a "generative perplexity" stand-in: the paper scores samples
              with GPT-2 large); held-out text scores 'ngram(test)'
    seconds   wall time of the cached and uncached draws (after a compile)
Also the model's bound on held-out text (lambda-DCE and AO-ARM, bits per character).
Claim: with caching the NFE falls far below K for many steps (<= L + 1 = 65 per sequence) at
identical samples, so equal quality; the paper reports up to 3.5x faster sampling.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from diffjax.discrete import losses, text_data  # noqa: E402
from diffjax.discrete import run as run_lib  # noqa: E402
from experiments.runs import ensure_trained  # noqa: E402

LN2 = float(np.log(2.0))


class CharNgram:
    """Interpolated character n-gram: p(c | h) = sum_n w_n p_n(c | last n-1 chars), add-0.5
    smoothing at every order, weights ``w`` (orders 1..N)."""

    def __init__(self, text: str, order: int = 4, weights=(0.05, 0.15, 0.3, 0.5)):
        self.order, self.w = order, weights
        self.counts = [collections.defaultdict(collections.Counter) for _ in range(order)]
        for i in range(len(text)):
            for n in range(order):
                if i - n >= 0:
                    self.counts[n][text[i - n:i]][text[i]] += 1

    def bits_per_char(self, s: str) -> float:
        v = len(text_data.VOCAB)
        total = 0.0
        for i, c in enumerate(s):
            p = 0.0
            for n in range(self.order):
                ctr = self.counts[n].get(s[max(0, i - n):i]) if i - n >= 0 else None
                cnt, tot = (ctr[c], sum(ctr.values())) if ctr else (0, 0)
                p += self.w[n] * (cnt + 0.5) / (tot + 0.5 * v)
            total -= np.log2(p)
        return total / len(s)


def heldout_bounds(r, tokens, seed=0):
    """(lambda-DCE, AO-ARM) bits per character of held-out windows under the model."""
    f = jax.jit(lambda p, x, k: losses.lambda_dce(run_lib.log_p_fn(r.model, p), x, k,
                                                  mask_id=r.vocab))
    lam = np.mean([np.asarray(f(r.params, jnp.asarray(tokens), jax.random.key(seed + i)))
                   for i in range(8)])
    ao = run_lib.sequence_nll(r, tokens, seed=seed).mean()
    return lam / r.seq_len / LN2, ao / r.seq_len / LN2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="300 training steps, a small table")
    ap.add_argument("--workdir", default=None, help="the run (default /tmp/radd_caching[_quick])")
    ap.add_argument("--steps", type=int, nargs="+", default=None)
    ap.add_argument("--num", type=int, default=None, help="sequences per point")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    workdir = args.workdir or ("/tmp/radd_caching_quick" if args.quick else "/tmp/radd_caching")
    steps = args.steps or ([8, 32, 128, 512] if args.quick else [8, 32, 128, 512, 2048])
    num = args.num or (32 if args.quick else 128)
    ensure_trained(workdir, "configs/text_radd.py",
                   *(["--config.total_steps=300", "--config.checkpoint.every=300"]
                     if args.quick else []))
    r = run_lib.load(workdir)
    lm = CharNgram(text_data.split_text("train"))
    test = text_data.windows("test", r.seq_len)
    lam_b, ao_b = heldout_bounds(r, test[: 256 if args.quick else len(test)], args.seed)
    ngram_test = np.mean([lm.bits_per_char(text_data.decode(t)) for t in test[:num]])
    print(f"run {workdir} step {r.step} params {r.params_name}: held-out bound lambda-DCE "
          f"{lam_b:.3f} bits/char, AO-ARM {ao_b:.3f} bits/char; held-out text under the 4-gram "
          f"{ngram_test:.3f} bits/char")
    rows = []

    def timed(**kw):
        run_lib.generate(r, num, seed=args.seed + 1, **kw)            # compile
        t0 = time.time()
        res = run_lib.generate(r, num, seed=args.seed, **kw)
        return res, time.time() - t0

    for method in ("tau_leaping", "euler"):
        for k in steps:
            a, ta = timed(steps=k, method=method, cache=True)
            b, tb = timed(steps=k, method=method, cache=False)
            texts = [text_data.decode(t) for t in a.tokens]
            rows.append(dict(
                sampler=method, steps=k, nfe=float(np.mean(a.nfe_per_seq)), nfe_batch=int(a.nfe),
                nfe_nocache=int(b.nfe), saved=1.0 - float(np.mean(a.nfe_per_seq)) / k,
                same=bool(np.array_equal(a.tokens, b.tokens)),
                model=float(run_lib.sequence_nll(r, a.tokens, seed=args.seed).mean()
                            / r.seq_len / LN2),
                ngram=float(np.mean([lm.bits_per_char(s) for s in texts])),
                sec_cache=ta, sec_nocache=tb, example=texts[0]))
    a, ta = timed(steps=1, method="aoarm")
    texts = [text_data.decode(t) for t in a.tokens]
    rows.append(dict(sampler="aoarm", steps=r.seq_len, nfe=float(np.mean(a.nfe_per_seq)),
                     nfe_batch=int(a.nfe), nfe_nocache=int(a.nfe), saved=0.0, same=True,
                     model=float(run_lib.sequence_nll(r, a.tokens).mean() / r.seq_len / LN2),
                     ngram=float(np.mean([lm.bits_per_char(s) for s in texts])),
                     sec_cache=ta, sec_nocache=ta, example=texts[0]))
    head = (f"{'sampler':12s} {'K':>5s} {'nfe':>7s} {'batch':>6s} {'saved':>6s} {'same':>5s} "
            f"{'model':>6s} {'ngram':>6s} {'s(cache)':>8s} {'s(none)':>8s}")
    print(head)
    for w in rows:
        print(f"{w['sampler']:12s} {w['steps']:5d} {w['nfe']:7.1f} {w['nfe_batch']:6d} "
              f"{w['saved']:6.1%} {str(w['same']):>5s} {w['model']:6.3f} {w['ngram']:6.3f} "
              f"{w['sec_cache']:8.2f} {w['sec_nocache']:8.2f}")
    print("examples:")
    for w in rows:
        print(f"  {w['sampler']:11s} K={w['steps']:<5d} {w['example']}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"heldout_lambda_dce_bpc": float(lam_b), "heldout_aoarm_bpc": float(ao_b),
                       "heldout_ngram_bpc": float(ngram_test), "rows": rows}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
