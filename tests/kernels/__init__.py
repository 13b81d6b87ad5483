"""diffjax.kernels: each op's CPU form and plain form compute the same function, and the dispatching
op lowers to the CPU form for CPU and to the plain form for TPU."""
