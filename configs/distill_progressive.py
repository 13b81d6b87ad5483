"""Progressive distillation (Salimans & Ho 2022) of a trained run into a few-step DDIM student, and
stage 2 of guided distillation (Meng et al. 2023) when the teacher is a stage-1 student.

    diffjax train   --config configs/digits.py --workdir /tmp/digits                    # the teacher
    diffjax distill --config configs/distill_progressive.py --teacher /tmp/digits --workdir /tmp/pd
    diffjax sample  --workdir /tmp/pd --out pd.png           # 1 DDIM step on the nested grid

    # guided: stage 1 (configs/distill_guided.py) then this with the stage-1 run as the teacher
    diffjax distill --config configs/distill_progressive.py --teacher /tmp/guided --workdir /tmp/gpd
    diffjax sample  --workdir /tmp/gpd --guidance 3

The student halves its steps from start_steps / 2 (a 64-step DDIM teacher on the nested grid) to
end_steps: 6 halvings of total_steps / 6 = 500 steps each at batch 64, with a checkpoint at the end of
each (step 500 k holds the 64 / 2^k-step student; --checkpoint_step picks one: diffjax sample
--checkpoint_step 2000 --steps 4). Adam 1e-4 constant, no EMA (the weights become the next teacher).
--config.objective.guidance=3 distils a plain class-conditional teacher guided at a fixed scale.
"""
from diffjax.training.config import distill_base


def get_config(arg=None):
    c = distill_base("progressive", teacher_params="", teacher_step=-1, start_steps=64,
                     end_steps=1, weighting="truncated_snr", guidance=1.0, w_min=1.0, w_max=5.0)
    c.total_steps = 3000
    c.batch_size = 64
    c.log_every = 100
    c.optim.lr = 1e-4
    c.checkpoint.every = 500
    c.checkpoint.keep = 7
    c.eval.num_samples = 500
    return c
