"""The difficulty curriculum (training/curriculum.py; Kim et al., ICLR 2025): draws lie only in the
active clusters, stage 1 is exactly the top 1/N of the sampler's mass, the last stage is the plain
sampler, pacing advances only after `patience` steps without improvement, and through the trainer
the state is the denoising objective's extra: it advances, is logged, is checkpointed and resumes
bit for bit; mistakes in its section are errors."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffjax.core import losses, processes as P
from diffjax.training import checkpoint, curriculum, objectives, trainer
from tests.training.test_objectives import _build
from tests.training.util import tiny_config

S = curriculum.Settings(clusters=20, patience=3, smoothing=0.0)
N_DRAWS = 20000


def _draw(stage, name, process, n=N_DRAWS, s=S, **kw):
    state = dict(curriculum.init_state(), stage=jnp.int32(stage))
    return np.asarray(curriculum.sampler(state, s, name, process, **kw)(jax.random.key(stage), n))


def test_discrete_stages_are_uniform_intervals_from_the_noisiest():
    proc = P.DiscreteVP(num_train_steps=1000)
    for stage in (0, 4, 19):
        t = _draw(stage, "uniform", proc)
        lo = 1000 - 50 * (stage + 1)              # N = 20 intervals of 50 steps
        assert t.min() == lo and t.max() == 999 and np.all(t == np.round(t))
        # uniform over the active integer steps: every step drawn, in equal shares
        counts = np.bincount(t.astype(int) - lo, minlength=1000 - lo)
        assert stats.chisquare(counts).pvalue > 1e-3
    # the last stage is the plain sampler (both uniform over all 1000 steps)
    plain = np.asarray(losses.time_sampler("uniform", proc)(jax.random.key(9), N_DRAWS))
    assert stats.ks_2samp(_draw(19, "uniform", proc), plain).pvalue > 1e-3
    assert _draw(40, "uniform", proc).min() == 0          # stages past N stay at the full range


def test_edm_clusters_are_equal_mass_bins_of_the_lognormal():
    proc, pm, ps = P.EDM(), -1.2, 1.2
    for stage in (0, 9):
        z = (np.log(_draw(stage, "lognormal", proc, p_mean=pm, p_std=ps)) - pm) / ps
        lo = stats.norm.ppf(1 - (stage + 1) / 20)
        assert z.min() >= lo - 1e-4
        # the base lognormal conditioned on its top (stage+1)/20 mass: exact CDF
        cond_cdf = lambda v: (stats.norm.cdf(v) - stats.norm.cdf(lo)) / (1 - stats.norm.cdf(lo))
        assert stats.kstest(z, cond_cdf).pvalue > 1e-3
    base = np.asarray(losses.time_sampler("lognormal", proc, p_mean=pm, p_std=ps)(
        jax.random.key(3), N_DRAWS))
    assert stats.ks_2samp(_draw(19, "lognormal", proc, p_mean=pm, p_std=ps), base).pvalue > 1e-3


def test_flow_clusters_follow_the_logit_normal():
    proc = P.Flow()
    t = _draw(0, "logit_normal", proc)
    u_lo = stats.norm.ppf(0.95)
    lo = proc.t_min + (proc.t_max - proc.t_min) / (1 + np.exp(-u_lo))
    assert t.min() >= lo - 1e-5 and t.max() <= proc.t_max


def _pace(losses_seq, s):
    st, stages = curriculum.init_state(), []
    for v in losses_seq:
        st = curriculum.update(st, v, s)
        stages.append(int(st["stage"]))
    return stages


def test_pacing_advances_only_after_patience_steps_without_improvement():
    s = curriculum.Settings(clusters=3, patience=3, smoothing=0.0)
    # step 1 sets the best; steps 2, 3, 4 do not beat it: advance at step 4, best reset
    assert _pace([1.0, 1.0, 1.0, 1.0, 1.0], s) == [0, 0, 0, 1, 1]
    # an improvement restarts the count
    assert _pace([1.0, 1.0, 0.5, 0.6, 0.6, 0.6], s) == [0, 0, 0, 0, 0, 1]
    # steadily falling loss: never advances
    assert _pace(list(np.linspace(1, 0.1, 30)), s) == [0] * 30
    # the stage stops at the last cluster (the full range)
    assert max(_pace([1.0] * 40, s)) == 2
    # min_delta: a tiny improvement is no improvement
    s2 = s._replace(min_delta=0.1)
    assert _pace([1.0, 0.95, 0.92, 0.91], s2) == [0, 0, 0, 1]
    # smoothing: the EMA of the loss is what must improve
    st = curriculum.update(curriculum.init_state(), 2.0, s._replace(smoothing=0.5))
    st = curriculum.update(st, 0.0, s._replace(smoothing=0.5))
    assert float(st["smooth"]) == 1.0 and float(st["best"]) == 1.0


def _config(**kw):
    return tiny_config(**{"diffusion.curriculum.clusters": 4, "diffusion.curriculum.patience": 1,
                          "diffusion.curriculum.smoothing": 0.0, **kw})


@pytest.mark.slow
@pytest.mark.ci
def test_trainer_paces_logs_checkpoints_and_resumes_the_curriculum(tmp_path):
    from diffjax.data import pipeline
    from diffjax.training import sharding

    ts, source = _build(_config())
    state = ts.init_state(jax.random.key(0))
    assert int(state.extra["stage"]) == 0
    step = ts.jit_step()
    it = pipeline.make_iterator(source, ts.micro_batch, seed=0)
    seen = []
    for _ in range(6):
        state, m = step(state, sharding.to_global(next(it), ts.batch_sharding))
        seen.append(float(m["curriculum_stage"]))
    assert seen[0] == 1.0 and max(seen) > 1.0          # (patience 1: a flat step advances)
    assert seen == sorted(seen)
    # bit-exact resume of params and curriculum state
    ref, cut = str(tmp_path / "ref"), str(tmp_path / "cut")
    trainer.train(_config(total_steps=4), ref)
    trainer.train(_config(total_steps=2), cut)
    assert trainer.train(_config(total_steps=4), cut)["start_step"] == 2
    with checkpoint.Checkpointer(os.path.join(ref, "checkpoints"), read_only=True) as a, \
            checkpoint.Checkpointer(os.path.join(cut, "checkpoints"), read_only=True) as b:
        ts4, _ = _build(_config(total_steps=4))
        sa, sb = a.restore(ts4.abstract_state), b.restore(ts4.abstract_state)
    assert int(sa.extra["seen"]) == 4
    for x, y in zip(jax.tree.leaves(jax.device_get(sa)), jax.tree.leaves(jax.device_get(sb))):
        np.testing.assert_array_equal(x, y)


def test_curriculum_mistakes_are_errors():
    with pytest.raises(ValueError, match="curriculum has no field.*pace"):
        _build(tiny_config(**{"diffusion.curriculum": {"clusters": 2, "pace": 3}}))
    with pytest.raises(ValueError, match="clusters must be 0"):
        _build(tiny_config(**{"diffusion.curriculum.clusters": -2}))
    with pytest.raises(ValueError, match="patience must be >= 1"):
        _build(_config(**{"diffusion.curriculum.patience": 0}))
    with pytest.raises(ValueError, match="not of objective 'consistency"):
        c = _config()
        c.objective.name = "consistency"
        objectives.build(c, model=None, den=None, process=P.EDM(), example_shape=(8, 8, 1),
                         num_classes=10)
    with pytest.raises(ValueError, match="has none"):
        curriculum.t_from_quantile("beta", P.EDM(), 0.5)
