"""diffjax --help and diffjax COMMAND --help: that command's flags only, the valid values, exit 0."""
import re

import pytest

from diffjax.core import samplers
from diffjax.training import preemption
from tests.training.util import run_cli

COMMANDS = ("train", "sample", "evaluate", "preflight")


def _flags_in(text):
    return set(re.findall(r"^  --(?:\[no\])?(\w+)(?: [A-Z:|]+)?$", text, re.M))  # "  --num N"


def test_main_help_lists_each_command_on_one_line():
    for args in (["--help"], ["help"], ["-h"]):
        p = run_cli(*args)
        assert p.returncode == 0, p.stderr
        for cmd in COMMANDS:
            assert len(re.findall(rf"^  {cmd} +\S", p.stdout, re.M)) == 1, p.stdout
        assert "Traceback" not in p.stderr
    p = run_cli()                                       # no command: the same list, exit 1
    assert p.returncode == 1
    assert all(re.search(rf"^  {cmd} +\S", p.stderr, re.M) for cmd in COMMANDS), p.stderr


@pytest.mark.parametrize("cmd, has, lacks", [
    ("train", {"config", "workdir"}, {"sampler", "steps", "topology", "num", "guidance"}),
    ("sample", {"workdir", "num", "sampler", "steps", "spacing", "guidance",
                "allow_negative_guidance", "params", "checkpoint_step", "seed", "out", "npz"},
     {"config", "topology", "json", "skip_sampler"}),
    ("evaluate", {"workdir", "num", "sampler", "steps", "guidance", "params", "checkpoint_step"},
     {"config", "out", "npz", "topology"}),
    ("preflight", {"config", "topology", "json", "skip_sampler"}, {"workdir", "sampler", "num"}),
])
def test_command_help_shows_its_flags_only(cmd, has, lacks):
    p = run_cli(cmd, "--help")
    assert p.returncode == 0, p.stderr
    shown = _flags_in(p.stdout)
    assert has <= shown, has - shown
    assert not lacks & shown, lacks & shown
    # none of absl's own flags, nor any other library's, in the list
    assert not {"logtostderr", "pdb", "run_with_pdb", "only_check_args", "helpfull"} & shown
    assert not any(f.startswith(("jax_", "xla_")) for f in shown)
    assert p.stdout.startswith(f"usage: diffjax {cmd} ")
    assert "exit status: 0 done; 1 user error" in p.stdout
    if cmd == "train":
        assert f"{preemption.EXIT_PREEMPTED} preempted" in p.stdout and "rerun" in p.stdout


def test_sample_help_lists_samplers_guidance_and_parameter_sets():
    p = run_cli("sample", "--help")
    assert p.returncode == 0, p.stderr
    text = " ".join(p.stdout.split())                           # unwrapped
    flags = text[text.index("flags:"):]
    sampler_help = flags[flags.index("--sampler NAME"):flags.index("--steps N")]
    assert "One of: " + ", ".join(sorted(samplers.SAMPLERS)) + "." in sampler_help
    assert "pfgmpp" in text and "--config.diffusion.process=pfgmpp" in text
    from diffjax import guidance
    methods = text[text.index("guidance methods"):text.index("parameter sets (--params)")]
    assert "classifier_free: classifier-free guidance (Ho & Salimans 2022)" in methods
    for name, method in guidance.METHODS.items():    # the help is the registry
        assert f"{name}: {method.help}" in methods
        for field, default in method.fields:
            assert f"--guidance.{field} (default {default})" in methods
    assert "0 < w < 1 between" in text and "--allow_negative_guidance" in text
    assert "parameter sets (--params): 'params' (the trained weights)" in text
    assert "power_<std>" in text and "Add --workdir DIR to --help" in text
