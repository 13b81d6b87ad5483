"""``diffjax restore``: restore images with a trained run as the prior (diffjax/inverse, docs/INVERSE.md).

    diffjax restore --workdir RUN --operator inpaint|sr|colorize|deblur --input FILE --out PNG
        [--method steer|dps|none] [--strength W] [--steps N] [--sampler S] [--seed K]
        [--measured] [--factor F] [--mask box|random --mask_keep P] [--kernel_size K --blur_std S]
        [--noise_std S] [--npz FILE]

--input: an .npz with an array 'x' of images (N, H, W, C) (or one (H, W, C)) in [-1, 1], or one
image file (PNG, JPEG, ...): converted to the run's channels (grey 'L' for 1, 'RGB' for 3), resized
(bilinear) to the run's image size and mapped from 0..255 to [-1, 1]. The input is the clean image
and the command measures y = A(x) itself (+ --noise_std noise), unless --measured: then the input
*is* y - a low-resolution image for sr (resized to the run's size / factor), a grey image for
colorize, a blurry image for deblur, an image whose hole (the --mask) is ignored for inpaint.
--out: a PNG grid, one column per image: the input, the measurement shown as an image (the
no-prior reconstruction project(0, y)) and the restoration. --npz also saves the arrays (x_hat, y).
"""
from __future__ import annotations

import json
import os
import sys

from absl import flags

from diffjax.cli.table import CommandError

OPERATOR_NAMES = ("inpaint", "sr", "colorize", "deblur")     # = inverse.operators.OPERATORS (test)
METHOD_NAMES = ("steer", "dps", "none")
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")

_OPERATOR = flags.DEFINE_string("operator", None, "Forward operator: " + ", ".join(OPERATOR_NAMES)
                                + ".")
_INPUT = flags.DEFINE_string("input", None, "Images to restore: an .npz with 'x' (N, H, W, C) in "
                             "[-1, 1], or one image file (PNG, JPEG), resized to the run's size.")
_METHOD = flags.DEFINE_string("method", None, "restore: steer (steered diffusion, Nair et al. "
                              "2023; the default), dps (diffusion posterior sampling, Chung et al. "
                              "2023) or none (no prior: project(0, y)). search: dts (the default), "
                              "dts_star, dts_uniform, bon, random, zero_order, paths or smc.")


def method() -> str:
    return _METHOD.value or "steer"
_STRENGTH = flags.DEFINE_float("strength", None, "Guidance strength (steer: projection weight, "
                               "default 1; dps: zeta, default 20); 0 = the unguided model.")
_MEASURED = flags.DEFINE_bool("measured", False, "The input already is the measurement y (e.g. a "
                              "low-resolution image for sr), not the clean image.")
_FACTOR = flags.DEFINE_integer("factor", None, "sr: downsampling factor (default 2); must divide "
                               "the run's image size.")
_MASK = flags.DEFINE_string("mask", None, "inpaint: 'box' (a centred hole, default) or 'random' "
                            "(known pixels drawn with --seed).")
_MASK_KEEP = flags.DEFINE_float("mask_keep", None, "inpaint --mask random: fraction of known "
                                "pixels (default 0.3).")
_KERNEL = flags.DEFINE_integer("kernel_size", None, "deblur: Gaussian kernel size, odd "
                               "(default 5).")
_BLUR_STD = flags.DEFINE_float("blur_std", None, "deblur: Gaussian kernel std in pixels "
                               "(default 1.5).")
_NOISE_STD = flags.DEFINE_float("noise_std", 0.0, "Std of Gaussian noise added to the simulated "
                                "measurement (not with --measured).")

# option flag -> (operator, its keyword)
_OPTIONS = {"factor": ("sr", "factor"), "mask": ("inpaint", "mask"),
            "mask_keep": ("inpaint", "keep"), "kernel_size": ("deblur", "kernel_size"),
            "blur_std": ("deblur", "std")}


def check_flags() -> tuple[str, dict]:
    """The operator and its options from the flags, checked before jax is imported."""
    name = _OPERATOR.value
    if not name:
        raise CommandError(f"diffjax restore needs --operator ({', '.join(OPERATOR_NAMES)})")
    if name not in OPERATOR_NAMES:
        raise CommandError(f"unknown operator {name!r}; valid operators: "
                           f"{', '.join(OPERATOR_NAMES)}")
    if method() not in METHOD_NAMES:
        raise CommandError(f"unknown --method {method()!r}; valid: {', '.join(METHOD_NAMES)}")
    opts = {}
    for flag, (op, key) in _OPTIONS.items():
        value = flags.FLAGS[flag].value
        if value is None:
            continue
        if op != name:
            raise CommandError(f"--{flag} is an option of --operator {op}, not of {name}")
        opts[key] = value
    if not _INPUT.value:
        raise CommandError("diffjax restore needs --input FILE (an .npz with 'x' (N, H, W, C) in "
                           "[-1, 1], or an image file such as a PNG)")
    if not os.path.exists(_INPUT.value):
        raise CommandError(f"--input {_INPUT.value}: no such file; pass an .npz with 'x' "
                           f"(N, H, W, C) in [-1, 1] or an image file (PNG, JPEG)")
    ext = os.path.splitext(_INPUT.value)[1].lower()
    if ext != ".npz" and ext not in IMAGE_EXTS:
        raise CommandError(f"--input {_INPUT.value}: unknown file type {ext or '(none)'!r}; pass "
                           f"an .npz with 'x' or an image file ({', '.join(IMAGE_EXTS)})")
    if name == "inpaint":
        opts["seed"] = flags.FLAGS["seed"].value or 0
    if _NOISE_STD.value < 0:
        raise CommandError(f"--noise_std must be >= 0, got {_NOISE_STD.value}")
    if _MEASURED.value and _NOISE_STD.value:
        raise CommandError("--noise_std adds noise to a simulated measurement; with --measured "
                           "the input already is the measurement")
    steps = flags.FLAGS["steps"].value
    if steps is not None and steps < 1:
        raise CommandError(f"--steps must be a positive integer, got {steps}")
    return name, opts


def _signed(x, path):
    import numpy as np

    x = np.asarray(x, np.float32)
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise CommandError(f"--input {path}: values in [{lo:g}, {hi:g}], expected [-1, 1] (map "
                           f"uint8 pixels p to p / 127.5 - 1)")
    return x


def read_input(path: str, shape):
    """(N, *shape) float32 in [-1, 1] from an .npz ('x') or one image file (module docstring)."""
    import numpy as np

    h, w, c = shape
    if path.lower().endswith(".npz"):
        with np.load(path) as f:
            if "x" not in f:
                raise CommandError(f"--input {path}: no array 'x' in the .npz (it has "
                                   f"{', '.join(f.files) or 'nothing'}); save the images as x=")
            x = f["x"]
        x = x[None] if x.ndim == 3 else x
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(shape):
            raise CommandError(f"--input {path}: 'x' has shape {tuple(x.shape)}; this run's "
                               f"images are {tuple(shape)}: pass (N, {h}, {w}, {c})")
        return _signed(x, path)
    from PIL import Image, UnidentifiedImageError

    if c not in (1, 3):
        raise CommandError(f"--input {path}: image files need a run of 1 or 3 channels; this run "
                           f"has {c} (pass an .npz)")
    try:
        img = Image.open(path).convert("L" if c == 1 else "RGB")
    except (UnidentifiedImageError, OSError) as e:
        raise CommandError(f"--input {path}: not a readable image ({e})") from None
    if img.size != (w, h):
        img = img.resize((w, h), Image.BILINEAR)
    x = np.asarray(img, np.float32).reshape(h, w, c) / 127.5 - 1.0
    return x[None]


def cmd_restore():
    import numpy as np

    from diffjax.cli import _load_run, _say, _need_workdir, refuse_latent

    workdir = _need_workdir("restore")
    refuse_latent("restore", workdir)
    name, opts = check_flags()
    F = flags.FLAGS
    typed = {k: F[k].value for k in ("sampler", "steps", "spacing", "params", "seed")
             if F[k].value is not None}
    from diffjax import inference
    from diffjax.inverse import operators, restore

    names = {k: f"--{k}" for k in typed}
    for k, v in typed.items():
        inference.check_setting(k, v, names[k])
    # the operator and the input, checked against the run's image shape before its checkpoint loads
    shape = tuple(inference.load_info(workdir)["example_shape"])
    op = operators.make(name, shape, **opts)
    meas_shape = tuple(op.measurement_shape(shape))
    src = read_input(_INPUT.value, meas_shape if _MEASURED.value else shape)
    run = _load_run(workdir, typed, names, "restore")
    sampler = typed.get("sampler", run.config.sample.sampler)
    steps = int(typed.get("steps", run.config.sample.steps))
    spacing = typed.get("spacing", run.config.sample.spacing)
    seed = int(typed.get("seed", 0))
    out = F["out"].value or os.path.join(workdir, "restore.png")
    _say(f"diffjax restore: {len(src)} image{'s' if len(src) != 1 else ''} from {_INPUT.value}, "
         f"operator {name} {opts or ''}, method {method()}, run {workdir} checkpoint step "
         f"{run.step}, sampler {sampler}, {steps} steps, seed {seed} -> {out}")
    kw = dict(operator=op, method=method(), strength=_STRENGTH.value, steps=steps,
              sampler=sampler, spacing=spacing, seed=seed,
              params_name=typed.get("params"))
    if _MEASURED.value:
        if name == "inpaint":       # the hole of a given image is unknown: y = m * image
            src = np.asarray(op.forward(src))
        res = restore.restore(run, measurements=src, **kw)
    else:
        res = restore.restore(run, src, noise_std=_NOISE_STD.value, **kw)
    shown = np.clip(np.asarray(operators.baseline(op, res.y, (len(src),) + shape)), -1, 1)
    top = shown if _MEASURED.value else src
    result = {"out": out, "num": len(src), "operator": name, "options": opts,
              "method": method(), "strength": res.strength, "sampler": sampler,
              "steps": steps, "spacing": spacing, "seed": seed, "checkpoint_step": run.step,
              "consistency": float(np.mean(np.linalg.norm(
                  (np.asarray(op.forward(res.x)) - res.y).reshape(len(src), -1), axis=1)))}
    inference.save_grid(np.concatenate([top, shown, res.x]), out, ncol=len(src))
    if F["npz"].value:
        np.savez(F["npz"].value, x_hat=res.x, y=res.y)
        result["npz"] = F["npz"].value
    print(json.dumps(result))
    sys.stdout.flush()
