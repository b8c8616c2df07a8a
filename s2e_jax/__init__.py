"""s2e_jax: learning with noisy labels by searching the sample-selection schedule (S2E, ICML 2020)."""

__version__ = "0.1.0"

from s2e_jax.config import ConfigError, TrainConfig  # noqa: F401


def __getattr__(name):  # PEP 562: ``s2e_jax.load`` without importing JAX on ``import s2e_jax``
    if name == "load":
        from s2e_jax.inference import load

        return load
    raise AttributeError(f"module 's2e_jax' has no attribute {name!r}")
