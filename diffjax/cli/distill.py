"""``diffjax distill``: train a student of a trained teacher run (diffjax/distill, docs/DISTILL.md).

    diffjax distill --config configs/distill_progressive.py --teacher RUN --workdir STUDENT
        [--config.objective.end_steps=4 --config.KEY=VALUE ...]

The config names the objective (progressive, guided, consistency, sim, deediff) and the student's
training recipe; the student's data, process and network come from the teacher's run
(``distill.student.config_for``). It trains like ``diffjax train``: checkpoints, resume by rerunning
the same command, exit status 75 when preempted; the student is then a run like any other
(``diffjax sample --workdir STUDENT`` draws with the sampler its objective trained it for).
"""
from __future__ import annotations

from absl import flags

from diffjax.cli.table import CommandError

_TEACHER = flags.DEFINE_string("teacher", None, "distill, preflight: the teacher's run directory "
                               "(trained with diffjax train, or a student of an earlier "
                               "distillation).")


def teacher_given() -> bool:
    return bool(_TEACHER.value)


def student_config(config):
    """The student's config of ``config`` (the --config file, overrides applied) and --teacher."""
    from diffjax.distill import student

    if config is None:
        raise CommandError("diffjax distill needs --config (e.g. --config "
                           "configs/distill_progressive.py)")
    if not _TEACHER.value:
        raise CommandError("diffjax distill needs --teacher WORKDIR (the trained run to distil)")
    return student.config_for(config, _TEACHER.value)
