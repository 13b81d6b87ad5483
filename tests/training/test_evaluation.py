"""Frechet distance against closed forms, and sample pictures."""
import numpy as np
import pytest

from diffjax.training import evaluation, metrics


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    cov = a @ a.T + np.eye(5)
    mu = rng.normal(size=5)
    assert evaluation.frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    # Diagonal covariances: |mu1 - mu2|^2 + sum (s1 - s2)^2 with s the standard deviations.
    s1, s2 = np.array([1.0, 2.0, 0.5]), np.array([0.5, 1.0, 3.0])
    m1, m2 = np.zeros(3), np.array([1.0, -1.0, 2.0])
    ref = np.sum((m1 - m2) ** 2) + np.sum((s1 - s2) ** 2)
    fd = evaluation.frechet_distance(m1, np.diag(s1 ** 2), m2, np.diag(s2 ** 2))
    assert fd == pytest.approx(ref, rel=1e-10)
    # Commuting case with a shared rotation: same formula in the eigenbasis.
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    fd_rot = evaluation.frechet_distance(q @ m1, q @ np.diag(s1 ** 2) @ q.T, q @ m2,
                                         q @ np.diag(s2 ** 2) @ q.T)
    assert fd_rot == pytest.approx(ref, rel=1e-8)


def test_feature_stats_recover_gaussian():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(20000, 2)) * [1.0, 2.0] + [3.0, -1.0]
    mu, cov = evaluation.feature_stats(x)
    np.testing.assert_allclose(mu, [3.0, -1.0], atol=0.05)
    np.testing.assert_allclose(np.diag(cov), [1.0, 4.0], rtol=0.05)


def test_image_grid_layout_and_range(tmp_path):
    imgs = np.stack([np.full((4, 4, 1), v) for v in (-1.0, 0.0, 1.0, 2.0, -3.0)])
    grid = metrics.image_grid(imgs, ncol=2, pad=1)
    assert grid.shape == (3 * 5 + 1, 2 * 5 + 1, 1) and grid.dtype == np.uint8
    assert grid[1, 1, 0] == 0 and grid[1, 6, 0] == 128 and grid[6, 1, 0] == 255
    assert grid[6, 6, 0] == 255 and grid[11, 1, 0] == 0  # clipped to [-1, 1]
    path = metrics.save_png(metrics.to_picture(imgs), str(tmp_path / "g.png"), upscale=2)
    from PIL import Image
    assert Image.open(path).size == (2 * 16, 2 * 11)  # 3 columns x 2 rows of 5-pixel cells
    pts = metrics.to_picture(np.random.default_rng(0).normal(size=(100, 2)))
    assert pts.shape == (256, 256, 1)
