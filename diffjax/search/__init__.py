"""Inference-time search (issue 16): verifiers, search over initial noises (best-of-N, zero-order),
search over paths and SMC / Feynman-Kac steering so far.

    from diffjax.search import verifiers, noise_search
    gen = noise_search.ode_generator("dpmpp_2m", D, sigmas)
    v = verifiers.from_spec("class:7", logits_fn)
    out = noise_search.best_of_n(key, gen, v, shape=(16, 16, 16, 1), n=8)

    out = smc.fk_steering(key, "ddim", D, sigmas, v, shape=(16, 16, 16, 1), particles=8, eta=1.0)

Still to come (the issue's list): DTS / DTS*, the
calibrated (SDM) verifier with an adaptive budget, `diffjax search`, the experiments.
"""
from diffjax.search import noise_search, paths, smc, verifiers  # noqa: F401
