"""Few-shot fine-tuning objectives (on ``config.init_from``): DreamBooth's prior preservation
(``dreambooth.py``) and ClassDiffusion's semantic preservation (``class_diffusion.py``). Importing
the package registers them in the training-objective registry (training/objectives.py)."""
from diffjax.finetune import class_diffusion, dreambooth  # noqa: F401
