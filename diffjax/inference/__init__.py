"""Inference: from a trained run (or a live train state) to samples, through one pipeline.

    from diffjax import inference
    run = inference.load(workdir)                              # params only: no optimizer
    st = inference.settings(run, 'sample', steps=10)           # the checked draw settings
    x = inference.generate(run, 100, sampler='dpmpp_2m', steps=10, guidance=3.0)
    prog = inference.build(den, process, sampler='heun', steps=18, spacing='karras', batch=64,
                           example_shape=(32, 32, 3), guidance={'name': 'classifier_free',
                           'scale': 2.0}, null_label=10, mesh=mesh)   # the jitted program itself

Data flow: config -> ``load`` (params, process, denoiser) -> ``settings`` -> ``build`` (guidance
registry transform of the denoiser -> sampler stepper under lax.scan, sharded over the mesh) ->
``generate`` (batches, labels, gathering across processes) -> samples.
"""
from diffjax.inference.loading import (Run, default_mesh, from_state, load, load_config,
                                       load_info, param_names, pick_params, run_vae,
                                       save_run_info)
from diffjax.inference.draw_settings import (DEFAULT_SEED, DEFAULTS, check_setting,
                                        pfgmpp_error, settings)
from diffjax.inference.program import Program, build, padded_batch
from diffjax.inference.draws import (analytic_start, default_labels, denoiser, generate,
                                     program_for, save_grid)
