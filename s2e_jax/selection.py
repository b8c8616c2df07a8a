"""Selection rules: what each network learns from in a mini-batch (Algorithm 1, step 3).

A rule is a pure function ``rule(losses, logits, labels, r, epoch, batch=0) -> (weights, kept)`` where

- ``losses``  [N, B]: per-sample loss of each of the N networks (gradient already stopped),
- ``logits``  [N, B, C]: their predictions (gradient stopped),
- ``labels``  [B]: the (noisy) training labels of the batch,
- ``r``       scalar: R(t), the fraction of the batch to keep,
- ``epoch``   int scalar (traced): epochs done before this one (0-based),
- ``batch``   int scalar (traced): the mini-batch's index within the epoch (0-based; default 0),

and returns ``weights`` [N, B] (network n's loss is ``sum(weights[n] * losses[n]) / sum(weights[n])``,
and 0 when every weight is 0) and ``kept`` [N, B] (the samples network n itself selected; its label
precision is measured on them). Every shape is fixed under jit: a selected set is a {0,1} mask.
Methods differ by their rule (and, for F-correction, their per-sample loss), not by a copy of the
training loop. Learning to reweight needs the parameters and clean data, so it is a *weights
function* (:func:`reweight_weights`) the trainer calls instead of a rule.

An empty selection gives zero weights, hence zero loss and zero gradient. Adam still moves the
parameters by its momentum on such a step, as in the released PyTorch code of these baselines
(a zero loss followed by ``optimizer.step()``).
"""
from __future__ import annotations

import functools
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import optax

from s2e_jax import fcorrection
from s2e_jax.config import ConfigError


def num_keep(r, batch_size):
    """floor(R(t) * B), at least 1 (Algorithm 1 step 3; Co-teaching's ``num_remember``)."""
    return jnp.maximum(jnp.floor(r * batch_size).astype(jnp.int32), 1)


def small_loss_mask(loss, k):
    """A {0,1} float mask of the ``k`` smallest entries of ``loss`` [B] (ties broken by index).

    Fixed shapes under jit for any traced ``k``: the rank of each sample comes from a stable argsort.
    """
    order = jnp.argsort(loss, stable=True)
    ranks = jnp.zeros_like(order).at[order].set(jnp.arange(loss.shape[0]))
    return (ranks < k).astype(jnp.float32)


def _check_nets(losses, n, method):
    if losses.shape[0] != n:
        raise ValueError(f"{method} needs {n} network(s), got {losses.shape[0]}")


def disagreement(logits):
    """{0,1} mask [B] of the samples on which the two networks' predicted classes differ."""
    pred = logits.argmax(-1)
    return (pred[0] != pred[1]).astype(jnp.float32)


# ------------------------------------------------------------------------------------------ rules
def standard_rule(losses, logits, labels, r, epoch, batch=0):
    """Standard training: every network learns from the whole batch (R == 1)."""
    del logits, labels, r, epoch, batch
    ones = jnp.ones_like(losses)
    return ones, ones


def coteaching_rule(losses, logits, labels, r, epoch, batch=0):
    """Co-teaching (Han et al. 2018, Algorithm 1): each network keeps its floor(R(t) B) small-loss
    samples and the *other* network learns from them (network 1 from network 2's set and vice versa)."""
    del logits, labels, epoch, batch
    _check_nets(losses, 2, "coteaching")
    k = num_keep(r, losses.shape[1])
    kept = jnp.stack([small_loss_mask(losses[0], k), small_loss_mask(losses[1], k)])
    return kept[::-1], kept


COTEACHING_PLUS_WARMUP_STEPS = 5000  # the authors' ``step < 5000`` with step = epoch (1-based) x batch


def coteaching_plus_rule(losses, logits, labels, r, epoch, batch=0, init_epochs=0):
    """Co-teaching+ (Yu et al. 2019, Algorithm 1): for the first ``init_epochs`` epochs plain
    Co-teaching; then each network keeps its floor(R(t) |D|) small-loss samples among the
    disagreement set D (samples whose predicted classes differ) and the other network learns from them.

    As the authors' ``loss_coteaching_plus`` / ``loss_coteaching`` (xingruiyu/coteaching_plus):

    * the number kept is floor(R(t) |D|), and all of D where that is 0 (their ``if
      len(ind_1_update) == 0``), so a small D is learned from, not skipped;
    * an empty D: both networks learn from the whole batch while ``step < 5000``, where their ``step``
      is the 1-based epoch times the 0-based batch index, here ``(epoch + 1) * batch``
      (:data:`COTEACHING_PLUS_WARMUP_STEPS`); after that, zero weights: no update from this batch.

    Not copied from their release: the second softmax before the cross-entropy, the loss divided
    twice, and the dropped sample of index 0. Epochs are 0-based here: ``init_epochs`` epochs of
    Co-teaching (their 1-based loop runs ``init_epoch - 1``).
    """
    _check_nets(losses, 2, "coteaching_plus")
    d = disagreement(logits)
    n_d = d.sum().astype(jnp.int32)
    k = jnp.floor(r * d.sum()).astype(jnp.int32)
    k = jnp.where(k == 0, n_d, k)  # floor(R |D|) == 0: all of D
    # non-disagreeing samples rank last (+inf); the final "* d" also guards a sample of infinite loss
    plus = jnp.stack([small_loss_mask(jnp.where(d > 0, losses[i], jnp.inf), k) * d for i in range(2)])
    warm = (epoch + 1) * batch < COTEACHING_PLUS_WARMUP_STEPS
    plus = jnp.where((n_d == 0) & warm, jnp.ones_like(plus), plus)  # empty D, early: the whole batch
    _, cot = coteaching_rule(losses, logits, labels, r, epoch)
    kept = jnp.where(epoch < init_epochs, cot, plus)
    return kept[::-1], kept


def selfpaced_rule(losses, logits, labels, r, epoch, batch=0):
    """MentorNet, the self-paced variant of the Co-teaching paper (Han et al. 2018, section 4.1):
    one network learns from its own floor(R(t) B) small-loss samples, with Co-teaching's R(t)."""
    del logits, labels, epoch, batch
    k = num_keep(r, losses.shape[1])
    kept = jax.vmap(small_loss_mask, in_axes=(0, None))(losses, k)
    return kept, kept


def decoupling_rule(losses, logits, labels, r, epoch, batch=0):
    """Decoupling (Malach & Shalev-Shwartz 2017, "update by disagreement"): both networks learn
    only from the samples on which their predictions differ (none: no update from this batch)."""
    del labels, r, epoch, batch
    _check_nets(losses, 2, "decoupling")
    d = jnp.broadcast_to(disagreement(logits), losses.shape)
    return d, d


# ------------------------------------------------------------------------------------ reweight
def reweight_weights(forward, loss_fn, params, xb, yb, xv, yv, alpha, forward_clean=None):
    """Learning to reweight (Ren et al. 2018, Algorithm 1, lines 4-11): per-sample weights [N, B].

    With ℓ_i(θ) the training losses (``loss_fn(forward(θ, xb), yb)`` [N, B]) and L_clean the mean
    cross-entropy on the clean batch ``(xv, yv)``, one inner SGD step of size ``alpha``:

        θ̂(ε) = θ − α ∇_θ Σ_i ε_i ℓ_i(θ),    g = ∂ L_clean(θ̂(ε)) / ∂ε  at ε = 0,
        w̃ = max(−g, 0),                     w = w̃ / Σ w̃   (w = 0 if Σ w̃ = 0),

    computed with ``jax.grad`` through the inner update (a second-order derivative). ``forward(θ, x)``
    gives logits [N, ·, C] of the N stacked networks (``forward_clean``, default ``forward``, on the
    clean batch: e.g. other dropout masks); each network gets its own weights. Returns ``(w, w > 0)``.
    """
    forward_clean = forward if forward_clean is None else forward_clean

    def clean_loss(eps):
        def weighted(p):
            return (eps * loss_fn(forward(p, xb), yb)).sum()

        grads = jax.grad(weighted)(params)
        p_hat = jax.tree_util.tree_map(lambda p, g: p - alpha * g, params, grads)
        ce = optax.softmax_cross_entropy_with_integer_labels(forward_clean(p_hat, xv), yv[None])
        return ce.mean(-1).sum()  # networks are independent: ∂/∂ε[n] sees network n's clean loss

    n = jax.tree_util.tree_leaves(params)[0].shape[0]
    g = jax.grad(clean_loss)(jnp.zeros((n, xb.shape[0]), jnp.float32))
    w = jnp.maximum(-g, 0.0)
    total = w.sum(-1, keepdims=True)
    w = jnp.where(total > 0, w / jnp.where(total > 0, total, 1.0), 0.0)
    return jax.lax.stop_gradient(w), (w > 0).astype(jnp.float32)


# ------------------------------------------------------------------------------------ methods
def cross_entropy(logits, labels, transition=None):
    """Per-sample cross-entropy [N, B] of logits [N, B, C] and labels [B]."""
    del transition
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels[None])


class MethodSpec(NamedTuple):
    """How a method differs from Standard training; the training loop is the same for all."""

    num_nets: int
    rule: Optional[Callable]           # rule(losses, logits, labels, r, epoch, batch); None if weights_fn
    uses_schedule: bool                # whether R(t) (eq. 1 or a searched schedule) drives it
    sample_loss: Callable = cross_entropy   # (logits, labels, transition) -> [N, B]
    weights_fn: Optional[Callable] = None   # reweight_weights-like; replaces the rule


METHOD_RULES = {
    "standard": MethodSpec(1, standard_rule, False),
    "coteaching": MethodSpec(2, coteaching_rule, True),
    "coteaching_plus": MethodSpec(2, coteaching_plus_rule, True),
    "mentornet": MethodSpec(1, selfpaced_rule, True),
    "decoupling": MethodSpec(2, decoupling_rule, False),
    "fcorrection": MethodSpec(1, standard_rule, False, fcorrection.forward_corrected_ce),
    "reweight": MethodSpec(1, None, False, weights_fn=reweight_weights),
}


# A method's version goes up when what it computes changes, so that cached runs of the old one are
# not taken for new ones (recorded in config.json and summary.json as ``method_version``; runs
# without it are version 1). coteaching_plus 2: the authors' small-D and empty-D rules (2026-11-26).
METHOD_VERSIONS = {"coteaching_plus": 2}


def method_version(method: str) -> int:
    """The version of ``method``'s rule (1 unless :data:`METHOD_VERSIONS` says otherwise)."""
    return METHOD_VERSIONS.get(method, 1)


def get_rule(method: str, init_epochs: int = 0) -> MethodSpec:
    """The :class:`MethodSpec` of a method (``num_nets, rule, uses_schedule, ...``);
    ``init_epochs`` is bound into Co-teaching+'s rule."""
    try:
        spec = METHOD_RULES[method]
    except KeyError:
        raise ConfigError(f"method: unknown method {method!r} "
                          f"(expected one of {', '.join(METHOD_RULES)})") from None
    if method == "coteaching_plus":
        spec = spec._replace(rule=functools.partial(coteaching_plus_rule, init_epochs=int(init_epochs)))
    return spec
