"""RADD (Ou et al., ICLR 2025) on characters: a time-free transformer trained with the lambda-DCE
bound on Python's bundled reference text (2 CPU cores, a few minutes).

    diffjax train --config configs/text_radd.py --workdir /tmp/text_radd
    diffjax text --workdir /tmp/text_radd --num 4 --steps 256 --sampler tau_leaping

Data: the 'text' source (diffjax/discrete/text_data.py): pydoc_data.topics, lower-cased to 29
characters, windows of 64 characters, held-out topics in split 'test'.
Model: token_transformer_mini (4 pre-LN blocks, width 128, 4 heads; ~0.8M params), no time input.
Objective: 'radd' with loss lambda_dce (variants: t_dce, dse, k_dce), eps = 1e-3.
Optimiser: AdamW 1e-3 (RADD uses 3e-4 with batch 512), 100 warmup steps then constant, clip 1;
EMA 0.999, sampled by default. No image grids or image evaluation (sample.num = 0,
eval.at_end = False): sample with ``diffjax text`` or experiments/radd_caching.py.
"""
from diffjax.discrete import text_data  # (importing diffjax.discrete registers 'text' and 'radd')
from diffjax.training.config import base


def get_config(arg=None):
    c = base("token_transformer_mini", vocab_size=text_data.VOCAB_SIZE)
    c.total_steps = 1500
    c.batch_size = 32
    c.log_every = 50
    c.data = dict(name="text", split="train", seq_len=64, flip=False)
    c.objective = dict(name="radd", loss="lambda_dce", eps=1e-3, t_min=1e-3)
    c.optim.lr = 1e-3
    c.optim.schedule = "constant"
    c.optim.warmup_steps = 100
    c.ema.decays = (0.999,)
    c.ema.power_stds = ()
    c.checkpoint.every = 500
    c.sample.every = 0
    c.sample.num = 0
    c.sample.params = "decay_0.999"
    c.eval.every = 0
    c.eval.at_end = False
    if arg == "quick":          # a smoke run: seconds
        c.total_steps = 20
        c.checkpoint.every = 20
        c.model.hidden_size = 32
        c.model.depth = 1
        c.model.num_heads = 2
        c.batch_size = 8
    return c
