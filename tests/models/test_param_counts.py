"""Published parameter counts, via jax.eval_shape (no parameter is allocated).

Counts are printed (run with -s) so the README table can be checked against this file.
"""
import functools

import pytest

from diffjax.models import count_params, get_preset


@functools.lru_cache(maxsize=None)
def _count_cached(preset, overrides):
    return _count_impl(preset, **dict(overrides))


def _count(preset, **overrides):
    return _count_cached(preset, tuple(sorted(overrides.items())))


def _count_impl(preset, **overrides):
    cfg = get_preset(preset)
    for k, v in overrides.items():
        cfg[k] = v
    n = count_params(cfg)
    print(f"{preset} {overrides}: {n:,} params ({n / 1e6:.2f}M)")
    return n


# DiT (Peebles & Xie 2023, Table 1): latent 32x32x4, 1000 classes, learned sigma.
@pytest.mark.parametrize("preset, published", [("dit_s_2", 33e6), ("dit_b_2", 130e6),
                                               ("dit_l_2", 458e6), ("dit_xl_2", 675e6)])
def test_dit_published_counts(preset, published):
    n = _count(preset, learn_sigma=True)
    assert abs(n - published) / published < 0.01


def test_ddpm_cifar10_count():
    n = _count("ddpm_cifar10")                      # Ho et al. 2020: 35.7M
    assert abs(n - 35.7e6) / 35.7e6 < 0.02


def test_adm_imagenet64_count():
    n = _count("adm_imagenet64", learn_sigma=True)  # Dhariwal & Nichol 2021: 296M
    assert abs(n - 296e6) / 296e6 < 0.01


# DiCo (Ai et al. 2025, released table): S 33.1M, B 130.0M, L 463.9M, XL 701.2M.
@pytest.mark.parametrize("preset, published", [("dico_s", 33.1e6), ("dico_b", 130.0e6),
                                               ("dico_l", 463.9e6), ("dico_xl", 701.2e6)])
def test_dico_published_counts(preset, published):
    n = _count(preset, learn_sigma=True)
    assert round(n / 1e6, 1) == round(published / 1e6, 1)  # the table's one-decimal value


def test_dimr_xl_2r_count():
    n = _count("dimr_xl_2r")                        # Liu et al. 2024: 505M
    assert abs(n - 505e6) / 505e6 < 0.01


def test_pixart_xl_2_count_and_adaln_single_saving():
    n_pixart = _count("pixart_xl_2", learn_sigma=True)  # Chen et al. 2024: ~0.6B (611M)
    assert abs(n_pixart - 611e6) / 611e6 < 0.02
    # adaLN-single: one Linear(D, 6D) + per-block 6 x D tables instead of a Linear per block.
    d, depth = 1152, 28
    n_dit = _count("dit_xl_2", learn_sigma=True, num_classes=0)
    cross = depth * (4 * d * d + 4 * d)             # q, kv, proj (+ biases)
    caption = 4096 * d + d + d * d + d + 120 * 4096   # caption MLP + learned null caption
    per_block_adaln = depth * (d * 6 * d + 6 * d)
    single = (d * 6 * d + 6 * d) + depth * 6 * d + 2 * d - 2 * (d * d + d)  # final adaLN -> table
    assert n_pixart == n_dit - per_block_adaln + single + cross + caption


def test_tdln_is_cheaper_than_adaln_zero():
    n_ada = _count("dit_s_2", learn_sigma=True)
    n_td = _count("dit_s_2", learn_sigma=True, norm="tdln")
    d, depth = 384, 12
    # per block: -(6d^2 + 6d) adaLN, + 2 norms x 2 affine vectors x 4 + 2 gates x 4 vectors of d;
    # final: -(2d^2 + 2d) + 2 x 4d; time MLP (256 d + d + d^2 + d) removed.
    expected = (n_ada - depth * (6 * d * d + 6 * d) + depth * 24 * d
                - (2 * d * d + 2 * d) + 8 * d - (256 * d + d + d * d + d))
    assert n_td == expected
