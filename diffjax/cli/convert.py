"""``diffjax convert``: a PyTorch / diffusers checkpoint as a diffjax run directory (diffjax/convert).

    diffjax convert --from diffusers DIR --workdir OUT [--scan_layers] [--overwrite]

DIR: a diffusers model folder (DiTTransformer2DModel, PixArtTransformer2DModel, UNet2DModel:
config.json + diffusion_pytorch_model.safetensors or .bin) or a pipeline folder (model_index.json
with transformer/ or unet/, scheduler/, vae/). OUT becomes a run: ``diffjax sample --workdir OUT``.
An AutoencoderKL folder converts into OUT as a VAE folder (vae.json + params.safetensors), what
``config.latent.vae`` names. Prints one JSON line: what was converted.
"""
from __future__ import annotations

import json
import os

from absl import flags

from diffjax.cli.table import CommandError

_FROM = flags.DEFINE_string("from", None, "convert: the checkpoint format of DIR (diffusers).")
_SCAN = flags.DEFINE_bool("scan_layers", None, "convert: write the scanned (stacked) layer layout "
                          "(DiT / PixArt; default: the per-block layout).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "convert: replace a run already in --workdir.")


def check_flags(positional: list[str]) -> str:
    """The source folder; every mistake a CommandError before jax is imported."""
    from diffjax.convert import SOURCES

    if _FROM.value is None:
        raise CommandError("diffjax convert needs --from FORMAT (one of: " + ", ".join(SOURCES) + ")")
    if _FROM.value not in SOURCES:
        raise CommandError(f"--from {_FROM.value!r}: unknown checkpoint format; diffjax converts "
                           f"{', '.join(SOURCES)}")
    if len(positional) != 1:
        raise CommandError("diffjax convert takes one source folder: diffjax convert --from "
                           "diffusers DIR --workdir OUT" + (f" (got {' '.join(positional)!r})"
                                                            if positional else ""))
    src = positional[0]
    if not os.path.isdir(src):
        raise CommandError(f"{src}: no such folder (the diffusers model or pipeline to convert)")
    return src


def cmd_convert(workdir: str, positional: list[str]) -> None:
    from diffjax.convert import run

    src = check_flags(positional)
    summary = run.write_run(src, workdir, scan_layers=_SCAN.value, overwrite=_OVERWRITE.value)
    print(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in summary.items()}))
