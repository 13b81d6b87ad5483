"""Training at scale: mesh and sharding from the config, the train step, optimizer, EMA,
checkpoints with preemption handling, metrics and sample-quality evaluation (sampling itself is
diffjax.inference).

    from diffjax.training import trainer
    summary = trainer.train(config, workdir)        # what ``diffjax train`` runs

Modules (one concept each): config (every key and its default), sharding, state, optim, ema, step
(``make_train_step``: the pure step and its shardings, also for ahead-of-time compilation),
objectives, batching, checkpoint, metrics, evaluation, trainer.
"""
