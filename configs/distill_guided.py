"""Guided distillation, stage 1 (Meng et al. 2023): one student that takes the classifier-free
guidance scale w as an input and reproduces the teacher's D_null + w (D_c - D_null) for w in
[w_min, w_max] with one network call. Stage 2 distils it to few steps with
configs/distill_progressive.py (its --teacher: this run).

    diffjax train   --config configs/digits.py --workdir /tmp/digits        # label_dropout > 0
    diffjax distill --config configs/distill_guided.py --teacher /tmp/digits --workdir /tmp/guided
    diffjax sample  --workdir /tmp/guided --guidance 3      # one call per step instead of two

1000 steps of batch 64, Adam 1e-4; the student starts from the teacher's weights (its new w
embedding at zero) and is sampled like the teacher (DPM-Solver++(2M), 10 steps).
"""
from diffjax.training.config import distill_base


def get_config(arg=None):
    c = distill_base("guided", teacher_params="", teacher_step=-1, w_min=1.0, w_max=5.0,
                     weighting="truncated_snr")
    c.total_steps = 1000
    c.batch_size = 64
    c.log_every = 100
    c.optim.lr = 1e-4
    c.checkpoint.every = 500
    c.sample.sampler = "dpmpp_2m"
    c.sample.steps = 10
    c.sample.guidance.scale = 3.0
    c.eval.sampler = "dpmpp_2m"
    c.eval.steps = 10
    c.eval.guidance.scale = 3.0
    c.eval.num_samples = 500
    return c
