"""Checkpoint conversion from PyTorch / diffusers into diffjax params and run directories.

    diffjax convert --from diffusers DIR --workdir OUT      # then: diffjax sample --workdir OUT

``DIR`` is a diffusers model folder (``config.json`` + ``diffusion_pytorch_model.safetensors`` or
``.bin``) or a pipeline folder (``model_index.json`` with ``transformer/`` or ``unet/``, and
``scheduler/`` and ``vae/`` when present). Each architecture is one module of this package,
registered in ``ARCHITECTURES`` by diffusers' ``_class_name``, with

    model_config(hf_config) -> dict      the diffjax model fields (unknown fields refused by name)
    convert(hf_config, sd)   -> params    a nested dict of numpy arrays (``state_dict.StateDict``
                                          checks every key and shape and refuses leftovers)

``run.py`` writes the run directory: the training config (model, the process from the scheduler's
config, sampling defaults), ``run.json`` and a checkpoint holding the converted params as the run's
'params' set, so every command that reads a workdir (sample, evaluate, restore, search, and a
fine-tuning run started from it) takes the converted model as it takes a trained one.
"""
from __future__ import annotations

import importlib
from typing import NamedTuple

from diffjax.convert.state_dict import ConvertError, StateDict, load_file, read_config, weights_path

ARCHITECTURES = {
    "DiTTransformer2DModel": "diffjax.convert.dit",
    "PixArtTransformer2DModel": "diffjax.convert.pixart",
    "UNet2DModel": "diffjax.convert.unet2d",
    "AutoencoderKL": "diffjax.convert.vae",
}
SOURCES = ("diffusers",)

__all__ = ["ARCHITECTURES", "ConvertError", "Converted", "architecture", "convert_model_dir",
           "StateDict"]


class Converted(NamedTuple):
    class_name: str
    model_config: dict        # diffjax model fields (with name and input_shape where it applies)
    params: dict              # nested numpy arrays, the module's per-block layout
    hf_config: dict


def architecture(class_name: str):
    """The converter module of a diffusers class name (ConvertError listing the known ones)."""
    if class_name not in ARCHITECTURES:
        raise ConvertError(f"unknown architecture {class_name!r} (config.json _class_name); "
                           f"diffjax converts {', '.join(sorted(ARCHITECTURES))}")
    return importlib.import_module(ARCHITECTURES[class_name])


def convert_model_dir(model_dir: str) -> Converted:
    """Read and convert one diffusers model folder."""
    hf = read_config(model_dir)
    name = hf.get("_class_name")
    if name is None:
        raise ConvertError(f"{model_dir}/config.json has no _class_name: is it a diffusers model "
                           f"folder?")
    mod = architecture(name)
    mc = mod.model_config(hf)
    path = weights_path(model_dir)
    sd = StateDict(load_file(path), source=path, ignore=getattr(mod, "IGNORED_SUFFIXES", ()))
    return Converted(name, mc, mod.convert(hf, sd), hf)
