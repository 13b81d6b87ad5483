"""Guidance: a registry of denoiser transforms D -> D (the contract D(x, sigma, cond) -> x0_hat).

    sec = guidance.resolve(3.0)              # {'name': 'classifier_free', 'scale': 3.0}; or a
                                             # section {'name': 'interval', 'scale': 2, ...}
    static, values = guidance.split(sec)     # static selects the compiled program, values traced
    D_guided = guidance.apply(D, static, values, guidance.Context(null_label=10))   # inside jit
    D2 = guidance.compose(lambda D: guidance.classifier_free(D, 10, 3.0), my_transform)(D)

Methods that need another run (``auto``, ``classifier``) load it with ``guidance.prepare(sec, run)``
-> (static, state), the state an argument of the program; ``guidance.check(sec, sigmas)`` refuses
fields that cannot work on a grid. ``inference.generate`` does all of this.

A method is registered once (``register(Method(...))``, see registry.py) with its fields and their
defaults; ``config.sample.guidance`` / ``config.eval.guidance`` are sections {name, scale, the
method's own fields}, and the CLI takes ``--guidance NAME --guidance.scale W --guidance.FIELD V``
(``--guidance 3`` = classifier-free guidance with scale 3). Float fields are traced values in the
sampling program (changing them never recompiles). Registered: none, classifier_free, interval,
rescale, scheduled, auto, tstitch (T-Stitch: a small run for the first steps), classifier, elucd,
gfcg (experimental), ppap (docs/GUIDANCE.md); steer, dps for inverse problems (docs/INVERSE.md);
tsdiff, observation self-guidance for series (diffjax/timeseries);
guidance_input and early_exit, which sample distilled students (diffjax/distill, docs/DISTILL.md).
"""
from diffjax.guidance.registry import (METHODS, Context, Method, apply, check, compose, describe,
                                       get, prepare, register, resolve, split, traced_values)
from diffjax.guidance.classifier_free import classifier_free  # noqa: E402  (registers itself)
from diffjax.guidance import identity as _identity  # noqa: E402,F401  (registers 'none')
from diffjax.guidance import cfg_variants as _cfg_variants  # noqa: E402,F401  (interval, ...)
from diffjax.guidance import autoguidance as _autoguidance  # noqa: E402,F401  ('auto')
from diffjax.guidance import tstitch as _tstitch  # noqa: E402,F401  ('tstitch')
from diffjax.guidance import classifier as _classifier  # noqa: E402,F401  ('classifier')
from diffjax.guidance import elucd as _elucd  # noqa: E402,F401  ('elucd')
from diffjax.guidance import gfcg as _gfcg  # noqa: E402,F401  ('gfcg', experimental)
from diffjax.guidance import ppap as _ppap  # noqa: E402,F401  ('ppap')
from diffjax.guidance import measurement as _measurement  # noqa: E402,F401  (steer, dps)
from diffjax.timeseries import self_guidance as _tsdiff  # noqa: E402,F401  ('tsdiff')
from diffjax import distill as _distill  # noqa: E402,F401  (guidance_input, early_exit: distill/)
