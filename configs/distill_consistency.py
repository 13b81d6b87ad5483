"""Consistency distillation (Song et al. 2023) of a trained EDM run: a consistency function
(the teacher's network under the boundary parameterization, started from its weights) sampled in
one step, or a few with the 'consistency' sampler.

    diffjax distill --config configs/distill_consistency.py --teacher /tmp/digits --workdir /tmp/cd
    diffjax sample  --workdir /tmp/cd                        # one step
    diffjax sample  --workdir /tmp/cd --steps 4              # multistep consistency sampling

N = 18 Karras levels, one Heun step of the teacher per pair, target network EMA mu = 0.95, squared
error (the paper's LPIPS needs a pretrained network; pseudo_huber is iCT's alternative), 2000 steps
of batch 64, Adam 1e-4. --config.objective.guidance=3 distils the teacher guided at scale 3.
"""
from diffjax.training.config import distill_base


def get_config(arg=None):
    c = distill_base("consistency", teacher_params="", teacher_step=-1, num_scales=18,
                     solver="heun", target_decay=0.95, distance="l2", huber_c=0.0, guidance=1.0)
    c.total_steps = 2000
    c.batch_size = 64
    c.log_every = 100
    c.optim.lr = 1e-4
    c.checkpoint.every = 500
    c.eval.num_samples = 500
    return c
