"""A diffjax model in Flax NNX: wrap the linen network with ``nnx.bridge.ToNNX``, train it as an NNX
module with ``nnx.Optimizer``, and hand its params back to diffjax's checkpoints and samplers.

    python examples/nnx_bridge.py                          # the digits U-Net, freshly initialised
    python examples/nnx_bridge.py --workdir runs/digits    # a trained run: NNX steps on its params,
                                                           # then samples through inference.generate

diffjax's networks are Flax linen modules (docs/ARCHITECTURE.md, "Models"). ``nnx.bridge.ToNNX``
(flax 0.12) wraps one as an NNX module; ``nnx.bridge.lazy_init(m, *inputs, rngs=key)`` runs the
linen ``init`` once on sample inputs and stores every leaf of the linen 'params' collection as an
``nnx.Param`` at the same path. So the two are one tree:

    nnx.to_pure_dict(nnx.state(m, nnx.Param)) == model.init(key, *inputs)['params']

and calling the module is ``model.apply`` on those variables (equal bit for bit;
tests/test_nnx_bridge.py). The way back is that dict: ``denoisers.from_network`` over
``model.apply``, an ``inference.Run``'s ``params`` or a checkpoint take it unchanged.

The NNX module also plugs into diffjax directly: ``denoisers.from_network`` only calls
``apply_fn(params, x, noise_labels, labels=, context=, train=, rngs=)``, so with ``nnx_apply``
below the "params" it passes around are the NNX module itself, and the trainer's objective
(training/objectives.py) is the NNX loss unchanged. The module is built without an ``nnx.Rngs``
of its own (init takes a key), so its call is a pure function of its params: it runs inside
``nnx.jit`` / ``nnx.value_and_grad`` and, split into (graphdef, state), inside a sampler's
``lax.scan``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from diffjax.core import denoisers
from diffjax.models import build_model
from diffjax.training import objectives, optim
from diffjax.training import step as step_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_config(tiny: bool = False):
    """configs/digits.py (its U-Net, EDM process and loss, Adam); ``tiny``: a one-level 8-channel
    U-Net on 8x8 digits (tests.test_cli.TINY), which compiles in seconds."""
    spec = importlib.util.spec_from_file_location("digits_config",
                                                  os.path.join(ROOT, "configs", "digits.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    c = mod.get_config()
    if tiny:
        c.model.model_channels = 8
        c.model.channel_mult = (1,)
        c.model.num_head_channels = -1
        c.data.resolution = 8
        c.batch_size = 8
    return c


def example_shape(config) -> tuple:
    """One digit as the network sees it: (resolution, resolution, 1)."""
    return (int(config.data.resolution),) * 2 + (1,)


# ---- linen <-> NNX ------------------------------------------------------------------------------
def to_nnx(model, shape, key) -> nnx.Module:
    """The linen ``model`` as an NNX module, its params from linen's own ``init(key, ...)``.

    Made inside ``nnx.jit``: one compiled init instead of linen's init run op by op (on the
    2-core CPU, 5 s instead of 15 s for the tiny U-Net)."""
    @nnx.jit
    def create(key):
        m = nnx.bridge.ToNNX(model)  # no nnx.Rngs kept: calls are pure functions of the params
        nnx.bridge.lazy_init(m, *step_lib.example_inputs(model, shape), rngs=key)
        return m
    return create(key)


def linen_params(m: nnx.Module) -> dict:
    """NNX -> linen: the module's params as the linen 'params' tree (what ``model.apply``, a diffjax
    checkpoint or an ``inference.Run`` holds)."""
    return nnx.to_pure_dict(nnx.state(m, nnx.Param))


def set_linen_params(m: nnx.Module, params: dict) -> None:
    """linen -> NNX: put a linen 'params' tree (e.g. a trained run's) into the module, in place."""
    state = nnx.state(m, nnx.Param)
    nnx.replace_by_pure_dict(state, params)
    nnx.update(m, state)


def nnx_apply(m, x, noise_labels, labels=None, context=None, *, train=False, rngs=None, **kw):
    """``model.apply``'s signature with the NNX module where the params go (for from_network).

    diffjax passes named keys ({'dropout': k, 'cep': k'}) when training; ToNNX takes them as an
    ``nnx.Rngs``, whose streams fold a counter into each key, so a model with dropout or CEP draws
    other (equally distributed) masks than the linen path. The digits U-Net uses neither."""
    if isinstance(rngs, dict):
        rngs = nnx.Rngs(**rngs)
    return m(x, noise_labels, labels=labels, context=context, train=train, rngs=rngs, **kw)


def nnx_denoiser(config):
    """``den(m, x, sigma, cond, train, rngs) -> x0_hat`` over an NNX module: the config's
    parameterization (EDM preconditioning for the digits), as ``step.make_denoiser`` builds it
    over linen params."""
    d = config.diffusion
    return denoisers.from_network(nnx_apply, step_lib.make_process(d), d.parameterization,
                                  sigma_data=d.sigma_data)


def objective(config, model, den):
    """The trainer's objective (``config.objective``: denoising score matching for the digits)
    over ``den`` - linen params with ``step.make_denoiser``, the NNX module with ``nnx_denoiser``."""
    return objectives.build(config, model=model, den=den,
                            process=step_lib.make_process(config.diffusion),
                            example_shape=example_shape(config),
                            num_classes=step_lib.num_classes(model))


def optimizer(config):
    """The trainer's optax chain (clipping, AdamW, warmup schedule; training/optim.py)."""
    return optim.make_optimizer(config.optim, int(config.total_steps))[0]


# ---- one training step, both ways -----------------------------------------------------------------
def nnx_train_step(loss_fn):
    """``step(m, opt, batch, key) -> loss``: value_and_grad over the module's params, then
    ``opt.update`` (in place, as NNX does)."""
    @nnx.jit
    def step(m, opt, batch, key):
        def loss_of(m):
            return loss_fn(m, None, batch, key)[0]
        loss, grads = nnx.value_and_grad(loss_of)(m)
        opt.update(m, grads)
        return loss
    return step


def linen_train_step(loss_fn, tx):
    """The same step over linen params with plain optax: ``(params, opt_state, loss)``."""
    @jax.jit
    def step(params, opt_state, batch, key):
        loss, grads = jax.value_and_grad(lambda p: loss_fn(p, None, batch, key)[0])(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return jax.tree.map(jnp.add, params, updates), opt_state, loss
    return step


def digits_batch(config, n: int, offset: int = 0) -> dict:
    """``n`` real training digits and their labels (scikit-learn's, shipped with it)."""
    from diffjax.data import registry as data_registry

    src = data_registry.get_source(config.data)
    idx = (offset + np.arange(n)) % len(src.x)
    return {"x": jnp.asarray(src.x[idx]), "label": jnp.asarray(src.labels[idx], jnp.int32)}


def sample_with_nnx(m, config, num: int, key, steps: int = 10):
    """Guided DPM-Solver++(2M) samples from the NNX module itself: split once into (graphdef,
    state) so the denoiser is a pure function of ``state``, then the diffjax sampler and guidance."""
    from diffjax import guidance
    from diffjax.core import samplers, timesteps

    graphdef, state = nnx.split(m)
    den = nnx_denoiser(config)
    D = lambda x, sigma, cond=None: den(nnx.merge(graphdef, state), x, sigma, cond)
    null = step_lib.num_classes(m.to_nnx__module)
    D = guidance.classifier_free(D, null, float(config.sample.guidance.scale))
    sigmas = timesteps.sigmas(step_lib.make_process(config.diffusion), steps, "karras")
    labels = jnp.arange(num, dtype=jnp.int32) % null
    return samplers.sample("dpmpp_2m", D, sigmas, key=key, shape=(num,) + example_shape(config),
                           cond={"label": labels}).x


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", help="a trained digits run (diffjax train); default: fresh init")
    ap.add_argument("--steps", type=int, default=20, help="NNX optimizer steps")
    ap.add_argument("--tiny", action="store_true", help="8x8 one-level U-Net (seconds)")
    args = ap.parse_args(argv)

    if args.workdir:
        from diffjax import inference
        run = inference.load(args.workdir, params="params")
        config, model, start = run.config, run.model, run.params["params"]
    else:
        config = digits_config(args.tiny)
        model, start = build_model(config.model), None
    shape = example_shape(config)

    m = to_nnx(model, shape, jax.random.key(config.seed))
    if start is not None:
        set_linen_params(m, jax.device_get(start))               # linen -> NNX
    x, t, *rest = step_lib.example_inputs(model, shape, batch=4)
    ref = model.apply({"params": linen_params(m)}, x, t, *rest)
    print("forward: NNX == linen apply:", bool(jnp.array_equal(m(x, t, *rest), ref)))

    opt = nnx.Optimizer(m, optimizer(config), wrt=nnx.Param)
    loss_fn = objective(config, model, nnx_denoiser(config)).loss
    step = nnx_train_step(loss_fn)
    for i in range(args.steps):
        batch = digits_batch(config, int(config.batch_size), i * int(config.batch_size))
        loss = step(m, opt, batch, jax.random.fold_in(jax.random.key(config.seed), i))
        if i % 5 == 0 or i == args.steps - 1:
            print(f"NNX step {i + 1}: loss {float(loss):.4f}")

    params = linen_params(m)                                     # NNX -> linen
    print("params: same tree as linen:",
          jax.tree.structure(params) == jax.tree.structure(
              jax.eval_shape(model.init, jax.random.key(0),
                             *step_lib.example_inputs(model, shape))["params"]))
    if args.workdir:
        from diffjax import inference
        run = run._replace(params={"params": params})
        x = inference.generate(run, 20, sampler="dpmpp_2m", steps=10, guidance=3.0,
                               params_name="params")
        print("inference.generate on the NNX-trained params:", x.shape)
    else:
        x = sample_with_nnx(m, config, 20, jax.random.key(1))
        print("diffjax sampler on the NNX module:", x.shape, "finite:",
              bool(jnp.isfinite(x).all()))


if __name__ == "__main__":
    main()
