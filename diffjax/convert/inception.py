"""pytorch-fid's FID Inception state dict -> the variables of ``diffjax.metrics.inception.InceptionV3``.

The file ``pt_inception-2015-12-05-6726825d.pth`` holds the state dict of pytorch-fid's
``fid_inception_v3()`` (torchvision Inception3, 1008 classes, no aux head). Its keys name
torchvision's modules, which InceptionV3 mirrors, so each BasicConv2d ``<m>`` maps as
    <m>.conv.weight (O, I, kh, kw)  -> params/<m>/conv/kernel (kh, kw, I, O)
    <m>.bn.weight, <m>.bn.bias      -> params/<m>/bn/scale, params/<m>/bn/bias
    <m>.bn.running_mean / _var      -> batch_stats/<m>/bn/mean, batch_stats/<m>/bn/var
and ``fc.weight`` (1008, 2048), ``fc.bias`` -> params/fc/kernel (2048, 1008), params/fc/bias,
with ``<m>`` the module path joined by '.' (e.g. ``Mixed_5b.branch5x5_1``). Every tensor's shape is
checked against the Flax network's and every tensor must be used (``StateDict.finish``); only the
BatchNorm ``num_batches_tracked`` counters, which inference never reads, are left out.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from flax import traverse_util

from diffjax.convert.state_dict import ConvertError, StateDict, load_file

__all__ = ["ConvertError", "convert", "convert_file"]


def convert(tensors: Mapping[str, np.ndarray], source: str = "FID Inception state dict") -> dict:
    """{'params': ..., 'batch_stats': ...} (numpy float32) from pytorch-fid's state dict."""
    from diffjax.metrics.inception import variable_shapes

    sd = StateDict(tensors, source=source, ignore=("num_batches_tracked",))
    shapes = traverse_util.flatten_dict(variable_shapes())
    out = {}
    for path, leaf in shapes.items():
        collection, *mod, name = path
        key = ".".join(mod)
        want = tuple(leaf.shape)
        if mod[-1] == "conv":                       # (kh, kw, I, O) <- (O, I, kh, kw)
            w = sd.take(key + ".weight", (want[3], want[2], want[0], want[1]))
            out[path] = w.transpose(2, 3, 1, 0)
        elif mod[-1] == "bn":
            torch_name = {"scale": "weight", "bias": "bias", "mean": "running_mean",
                          "var": "running_var"}[name]
            out[path] = sd.take(f"{key}.{torch_name}", want)
        elif mod == ["fc"] and name == "kernel":    # (in, out) <- (out, in)
            out[path] = sd.take("fc.weight", want[::-1]).T
        elif mod == ["fc"] and name == "bias":
            out[path] = sd.take("fc.bias", want)
        else:   # a variable of the network this converter does not know: a bug here, not the file's
            raise ConvertError(f"FID Inception variable {'/'.join(path)} has no rule in "
                               f"diffjax.convert.inception")
        if collection == "batch_stats" and name == "var" and np.any(out[path] < 0):
            raise ConvertError(f"{source}: {key}.running_var has negative entries: not a "
                               f"BatchNorm variance")
    sd.finish()
    return traverse_util.unflatten_dict({k: np.ascontiguousarray(v, np.float32)
                                         for k, v in out.items()})


def convert_file(path: str) -> dict:
    """``convert`` of the state dict in a .pth / .bin / .safetensors file."""
    return convert(load_file(path), source=path)
