"""DeeDiff / AdaDiff early exit (Tang et al., arXiv 2309.17074): fine-tune a trained DiT into an
early-exit network (objective ``deediff``, diffjax/distill/early_exit.py).

    diffjax train --config configs/digits_dit.py --workdir /tmp/digits_dit
    diffjax distill --config configs/distill_deediff.py --teacher /tmp/digits_dit \\
        --workdir /tmp/digits_deediff
    diffjax sample --workdir /tmp/digits_deediff --guidance early_exit --guidance.threshold 0.75 \\
        --guidance.scale 3 --out early_exit.png

The student is the teacher's DiT with one confidence module per block (``model.early_exit``, set
by the objective's student rule; data, diffusion and the rest of the model come from the teacher).
Every weight trains, starting from the teacher's sampling parameters (its power EMA), as in the
release (which fine-tunes U-ViT with U-ViT's own recipe); here 600 steps of batch 32 at a constant
5e-4 after a 50-step warmup (half the base run's rate: it starts trained). Sampling and evaluation
use the ``early_exit`` guidance (exit at the first block whose mean confidence is > threshold;
> 1 never exits) with classifier-free scale 3, the base run's, at threshold 0.75: on the digits DiT
this saves 7% of the blocks for an FD of 0.0026 against 0.0020 without exits
(experiments/deediff_digits.py). The release's thresholds (0.87-0.95; its default 0.9) never exit
there: that run's mean confidences stay between 0.33 and 0.84 (the errors are measured on the EDM
network output F, larger than a well-trained eps-predictor's).
"""
import ml_collections

from diffjax.training.config import sibling


def get_config(arg=None):
    c = sibling(__file__, "digits_dit.py", arg)   # data / diffusion / model: replaced by the teacher's
    c.objective.name = "deediff"
    c.objective.teacher_workdir = ""     # set by diffjax distill --teacher
    c.objective.teacher_params = ""      # the teacher's sampling parameters (config.sample.params)
    c.objective.teacher_step = -1        # its latest checkpoint
    c.objective.freeze_backbone = False  # True: train the confidence modules only
    c.objective.exit_patience = False    # AdaDiff's patience rule (model.exit_patience)
    c.total_steps = 600
    c.optim.lr = 5e-4
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 50
    c.checkpoint.every = 600
    guided = dict(name="early_exit", threshold=0.75, scale=3.0)
    c.sample.guidance = ml_collections.ConfigDict(guided)
    c.eval.guidance = ml_collections.ConfigDict(guided)
    return c
