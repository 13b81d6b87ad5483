"""``diffjax classify``: zero-shot classification with a trained class-conditional run, the
diffusion classifier of Li et al. 2023 (diffjax/classify).

    diffjax classify --workdir RUN --images FILE|FOLDER [--schedule cifar10 --num N --seed K]
    diffjax classify --workdir RUN --split test [--schedule fast --num 100]

--images: an .npz ('images' or 'x', NHWC, and optionally 'labels' or 'label', as diffjax sample
--npz writes them), an .npy array (N, H, W, C) (or one (H, W, C)), float in [-1, 1] or uint8 in
0..255; or a folder of images (PNG, JPEG), either flat or one sub-folder per class
(data/folders.py; sub-folders named by the class ids 0, 1, ... give the labels). Images are
resized (bilinear) to the run's image size; their channels must match the run's.
--split NAME: the run's own data source (config.data) with that split, e.g. the digits' held-out
'test' split (the last 297 images); only for sources with splits (digits, tfds).
--schedule: an elimination schedule of diffjax.classify.SCHEDULES (default cifar10: keep 5 of the
classes after 50 (t, eps) pairs, then 1 after 500; 2,750 network calls per image for 10 classes).
Prints JSON: the predictions' accuracy when the labels are known, the NFE per image and in total,
the settings; --npz also saves pred, errors (N, C) and the labels.
"""
from __future__ import annotations

import json
import os
import sys

from absl import flags

from diffjax.cli.table import CommandError

SCHEDULE_NAMES = ("cifar10", "pets", "stl10", "flowers", "food", "aircraft", "imagenet",
                  "objectnet", "dit", "fast")   # = classify.SCHEDULES (a test keeps them equal)
IMAGE_EXTS = (".png", ".jpg", ".jpeg")           # = data.folders.IMAGE_EXTENSIONS
SPLIT_SOURCES = ("digits", "tfds")               # the data sources that read config.data.split

_IMAGES = flags.DEFINE_string("images", None, "classify: the images, an .npz ('images'/'x' and "
                              "optional 'labels'/'label'), an .npy (N, H, W, C), or a folder of "
                              "images (flat, or one sub-folder per class id).")
_SCHEDULE = flags.DEFINE_string("schedule", None, "classify: the elimination schedule, one of "
                                + ", ".join(SCHEDULE_NAMES) + " (default cifar10).")
_SPLIT = flags.DEFINE_string("split", None, "classify: classify the run's own data source with "
                             "this split instead of --images (e.g. test: the held-out digits).")
_MAX_BATCH = flags.DEFINE_integer("max_batch", None, "classify: rows (image, class, noise level) "
                                  "per network call (default: the run's config.sample.batch_size).")


def schedule() -> str:
    return _SCHEDULE.value or "cifar10"


def check_flags():
    """The command's own mistakes, answered before jax is imported."""
    if schedule() not in SCHEDULE_NAMES:
        raise CommandError(f"unknown --schedule {schedule()!r}; valid: "
                           f"{', '.join(SCHEDULE_NAMES)}")
    if bool(_IMAGES.value) == bool(_SPLIT.value):
        raise CommandError("diffjax classify needs exactly one of --images FILE|FOLDER (an .npz, "
                           ".npy or a folder of images) and --split NAME (the run's own data, "
                           "e.g. --split test)")
    path = _IMAGES.value
    if path:
        if not os.path.exists(path):
            raise CommandError(f"--images {path}: no such file or folder; pass an .npz, an .npy "
                               f"or a folder of images")
        ext = os.path.splitext(path)[1].lower()
        if not os.path.isdir(path) and ext not in (".npz", ".npy"):
            raise CommandError(f"--images {path}: unknown file type {ext or '(none)'!r}; pass an "
                               f".npz, an .npy or a folder of images")
    for f, v in (("num", flags.FLAGS["num"].value), ("max_batch", _MAX_BATCH.value)):
        if v is not None and v < 1:
            raise CommandError(f"--{f} must be a positive integer, got {v}")
    step = flags.FLAGS["checkpoint_step"].value
    if step is not None and step < 0:
        raise CommandError(f"--checkpoint_step must be >= 0, got {step}")


def _signed(x, where):
    import numpy as np

    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 127.5 - 1.0
    if not np.issubdtype(x.dtype, np.floating):
        raise CommandError(f"{where}: images must be float in [-1, 1] or uint8, got {x.dtype}")
    lo, hi = float(x.min()), float(x.max())
    if lo < -1.0 - 1e-3 or hi > 1.0 + 1e-3:
        raise CommandError(f"{where}: values in [{lo:g}, {hi:g}], expected [-1, 1] (map uint8 "
                           f"pixels p to p / 127.5 - 1)")
    return np.clip(x.astype(np.float32), -1.0, 1.0)


def _fit(x, shape, where):
    """(N, *shape): the run's channels checked, the size resized (bilinear)."""
    from diffjax.data.arrays import resize_images

    x = x[None] if x.ndim == len(shape) else x
    if x.ndim != len(shape) + 1 or x.shape[0] == 0:
        raise CommandError(f"{where}: images of shape {tuple(x.shape)}; this run's examples are "
                           f"{tuple(shape)}: pass (N, {', '.join(map(str, shape))})")
    if x.shape[-1] != shape[-1]:
        raise CommandError(f"{where}: {x.shape[-1]} channels; this run's examples have "
                           f"{shape[-1]}")
    if len(shape) == 3 and tuple(x.shape[1:]) != tuple(shape):
        x = resize_images(x, shape[:2])
    if tuple(x.shape[1:]) != tuple(shape):
        raise CommandError(f"{where}: images of shape {tuple(x.shape[1:])}; this run's examples "
                           f"are {tuple(shape)}")
    return x


def read_images(path: str, shape):
    """(images (N, *shape) in [-1, 1], labels (N,) or None) from --images (module docstring)."""
    import numpy as np

    if os.path.isdir(path):
        return _read_folder(path, shape)
    if path.lower().endswith(".npy"):
        try:
            x = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise CommandError(f"--images {path}: not a readable .npy ({e})") from None
        return _fit(_signed(x, f"--images {path}"), shape, f"--images {path}"), None
    with np.load(path, allow_pickle=False) as f:
        ik = next((k for k in ("images", "x") if k in f.files), None)
        lk = next((k for k in ("labels", "label") if k in f.files), None)
        if ik is None:
            raise CommandError(f"--images {path}: no array 'images' (or 'x') in the .npz (it has "
                               f"{', '.join(f.files) or 'nothing'})")
        x, labels = f[ik], (np.asarray(f[lk]) if lk else None)
    x = _fit(_signed(x, f"--images {path}"), shape, f"--images {path}")
    if labels is not None and labels.shape != (len(x),):
        raise CommandError(f"--images {path}: {lk!r} has shape {labels.shape}, expected "
                           f"({len(x)},)")
    return x, labels


def _read_folder(path: str, shape):
    import numpy as np

    from diffjax.data import folders

    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise CommandError(f"--images {path}: a folder of images needs a run of 1 or 3 channel "
                           f"images; this run's examples are {tuple(shape)} (pass an .npz)")
    subdirs = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if subdirs:
        x, labels, names = folders.load_image_folder(path, shape[:2], shape[-1])
        if all(n.isdigit() for n in names):     # sub-folders named by class id
            labels = np.asarray([int(names[i]) for i in labels], np.int32)
        else:
            labels = None
        return x, labels
    files = sorted(f for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTS))
    if not files:
        raise CommandError(f"--images {path}: no {'/'.join(IMAGE_EXTS)} images and no class "
                           f"sub-folders in it")
    x = np.stack([folders.read_image(os.path.join(path, f), shape[:2], shape[-1]) for f in files])
    return x, None


def read_split(config, split: str, shape):
    """The run's own data source (config.data) with ``split``: (images, labels)."""
    import numpy as np

    from diffjax.data import registry

    name = config.data.get("name")
    if name not in SPLIT_SOURCES:
        raise CommandError(f"--split: the run's data source {name!r} has no splits (only "
                           f"{', '.join(SPLIT_SOURCES)} do); pass the images with --images")
    data = config.data.to_dict()
    data["split"] = split
    src = registry.get_source(data)
    if hasattr(src, "x"):
        x, labels = src.x, src.labels
    else:
        items = [src[i] for i in range(len(src))]
        x = np.stack([e["x"] for e in items])
        labels = np.asarray([e["label"] for e in items], np.int32)
    return _fit(np.asarray(x, np.float32), shape, f"--split {split}"), labels


def cmd_classify():
    import jax
    import numpy as np

    from diffjax import inference
    from diffjax.classify import diffusion_classifier as dc
    from diffjax.cli import _load_run, _need_workdir, _say, refuse_latent

    workdir = _need_workdir("classify")
    check_flags()
    config = inference.load_config(workdir)
    refuse_latent("classify", workdir, config)
    info = inference.load_info(workdir)
    if not int(info["num_classes"]):
        raise CommandError(f"diffjax classify needs a class-conditional run; {workdir} is "
                           f"unconditional (num_classes = 0)")
    shape = tuple(info["example_shape"])
    F = flags.FLAGS
    if _IMAGES.value:
        x, labels = read_images(_IMAGES.value, shape)
        what = f"--images {_IMAGES.value}"
    else:
        x, labels = read_split(config, _SPLIT.value, shape)
        what = f"{config.data.name} split {_SPLIT.value}"
    num = F["num"].value
    if num is not None:
        x, labels = x[:num], (None if labels is None else labels[:num])
    typed = {"params": F["params"].value} if F["params"].value else {}
    names = {"params": "--params"}
    for k, v in typed.items():
        inference.check_setting(k, v, names[k])
    run = _load_run(workdir, typed, names, "classify")
    seed = int(F["seed"].value or 0)
    sched = dc.get_schedule(schedule())
    per_image = dc.nfe(sched, run.num_classes)
    _say(f"diffjax classify: {len(x)} image{'s' if len(x) != 1 else ''} from {what} with "
         f"{workdir} checkpoint step {run.step}, schedule {schedule()} (n_samples "
         f"{list(sched.n_samples)}, to_keep {list(sched.to_keep)}, {sched.loss}), {per_image} NFE "
         f"per image, seed {seed}")
    res = dc.classify(run, x, key=jax.random.key(seed), schedule=sched,
                      batch_size=_MAX_BATCH.value, params_name=typed.get("params"))
    result = {"images": _IMAGES.value or f"split:{_SPLIT.value}", "num": int(len(x)),
              "schedule": schedule(), "n_samples": list(sched.n_samples),
              "to_keep": list(sched.to_keep), "loss": sched.loss, "nfe_per_image": res.nfe,
              "nfe": res.nfe * int(len(x)), "seed": seed, "checkpoint_step": run.step,
              "params": typed.get("params", run.config.sample.params)}
    if labels is not None:
        result["accuracy"] = round(dc.accuracy(res.pred, labels), 5)
    result["pred"] = [int(p) for p in res.pred[:100]]
    if F["npz"].value:
        np.savez(F["npz"].value, pred=res.pred, errors=res.errors,
                 **({"labels": np.asarray(labels)} if labels is not None else {}))
        result["npz"] = F["npz"].value
    print(json.dumps(result))
    sys.stdout.flush()
