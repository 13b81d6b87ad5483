"""PPAP experts for the Quickstart's digits (Go et al. 2023): five noise-range experts LoRA-tuned
(rank 4) from the off-the-shelf clean classifier of configs/digits_clean_classifier.py, data-free:
the data are unconditional samples of the diffusion model itself, the labels the teacher's soft
predictions on them (objective ``ppap``, training/ppap_objective.py; guidance/ppap.py).

    diffjax train --config configs/digits_clean_classifier.py --workdir /tmp/digits_clean
    diffjax sample --workdir /tmp/digits --guidance 0 --num 2000 --npz /tmp/digits_gen.npz
    diffjax train --config configs/digits_ppap.py --workdir /tmp/digits_ppap \\
        --config.objective.teacher_workdir /tmp/digits_clean --config.data.path /tmp/digits_gen.npz
    diffjax sample --workdir /tmp/digits --guidance ppap \\
        --guidance.experts_workdir /tmp/digits_ppap --guidance.scale 2 --out ppap.png
"""
from diffjax.training.config import sibling


def get_config(arg=None):
    c = sibling(__file__, "digits_clean_classifier.py", arg)   # the teacher's model, ...
    c.objective.name = "ppap"
    c.objective.teacher_workdir = ""      # required: the clean classifier's run
    c.objective.teacher_params = ""
    c.objective.teacher_step = -1
    c.objective.experts = 5
    c.objective.sigma_min = 0.002
    c.objective.sigma_max = 80.0
    c.objective.rank = 4
    c.objective.alpha = 4.0
    c.objective.temperature = 0.25
    c.data.name = "npz"
    c.data.path = ""                      # required: unconditional samples (diffjax sample --npz)
    c.batch_size = 80                     # 16 examples per expert
    c.total_steps = 800
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.checkpoint.every = 800
    return c
