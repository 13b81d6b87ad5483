"""Guidance: functions from denoisers to denoisers (the contract D(x, sigma, cond) -> x0_hat)."""
from diffjax.guidance.cfg import classifier_free
