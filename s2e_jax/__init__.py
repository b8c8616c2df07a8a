"""s2e_jax: learning with noisy labels by searching the sample-selection schedule (S2E, ICML 2020)."""

__version__ = "0.1.0"

from s2e_jax.config import ConfigError, TrainConfig  # noqa: F401
