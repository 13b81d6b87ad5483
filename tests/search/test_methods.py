"""The search methods by name (search/methods.py): each spends at most its budget, exactly what
the closed form says, on the same toy Gaussian; the sampler kind each needs; diversity."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffjax.core import analytic, processes, timesteps
from diffjax.search import methods
from diffjax.search import verifiers as V

D = analytic.gaussian_denoiser(0.0, 1.0)
REWARD = V.from_fn(lambda x: -0.5 * jnp.sum((x - 2.0) ** 2, -1))
SIG = timesteps.sigmas(processes.get("edm"), 10, "karras")


def _run(name, budget, num=8, **kw):
    return methods.run(name, jax.random.key(0), D, SIG, REWARD, num=num, example_shape=(2,),
                       budget=budget, **kw)


@pytest.mark.parametrize("name,nfe,settings", [
    ("bon", 8 * 10 * 24, {"n": 24}),                  # 24 candidates of 10 NFE per sample
    ("random", 8 * 10 * 24, {"n": 24}),
    ("smc", 8 * 10 * 24, {"particles": 24}),
    ("zero_order", 8 * 10 * (1 + 20), {"iterations": 5}),   # (24 - 1) // 4 = 5 rounds of 4
    ("dts", None, {}), ("dts_star", None, {}), ("dts_uniform", None, {}),
])
def test_every_method_spends_what_its_budget_buys(name, nfe, settings):
    out = _run(name, 1999)                  # not a multiple: the remainder is unspent
    if nfe is None:
        assert 1999 - 10 < out.nfe <= 1999  # a tree stops when the next rollout does not fit
    else:
        assert out.nfe == nfe
    for k, v in settings.items():
        assert out.settings[k] == v
    assert out.x.shape == (8, 2) and out.reward.shape == (8,)
    # searching moves the samples towards the reward's maximum at 2 (the prior's mean is 0)
    assert float(jnp.mean(out.x)) > 0.3


def test_paths_and_its_budget():
    out = _run("paths", 3000)
    assert out.nfe <= 3000 and out.settings["paths"] >= 1 and out.x.shape == (8, 2)


def test_the_sampler_kind_and_the_names_are_checked():
    with pytest.raises(ValueError, match="unknown search method 'mcts'"):
        _run("mcts", 100)
    with pytest.raises(ValueError, match="dts needs a stochastic sampler"):
        _run("dts", 100, sampler="heun")
    with pytest.raises(ValueError, match="bon searches over the initial noise"):
        _run("bon", 100, sampler="ddpm")
    with pytest.raises(ValueError, match="does not pay for one particle per sample"):
        _run("smc", 50)


def test_diversity_is_the_mean_pairwise_rms_distance():
    x = np.array([[0.0, 0.0], [3.0, 4.0], [0.0, 0.0]])
    # pairs: 5/sqrt(2), 0, 5/sqrt(2) -> mean 10 / (3 sqrt 2)
    assert methods.diversity(x) == pytest.approx(10 / (3 * np.sqrt(2)))
    assert methods.diversity(x[:1]) == 0.0
