"""The train step, built once from the config and used unchanged on 1 CPU, 8 simulated devices,
several processes, and for ahead-of-time compilation on a device list (TPU pre-flight).

    ts = make_train_step(config, model, mesh, example_shape=(16, 16, 1))
    state = ts.jit_init()(jax.random.key(config.seed))      # born sharded: out_shardings
    state, metrics = ts.jit_step()(state, batch)             # batch: global arrays on ts.batch_sharding
    ts.jit_step().lower(ts.abstract_state, ts.abstract_batch).compile()   # no data, no devices touched

One step, for the training objective of ``config.objective`` (objectives.py; the default is
Karras et al. 2022 / Ho et al. 2020 denoising score matching from core/losses.py):
    key = fold_in(state.rng, state.step)
    (loss, aux), g = value_and_grad(objective.loss)(params, state.extra, batch, key)
        (leaves the objective freezes get stop_gradient, set_to_zero updates and no optimizer state)
        (in config.optim.grad_slices slices of the batch, one after another, when > 1:
         losses.value_and_grad_in_slices; less memory, and on a CPU often faster)
    params <- params + tx.update(g)   (clip, AdamW, schedule; MultiSteps when accumulating)
    ema    <- ema.update(ema, params, k) only on steps where the optimizer applied an update.
    extra  <- objective.update_extra(extra, params, batch, key', metrics) when the objective has
              one (metrics: this step's loss, grad_norm, lr, ... e.g. for a curriculum's pacing).
Every input is a pure function of (state, batch), so a resumed run repeats an uninterrupted one
bit for bit, and the noise draws do not depend on how the batch is sharded (threefry is
partitionable).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffjax.core import denoisers, losses, processes
from diffjax.training import ema as ema_lib
from diffjax.training import batching, objectives, optim, sharding
from diffjax.training import state as state_lib


class TrainStep(NamedTuple):
    init: Callable          # key -> TrainState (pure)
    step: Callable          # (TrainState, batch) -> (TrainState, metrics) (pure)
    mesh: Any
    state_shardings: Any
    batch_sharding: Any
    abstract_state: Any     # ShapeDtypeStructs with shardings
    abstract_batch: Any
    schedule: Callable
    den: Callable           # den(params, x, sigma, cond, train=False) -> x0_hat
    process: Any
    conditional: bool
    micro_batch: int
    objective: Any = None   # objectives.Objective
    batch: Any = None       # batching.BatchPlan

    def jit_init(self):
        return jax.jit(self.init, out_shardings=self.state_shardings)

    def init_state(self, key):
        """``jit_init()(key)``; on CPU compiled without LLVM optimisation (it runs once, and its
        compile otherwise costs as much as the train step's)."""
        lowered = self.jit_init().lower(key)
        cpu = self.mesh.devices.flat[0].platform == "cpu"
        opts = {"xla_backend_optimization_level": 0} if cpu else None
        return lowered.compile(compiler_options=opts)(key)

    def jit_step(self):
        return jax.jit(self.step, in_shardings=(self.state_shardings, self.batch_sharding),
                       out_shardings=(self.state_shardings, sharding.replicated(self.mesh)),
                       donate_argnums=(0,))


def num_classes(model) -> int:
    return int(getattr(model, "num_classes", 0) or 0)


def make_process(cfg):
    return processes.get(cfg.process, **dict(cfg.get("process_kwargs", None) or {}))


def model_shape(example_shape) -> tuple:
    """The shape the network sees: vectors (D,) (e.g. 2-D toy points) become length-D sequences of
    one channel, (D, 1), for the sequence models; everything else is unchanged."""
    example_shape = tuple(example_shape)
    return example_shape + (1,) if len(example_shape) == 1 else example_shape


def make_denoiser(config, model, process, example_shape=None):
    """``den(params, x, sigma, cond, train, rngs)``: ``model.apply`` in the config's parameterization;
    inference calls on slices of at most ``config.sample.max_batch`` rows when it is > 0."""
    if example_shape is not None and len(example_shape) == 1:
        apply_fn = lambda p, x, *a, **k: model.apply({"params": p}, x[..., None], *a, **k)[..., 0]
    else:
        apply_fn = lambda p, *a, **k: model.apply({"params": p}, *a, **k)
    max_batch = int(config.sample.get("max_batch", 0))   # runs saved before the key existed
    if max_batch < 0:
        raise ValueError(f"config.sample.max_batch must be >= 0 (0: whole batch); got {max_batch}")
    return denoisers.from_network(apply_fn, process, config.diffusion.parameterization,
                                  sigma_data=config.diffusion.sigma_data,
                                  max_batch=max_batch or None)


def example_inputs(model, example_shape, batch: int = 1):
    """What ``model.init`` is called with: (x, t) and the labels of a class-conditional model (not
    of a classifier, ``predicts_labels``: it outputs them); no noise level for a clean-image model
    (``takes_noise_level = False``)."""
    x = jnp.zeros((batch,) + model_shape(example_shape), jnp.float32)
    t = jnp.zeros((batch,), jnp.float32)
    if not getattr(model, "takes_noise_level", True):
        return (x,)
    if num_classes(model) and not getattr(model, "predicts_labels", False):
        return x, t, jnp.zeros((batch,), jnp.int32)
    return x, t


def build_objective(config, model, example_shape) -> objectives.Objective:
    """The run's training objective (``config.objective``) for ``model``."""
    process = make_process(config.diffusion)
    return objectives.build(config, model=model,
                            den=make_denoiser(config, model, process, example_shape),
                            process=process, example_shape=example_shape,
                            num_classes=num_classes(model))


def param_shapes(config, model, example_shape):
    """ShapeDtypeStructs of the params a run trains: the model's, or what its objective's
    ``init_params`` makes of them (inference.load restores this structure). Only an objective
    registered with ``new_param_structure`` is built (the others train the model's own params;
    old run configs load unchanged, a student loads without its teacher)."""
    name = objectives.section(config).get("name", "denoising")
    obj = (build_objective(config, model, example_shape)
           if name in objectives.NEW_PARAM_STRUCTURE else None)

    def init(key):
        params = model.init(key, *example_inputs(model, example_shape))["params"]
        return params if obj is None or obj.init_params is None else obj.init_params(key, params)

    return jax.eval_shape(init, jax.random.key(0))


def make_mesh(config, model, example_shape, devices=None):
    """The run's Mesh: ``config.mesh`` (fsdp='auto' resolved against the params the run trains,
    ``sharding.auto_fsdp``) over ``devices`` (default: all), multi-slice by ``config.dcn_mesh``."""
    devices = list(jax.devices() if devices is None else devices)
    axes = dict(config.mesh)
    dcn = dict(config.get("dcn_mesh", {}) or {})
    if axes.get(sharding.PARAM_AXIS) == "auto":
        slices = max(1, int(np.prod(list(dcn.values())))) if dcn else 1
        tree = {"params": param_shapes(config, model, example_shape)}
        axes = sharding.auto_fsdp(axes, tree, len(devices) // slices,
                                  [tuple(r) for r in config.sharding.rules],
                                  config.sharding.min_size)
    return sharding.make_mesh(axes, devices, dcn)


def make_train_step(config, model, mesh, *, example_shape) -> TrainStep:
    """Build the pure init/step functions and their shardings from ``config`` (see module doc)."""
    process = make_process(config.diffusion)
    den = make_denoiser(config, model, process, example_shape)
    classes = num_classes(model)
    obj = objectives.build(config, model=model, den=den, process=process,
                           example_shape=example_shape, num_classes=classes)
    bp = batching.plan(config, mesh)
    accum, micro, slices = bp.accum_steps, bp.micro_batch, bp.grad_slices
    trainable = None if obj.trainable is None else (lambda p: objectives.trainable_mask(obj, p))
    tx, schedule = optim.make_optimizer(config.optim, config.total_steps, trainable=trainable)
    ema_names = ema_lib.names(config.ema)

    def init(key):
        k_param, k_state, k_extra = jax.random.split(key, 3)
        params = model.init(k_param, *example_inputs(model, example_shape))["params"]
        if obj.init_params is not None:
            params = obj.init_params(jax.random.fold_in(k_param, 1), params)
        params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
        return state_lib.create(params, tx, ema_lib.init(params, ema_names), k_state,
                                extra=obj.init_extra(k_extra, params))

    def step(st, batch):
        if not classes:
            batch = {k: v for k, v in batch.items() if k != "label"}
        key = st.step_key()
        mask = objectives.trainable_mask(obj, st.params)

        def loss_fn(params, batch, key):
            # frozen leaves get no gradient at all (XLA drops their weight-gradient products)
            params = jax.tree.map(lambda p, m: p if m else jax.lax.stop_gradient(p), params, mask)
            return obj.loss(params, st.extra, batch, key)

        (loss, aux), grads = losses.value_and_grad_in_slices(loss_fn, slices)(st.params, batch, key)
        updates, opt_state = tx.update(grads, st.opt_state, st.params)
        params = optax.apply_updates(st.params, updates)
        new_step = st.step + 1
        k = optim.optimizer_step(opt_state, new_step, accum)
        new_ema = ema_lib.update(st.ema, params, k)
        if accum > 1:
            upd = optim.has_updated(opt_state)
            new_ema = jax.tree.map(lambda n, o: jnp.where(upd, n, o), new_ema, st.ema)
        metrics = {"loss": loss, "grad_norm": optax.global_norm(grads),
                   "lr": schedule(jnp.maximum(k - 1, 0)),
                   "param_norm": optax.global_norm(params)}
        metrics.update(aux.get("metrics", {}) if isinstance(aux, dict) else {})
        extra = st.extra
        if obj.update_extra is not None:
            extra, extra_metrics = obj.update_extra(st.extra, params, batch,
                                                    jax.random.fold_in(key, 1 << 20), metrics)
            metrics.update(extra_metrics or {})
        return st.replace(step=new_step, params=params, opt_state=opt_state, ema=new_ema,
                          extra=extra), metrics

    rules = [tuple(r) for r in config.sharding.rules]
    shapes = jax.eval_shape(init, jax.random.key(0))
    state_sh = sharding.tree_shardings(shapes, mesh, rules, config.sharding.min_size)
    batch_sh = sharding.batch_sharding(mesh)
    abstract_batch = {"x": jax.ShapeDtypeStruct((micro,) + tuple(example_shape), jnp.float32,
                                                sharding=batch_sh),
                      "label": jax.ShapeDtypeStruct((micro,), jnp.int32, sharding=batch_sh)}
    init, step = sharding.tracing_mesh(init, mesh), sharding.tracing_mesh(step, mesh)
    return TrainStep(init=init, step=step, mesh=mesh, state_shardings=state_sh,
                     batch_sharding=batch_sh, abstract_state=sharding.abstract(shapes, state_sh),
                     abstract_batch=abstract_batch, schedule=schedule, den=den, process=process,
                     conditional=bool(classes), micro_batch=micro, objective=obj, batch=bp)
