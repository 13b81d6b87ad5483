"""Training at scale: mesh and sharding from the config, the train step, optimizer, EMA,
checkpoints with preemption handling, metrics, sampling from a workdir and sample-quality evaluation.

    from diffjax.training import trainer
    summary = trainer.train(config, workdir)        # what ``diffjax train`` runs

Modules (one concept each): config (every key and its default), sharding, state, optim, ema, step
(``make_train_step``: the pure step and its shardings, also for ahead-of-time compilation),
checkpoint, metrics, sampling, evaluation, trainer.
"""
