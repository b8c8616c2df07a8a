"""How a run executes, resolved once: :func:`plan` turns an :class:`~s2e_jax.config.ExecutionConfig`
(with its "auto" settings) into one :class:`Plan` for a model, a backend and a number of trainings.

Nothing here changes what is computed: every resolved setting gives the same numbers to float rounding
(tests/test_execution.py and the equivalence tests of each form). Each rule below states what it
picks; the measurements behind it are in docs/performance.md, "Execution defaults". A run writes its
plan to ``execution.json`` (train, search, ASNG).
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax

from s2e_jax import xla_cpu
from s2e_jax.config import ConfigError, ExecutionConfig

TRIALS = ("auto", "one_program", "sequential")  # how the K trainings of a search run


@dataclasses.dataclass(frozen=True)
class Plan:
    """Every execution setting of one run, resolved (no "auto")."""

    backend: str
    devices: int
    processes: int
    one_program: bool           # K trainings of a search: one sharded program (else one after another)
    net_form: str               # vmap | fused
    driver: str                 # scan | loop (one program: the vmapped scan epoch)
    conv_impl: str              # xla | slices (conv models)
    pool_s2d: bool              # Model 1: conv + pool as one space-to-depth convolution
    materialize: bool           # Models 2-3: store each convolution's input (convs.materialized)
    precision: str
    eval_batch_size: int
    memory_budget_mib: Optional[float]
    xla_cpu_flags: bool         # XLA's CPU flags of s2e_jax.xla_cpu took effect

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def one_program_default(backend: str) -> bool:
    """K trainings as one program on GPU/TPU; one after another on a CPU, where that was faster."""
    return backend != "cpu"


def form_and_driver(model_name: str, backend: str):
    """``(net_form, driver)``: on XLA's CPU backend conv nets run ``fused`` with a Python ``loop`` of
    jitted steps (a conv net inside ``lax.scan`` is slow there, jax-ml/jax#12868); the MLP, and every
    model on GPU/TPU, ``vmap`` inside one ``lax.scan`` per epoch."""
    if backend == "cpu" and model_name != "mlp":
        return "fused", "loop"
    return "vmap", "scan"


def conv_impl_for(model_name: str, net_form: str, driver: str) -> str:
    """``slices`` (patches x kernel, no convolution) for Model 1 vmapped inside ``lax.scan`` (K trials
    in one program everywhere, one training on GPU/TPU); XLA's convolution elsewhere. The same rule
    on every backend measured (CPU, H100)."""
    return "slices" if (model_name == "model1" and net_form == "vmap" and driver == "scan") else "xla"


def pool_s2d_for(conv_impl: str, driver: str, backend: str) -> bool:
    """Model 1's conv + pool as one space-to-depth convolution where it measured faster: on the CPU
    with slices or the loop driver (not XLA's convolutions inside ``lax.scan``); on GPU/TPU always."""
    if backend == "cpu":
        return conv_impl == "slices" or driver == "loop"
    return True


def plan(execution: Optional[ExecutionConfig], model_name: str, trials: Optional[str] = None,
         backend: Optional[str] = None) -> Plan:
    """The execution plan of a run of ``model_name``: one training (``trials=None``) or the K trainings
    of a search (``trials``: "auto" | "one_program" | "sequential")."""
    ex = (execution or ExecutionConfig()).validate()
    backend = backend or jax.default_backend()
    if trials is not None and trials not in TRIALS:
        raise ConfigError(f"trials: unknown value {trials!r} (expected one of {', '.join(TRIALS)})")
    one_program = trials == "one_program" or (trials == "auto" and one_program_default(backend))
    form, driver = form_and_driver(model_name, backend)
    if one_program:  # the trial axis is a vmap of the scan epoch (s2e_jax/parallel.py)
        form, driver = "vmap", "scan"
    form = form if ex.net_form == "auto" else ex.net_form
    driver = driver if (ex.driver == "auto" or one_program) else ex.driver
    conv = conv_impl_for(model_name, form, driver) if ex.conv_impl == "auto" else ex.conv_impl
    s2d = pool_s2d_for(conv, driver, backend) if ex.pool_s2d == "auto" else ex.pool_s2d == "on"
    return Plan(backend=backend, devices=jax.device_count(), processes=jax.process_count(), one_program=one_program,
                net_form=form, driver=driver, conv_impl=conv if model_name != "mlp" else "xla",
                pool_s2d=bool(s2d) and model_name == "model1",
                materialize=backend == "cpu" and model_name in ("model2", "model3"),
                precision=ex.precision, eval_batch_size=ex.eval_batch_size,
                memory_budget_mib=ex.memory_budget_mib, xla_cpu_flags=xla_cpu.active())
