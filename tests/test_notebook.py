"""notebooks/diffjax_tour.ipynb: built from notebooks/build_tour.py, stored without outputs, and run
end to end in its tiny mode (DIFFJAX_NOTEBOOK_TINY=1) with what it computed checked.

Running it needs nbclient, nbformat, ipykernel and matplotlib (the test extra); without them it is
skipped.
"""
import importlib.util
import json
import math
import os
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "diffjax_tour.ipynb")
NEEDS = "needs nbclient, nbformat, ipykernel and matplotlib (pip install -e '.[test]')"

# The config keys the notebook sets on top of configs/digits.py (its sizes; TINY: the 8x8 U-Net).
NOTEBOOK_KEYS = {"total_steps", "log_every", "checkpoint.every", "sample.num", "eval.at_end",
                 "eval.classifier_steps", "optim.warmup_steps"}
TINY_KEYS = {"model.model_channels", "model.channel_mult", "model.num_head_channels",
             "data.resolution", "batch_size"}


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _flat(tree, prefix=""):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def test_notebook_is_the_build_script_output_without_outputs():
    nbformat = pytest.importorskip("nbformat", reason=NEEDS)
    stored = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(stored)
    built = _load("build_tour", os.path.join(ROOT, "notebooks", "build_tour.py")).build()
    assert [(c.cell_type, c.source) for c in stored.cells] == \
        [(c.cell_type, c.source) for c in built.cells], \
        "notebooks/diffjax_tour.ipynb is stale: run python notebooks/build_tour.py"
    for c in stored.cells:
        if c.cell_type == "code":
            assert c.outputs == [] and c.execution_count is None


def _install_cell():
    built = _load("build_tour", os.path.join(ROOT, "notebooks", "build_tour.py"))
    source = next(src for kind, src in built.CELLS if kind == "code")
    # only the install branch: the part before the import of diffjax itself
    return source[:source.index("from diffjax import logs")]


def test_install_cell_picks_its_source(tmp_path, monkeypatch):
    """The first cell's install branch on a runtime without diffjax (pip stubbed): DIFFJAX_REPO
    first, else an uploaded sdist / wheel, else a RuntimeError saying both."""
    import importlib.util as iu
    import subprocess

    code = _install_cell()
    calls = []
    monkeypatch.setattr(iu, "find_spec", lambda name, *a: None)
    monkeypatch.setattr(subprocess, "check_call", lambda cmd: calls.append(cmd))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DIFFJAX_REPO", raising=False)
    with pytest.raises(RuntimeError, match="DIFFJAX_REPO.*sdist"):
        exec(code, {})
    (tmp_path / "diffjax-0.1.0.tar.gz").write_bytes(b"")
    exec(code, {})
    assert "diffjax-0.1.0.tar.gz" in calls[-1] and calls[-1][:4] == [sys.executable, "-m", "pip",
                                                                   "install"]
    monkeypatch.setenv("DIFFJAX_REPO", "https://example.org/diffjax")
    exec(code, {})
    assert "diffjax @ git+https://example.org/diffjax" in calls[-1]


@pytest.mark.slow
@pytest.mark.ci
def test_notebook_runs_in_tiny_mode(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat", reason=NEEDS)
    nbclient = pytest.importorskip("nbclient", reason=NEEDS)
    pytest.importorskip("ipykernel", reason=NEEDS)
    pytest.importorskip("matplotlib", reason=NEEDS)      # the notebook's plots
    from tests.training.util import CACHE_ENV

    out = tmp_path / "tour"
    monkeypatch.setenv("DIFFJAX_NOTEBOOK_TINY", "1")
    monkeypatch.setenv("DIFFJAX_NOTEBOOK_OUT", str(out))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.delenv("XLA_FLAGS", raising=False)
    for k, v in CACHE_ENV.items():                  # the tests' shared XLA compilation cache
        monkeypatch.setenv(k, os.environ.get(k, v))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    t0 = time.time()
    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    print(f"notebook ran in {time.time() - t0:.0f} s")   # raises CellExecutionError on failure
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
              if o.output_type == "error"]
    assert not errors, errors

    with open(out / "tour_results.json", encoding="utf-8") as f:
        res = json.load(f)
    assert res["tiny"] is True

    # 1. the samplers against the exact Gaussian answer
    a = res["analytic"]
    n, mu, s = a["n"], a["mu"], a["s"]
    rows = {(r["sampler"], r["steps"]): r for r in a["rows"]}
    exact = rows[("exact ODE map", None)]
    for i in range(2):   # the exact map's samples are N(mu, s^2) up to Monte Carlo error
        assert abs(exact["mean"][i] - mu[i]) < 4 * s[i] / math.sqrt(n)
        assert abs(exact["std"][i] / s[i] - 1) < 4 / math.sqrt(2 * n)
    for name in ("heun", "dpmpp_2m"):
        err = [rows[(name, k)]["rms_err"] for k in (10, 20, 40)]
        assert err[0] > err[1] > err[2], (name, err)
        assert err[0] / err[2] > 8, (name, err)       # second order: ~16x for 4x the steps
        assert err[2] < 0.02, (name, err)
        r = rows[(name, 40)]                           # moments of the same starting points
        for i in range(2):
            assert abs(r["mean"][i] - exact["mean"][i]) < 0.01 * s[i], (name, r)
            assert abs(r["std"][i] / exact["std"][i] - 1) < 0.03, (name, r)
    assert rows[("heun", 10)]["nfe"] == 19 and rows[("dpmpp_2m", 10)]["nfe"] == 10

    # 2. training: the run finished, and its config is configs/digits.py but for the sizes
    run = out / "digits"
    assert res["train"]["step"] > 0 and math.isfinite(res["train"]["loss"])
    assert (run / "checkpoints" / str(res["train"]["step"])).is_dir()
    with open(run / "config.json", encoding="utf-8") as f:
        saved = _flat(json.load(f))
    digits = _load("digits_config", os.path.join(ROOT, "configs", "digits.py")).get_config()
    want = _flat(json.loads(json.dumps(digits.to_dict(), default=str)))
    differ = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
    assert set(differ) <= NOTEBOOK_KEYS | TINY_KEYS, differ

    # 3-4. the grid and the guidance sweep
    assert res["grid"]["finite"] and res["grid"]["shape"][1:] == [8, 8, 1]
    assert [r["scale"] for r in res["sweep"]] == [0.0, 1.0, 3.0]
    for r in res["sweep"]:
        assert 0.0 <= r["accuracy"] <= 1.0 and r["diversity"] > 0.0
    for png in ("grid.png", "guidance_sweep.png"):
        assert (out / png).stat().st_size > 1000
