"""Offline loaders (TFDS, image folders, .npz) and the source registry, on data the tests write."""
import time

import numpy as np
import pytest
from PIL import Image

from diffjax.data.arrays import ArraySource
from diffjax.data.folders import load_image_folder
from diffjax.data.npz import load_npz
from diffjax.data.pipeline import make_iterator
from diffjax.data.registry import get_source, names
from diffjax.data.tfds_source import TfdsSource, load_tfds

NUM_TRAIN, NUM_TEST = 12, 5


def _tiny_image(i: int) -> np.ndarray:
    return ((np.arange(8 * 8 * 3).reshape(8, 8, 3) * 3 + 17 * i) % 256).astype(np.uint8)


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    """A 3-class 8x8 RGB dataset, prepared by the real TFDS writer in array_record and tfrecord."""
    tfds = pytest.importorskip("tensorflow_datasets")

    class DiffjaxTinyImages(tfds.core.GeneratorBasedBuilder):
        """Examples i = 0..n-1: image _tiny_image(i) (offset by 100 in test), label i % 3."""
        VERSION = tfds.core.Version("1.0.0")
        # No checksums file to find. Also sidesteps tfds 4.9.10 resolving code_path through
        # `importlib_resources`, a package it does not declare for Python >= 3.9.
        code_path = None

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 3)),
                "label": tfds.features.ClassLabel(num_classes=3),
                "index": np.int64}))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, NUM_TRAIN),
                    "test": self._generate_examples(100, NUM_TEST)}

        def _generate_examples(self, offset, n):
            for i in range(n):
                yield i, {"image": _tiny_image(offset + i), "label": i % 3, "index": offset + i}

    dirs = {}
    for fmt in ("array_record", "tfrecord"):
        dirs[fmt] = str(tmp_path_factory.mktemp(fmt))
        DiffjaxTinyImages(data_dir=dirs[fmt], file_format=fmt).download_and_prepare()
    return "diffjax_tiny_images", dirs


def test_tfds_random_access_reads_prepared_data(tiny_tfds):
    name, dirs = tiny_tfds
    src = load_tfds(name, split="train", data_dir=dirs["array_record"])
    assert isinstance(src, TfdsSource) and len(src) == NUM_TRAIN and src.num_classes == 3
    seen = set()
    for i in range(NUM_TRAIN):
        ex = src[i]
        assert ex["x"].shape == (8, 8, 3) and ex["x"].dtype == np.float32
        assert ex["label"].dtype == np.int32
        matches = [j for j in range(NUM_TRAIN)
                   if np.allclose(ex["x"], _tiny_image(j) / 127.5 - 1, atol=1e-6)]
        assert len(matches) == 1 and ex["label"] == matches[0] % 3
        seen.add(matches[0])
    assert seen == set(range(NUM_TRAIN))
    small = load_tfds(name, split="test[:3]", data_dir=dirs["array_record"], resolution=4)
    assert len(small) == 3 and small[0]["x"].shape == (4, 4, 3)


def test_tfds_tfrecord_falls_back_to_memory_with_same_content(tiny_tfds):
    name, dirs = tiny_tfds
    mem = load_tfds(name, split="test", data_dir=dirs["tfrecord"])
    ra = load_tfds(name, split="test", data_dir=dirs["array_record"])
    assert isinstance(mem, ArraySource) and len(mem) == len(ra) == NUM_TEST
    def contents(src):
        return sorted(src[i]["x"].tobytes() for i in range(NUM_TEST))
    assert contents(mem) == contents(ra)


def test_tfds_through_registry_and_pipeline(tiny_tfds):
    name, dirs = tiny_tfds
    src = get_source({"name": "tfds", "dataset": name, "data_dir": dirs["array_record"]})
    batches = [next(it) for it in [make_iterator(src, 4, seed=0)] for _ in range(6)]
    assert batches[0]["x"].shape == (4, 8, 8, 3) and batches[0]["label"].dtype == np.int32
    labels = np.concatenate([b["label"] for b in batches[:3]])
    assert sorted(labels.tolist()) == sorted([i % 3 for i in range(NUM_TRAIN)])


def test_tfds_bad_split_or_key(tiny_tfds):
    name, dirs = tiny_tfds
    with pytest.raises(ValueError, match="validation"):
        load_tfds(name, split="validation", data_dir=dirs["array_record"])
    with pytest.raises(ValueError, match="img"):
        load_tfds(name, data_dir=dirs["array_record"], image_key="img")


@pytest.mark.parametrize("name", ["mnist", "no_such_dataset_xyz"])
def test_tfds_missing_dataset_fails_fast_and_clearly(tmp_path, name):
    start = time.monotonic()
    with pytest.raises(FileNotFoundError) as err:
        load_tfds(name, data_dir=str(tmp_path))
    assert time.monotonic() - start < 20
    message = str(err.value)
    assert name in message and str(tmp_path) in message and f"tfds build {name}" in message


def _write_png(path, rgb, size=(6, 5), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, tuple(rgb))
    (img.convert("L") if mode == "L" else img).save(path)


def test_image_folder_round_trip(tmp_path):
    _write_png(tmp_path / "dogs" / "b.png", (0, 255, 51), size=(9, 4))
    _write_png(tmp_path / "dogs" / "a.PNG", (255, 0, 0))
    _write_png(tmp_path / "cats" / "x.jpg", (255, 255, 255))
    (tmp_path / "cats" / "notes.txt").write_text("not an image")
    images, labels, class_names = load_image_folder(tmp_path, resolution=4)
    assert class_names == ("cats", "dogs") and labels.tolist() == [0, 1, 1]
    assert images.shape == (3, 4, 4, 3) and images.dtype == np.float32
    np.testing.assert_allclose(images[1], np.broadcast_to([1, -1, -1], (4, 4, 3)), atol=1e-6)
    np.testing.assert_allclose(images[2], np.broadcast_to([-1, 1, 51 / 127.5 - 1], (4, 4, 3)),
                               atol=1e-6)
    assert np.all(images[0] > 0.95)  # white JPEG, up to compression error
    grey, _, _ = load_image_folder(tmp_path, resolution=(2, 3), channels=1)
    assert grey.shape == (3, 2, 3, 1)
    src = get_source({"name": "folder", "path": str(tmp_path), "resolution": 4})
    assert len(src) == 3 and src.num_classes == 2 and src.class_names == ("cats", "dogs")


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        load_image_folder(tmp_path / "missing", 4)
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path, 4)
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(ValueError, match="empty_class"):
        load_image_folder(tmp_path, 4)
    (tmp_path / "empty_class" / "bad.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="bad.png"):
        load_image_folder(tmp_path, 4)
    with pytest.raises(ValueError, match="needs config.resolution"):
        get_source({"name": "folder", "path": str(tmp_path)})


def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (7, 5, 5, 3), dtype=np.uint8)
    np.savez(tmp_path / "u8.npz", images=pixels, labels=np.arange(7) % 2)
    images, labels = load_npz(tmp_path / "u8.npz")
    np.testing.assert_allclose(images, pixels / 127.5 - 1, atol=1e-6)
    assert labels.tolist() == [0, 1, 0, 1, 0, 1, 0] and labels.dtype == np.int32
    floats = rng.uniform(-1, 1, (3, 4, 4, 1)).astype(np.float32)
    np.savez(tmp_path / "f32.npz", images=floats)
    images, labels = load_npz(tmp_path / "f32.npz", resolution=8)
    assert images.shape == (3, 8, 8, 1) and labels.tolist() == [0, 0, 0]
    src = get_source({"name": "npz", "path": str(tmp_path / "u8.npz")})
    assert len(src) == 7 and src.num_classes == 2
    # what diffjax sample --npz writes (x, label) reads the same
    np.savez(tmp_path / "sampled.npz", x=floats, label=np.array([2, 0, 1]))
    images, labels = load_npz(tmp_path / "sampled.npz")
    np.testing.assert_allclose(images, floats)
    assert labels.tolist() == [2, 0, 1]


@pytest.mark.parametrize("arrays,match", [
    ({"pixels": np.zeros((2, 4, 4, 3), np.uint8)}, r"no 'images' \(or 'x'\) array"),
    ({"images": np.zeros((2, 4, 4), np.uint8)}, "NHWC"),
    ({"images": np.zeros((0, 4, 4, 3), np.uint8)}, "no images"),
    ({"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.zeros(3, int)}, "labels must have"),
    ({"images": np.zeros((2, 4, 4, 3), np.uint8), "labels": np.zeros(2)}, "integers"),
    ({"images": np.full((2, 4, 4, 3), 255.0)}, r"\[-1, 1\]"),
])
def test_npz_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match):
        load_npz(tmp_path / "bad.npz")


def test_npz_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_npz(tmp_path / "nope.npz")


def test_registry_builds_every_offline_source():
    ml_collections = pytest.importorskip("ml_collections")
    assert set(names()) == {"digits", "shapes", "toy2d", "tfds", "folder", "npz", "latents",
                            "series", "eeg_sim", "text"}     # (tests/timeseries, tests/discrete)
    digits = get_source(ml_collections.ConfigDict({"name": "digits", "split": "test"}))
    assert len(digits) == 297 and digits[0]["x"].shape == (16, 16, 1) and digits.num_classes == 10
    shapes = get_source({"name": "shapes", "num_examples": 8, "seed": 1})
    assert len(shapes) == 8 and shapes[0]["x"].shape == (32, 32, 3) and shapes.num_classes == 24
    toy = get_source({"name": "toy2d", "toy": "gmm_8", "num_examples": 64})
    assert toy.x.shape == (64, 2) and toy.num_classes == 8 and toy.labels.max() < 8
    roll = get_source({"name": "toy2d", "toy": "swiss_roll", "num_examples": 16})
    assert roll.x.shape == (16, 2) and roll.num_classes == 1
    with pytest.raises(ValueError, match="digits.*npz|npz.*digits"):
        get_source({"name": "imagenet"})
    with pytest.raises(ValueError, match="needs config.dataset"):
        get_source({"name": "tfds"})
    with pytest.raises(ValueError, match="needs config.path"):   # tests/latent builds real ones
        get_source({"name": "latents"})
