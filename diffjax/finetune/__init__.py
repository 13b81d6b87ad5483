"""Few-shot fine-tuning objectives: DreamBooth's prior preservation (``dreambooth.py``),
ClassDiffusion's semantic preservation (``class_diffusion.py``) and DomainStudio's relative-distance
and high-frequency preservation (``domainstudio.py``). Importing the package registers them in the
training-objective registry (training/objectives.py)."""
from diffjax.finetune import class_diffusion, domainstudio, dreambooth  # noqa: F401
