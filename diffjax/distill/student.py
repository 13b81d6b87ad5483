"""The student run of a distillation: the distillation config, with what must match the teacher taken
from the teacher's run.

    config = student.config_for(distill_config, teacher_workdir)   # what `diffjax distill` trains
    trainer.train(config, workdir)

A distillation config (``configs/distill_<name>.py``) names the objective and holds the student's
training recipe (steps, batch, optimizer, EMA, checkpoints) and how the student is sampled
(``config.sample`` / ``config.eval``). The student's data, diffusion process and network come from
the teacher's saved config (``TEACHER_SECTIONS``, and the evaluation classifier's settings,
``EVAL_KEYS``): a student learns the teacher's process on its data, starting from its architecture. What an objective changes in them is its ``student`` rule,
``register_student(name)``: a function ``(teacher_config, fields) -> {dotted key: value}`` (a
guided-distillation student takes the guidance scale as an input, ``model.guidance_embed``; a
consistency model has the boundary parameterization, ``diffusion.parameterization``). Its
``config.objective.teacher_workdir`` is set to the teacher's (absolute) workdir, so a resumed run
finds the same teacher, and ``check_resume_config`` compares every section as for any run.
"""
from __future__ import annotations

import os
from typing import Callable

import ml_collections

TEACHER_SECTIONS = ("data", "diffusion", "model")
EVAL_KEYS = ("classifier", "classifier_steps", "classifier_resolution")
STUDENTS: dict[str, Callable] = {}


def register_student(name: str):
    """Decorator: the student rule of objective ``name``: ``fn(teacher_config, fields) -> dict``
    mapping dotted keys ('model.guidance_embed') to values."""
    def deco(fn):
        STUDENTS[name] = fn
        return fn
    return deco


def teacher_config(teacher_workdir: str) -> ml_collections.ConfigDict:
    """The teacher run's saved config; a clear error when the directory is not a trained run."""
    from diffjax import inference

    if not teacher_workdir:
        raise ValueError("a distillation needs a teacher: pass --teacher WORKDIR (a run trained "
                         "with diffjax train)")
    if not os.path.isdir(teacher_workdir):
        raise FileNotFoundError(f"--teacher {teacher_workdir!r}: no such directory (train the "
                                f"teacher first: diffjax train --config configs/digits.py "
                                f"--workdir {teacher_workdir})")
    config = inference.load_config(teacher_workdir)
    ckpt = os.path.join(teacher_workdir, "checkpoints")
    if not os.path.isdir(ckpt) or not any(n.isdigit() for n in os.listdir(ckpt)):
        raise FileNotFoundError(f"--teacher {teacher_workdir!r} has no checkpoint yet (its "
                                f"training has not saved one); train it first")
    return config


def _set(config, dotted: str, value):
    *path, leaf = dotted.split(".")
    node = config
    for p in path:
        node = node[p]
    if isinstance(node, ml_collections.ConfigDict) and leaf not in node:
        with node.unlocked():
            node[leaf] = value
    else:
        node[leaf] = value


def config_for(config, teacher_workdir: str) -> ml_collections.ConfigDict:
    """The student's training config: ``config`` (a distillation config, any overrides applied)
    with the teacher's data / diffusion / model sections, the objective's student rule applied, and
    ``objective.teacher_workdir`` set to the teacher's absolute path."""
    from diffjax.training import objectives

    name = objectives.section(config).get("name", "denoising")
    if name not in objectives.OBJECTIVES or "teacher_workdir" not in objectives.OBJECTIVES[name][1]:
        distills = sorted(n for n, (_, f) in objectives.OBJECTIVES.items() if "teacher_workdir" in f)
        raise ValueError(f"config.objective.name {name!r} is not a distillation objective; "
                         f"diffjax distill trains one of {', '.join(distills)}")
    teacher_workdir = os.path.abspath(teacher_workdir)
    tcfg = teacher_config(teacher_workdir)
    out = ml_collections.ConfigDict(config.to_dict())
    for sec in TEACHER_SECTIONS:
        if sec not in tcfg:
            raise ValueError(f"the teacher's config ({teacher_workdir}/config.json) has no "
                             f"{sec!r} section")
        out[sec] = ml_collections.ConfigDict(tcfg[sec].to_dict())
    # sections added to the config after the teacher was trained keep their defaults
    for key, value in config.diffusion.items():
        if key not in out.diffusion:
            out.diffusion[key] = value
    for key in EVAL_KEYS:     # the evaluation classifier is the data's: the teacher's
        if key in tcfg.get("eval", {}):
            out.eval[key] = tcfg.eval[key]
    out.objective.teacher_workdir = teacher_workdir
    fields = {**objectives.OBJECTIVES[name][1], **objectives.section(out)}
    rule = STUDENTS.get(name)
    for key, value in (rule(tcfg, fields) if rule else {}).items():
        _set(out, key, value)
    out.lock()
    return out
