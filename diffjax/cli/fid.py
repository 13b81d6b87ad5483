"""``diffjax evaluate --metric fid``: FID in the FID Inception's features (diffjax/metrics).

    diffjax evaluate --workdir W --metric fid --ref stats.npz --inception pt_inception.pth \
        [--inception_convention tf|pytorch_fid --num 50000 --sampler heun --steps 18]
    diffjax evaluate --workdir W --metric fid --ref W/ref.npz --inception FILE --write_ref \
        [--ref_num N]

--ref: reference statistics (.npz with mu and sigma: pytorch-fid --save-stats, clean-fid, EDM's
fid-refs); with --write_ref they are computed from the run's training images (for a latent run the
images behind its latents) and saved there first. --inception: the FID network's weights, a file
the user has (pytorch-fid's pt_inception-2015-12-05-6726825d.pth, or a converted .safetensors /
.npz); nothing is downloaded. Samples follow EDM's protocol: sample i is example i (key
fold_in(key(seed), i), label i mod C), so N samples give one number whatever the batch size or the
device count. The result (the draw settings, fid, num, ref, inception) is printed as JSON and
written to WORKDIR/eval_fid.json.
"""
from __future__ import annotations

import json
import os

from absl import flags

from diffjax.cli.table import CommandError

METRICS = ("fd", "fid")
CONVENTIONS = ("pytorch_fid", "tf")
_METRIC = flags.DEFINE_string("metric", "fd", "evaluate: fd (Frechet distance in the run's own "
                              "evaluation classifier, and class accuracy) or fid (the FID "
                              "Inception; needs --ref and --inception).")
_REF = flags.DEFINE_string("ref", None, "evaluate --metric fid: reference statistics (.npz with "
                           "mu, sigma).")
_INCEPTION = flags.DEFINE_string("inception", None, "evaluate --metric fid: the FID Inception "
                                 "weights (pytorch-fid's .pth, or .safetensors / .npz).")
_CONV = flags.DEFINE_string("inception_convention", "pytorch_fid", "evaluate --metric fid: the "
                            "input resize/normalization, pytorch_fid or tf (the TF graph's, as "
                            "EDM / the original TTUR code; numbers compare within one).")
_WRITE_REF = flags.DEFINE_bool("write_ref", False, "evaluate --metric fid: compute --ref from the "
                               "run's training images first.")
_REF_NUM = flags.DEFINE_integer("ref_num", None, "evaluate --write_ref: use the first N training "
                                "images (default: all).")


def metric() -> str:
    return _METRIC.value


def check_flags() -> None:
    """Every mistake a CommandError before jax is imported."""
    if _METRIC.value not in METRICS:
        raise CommandError(f"--metric {_METRIC.value!r}: unknown metric; valid: "
                           f"{', '.join(METRICS)}")
    given = [n for n, f in (("ref", _REF), ("inception", _INCEPTION)) if f.value]
    if _METRIC.value == "fd":
        given += [n for n, on in (("write_ref", _WRITE_REF.value),
                                  ("ref_num", _REF_NUM.value is not None)) if on]
        if given:
            raise CommandError(f"--{given[0]} is for --metric fid")
        return
    if _REF_NUM.value is not None and (not _WRITE_REF.value or _REF_NUM.value < 2):
        raise CommandError(f"--ref_num {_REF_NUM.value}: needs --write_ref and at least 2 images")
    if _CONV.value not in CONVENTIONS:
        raise CommandError(f"--inception_convention {_CONV.value!r}: valid: "
                           f"{', '.join(CONVENTIONS)}")
    for name, f, what in (("ref", _REF, "reference statistics .npz (mu, sigma)"),
                          ("inception", _INCEPTION, "FID Inception weights file")):
        if not f.value:
            raise CommandError(f"--metric fid needs --{name} FILE (the {what})")
    if not _REF.value.endswith(".npz"):
        raise CommandError(f"--ref {_REF.value}: reference statistics are an .npz file")
    if not os.path.isfile(_INCEPTION.value):
        raise CommandError(f"--inception {_INCEPTION.value}: no such file (pytorch-fid's "
                           f"pt_inception-2015-12-05-6726825d.pth, or a converted .safetensors / "
                           f".npz; nothing is downloaded)")
    if not _WRITE_REF.value and not os.path.isfile(_REF.value):
        raise CommandError(f"--ref {_REF.value}: no such file; pass --write_ref to compute it from "
                           f"the run's training images")


def evaluate_fid(run, workdir: str, st: dict) -> dict:
    import jax

    from diffjax.metrics import fid, run_fid

    feats = fid.inception_features(_INCEPTION.value, convention=_CONV.value)
    res = dict(st)
    if _WRITE_REF.value:
        mu, sigma = run_fid.reference_stats(run.config, feats, limit=_REF_NUM.value)
        if jax.process_index() == 0:
            fid.save_stats(_REF.value, mu, sigma)
        res["ref_written"] = True
    out = run_fid.fid_of_run(run, feats, _REF.value, num=st["num"], sampler=st["sampler"],
                             steps=st["steps"], guidance=st["guidance"], seed=st["seed"],
                             params_name=st["params"], spacing=st["spacing"])
    res.update(metric="fid", fid=float(out["fid"]), ref=_REF.value, inception=_INCEPTION.value,
               inception_convention=_CONV.value)
    if jax.process_index() == 0:
        with open(os.path.join(workdir, "eval_fid.json"), "w", encoding="utf-8") as f:
            json.dump(res, f, indent=1)
    return res
