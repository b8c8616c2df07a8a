"""s2e_jax: learning with noisy labels by searching the sample-selection schedule (S2E, ICML 2020)."""

__version__ = "0.1.0"

from s2e_jax import xla_cpu as _xla_cpu

_xla_cpu.configure()  # YNNPACK convolutions for XLA's CPU backend (see s2e_jax/xla_cpu.py)

from s2e_jax.config import ConfigError, TrainConfig  # noqa: E402,F401
