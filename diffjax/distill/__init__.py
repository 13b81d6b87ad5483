"""Distillation and acceleration: training objectives that learn from a teacher run, and the
samplers / guidance transforms that draw from their students.

    diffjax distill --config configs/distill_<name>.py --teacher TEACHER_WORKDIR --workdir DIR

``student.py`` builds the student's config from the distillation config and the teacher's run
(``config_for``); ``teacher.py`` loads the teacher (its weights become TrainState.extra:
sharded, checkpointed, resumed, shown by the preflight); ``targets.py`` holds the math they share.
Each objective is a module registered in ``training.objectives.OBJECTIVES`` with a student rule:
    progressive   progressive distillation, and guided stage 2 (Salimans & Ho 2022; Meng 2023)
    guided        guided distillation stage 1: a student that takes the guidance scale (Meng 2023)
    consistency   consistency distillation (Song et al. 2023)
    sim           score implicit matching, a data-free one-step generator (Luo et al. 2024)
    deediff       uncertainty-aware early exit heads (Tang et al. 2023), early_exit.py
Importing the package registers them and the guidance methods that sample their students
(``guidance_input``, ``early_exit``).
"""
from diffjax.distill import early_exit as _early_exit  # noqa: F401  (registers 'deediff', 'early_exit')
from diffjax.distill import guided as _guided  # noqa: F401  (registers 'guided', 'guidance_input')
from diffjax.distill import progressive as _progressive  # noqa: F401  (registers 'progressive')
from diffjax.distill import consistency as _consistency  # noqa: F401  (registers 'consistency')
from diffjax.distill import sim as _sim  # noqa: F401  (registers 'sim')
