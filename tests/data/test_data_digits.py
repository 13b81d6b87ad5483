"""scikit-learn digits: shapes, range, classes, and the fixed split."""
import numpy as np
import pytest

from diffjax.data.digits import NUM_TEST, load_digits


def test_digits_all():
    images, labels = load_digits("all")
    assert images.shape == (1797, 16, 16, 1) and images.dtype == np.float32
    assert labels.shape == (1797,) and labels.dtype == np.int32
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert images.min() == -1.0 and images.max() > 0.99  # background and full ink both occur
    assert set(np.unique(labels)) == set(range(10))
    # Real digits, not noise: mean image is brighter in the centre than at the border.
    mean = images.mean(0)[..., 0]
    assert mean[6:10, 6:10].mean() > mean[:, 0].mean() + 0.5


def test_digits_split_is_fixed_and_partitions_all():
    all_x, all_y = load_digits("all")
    tr_x, tr_y = load_digits("train")
    te_x, te_y = load_digits("test")
    assert te_x.shape[0] == NUM_TEST and tr_x.shape[0] == 1797 - NUM_TEST
    np.testing.assert_array_equal(np.concatenate([tr_x, te_x]), all_x)
    np.testing.assert_array_equal(np.concatenate([tr_y, te_y]), all_y)
    assert set(np.unique(te_y)) == set(range(10))


def test_digits_resolution_and_bad_split():
    images, _ = load_digits("test", resolution=8)
    assert images.shape == (NUM_TEST, 8, 8, 1)
    # At the native 8x8 size the values are exactly v / 8 - 1 for integer v in 0..16.
    np.testing.assert_allclose((images + 1) * 8, np.round((images + 1) * 8), atol=1e-5)
    with pytest.raises(ValueError, match="valid"):
        load_digits("valid")
