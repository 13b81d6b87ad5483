"""TFDS datasets by name, read offline: random access when prepared as array_record, else in memory.

Nothing here downloads. Google Cloud look-ups are switched off
(``tensorflow_datasets.core.utils.gcs_utils._is_gcs_disabled = True``, already the default in
tfds 4.9.10 and set again here), and a dataset that is not prepared in ``data_dir`` raises
FileNotFoundError at once, naming the dataset, the directory and the command that prepares it.
Random access (``builder.as_data_source``) reads array_record files without importing TensorFlow;
a dataset prepared as tfrecord is read whole through ``builder.as_dataset`` (imports TensorFlow).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from diffjax.data.arrays import ArraySource, check_labels, resize_image

RANDOM_ACCESS_FORMATS = ("array_record", "parquet")


def _tfds():
    """Import tensorflow_datasets with Google Cloud look-ups disabled."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import gcs_utils

    gcs_utils._is_gcs_disabled = True  # pylint: disable=protected-access
    return tfds


def prepare_command(name: str, data_dir: str | None) -> str:
    """The shell command that prepares ``name`` for this loader (run where there is network)."""
    where = f" --data_dir={data_dir}" if data_dir else ""
    return f"tfds build {name}{where} --file_format=array_record"


def _not_prepared(name: str, data_dir: str | None, why: str) -> FileNotFoundError:
    shown = data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets (TFDS default)"
    return FileNotFoundError(
        f"TFDS dataset {name!r} is not prepared in data_dir {shown!r} ({why}). Nothing is "
        f"downloaded at run time; prepare it first with:\n  {prepare_command(name, data_dir)}")


def _to_signed_unit(image: np.ndarray) -> np.ndarray:
    """uint8/uint16 (or float in [0, 1]) image -> float32 in [-1, 1]."""
    image = np.asarray(image)
    high = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1.0
    return np.clip(image.astype(np.float32) * (2.0 / high) - 1.0, -1.0, 1.0)


class TfdsSource:
    """One TFDS split, random access: ``src[i] -> {'x': HWC float32 in [-1,1], 'label': int32}``."""

    def __init__(self, records, image_key: str, label_key: str | None,
                 resolution: int | Sequence[int] | None, num_classes: int | None):
        self._records = records
        self.image_key, self.label_key, self.resolution = image_key, label_key, resolution
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self._records[int(index)]
        x = _to_signed_unit(record[self.image_key])
        if x.ndim == 2:
            x = x[..., None]
        if self.resolution is not None:
            x = resize_image(x, self.resolution)
        label = record[self.label_key] if self.label_key else 0
        return {"x": x, "label": np.int32(label)}


def load_tfds(name: str, split: str = "train", data_dir: str | None = None,
              image_key: str = "image", label_key: str | None = "label",
              resolution: int | Sequence[int] | None = None) -> TfdsSource | ArraySource:
    """Open a prepared TFDS split as a random-access source (``TfdsSource`` or ``ArraySource``).

    ``name`` may carry a config/version ("mnist:3.*.*"); ``split`` may be a slice ("train[:90%]").
    ``label_key=None`` gives label 0 everywhere. Raises FileNotFoundError when not prepared and
    ValueError for an unknown split or feature key.
    """
    tfds = _tfds()
    data_dir = os.fspath(data_dir) if data_dir is not None else None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise _not_prepared(name, data_dir, "no registered builder and no prepared files") from e
    if not builder.is_prepared():
        raise _not_prepared(name, data_dir, f"no valid {builder.data_path}")
    features = builder.info.features
    for key in (image_key, label_key):
        if key is not None and key not in features:
            raise ValueError(f"TFDS dataset {name!r} has no feature {key!r}; "
                             f"features: {list(features)}")
    base_split = split.split("[")[0]
    if "+" not in split and base_split not in builder.info.splits:
        raise ValueError(f"TFDS dataset {name!r} has no split {split!r}; "
                         f"splits: {list(builder.info.splits)}")
    num_classes = getattr(features[label_key], "num_classes", None) if label_key else 1
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format in RANDOM_ACCESS_FORMATS:
        records = builder.as_data_source(split=split)
        return TfdsSource(records, image_key, label_key, resolution, num_classes)
    # tfrecord: no random access, so read the split into memory.
    keys = [image_key] + ([label_key] if label_key else [])
    ds = builder.as_dataset(split=split).map(lambda ex: {k: ex[k] for k in keys})
    rows = list(tfds.as_numpy(ds))
    images = [_to_signed_unit(r[image_key]) for r in rows]
    images = [im[..., None] if im.ndim == 2 else im for im in images]
    if resolution is not None:
        images = [resize_image(im, resolution) for im in images]
    if len({im.shape for im in images}) > 1:
        raise ValueError(f"TFDS dataset {name!r} has images of several sizes; pass resolution")
    images = np.stack(images)
    labels = check_labels(np.array([r[label_key] for r in rows]) if label_key else None,
                          len(rows), f"tfds {name}")
    return ArraySource(images, labels, num_classes=num_classes)
