"""Writes notebooks/diffjax_tour.ipynb (no outputs) from the cells below: edit here, then run

    python notebooks/build_tour.py

tests/test_notebook.py checks that the .ipynb is this script's output and executes it.
"""
from __future__ import annotations

import os

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "diffjax_tour.ipynb")

CELLS = [
    ("markdown", """\
# A tour of diffjax

diffjax puts diffusion-model research in one JAX/Flax library: exact diffusion math, one denoiser
contract `D(x, sigma, cond) -> x0_hat`, samplers compiled as `lax.scan` loops, guidance as
transforms of `D`, and a sharded trainer. This notebook runs on a Colab CPU, GPU or TPU runtime:

1. **the core on an exact denoiser**: Gaussian data, where the denoiser and the probability-flow
   ODE have closed forms; two samplers against the exact answer;
2. **training** the class-conditional digits model (scikit-learn's handwritten digits, shipped
   with scikit-learn: nothing is downloaded) through the Python API;
3. **a sample grid** from the trained run;
4. **a guidance sweep**: classifier-free guidance scale against class accuracy and diversity.

The first cell installs diffjax if the runtime does not have it; the second sets every size."""),
    ("code", """\
# Install diffjax when it is not importable (a fresh Colab runtime). Where it is installed (a
# checkout after `pip install -e .`, CI) this cell only prints the devices. It installs from, in
# order: DIFFJAX_REPO (diffjax's git URL, or the environment variable of that name), else a
# diffjax sdist / wheel uploaded next to the notebook (`python setup.py sdist` in a checkout).
import glob
import importlib.util
import os
import shutil
import subprocess
import sys

DIFFJAX_REPO = os.environ.get("DIFFJAX_REPO", "")   # e.g. "https://github.com/OWNER/diffjax"

if importlib.util.find_spec("diffjax") is None:
    local = sorted(glob.glob("diffjax-*.tar.gz") + glob.glob("diffjax-*.whl"))
    if DIFFJAX_REPO:
        source = f"diffjax @ git+{DIFFJAX_REPO}"
    elif local:
        source = local[-1]
    else:
        raise RuntimeError("diffjax is not installed: set DIFFJAX_REPO (this cell, or "
                           "%env DIFFJAX_REPO=URL) to its git URL, or upload a diffjax sdist / wheel "
                           "(python setup.py sdist in a checkout) next to this notebook")
    accel = []
    if os.path.exists("/dev/accel0") or "COLAB_TPU_ADDR" in os.environ:   # a TPU runtime
        accel = ["jax[tpu]>=0.10.2,<0.11"]
    elif shutil.which("nvidia-smi"):                                     # a GPU runtime
        accel = ["jax[cuda12]>=0.10.2,<0.11"]
    subprocess.check_call([sys.executable, "-m", "pip", "install", "-q", source, *accel])
    importlib.invalidate_caches()

from diffjax import logs

logs.quiet_environment()   # drop TensorFlow's start-up notices (TF only writes TensorBoard files)
import jax

print("jax", jax.__version__, "devices:", jax.devices())"""),
    ("code", """\
# Every size in one place. DIFFJAX_NOTEBOOK_TINY=1 (tests/test_notebook.py) shrinks the run to
# seconds on a CPU; otherwise the sizes give meaningful results in a few minutes on Colab.
TINY = os.environ.get("DIFFJAX_NOTEBOOK_TINY") == "1"
OUT = os.path.abspath(os.environ.get("DIFFJAX_NOTEBOOK_OUT", "diffjax_tour"))
RUN = os.path.join(OUT, "digits")              # the training workdir (a rerun resumes it)

N_POINTS = 4_000 if TINY else 100_000          # analytic section: samples per sampler
TRAIN_STEPS = 120 if TINY else 1000            # digits steps, batch 32 (TINY: 8): the Quickstart
CLASSIFIER_STEPS = 50 if TINY else 400         # the evaluation classifier's training steps
SAMPLE_STEPS = 4 if TINY else 10               # DPM-Solver++(2M) steps per sample
N_DRAW = 20 if TINY else 200                   # samples per guidance scale (2 / 20 per class)
SCALES = (0.0, 1.0, 3.0) if TINY else (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 8.0)

os.makedirs(OUT, exist_ok=True)
RESULTS = {"tiny": TINY}                       # what the notebook measured: OUT/tour_results.json"""),
    ("markdown", """\
## 1. The core on an exact denoiser

For data `x0 ~ N(mu, diag(s^2))` and `x = x0 + sigma * eps` (the EDM frame every sampler works in),
the ideal denoiser is `D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)`, and the
probability-flow ODE maps `x(sigma_max)` to `x(0) = mu + (x - mu) * s / sqrt(s^2 + sigma_max^2)`.
`analytic.gaussian_denoiser` is that `D`; any sampler runs on it like on a network. We start each
sampler from the exact marginal at `sigma_max` (so the exact answer is `N(mu, s^2)` itself) and
compare the moments and each sample with the exact ODE map of its own starting point."""),
    ("code", """\
import numpy as np

from diffjax.core import analytic, processes, samplers, timesteps

mu, s = np.array([1.0, -2.0]), np.array([0.5, 2.0])   # 2-D Gaussian data N(mu, diag(s^2))
D = analytic.gaussian_denoiser(mu, s)                 # the exact D(x, sigma, cond) -> x0_hat
edm = processes.get("edm")
z = jax.random.normal(jax.random.key(0), (N_POINTS, 2))

rows = []
for name in ("heun", "dpmpp_2m"):
    for steps in (10, 20, 40):
        sigmas = timesteps.sigmas(edm, steps, "karras")    # sigma_max = 80 ... 0.002, then 0
        x_T = mu + np.sqrt(s ** 2 + sigmas[0] ** 2) * z    # the exact p(x; sigma_max)
        out = samplers.sample(name, D, sigmas, x_init=x_T)
        err = np.asarray(out.x - analytic.gaussian_ode_solution(x_T, sigmas[0], 0.0, mu, s))
        x = np.asarray(out.x)
        rows.append({"sampler": name, "steps": steps, "nfe": int(out.nfe),
                     "mean": x.mean(0).tolist(), "std": x.std(0).tolist(),
                     "rms_err": float(np.sqrt((err ** 2).mean())),
                     "max_err": float(np.abs(err).max())})
x = np.asarray(analytic.gaussian_ode_solution(x_T, sigmas[0], 0.0, mu, s))
rows.append({"sampler": "exact ODE map", "steps": None, "nfe": None, "mean": x.mean(0).tolist(),
             "std": x.std(0).tolist(), "rms_err": 0.0, "max_err": 0.0})

print(f"{N_POINTS} samples; Monte Carlo error of a mean ~ s / sqrt(n) = "
      f"{(s / np.sqrt(N_POINTS)).round(3).tolist()}")
print(f"{'sampler':14} {'steps':>5} {'NFE':>4}   {'mean':^15}   {'std':^15}   rms |x - exact ODE|")
print(f"{'(exact)':14} {'':>5} {'':>4}   {mu[0]:7.3f} {mu[1]:7.3f}   {s[0]:7.3f} {s[1]:7.3f}")
for r in rows:
    print(f"{r['sampler']:14} {r['steps'] or '':>5} {r['nfe'] or '':>4}   "
          f"{r['mean'][0]:7.3f} {r['mean'][1]:7.3f}   {r['std'][0]:7.3f} {r['std'][1]:7.3f}   "
          f"{r['rms_err']:.1e}")
RESULTS["analytic"] = {"mu": mu.tolist(), "s": s.tolist(), "n": N_POINTS, "rows": rows}"""),
    ("markdown", """\
Every row starts from the same points, so the exact ODE map's row carries the Monte Carlo error
and the gap between a sampler's row and it is the sampler's own (discretization) error. Both are
second-order methods: doubling the steps cuts the distance to the exact ODE solution about
fourfold. Heun spends two network evaluations per step (2N - 1), DPM-Solver++(2M) one; the
stretched tails (too large a std at 10 steps) come from the largest steps near sigma_max.

## 2. Training the digits model

`configs/digits.py` is the Quickstart run (`diffjax train --config configs/digits.py --workdir
DIR`). Here it is built in Python from `training.config.base`, with the sizes of this notebook;
`trainer.train` is what the command runs (checkpoints, metrics, resumable: rerunning this cell
continues the same workdir). 1000 steps take about 2 minutes on a 2-core CPU and reach 99%
guided class accuracy (README); the first ~20 s compile the train step."""),
    ("code", """\
from diffjax.training import trainer
from diffjax.training.config import base


def digits_config():
    \"\"\"configs/digits.py: a 3-level 16-channel U-Net on 16x16 digits, EDM preconditioning, label
    dropout 0.1 for classifier-free guidance, Adam 2e-3 after 100 warmup steps.\"\"\"
    c = base("unet_tiny16", input_shape=(16, 16, 1), num_classes=10, model_channels=16,
             channel_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), conv_resample=False,
             num_head_channels=32)
    c.total_steps, c.batch_size, c.log_every = 1000, 32, 50
    c.data.name, c.data.split, c.data.resolution = "digits", "train", 16
    c.diffusion.label_dropout = 0.1
    c.optim.lr, c.optim.schedule, c.optim.warmup_steps = 2e-3, "constant", 100
    c.ema.decays, c.ema.power_stds = (0.999,), (0.1,)
    c.checkpoint.every = 250
    c.sample.every, c.sample.num, c.sample.batch_size = 0, 100, 100
    c.sample.sampler, c.sample.steps, c.sample.guidance.scale = "dpmpp_2m", 10, 3.0
    c.sample.params = "power_0.1"
    c.eval.num_samples, c.eval.sampler, c.eval.steps, c.eval.guidance.scale = 500, "dpmpp_2m", 10, 3.0
    c.eval.classifier, c.eval.classifier_steps, c.eval.classifier_resolution = "classifier_tiny", 400, 8
    return c


config = digits_config()
config.total_steps = TRAIN_STEPS
config.checkpoint.every = TRAIN_STEPS
config.log_every = max(TRAIN_STEPS // 20, 1)
config.sample.num = 0                        # no grid from the trainer: we draw our own below
config.eval.at_end = False                   # nor its evaluation: the guidance sweep replaces it
config.eval.classifier_steps = CLASSIFIER_STEPS
config.optim.warmup_steps = min(100, TRAIN_STEPS // 5)
if TINY:  # an 8x8 one-level U-Net, batch 8 (tests/test_cli.py's TINY): seconds on a CPU
    config.model.model_channels, config.model.channel_mult = 8, (1,)
    config.model.num_head_channels = -1
    config.data.resolution, config.batch_size = 8, 8

summary = trainer.train(config, RUN)
print({k: summary[k] for k in ("step", "loss", "params", "train_seconds") if k in summary})
RESULTS["train"] = {k: summary[k] for k in ("step", "loss", "params") if k in summary}"""),
    ("code", """\
import json

import matplotlib.pyplot as plt

with open(os.path.join(RUN, "metrics.jsonl")) as f:     # one row per logged step
    log = [r for r in map(json.loads, f) if "loss" in r]
plt.figure(figsize=(5, 3))
plt.plot([r["step"] for r in log], [r["loss"] for r in log])
plt.xlabel("step"); plt.ylabel("training loss"); plt.yscale("log"); plt.title("digits")
plt.show()"""),
    ("markdown", """\
## 3. A sample grid

`inference.load` restores a run's parameters (here its EDM2 power-EMA average, the run's
`config.sample.params`) without the optimizer; `inference.generate` is the one jitted sampling
program (sampler, guidance, batches, sharded over every device). Each column is one class,
guided with classifier-free guidance at scale 3."""),
    ("code", """\
from diffjax import inference

run = inference.load(RUN)
labels = inference.default_labels(N_DRAW, run.num_classes)      # 0, 1, ..., 9, 0, 1, ...
grid = inference.generate(run, N_DRAW, sampler="dpmpp_2m", steps=SAMPLE_STEPS, guidance=3.0)

rows_, h, w = min(N_DRAW // run.num_classes, 10), grid.shape[1], grid.shape[2]
tiles = grid[: rows_ * run.num_classes, ..., 0].reshape(rows_, run.num_classes, h, w)
picture = tiles.transpose(0, 2, 1, 3).reshape(rows_ * h, run.num_classes * w)
plt.figure(figsize=(run.num_classes * 0.6, rows_ * 0.6))
plt.imshow(picture, cmap="gray_r", vmin=-1, vmax=1); plt.axis("off")
plt.title(f"guidance 3, DPM-Solver++(2M) {SAMPLE_STEPS} steps")
plt.savefig(os.path.join(OUT, "grid.png"), bbox_inches="tight")
plt.show()
RESULTS["grid"] = {"shape": list(grid.shape), "finite": bool(np.isfinite(grid).all())}"""),
    ("markdown", """\
## 4. Guidance sweep

Classifier-free guidance `D_w = D(x | null) + w (D(x | class) - D(x | null))` is a transform of the
denoiser (`diffjax.guidance`). The scale is a traced value, so every scale below runs the same
compiled program. We score samples with the run's evaluation classifier (a small classifier
trained once on the real digits and cached in the workdir): class accuracy rises with `w` while
diversity (the pixel spread within a class) falls - the trade-off guidance makes."""),
    ("code", """\
from diffjax.training import evaluation

clf = evaluation.get_classifier(RUN, run.config)          # trained once, cached in RUN/classifier
sweep = []
for w in SCALES:
    x = inference.generate(run, N_DRAW, sampler="dpmpp_2m", steps=SAMPLE_STEPS, guidance=w, seed=1)
    acc = float(np.mean(clf.logits(x).argmax(-1) == labels))
    spread = float(np.mean([x[labels == c].std(axis=0).mean() for c in range(run.num_classes)]))
    sweep.append({"scale": w, "accuracy": acc, "diversity": spread})
    print(f"guidance {w:4.1f}: class accuracy {acc:6.1%}, within-class pixel std {spread:.3f}")

fig, ax = plt.subplots(1, 2, figsize=(9, 3))
ax[0].plot(SCALES, [r["accuracy"] for r in sweep], "o-"); ax[0].set_ylabel("class accuracy")
ax[1].plot(SCALES, [r["diversity"] for r in sweep], "o-"); ax[1].set_ylabel("within-class std")
for a in ax:
    a.set_xlabel("guidance scale w")
fig.suptitle(f"{N_DRAW} samples per scale, classifier held-out accuracy "
             f"{clf.info.get('heldout_accuracy', float('nan')):.1%}")
fig.savefig(os.path.join(OUT, "guidance_sweep.png"), bbox_inches="tight")
plt.show()
RESULTS["sweep"] = sweep"""),
    ("code", """\
with open(os.path.join(OUT, "tour_results.json"), "w") as f:
    json.dump(RESULTS, f, indent=2)
print("wrote", os.path.join(OUT, "tour_results.json"))"""),
    ("markdown", """\
## Next

- Same run from the command line: `diffjax train --config configs/digits.py --workdir RUN`, then
  `diffjax sample --workdir RUN --guidance 3` and `diffjax evaluate --workdir RUN`.
- Other guidance methods (`docs/GUIDANCE.md`), inverse problems (`docs/INVERSE.md`),
  inference-time search (`docs/SEARCH.md`), distillation (`docs/DISTILL.md`).
- Flax NNX: `examples/nnx_bridge.py` wraps the same U-Net with `flax.nnx.bridge.ToNNX`."""),
]


def build() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {"kernelspec": {"display_name": "Python 3", "language": "python",
                                  "name": "python3"},
                   "language_info": {"name": "python"},
                   "colab": {"provenance": [], "name": "diffjax_tour.ipynb"}}
    make = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell}
    nb.cells = [make[kind](src) for kind, src in CELLS]
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i}"        # stable ids: rebuilding changes nothing
    return nb


if __name__ == "__main__":
    nbformat.write(build(), PATH)
    print("wrote", PATH)
