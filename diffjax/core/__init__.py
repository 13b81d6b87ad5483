"""Core diffusion math: processes, grids, the denoiser contract, losses and samplers."""
