"""The test process runs XLA's CPU backend as the entry points do (s2e_jax.xla_cpu: YNNPACK
convolutions), set before any test starts JAX."""
from s2e_jax import xla_cpu

xla_cpu.configure()
