"""Classification with a trained diffusion model (the diffusion classifier of Li et al. 2023).

    from diffjax.classify import diffusion_classifier as dc
    res = dc.classify(run, images, key=jax.random.key(0), schedule="cifar10")
    res.pred (N,), res.errors (N, C), res.nfe (network calls per image)
    dc.nfe("imagenet", 1000)   # 124500: the cost of a schedule, without running it

``diffjax classify`` (cli/classify.py) runs it on image files or on the run's held-out split.
"""
from diffjax.classify import diffusion_classifier
from diffjax.classify.diffusion_classifier import (SCHEDULES, ClassifyResult, Schedule, classify,
                                                   diffusion_classify, get_schedule, nfe)

__all__ = ["diffusion_classifier", "SCHEDULES", "ClassifyResult", "Schedule", "classify",
           "diffusion_classify", "get_schedule", "nfe"]
