"""Score implicit matching (Luo et al. 2024): a data-free one-step generator x0 = D(2.5 z, 2.5)
trained against a teacher's score with a fake-score network (diffjax/distill/sim.py).

    diffjax distill --config configs/distill_sim.py --teacher /tmp/digits --workdir /tmp/sim
    diffjax sample  --workdir /tmp/sim                       # one network call per sample

Pseudo-Huber distance (c = 1e-3, the authors' suggestion), the generator-step noise log-normal
(Diff-Instruct's; --config.objective.gen_sigma=sid for SiD's), 1:1 alternating updates, Adam 1e-5
for the generator and 1e-4 for the fake score (beta1 = 0), batch 64, 1500 steps. The data are
not read (only the batch size is used). --config.objective.guidance=3 distils the guided teacher.
"""
from diffjax.training.config import distill_base


def get_config(arg=None):
    c = distill_base("sim", teacher_params="", teacher_step=-1, sigma_init=2.5,
                     distance="pseudo_huber", huber_c=1e-3, weight="sigma2", gen_sigma="lognormal",
                     p_mean=-1.2, p_std=1.2, sid_t_max=0.8, fake_lr=1e-4, fake_b1=0.0,
                     fake_p_mean=-1.2, fake_p_std=1.2, guidance=1.0)
    c.total_steps = 1500
    c.batch_size = 64
    c.log_every = 100
    c.optim.lr = 1e-5
    c.optim.b1 = 0.0
    c.checkpoint.every = 500
    c.eval.num_samples = 500
    return c
