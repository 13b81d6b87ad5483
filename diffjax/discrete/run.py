"""A trained RADD run (objective 'radd', a token model) loaded for sampling and likelihoods.

    run = run.load(workdir)                       # config.sample.params (e.g. an EMA) by default
    res = run.generate(num=8, steps=256, method='tau_leaping', cache=True, seed=0)
    text = [text_data.decode(t) for t in res.tokens]

The parameters come from the run's checkpoint through ``diffjax.inference.load`` (no optimizer
state). ``log_p_fn(params)`` is the time-free network x -> log p_theta(. | x^UM).
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import numpy as np

from diffjax.discrete import losses, samplers


class TextRun(NamedTuple):
    config: Any
    model: Any
    params: Any            # the chosen parameter set
    params_name: str
    step: int
    vocab: int             # real tokens; the mask id
    seq_len: int


def load(workdir: str, *, params: str | None = None, step: int | None = None) -> TextRun:
    """The token model of ``workdir`` with the parameter set ``params`` (default: the run's
    ``config.sample.params``); ValueError if the run is not a RADD run."""
    from diffjax import inference

    config = inference.load_config(workdir)
    obj = (config.get("objective") or {}).get("name", "denoising")
    if obj != "radd":
        raise ValueError(f"{workdir} was trained with objective {obj!r}, not a discrete "
                         f"('radd') run; train one with configs/text_radd.py")
    name = params or config.sample.params
    r = inference.load(workdir, step=step, config=config, params=name)
    return TextRun(config=config, model=r.model, params=r.params[name], params_name=name,
                   step=r.step, vocab=int(r.model.vocab_size), seq_len=int(r.example_shape[0]))


def log_p_fn(model, params):
    return lambda x: model.apply({"params": params}, x)


@functools.partial(jax.jit, static_argnames=("model", "num", "length", "vocab", "steps",
                                             "method", "cache"))
def _sample(params, key, *, model, num, length, vocab, steps, method, cache):
    return samplers.sample(log_p_fn(model, params), key, num, length, vocab=vocab, steps=steps,
                           method=method, cache=cache)


def generate(run: TextRun, num: int, *, steps: int, method: str = "tau_leaping",
             cache: bool = True, seed: int = 0) -> samplers.Result:
    """``num`` sequences drawn by ``method`` in ``steps`` steps (aoarm: seq_len calls)."""
    out = _sample(run.params, jax.random.key(seed), model=run.model, num=num, length=run.seq_len,
                  vocab=run.vocab, steps=steps, method=method, cache=cache)
    return jax.device_get(out)


@functools.partial(jax.jit, static_argnames=("model", "vocab"))
def _aoarm_nll(params, x0, key, *, model, vocab):
    return losses.aoarm_nll(log_p_fn(model, params), x0, key, mask_id=vocab)


def sequence_nll(run: TextRun, tokens, *, seed: int = 0, batch: int = 256) -> np.ndarray:
    """-log p_theta(x) in nats per sequence under the model as an any-order AR model, one random
    order per sequence (``losses.aoarm_nll``; L calls per batch)."""
    tokens = np.asarray(tokens, np.int32)
    out = [jax.device_get(_aoarm_nll(run.params, tokens[i:i + batch],
                                     jax.random.fold_in(jax.random.key(seed), i),
                                     model=run.model, vocab=run.vocab))
           for i in range(0, len(tokens), batch)]
    return np.concatenate(out)
