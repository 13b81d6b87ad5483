"""Numeric config values are range-checked with the key named (training/validation.py)."""
import pytest

from diffjax.training import trainer, validation
from tests.training.util import load_config, tiny_config

CONFIGS = ("digits", "shapes", "toy2d", "cifar10_ddpmpp", "imagenet256_dit_xl2")


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_configs_pass(name):
    validation.check(load_config(name))


@pytest.mark.parametrize("key, value, needle", [
    ("checkpoint.keep", 0, "config.checkpoint.keep: must be an integer >= 1"),   # deletes all
    ("optim.lr", float("nan"), "config.optim.lr: must be a finite number > 0"),
    ("optim.lr", float("inf"), "config.optim.lr"),
    ("optim.lr", 0.0, "config.optim.lr"),
    ("diffusion.label_dropout", 1.0, "config.diffusion.label_dropout"),          # probability
    ("optim.b2", 1.5, "config.optim.b2"),
    ("batch_size", 0, "config.batch_size"),
    ("total_steps", -3, "config.total_steps"),
    ("log_every", -1, "config.log_every"),
    ("sample.steps", 0, "config.sample.steps"),
    ("sample.guidance.scale", -2.0, "config.sample.guidance.scale"),
    ("sample.guidance.name", "cfgg", "config.sample.guidance.name: unknown guidance method"),
    ("eval.num_samples", 0, "config.eval.num_samples"),
    ("optim.accum_steps", 0, "config.optim.accum_steps"),
    ("ema.decays", (0.999, 1.0), "config.ema.decays: each entry"),
    ("ema.power_stds", (0.5,), "config.ema.power_stds"),
    ("model.dropout", 1.0, "config.model.dropout"),
    ("data.resolution", 0, "config.data.resolution"),
    ("eval.classifier_resolution", 0, "config.eval.classifier_resolution"),
])
def test_out_of_range_value_is_an_error_naming_the_key(key, value, needle):
    c = tiny_config(**{key: value})
    with pytest.raises(ValueError, match=needle.replace(".", r"\.").replace("(", r"\(")):
        trainer.validate_config(c)


def test_boundaries_that_are_legal_pass():
    # 0 means "never"/"none" for cadences and clipping; end_lr_factor may be 1 (constant);
    # guidance in (0, 1) interpolates; an unset classifier resolution uses the data's.
    c = tiny_config(**{"log_every": 0, "checkpoint.every": 0, "optim.grad_clip": 0.0,
                       "optim.end_lr_factor": 1.0, "sample.guidance.scale": 0.5, "sample.num": 0,
                       "eval.classifier_resolution": None, "optim.warmup_steps": 0})
    trainer.validate_config(c)


def test_keep_zero_never_reaches_the_checkpointer(tmp_path):
    with pytest.raises(ValueError, match="checkpoint.keep"):
        trainer.train(tiny_config(**{"checkpoint.keep": 0}), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()   # refused before anything was written
