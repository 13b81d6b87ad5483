"""Absorbing discrete diffusion with a time-free network: RADD (Ou et al., ICLR 2025, "Your
Absorbing Discrete Diffusion Secretly Models the Conditional Distributions of Clean Data").

    absorbing.py   log-linear masking process, a(t), the factorised concrete score
    losses.py      lambda-DCE, t-DCE, DSE, k-DCE (AO-ARM) bounds; the AO-ARM NLL of one order
    samplers.py    Tweedie tau-leaping and Euler with output caching; the AO-ARM sampler; NFE
    text_data.py   the 'text' data source (characters of Python's bundled reference docs;
                   registered in data/registry.py)
    objective.py   the 'radd' training objective for the shared trainer
    run.py         a trained run's token model: sampling, per-sequence NLL
The network is models/token_transformer.py ('token_transformer' in the model zoo). Importing the
package registers the 'radd' objective (training/objectives.py imports it).
"""
from diffjax.discrete import absorbing, losses, samplers
from diffjax.discrete import text_data
from diffjax.discrete import objective  # registers the 'radd' objective

__all__ = ["absorbing", "losses", "samplers", "text_data", "objective"]
