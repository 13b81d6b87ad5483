"""inference.settings: what diffjax sample / evaluate use, each value given or else the run's config
default, refused with the name of where it came from when it cannot work (in-process, no model)."""
import ml_collections
import pytest

from diffjax.core import processes
from diffjax import inference
from tests.training.util import tiny_config


def _run(num_classes=10, process="edm", **overrides):
    config = tiny_config(**overrides)
    config.diffusion.process = process
    return inference.Run(config=config, model=None, den=None, process=processes.get(process),
                           params={"params": 0, "decay_0.999": 0, "power_0.1": 0}, step=4,
                           num_classes=num_classes, example_shape=(8, 8, 1))


def CFG(scale):
    return {"name": "classifier_free", "scale": scale}


NAMES = {"num": "--num", "steps": "--steps", "guidance": "--guidance", "sampler": "--sampler",
         "params": "--params", "spacing": "--spacing"}


def test_defaults_come_from_the_section_and_given_values_are_used_as_given():
    run = _run(**{"sample.num": 16, "sample.sampler": "heun", "sample.steps": 18,
                  "sample.guidance.scale": 1.5, "eval.num_samples": 50, "eval.sampler": "dpmpp_2m",
                  "eval.steps": 7, "eval.guidance.scale": 2.0})
    assert inference.settings(run, "sample") == {
        "num": 16, "sampler": "heun", "steps": 18, "spacing": "karras", "guidance": CFG(1.5),
        "params": "power_0.1", "seed": 0, "checkpoint_step": 4}
    assert inference.settings(run, "eval") == {
        "num": 50, "sampler": "dpmpp_2m", "steps": 7, "spacing": "karras", "guidance": CFG(2.0),
        "params": "power_0.1", "seed": 1234, "checkpoint_step": 4}
    st = inference.settings(run, "sample", num=3, steps=1, guidance=0.25, sampler="euler",
                           params="params", spacing="uniform", seed=9)
    assert st == {"num": 3, "sampler": "euler", "steps": 1, "spacing": "uniform",
                  "guidance": CFG(0.25), "params": "params", "seed": 9, "checkpoint_step": 4}


@pytest.mark.parametrize("given, needle", [
    ({"num": 0}, "--num must be a positive integer, got 0"),
    ({"steps": -1}, "--steps must be a positive integer, got -1"),
    ({"sampler": "eulerr"}, "--sampler: unknown sampler 'eulerr'; expected one of consistency, ddim"),
    ({"params": "ema"}, "--params: unknown parameter set 'ema'; this run has decay_0.999, params"),
    ({"spacing": "cosine"}, "--spacing: unknown spacing 'cosine'"),
    ({"guidance": float("inf")}, "--guidance.scale must be a finite number"),
    ({"guidance": "cfgg"}, "--guidance.name: unknown guidance method 'cfgg'; the registered ones "
                           "are auto, classifier, classifier_free"),
    ({"guidance": {"scale": 2.0, "eta": 1.0}}, "--guidance: guidance method 'classifier_free' has "
                                                "no field(s) eta; its fields: --guidance.scale"),
    ({"guidance": {"scale": "lots"}}, "--guidance.scale must be a number, got 'lots'"),
])
def test_given_values_that_cannot_work_are_refused_by_their_name(given, needle):
    with pytest.raises(ValueError) as e:
        inference.settings(_run(), "sample", names=NAMES, **given)
    assert needle in str(e.value)


def test_a_default_that_cannot_work_names_its_config_key():
    with pytest.raises(ValueError, match=r"config\.sample\.num of this run \(the default of "
                                         r"--num\) must be a positive integer, got 0"):
        inference.settings(_run(**{"sample.num": 0}), "sample", names=NAMES)
    assert inference.settings(_run(**{"sample.num": 0}), "sample", num=2)["num"] == 2


def test_guidance_of_an_unconditional_model_is_refused_not_ignored():
    run = _run(num_classes=0, **{"sample.num": 4})
    assert inference.settings(run, "sample")["guidance"] == {"name": "none"}  # nothing to guide
    with pytest.raises(ValueError, match=r"--guidance classifier_free 2: this run's model is "
                                         r"unconditional"):
        inference.settings(run, "sample", names=NAMES, guidance=2.0)
    assert inference.settings(run, "sample", guidance=1.0)["guidance"] == {"name": "none"}


def test_a_partial_guidance_keeps_the_run_default_and_a_name_takes_its_defaults():
    run = _run(**{"sample.guidance.scale": 2.5, "sample.num": 4})
    assert inference.settings(run, "sample")["guidance"] == CFG(2.5)
    assert inference.settings(run, "sample", guidance={"scale": 4.0})["guidance"] == CFG(4.0)
    assert inference.settings(run, "sample", guidance="none")["guidance"] == {"name": "none"}
    # an old run's config.json holds a number: classifier-free guidance with that scale
    d = run.config.to_dict()
    d["sample"]["guidance"] = 3.0
    old = run._replace(config=ml_collections.ConfigDict(d))
    assert inference.settings(old, "sample")["guidance"] == CFG(3.0)


def test_pfgmpp_needs_a_pfgmpp_run():
    with pytest.raises(ValueError, match=r"--config\.diffusion\.process=pfgmpp"):
        inference.settings(_run(**{"sample.num": 4}), "sample", names=NAMES, sampler="pfgmpp")
    run = _run(process="pfgmpp", **{"sample.num": 4})
    assert inference.settings(run, "sample", sampler="pfgmpp")["sampler"] == "pfgmpp"
    # before the checkpoint is loaded, from the training config alone
    with pytest.raises(ValueError, match=r"this run's process is 'edm'"):
        inference.check_setting("sampler", "pfgmpp", "--sampler", config=_run().config)
    with pytest.raises(ValueError, match=r"this run has decay_0\.999, params, power_0\.1"):
        inference.check_setting("params", "ema", "--params", config=_run().config)
