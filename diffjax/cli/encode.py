"""``diffjax encode``: an image dataset encoded once into the latent cache (diffjax/latent).

    diffjax encode --config CFG --workdir W [--config.latent.vae=DIR --config.KEY=VALUE ...]

Reads ``config.data`` (an image source) and the VAE ``config.latent.vae``; writes the cache
``config.latent.cache`` (default W/latents), which ``diffjax train`` with the same --config and
--workdir trains on. The batch is split over every device (and every host, with the multi-host
flags). Prints one JSON line: the cache, its size and shape, the latents' mean and std (about 0
and 1 for a VAE whose scaling_factor fits the data).
"""
from __future__ import annotations

import json
import sys

from diffjax.cli.table import CommandError


def cmd_encode(config, workdir: str) -> None:
    import jax

    from diffjax import latent

    if config is None:
        raise CommandError("diffjax encode needs --config (the run's config: its data section and "
                           "config.latent.vae)")
    shown = [-1]

    def progress(done, total):
        pct = 100 * done // total
        if jax.process_index() == 0 and pct // 10 != shown[0]:
            shown[0] = pct // 10
            sys.stderr.write(f"diffjax encode: {done}/{total} images\n")
            sys.stderr.flush()

    summary = latent.encode_config(config, workdir, progress=progress)
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in summary.items()}))
