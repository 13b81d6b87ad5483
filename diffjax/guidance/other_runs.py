"""Loading the other run a guidance method needs (a weak model, a noisy classifier): checked, once
per process (cached by workdir, parameter set, step and mesh), its params replicated over the guided
run's mesh so they can be an argument of its sampling program."""
from __future__ import annotations

import functools
import os


def load(method: str, field: str, workdir: str, params: str, step: int, run, *, what: str,
         config_file: str):
    """(the other run, its parameter set's name). ``field`` names the section field that gave
    ``workdir`` (for the errors); ``what`` says what the run is; ``config_file`` trains one."""
    if not workdir:
        raise ValueError(f"guidance {method} needs {what}: --guidance.{field} DIR "
                         f"(config.sample.guidance.{field}), e.g. one trained with {config_file}")
    if not os.path.isfile(os.path.join(workdir, "config.json")):
        raise ValueError(f"guidance {method}: {field} {workdir!r} is not a diffjax training workdir "
                         f"(no config.json); train it there first, e.g. diffjax train --config "
                         f"{config_file} --workdir {workdir}")
    return _load(os.path.abspath(workdir), params, int(step), None if run is None else run.mesh)


@functools.lru_cache(maxsize=8)
def _load(workdir: str, params: str, step: int, mesh):
    from diffjax import inference

    config = inference.load_config(workdir)
    name = params or config.sample.params
    other = inference.load(workdir, step=None if step < 0 else step, config=config, params=name,
                           mesh=mesh)
    return other, name


def check_compatible(method: str, workdir: str, other, run, what: str):
    """The other run must draw (or read) examples of the guided run's shape and classes."""
    if tuple(other.example_shape) != tuple(run.example_shape):
        raise ValueError(f"guidance {method}: {what} in {workdir!r} has examples of shape "
                         f"{tuple(other.example_shape)}, this run {tuple(run.example_shape)}: "
                         f"train it on the same data")
    if other.num_classes != run.num_classes:
        raise ValueError(f"guidance {method}: {what} in {workdir!r} has {other.num_classes} "
                         f"classes, this run {run.num_classes}: it must take the same labels")
