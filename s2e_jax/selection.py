"""Selection rules: what each network learns from in a mini-batch (Algorithm 1, step 3).

A rule is a pure function ``rule(losses, logits, labels, r) -> (weights, kept)`` where

- ``losses``  [N, B]: per-sample cross-entropy of each of the N networks (gradient already stopped),
- ``logits``  [N, B, C]: their predictions (gradient stopped),
- ``labels``  [B]: the (noisy) training labels of the batch,
- ``r``       scalar: R(t), the fraction of the batch to keep,

and returns ``weights`` [N, B] (network n's loss is ``sum(weights[n] * losses[n]) / sum(weights[n])``)
and ``kept`` [N, B] (the samples network n itself selected; its label precision is measured on them).
Methods differ by their rule, not by a copy of the training loop.
"""
from __future__ import annotations

import jax.numpy as jnp

from s2e_jax.config import ConfigError


def num_keep(r, batch_size: int):
    """floor(R(t) * B), at least 1 (Algorithm 1 step 3; Co-teaching's ``num_remember``)."""
    return jnp.maximum(jnp.floor(r * batch_size).astype(jnp.int32), 1)


def small_loss_mask(loss, k):
    """A {0,1} float mask of the ``k`` smallest entries of ``loss`` [B] (ties broken by index).

    Fixed shapes under jit for any traced ``k``: the rank of each sample comes from a stable argsort.
    """
    order = jnp.argsort(loss, stable=True)
    ranks = jnp.zeros_like(order).at[order].set(jnp.arange(loss.shape[0]))
    return (ranks < k).astype(jnp.float32)


def standard_rule(losses, logits, labels, r):
    """Standard training: every network learns from the whole batch (R == 1)."""
    del logits, labels, r
    ones = jnp.ones_like(losses)
    return ones, ones


def coteaching_rule(losses, logits, labels, r):
    """Co-teaching (Han et al. 2018): each network keeps its R(t) small-loss samples and the
    *other* network learns from them (network 1 from network 2's kept set and vice versa)."""
    del logits, labels
    n, b = losses.shape
    if n != 2:
        raise ValueError(f"coteaching needs 2 networks, got {n}")
    k = num_keep(r, b)
    kept = jnp.stack([small_loss_mask(losses[0], k), small_loss_mask(losses[1], k)])
    return kept[::-1], kept


# method -> (number of networks, rule, whether it uses the R(t) schedule)
METHOD_RULES = {
    "standard": (1, standard_rule, False),
    "coteaching": (2, coteaching_rule, True),
}


def get_rule(method: str):
    """``(num_nets, rule, uses_schedule)`` of a method."""
    try:
        return METHOD_RULES[method]
    except KeyError:
        raise ConfigError(f"method: unknown method {method!r} "
                          f"(expected one of {', '.join(METHOD_RULES)})") from None
