"""The teacher of a distillation objective: a trained run's denoiser and weights, read once.

    t = teacher.load(ctx.fields)          # fields: teacher_workdir, teacher_params, teacher_step
    t.den(params, x, sigma, cond)         # the teacher's D (its own model and parameterization)
    t.params                              # host arrays; objectives keep them in TrainState.extra
    t.D(params, x, sigma, cond, scale)    # classifier-free guided at ``scale`` (1: none; (B,) ok)

The weights become part of the student's train state (``Objective.init_extra``), so they are born
sharded by the run's rules, written in every checkpoint, restored on resume and counted by the
preflight; a progressive student replaces them by its own weights at each halving. The teacher's
config must describe the same data and example shape as the student's (``student.config_for``
copies them), and its classes are the student's.
"""
from __future__ import annotations

import functools
import os
from typing import Any, Callable, NamedTuple

import jax

from diffjax.distill import targets

TEACHER_FIELDS = dict(teacher_workdir="", teacher_params="", teacher_step=-1)


class Teacher(NamedTuple):
    den: Callable          # den(params, x, sigma, cond) -> x0_hat
    params: Any            # host arrays
    config: Any
    model: Any
    num_classes: int
    example_shape: tuple

    def D(self, params, x, sigma, cond, scale=1.0):
        """The teacher's x0_hat, classifier-free guided at ``scale`` (a float or (B,) array) for a
        class-conditional teacher; ``scale`` is ignored (must be 1) for an unconditional one."""
        if not self.num_classes or (isinstance(scale, (int, float)) and scale == 1.0):
            return self.den(params, x, sigma, cond)
        from diffjax.guidance.classifier_free import _both

        c, u = _both(lambda a, s, k: self.den(params, a, s, k), x, sigma, cond, self.num_classes)
        return targets.cfg_combination(c, u, scale)


@functools.lru_cache(maxsize=4)
def _read(workdir: str, params: str, step: int):
    from diffjax import inference
    from diffjax.training import step as step_lib

    config = inference.load_config(workdir)
    name = params or config.sample.params
    run = inference.load(workdir, step=None if step < 0 else step, config=config, params=name)
    host = jax.device_get(run.params[name])
    den = step_lib.make_denoiser(config, run.model, run.process, run.example_shape)
    return Teacher(den=den, params=host, config=config, model=run.model,
                   num_classes=run.num_classes, example_shape=tuple(run.example_shape))


def load(fields: dict, objective: str, example_shape=None) -> Teacher:
    """The teacher named by ``fields`` (its workdir, parameter set, checkpoint step); errors say
    what is missing and how to make it."""
    workdir = fields["teacher_workdir"]
    if not workdir:
        raise ValueError(f"objective {objective!r} distils a trained run: set "
                         f"config.objective.teacher_workdir (diffjax distill --teacher WORKDIR "
                         f"sets it)")
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise ValueError(f"config.objective.teacher_workdir {workdir!r} is not a diffjax training "
                         f"workdir (no config.json); train the teacher first: diffjax train "
                         f"--config configs/digits.py --workdir {workdir}")
    t = _read(os.path.abspath(workdir), fields["teacher_params"], int(fields["teacher_step"]))
    if example_shape is not None and tuple(example_shape) != t.example_shape:
        raise ValueError(f"objective {objective!r}: the teacher in {workdir!r} makes examples of "
                         f"shape {t.example_shape}, the student's data {tuple(example_shape)}")
    return t


def into(student_params, teacher_params, objective: str):
    """The student's initial params: every teacher leaf copied into the student's structure
    (which may have more leaves, e.g. a w embedding, that keep their fresh init); a teacher leaf
    missing from the student or of another shape is an error naming it (``init_from.merge``)."""
    from diffjax.training import init_from

    return init_from.merge(student_params, teacher_params, f"objective {objective!r} (the source: "
                           f"its teacher)")
