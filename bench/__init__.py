"""diffjax benchmarks against PyTorch + diffusers (see BENCHMARKS.md). Importing this package imports
neither jax nor torch: ``spec``, ``worker_io`` and ``harness`` are pure Python."""
