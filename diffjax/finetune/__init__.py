"""Few-shot fine-tuning objectives (on ``config.init_from``, optionally through LoRA):
DreamBooth's prior preservation (``dreambooth.py``). Importing the package registers them in the
training-objective registry (training/objectives.py)."""
from diffjax.finetune import dreambooth  # noqa: F401
