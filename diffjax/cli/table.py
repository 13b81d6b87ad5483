"""The command table of the ``diffjax`` CLI: commands, the flags each takes, exit statuses.

Pure data (no jax, no absl flags): ``messages``, ``help`` and the command module read it.
"""
from __future__ import annotations

EXIT_OK, EXIT_USER_ERROR, EXIT_INTERRUPTED = 0, 1, 130
EXIT_PREEMPTED = 75  # = diffjax.training.preemption.EXIT_PREEMPTED (not imported here: it loads jax)

HOSTS = ("coordinator_address", "num_processes", "process_id", "distributed",
          "compilation_cache_dir")
DRAW = ("workdir", "num", "sampler", "steps", "spacing", "guidance", "allow_negative_guidance",
         "params", "checkpoint_step", "seed")

EXIT_STATUS = (f"exit status: {EXIT_OK} done; {EXIT_USER_ERROR} user error (one line on stderr says "
               f"what is wrong){{}}; {EXIT_INTERRUPTED} stopped at once by Ctrl-C")
TRAIN_EXIT = (f"; {EXIT_PREEMPTED} preempted (SIGTERM, or the first Ctrl-C while training): the "
               "checkpoint of that step is saved, rerun the same command to resume; a second "
               "Ctrl-C stops at once (the last checkpoint written is intact)")

# name -> (one line, usage, the flags it takes)
COMMANDS = {
    "train": ("train (or resume) a model from a config file in a run directory",
              "--config FILE --workdir DIR [--config.KEY=VALUE ...]",
              ("config", "workdir") + HOSTS),
    "distill": ("train (or resume) a few-step or faster student of a trained teacher run",
                "--config configs/distill_NAME.py --teacher DIR --workdir DIR "
                "[--config.KEY=VALUE ...]",
                ("config", "teacher", "workdir") + HOSTS),
    "sample": ("draw samples from a trained run and save them as a PNG grid",
               "--workdir DIR [--num N --sampler NAME --steps N --guidance NAME|W --guidance.FIELD V "
               "--out PNG]",
               DRAW + ("out", "npz") + HOSTS),
    "evaluate": ("sample quality of a trained run: Frechet distance and class accuracy, or FID",
                 "--workdir DIR [--num N --sampler NAME --steps N --guidance NAME|W] "
                 "[--metric fid --ref STATS.npz --inception FILE --write_ref]",
                 DRAW + ("metric", "ref", "inception", "inception_convention", "write_ref",
                         "ref_num")
                 + HOSTS),
    "preflight": ("compile a config for a TPU slice (or this machine): memory, FLOPs, fit",
                  "--config FILE [--topology v5p:4x4x4 --slices N] [--teacher DIR] "
                  "[--config.KEY=VALUE ...]",
                  ("config", "topology", "slices", "json", "skip_sampler", "teacher")),
    "restore": ("restore images (inpaint, sr, colorize, deblur) with a trained run as the prior",
                "--workdir DIR --operator inpaint|sr|colorize|deblur --input FILE [--out PNG "
                "--method steer|dps|none --steps N --sampler NAME --seed N]",
                ("workdir", "operator", "input", "out", "method", "strength", "steps", "sampler",
                 "spacing", "seed", "params", "checkpoint_step", "measured", "factor", "mask",
                 "mask_keep", "kernel_size", "blur_std", "noise_std", "npz") + HOSTS),
    "convert": ("convert a diffusers checkpoint (DiT, PixArt, UNet2DModel, AutoencoderKL) into "
                "a run directory",
                "--from diffusers DIR --workdir OUT [--scan_layers] [--overwrite]",
                ("from", "workdir", "scan_layers", "overwrite")),
    "encode": ("encode an image dataset once into the latent cache a latent run trains on "
               "(config.latent.vae)",
               "--config FILE --workdir DIR [--config.latent.vae=DIR --config.KEY=VALUE ...]",
               ("config", "workdir") + HOSTS),
    "search": ("spend a budget of NFE on better samples: tree search (DTS, DTS*), best-of-N, "
               "noise and path search, SMC, under a classifier reward",
               "--workdir DIR --budget NFE --reward class:K|classes:K1,K2|even|odd|label [--method "
               "dts|dts_star|dts_uniform|bon|random|zero_order|paths|smc --num N --label K --out PNG]",
               ("workdir", "method", "budget", "reward", "num", "label", "lam",
                "classifier_workdir", "sampler", "steps", "spacing", "guidance", "params",
                "checkpoint_step", "seed", "out", "npz") + HOSTS),
    "classify": ("zero-shot classification with a class-conditional run: the diffusion "
                 "classifier (per-class denoising error, adaptive elimination)",
                 "--workdir DIR --images FILE|FOLDER|--split NAME [--schedule NAME --num N "
                 "--seed N --max_batch N --npz FILE]",
                 ("workdir", "images", "split", "schedule", "num", "seed", "max_batch", "params",
                  "checkpoint_step", "npz") + HOSTS),
    "text": ("samples of a trained discrete (RADD) text run with their network evaluations (NFE)",
             "--workdir DIR [--num N --steps N --sampler tau_leaping|euler|aoarm --no_cache "
             "--seed N]",
             ("workdir", "num", "steps", "sampler", "no_cache", "seed", "params",
              "checkpoint_step") + HOSTS),
    "forecast": ("forecast a series run's held-out windows (TSDiff self-guidance), against "
                 "seasonal-naive and linear baselines, optionally refining the linear forecasts",
                 "--workdir DIR [--num N --steps N --energy quantile|mse|gaussian "
                 "--guidance_scale S --refine none|sgd|lmc --refine_iters N --seed N]",
                 ("workdir", "num", "steps", "sampler", "energy", "guidance_scale", "refine",
                  "refine_iters", "seed", "checkpoint_step") + HOSTS),
}
HELP_FLAGS = ("-h", "--help", "-help", "--helpshort", "-helpshort", "-?")
METAVAR = {"config": "FILE", "workdir": "DIR", "num": "N", "steps": "N", "sampler": "NAME",
            "spacing": "NAME", "guidance": "NAME|W", "params": "NAME", "checkpoint_step": "STEP",
            "seed": "N", "out": "PNG", "npz": "FILE", "coordinator_address": "HOST:PORT",
            "num_processes": "N", "process_id": "I", "compilation_cache_dir": "DIR",
            "topology": "SLICE", "json": "FILE", "operator": "NAME", "input": "FILE",
            "method": "NAME", "strength": "W", "factor": "F", "mask": "KIND",
            "mask_keep": "P", "kernel_size": "K", "blur_std": "S", "noise_std": "S",
            "budget": "NFE", "reward": "SPEC", "label": "K", "lam": "L",
            "classifier_workdir": "DIR", "teacher": "DIR", "slices": "N", "from": "FORMAT",
            "metric": "NAME", "ref": "FILE", "inception": "FILE", "inception_convention": "NAME",
            "ref_num": "N", "images": "FILE|DIR", "split": "NAME", "schedule": "NAME",
            "max_batch": "N", "energy": "NAME", "guidance_scale": "S", "refine": "NAME",
            "refine_iters": "N"}


# Every flag the CLI defines; each command takes the ones listed in COMMANDS. absl's own flags
# (--verbosity, --log_dir, --flagfile, ...) are accepted by every command.
OUR_FLAGS = tuple(dict.fromkeys(n for _, _, names in COMMANDS.values() for n in names))


class CommandError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


class DoesNotFit(Exception):
    """preflight: the config does not fit (or compile) on the target; the message says what to change."""

