"""Procedural shapes: determinism, labels vs attributes, colour and area invariants."""
import numpy as np
import pytest

from diffjax.data.shapes import COLOURS, SHAPE_AREA, SHAPES, make_shapes


def test_deterministic_from_seed():
    a, b, c = make_shapes(64, seed=3), make_shapes(64, seed=3), make_shapes(64, seed=4)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not np.array_equal(a.images, c.images)
    assert a.images.shape == (64, 32, 32, 3) and a.images.dtype == np.float32
    assert a.images.min() >= -1.0 and a.images.max() <= 1.0


def test_labels_match_attributes():
    d = make_shapes(500, seed=0)
    nc = len(COLOURS)
    np.testing.assert_array_equal(d.labels, d.shape_ids * nc + d.colour_ids)
    assert len(d.class_names) == len(SHAPES) * nc
    assert set(np.unique(d.labels)) == set(range(len(SHAPES) * nc))
    colours = list(COLOURS)
    for i in range(20):
        assert d.class_names[d.labels[i]] == f"{colours[d.colour_ids[i]]} {SHAPES[d.shape_ids[i]]}"


@pytest.mark.parametrize("antialias", [1, 4])
def test_drawn_pixels_have_the_labelled_colour(antialias):
    d = make_shapes(200, seed=1, antialias=antialias)
    palette = np.array(list(COLOURS.values()), np.float32)
    rgb = (d.images + 1) / 2  # = coverage * colour
    for img, cid, centre in zip(rgb, d.colour_ids, d.centres):
        colour = palette[cid]
        coverage = img.max(-1)
        # Every pixel is coverage * colour: off channels are exactly 0, on channels all equal.
        np.testing.assert_allclose(img, coverage[..., None] * colour, atol=1e-6)
        assert coverage[int(centre[1]), int(centre[0])] == 1.0  # the centre is inside the shape
        assert coverage.sum() > 10


def test_area_matches_analytic_ratio():
    d = make_shapes(1200, seed=2, antialias=4)
    area = ((d.images + 1) / 2).max(-1).sum((1, 2)) / d.radii**2  # pixel area / r^2
    means = {s: area[d.shape_ids == k].mean() for k, s in enumerate(SHAPES)}
    for s in SHAPES:
        assert means[s] == pytest.approx(SHAPE_AREA[s], rel=0.01), s
    assert means["circle"] / means["square"] == pytest.approx(np.pi / 4, abs=0.01)
    # Per image too (sub-pixel coverage keeps the error small even for the smallest shapes).
    rel = area / np.array([SHAPE_AREA[SHAPES[k]] for k in d.shape_ids])
    assert np.all(np.abs(rel - 1) < 0.05)


def test_bad_arguments():
    with pytest.raises(ValueError, match="hexagon"):
        make_shapes(4, shapes=("circle", "hexagon"))
    with pytest.raises(ValueError, match="size_range"):
        make_shapes(4, size_range=(0.2, 0.6))
    d = make_shapes(50, seed=0, shapes=("square",), colours=("red", "blue"), resolution=16)
    assert d.images.shape == (50, 16, 16, 3) and set(np.unique(d.labels)) <= {0, 1}
    assert np.all(d.images[d.colour_ids == 0][..., 1:] == -1.0)
