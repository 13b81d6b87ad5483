"""diffjax: diffusion-model research in JAX/Flax, from one exact core."""
from setuptools import find_packages, setup

setup(
    name="diffjax",
    version="0.1.0",
    description="Diffusion models in JAX/Flax: processes, samplers, guidance, search, distillation at scale.",
    packages=find_packages(include=["diffjax", "diffjax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10.2,<0.11",
        "jaxlib>=0.10.2,<0.11",
        "flax>=0.12.8,<0.13",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8,<0.13",
        "ml_collections>=1.1.0",
        "clu>=0.0.12",
        "tensorflow-cpu>=2.21,<2.22",
        "tensorboard>=2.21,<2.22",
        "tensorflow-datasets>=4.9.10",
        "grain>=0.2.18",
        "einops>=0.8",
        "safetensors>=0.4",   # reading diffusers checkpoints (diffjax convert) without torch
        "numpy>=2.0",
        "scikit-learn>=1.5",
        "pillow>=10",
        "absl-py>=2.0",
        "importlib_resources",  # tensorflow-datasets needs it to prepare datasets but does not declare it
    ],
    extras_require={
        # the notebook test (tests/test_notebook.py) executes notebooks/diffjax_tour.ipynb with nbclient
        # statsmodels: the bundled series of diffjax.timeseries (tests/timeseries)
        "test": ["pytest>=8", "pytest-xdist>=3", "scipy>=1.12",
                 "nbclient>=0.10", "nbformat>=5.9", "ipykernel>=6.29", "matplotlib>=3.8",
                 "statsmodels>=0.14"],
        "tpu": ["jax[tpu]>=0.10.2,<0.11"],
        "experiments": ["matplotlib>=3.8", "statsmodels>=0.14"],   # figures; the series data
        # parity with the PyTorch libraries (tests/interop): diffusers' models and pytorch-fid's
        # Inception with random weights; torch also reads .bin checkpoints in diffjax convert
        "interop": ["torch>=2.4", "diffusers>=0.30", "pytorch-fid>=0.3", "scipy>=1.12"],
    },
    entry_points={"console_scripts": ["diffjax=diffjax.cli:main"]},
)
