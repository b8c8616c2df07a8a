"""How an epoch is driven: one ``lax.scan`` over the mini-batches inside one program, or a Python loop
of jitted steps. Both compute the same numbers (tests/test_train.py); which one runs is the execution
plan's ``driver`` (:mod:`s2e_jax.execution`). The training (:class:`s2e_jax.trainer.Trainer`) and ASNG
(:mod:`s2e_jax.asng`) give their epoch as four pure pieces over a state of their own:

- ``begin(state, data) -> (state, ctx)``: the epoch's permutation, learning rate, R(t), ...;
- ``step(state, ctx, i, data) -> state``: mini-batch ``i``;
- ``end(state, ctx, data) -> (state, metrics)``: the epoch's training metrics;
- ``evaluate(state, data, in_jit) -> metrics``: the clean splits (``in_jit``: inside the program, or
  a Python loop of jitted chunks).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from s2e_jax import config

DRIVERS = tuple(d for d in config.DRIVERS if d != "auto")


def scan_epoch(begin: Callable, step: Callable, end: Callable, evaluate: Callable, steps: int) -> Callable:
    """The epoch as one pure function ``(state, data) -> (state, metrics)``: the steps are one
    ``lax.scan`` (jit it, vmap it over trials)."""

    def epoch(state, data):
        state, ctx = begin(state, data)
        state, _ = jax.lax.scan(lambda s, i: (step(s, ctx, i, data), None), state, jnp.arange(steps))
        state, metrics = end(state, ctx, data)
        return state, dict(metrics, **evaluate(state, data, True))

    return epoch


class LoopEpoch:
    """The epoch as a Python loop of jitted steps (the state is donated to each step); no host sync
    inside: the step indices are device scalars made once."""

    def __init__(self, begin: Callable, step: Callable, end: Callable, evaluate: Callable, steps: int):
        self.begin_fn = jax.jit(begin)
        self.step_fn = jax.jit(step, donate_argnums=0)
        self.end_fn = jax.jit(end)
        self.evaluate = evaluate
        self.step_ids = [jnp.int32(i) for i in range(steps)]

    def __call__(self, state, data):
        state, ctx = self.begin_fn(state, data)
        for i in self.step_ids:
            state = self.step_fn(state, ctx, i, data)
        state, metrics = self.end_fn(state, ctx, data)
        return state, dict(metrics, **self.evaluate(state, data, False))


def epoch_runner(driver: str, begin: Callable, step: Callable, end: Callable, evaluate: Callable,
                 steps: int) -> Callable:
    """``(state, data) -> (state, metrics)`` run by ``driver``: "scan" (one jitted program) or "loop"."""
    if driver == "scan":
        return jax.jit(scan_epoch(begin, step, end, evaluate, steps))
    if driver == "loop":
        return LoopEpoch(begin, step, end, evaluate, steps)
    raise ValueError(f"driver: unknown value {driver!r} (expected one of {', '.join(DRIVERS)})")
