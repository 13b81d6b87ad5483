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
import importlib.util
import os


def _clean():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "digits_clean_classifier.py")
    spec = importlib.util.spec_from_file_location("diffjax_configs_digits_clean", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get_config(arg=None):
    c = _clean().get_config(arg)          # the teacher's model, optimizer, checkpoints
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
