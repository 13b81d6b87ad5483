"""Latent diffusion (Rombach et al. 2022): a VAE maps images to latents once, the model trains and
samples in latent space, samples decode to images.

    diffjax encode --config CFG --workdir W      # config.data (images) -> W/latents (the cache)
    diffjax train  --config CFG --workdir W      # trains on the cache (config.latent.vae set)
    diffjax sample --workdir W                   # decoded images

``vae``: the VAE folder (load_vae / save_vae / find_vae); ``cache``: the sharded encoder and the
cache the trainer reads (training_source). ``inference.generate`` decodes a latent run's samples.
"""
from diffjax.latent.vae import Vae, find_vae, fingerprint, load_vae, save_vae
from diffjax.latent.cache import (cache_path, encode_config, encode_images, image_data,
                                  load_cache, training_source)
