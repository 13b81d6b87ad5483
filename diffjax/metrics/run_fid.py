"""FID of a trained run (``diffjax evaluate --metric fid``): EDM's protocol on the run's sampler.

    feats = fid.inception_features("pt_inception-2015-12-05-6726825d.pth", convention="tf")
    res = fid_of_run(run, feats, "cifar10-32x32.npz", num=50_000, sampler="heun", steps=18)
    mu, sigma = reference_stats(run.config, feats)      # the run's own training images

Sample i is example i of ``inference.generate`` (key fold_in(key(seed), i), label i mod C), drawn
in batches of ``batch_size`` (default ``config.sample.batch_size``) and decoded first for a latent
run, so the result does not depend on the batch size, the device count or how the N samples are
split over calls (``first_index``). Features are accumulated batch by batch in float64 (fid.py);
samples are never all held at once.
"""
from __future__ import annotations


from diffjax.metrics import fid as fid_lib


def fid_of_run(run, features: "fid_lib.Features", ref, *, num: int, sampler: str, steps: int,
               guidance=1.0, seed: int = 0, params_name: str | None = None,
               spacing: str | None = None, batch_size: int | None = None) -> dict:
    """{'fid', 'num', 'mu', 'sigma'} of ``num`` samples of ``run`` against ``ref`` (an .npz path
    or (mu, sigma))."""
    from diffjax import inference

    def sample(seeds):
        return inference.generate(run, len(seeds), sampler=sampler, steps=steps,
                                  guidance=guidance, seed=seed, params_name=params_name,
                                  spacing=spacing, batch_size=batch_size,
                                  first_index=int(seeds[0]))

    batch = int(batch_size or run.config.sample.get("batch_size", 100))
    return fid_lib.fid_of_sampler(sample, ref, features, num=num, batch_size=batch)


def reference_stats(config, features: "fid_lib.Features", limit: int | None = None):
    """(mu, sigma) of the Inception features of the run's training images (for a latent run, the
    images behind its latents: ``latent.image_data``), the first ``limit`` of them."""
    from diffjax.data import registry as data_registry
    from diffjax.data.arrays import source_arrays
    from diffjax.latent.cache import image_data

    x, _ = source_arrays(data_registry.get_source(image_data(config)), limit)
    n = len(x)
    if x.ndim != 4:
        raise ValueError(f"FID needs images; data source {config.data.name!r} gives examples of "
                         f"shape {x.shape[1:]}")
    if n < 2:
        raise ValueError(f"reference statistics need at least 2 images, the data has {n}")
    return features.stats(x)
