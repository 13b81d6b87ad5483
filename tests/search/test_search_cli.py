"""``diffjax search`` on a tiny trained run (3 steps, 8x8 digits; shared by the module): the tree
search and two baselines within their budgets, and every mistake as one line naming it."""
import os
import re

import pytest

from diffjax.cli import search as cli_search
from diffjax.search import methods
from tests.test_cli import _json, assert_error
from tests.test_cli_help import _flags_in
from tests.training.util import run_cli


@pytest.fixture(scope="module")
def workdir(tiny_digits_run):
    return tiny_digits_run


def test_the_help_lists_the_search_flags_and_every_method():
    assert cli_search.METHOD_NAMES == tuple(methods.METHODS)
    p = run_cli("search", "--help")
    assert p.returncode == 0, p.stderr[-2000:]
    shown = _flags_in(p.stdout)
    assert {"workdir", "method", "budget", "reward", "num", "label", "lam", "classifier_workdir",
            "steps", "sampler", "seed", "out", "npz"} <= shown, shown
    assert not {"config", "operator", "topology"} & shown
    assert re.search(r"^  search +spend a budget", run_cli("--help").stdout, re.M)


@pytest.mark.parametrize("method,expect", [
    ("dts", None), pytest.param("bon", {"n": 4}, marks=pytest.mark.slow),
    pytest.param("smc", {"particles": 4}, marks=pytest.mark.slow)])
def test_search_spends_its_budget_and_writes_the_grid(workdir, tmp_path, method, expect):
    out, npz = str(tmp_path / "s.png"), str(tmp_path / "s.npz")
    p = run_cli("search", "--workdir", workdir, "--method", method, "--budget", "64",
                "--reward", "even", "--num", "4", "--steps", "4", "--out", out, "--npz", npz)
    assert p.returncode == 0, p.stderr[-3000:]
    res = _json(p.stdout)
    assert res["method"] == method and res["num"] == 4 and res["checkpoint_step"] == 3
    assert 0 < res["nfe"] <= 64 and res["reward_max"] <= 0.0
    assert res["reward_min"] <= res["reward_mean"] <= res["reward_max"]
    assert res["diversity"] >= 0 and os.path.exists(out) and os.path.exists(npz)
    for k, v in (expect or {}).items():
        assert res[k] == v and res["nfe"] == 64
    if method == "dts":
        assert "[##########] 64/64 NFE" in p.stderr and res["leaves"] >= 4


@pytest.mark.parametrize("args,needles", [
    (["--reward", "even"], ["needs --budget NFE"]),
    (["--budget", "0", "--reward", "even"], ["--budget must be a positive integer, got 0"]),
    (["--budget", "64"], ["needs --reward"]),
    (["--budget", "64", "--reward", "big"], ["unknown --reward 'big'", "even, odd"]),
    (["--budget", "64", "--reward", "even", "--method", "mcts"],
     ["unknown --method 'mcts'", "dts, dts_star, dts_uniform, bon"]),
    (["--budget", "64", "--reward", "label"], ["--reward label scores the class --label"]),
    (["--budget", "64", "--reward", "even", "--lam", "0"], ["--lam must be > 0"]),
])
def test_mistakes_before_loading_are_one_line(args, needles, tmp_path):
    p = run_cli("search", "--workdir", str(tmp_path), *args)
    assert_error(p, "search", *needles)


def test_mistakes_about_the_run_are_one_line(workdir):
    base = ["search", "--workdir", workdir, "--reward", "even", "--steps", "4", "--num", "4"]
    assert_error(run_cli(*base, "--budget", "64", "--label", "12"), "search",
                 "--label 12", "classes 0 .. 9")
    assert_error(run_cli(*base, "--budget", "64", "--guidance", "2"), "search",
                 "pass --label K with it")
    assert_error(run_cli(*base, "--budget", "8", "--method", "bon"), "search",
                 "does not pay for one candidate per sample", "4 samples x 4 NFE = 16")
    assert_error(run_cli(*base, "--budget", "64", "--method", "dts", "--sampler", "heun"),
                 "search", "needs a stochastic sampler")
