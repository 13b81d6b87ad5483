"""Training tests share XLA's persistent compilation cache with their subprocesses (util.CACHE_ENV)."""
import jax

from tests.training.util import CACHE_ENV

jax.config.update("jax_compilation_cache_dir", CACHE_ENV["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
