"""Deviceless TPU preflight: compile the real sharded train step and sampling loop for a TPU
topology on a CPU machine and report memory fit, FLOPs and estimated step time."""
from diffjax.preflight.chips import CHIPS, devices, libtpu_available, parse
from diffjax.preflight.report import Report, advice, format_table, run, tpu
