"""Stochastic relaxation (Section 3.4.1, eq. 6): the distribution p_θ(x) over a search space.

    p_θ(x) = Dirichlet(α; θ_α) · Π_j Beta(β_j; θ_j1, θ_j2),     x = [α (n_simplex), β (n_box)]

The parameter vector θ has ``n_simplex + 2 * n_box`` entries, laid out as

    θ = [θ_α,1 .. θ_α,S,  θ_11, θ_12,  θ_21, θ_22,  ...,  θ_B1, θ_B2]

i.e. the Dirichlet concentrations first, then one (a, b) pair per box coordinate, so that the Fisher
matrix is block diagonal with one S×S block and B contiguous 2×2 blocks (S2E space: 4 + 2·16 = 36).
``n_simplex`` may be 0 (box-only spaces such as ``coteaching``); ``n_simplex == 1`` is rejected (a
one-component Dirichlet is a point mass).

Everything here is a pure ``jnp`` function of ``(theta, x)``; ``S`` and ``B`` are read from the space
and are static. θ¹ = 1 (:func:`theta_init`) is the uniform distribution (Algorithm 2, line 1).

Derivatives (used by eq. 7 and Proposition 1 in :mod:`s2e_jax.search`):

* :func:`score` — ∇_θ log p_θ(x) (the p̄_θ(x) of Section 3.4.1), by autodiff;
* :func:`hessian_log_prob` — ∇²_θ log p_θ(x), by autodiff. For Dirichlet/Beta it does not depend on
  x (log p is linear in the sufficient statistics log x), hence −∇² log p is exactly the Fisher matrix;
* :func:`fisher` — the Fisher matrix E[∇log p ∇log pᵀ] in closed form (polygamma), the H of NG (eq. 8).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.special
from jax.scipy.special import gammaln, polygamma

from s2e_jax.config import ConfigError

EPS = 1e-6  # samples are clipped into [EPS, 1 - EPS] so that log p_θ(x) and its score are finite


# ---------------------------------------------------------------- layout
def sizes(space) -> tuple[int, int]:
    """``(S, B)`` = ``(space.n_simplex, space.n_box)``, validated."""
    S, B = int(space.n_simplex), int(space.n_box)
    if S < 0 or B < 0 or S + B == 0:
        raise ConfigError(f"space: needs n_simplex >= 0, n_box >= 0 and at least one coordinate, got {S}, {B}")
    if S == 1:
        raise ConfigError("space: n_simplex must be 0 or >= 2 (a one-component Dirichlet is degenerate)")
    return S, B


def n_params(space) -> int:
    """Length of θ: ``n_simplex + 2 * n_box``."""
    S, B = sizes(space)
    return S + 2 * B


def theta_init(space) -> jnp.ndarray:
    """θ¹ = 1: the uniform distribution on the simplex × box (Algorithm 2, line 1)."""
    return jnp.ones(n_params(space), jnp.result_type(float))


def _float(a):
    """``a`` as a jnp array of the default float dtype (float32, or float64 under jax x64)."""
    return jnp.asarray(a, jnp.result_type(float))


def split_theta(theta, S: int, B: int):
    """``(θ_α [S], a [B], b [B])`` from the flat θ."""
    theta = jnp.asarray(theta)
    ab = theta[S:].reshape(B, 2)
    return theta[:S], ab[:, 0], ab[:, 1]


def mean(theta, space) -> jnp.ndarray:
    """E_θ[x]: ``θ_α / Σθ_α`` for the simplex part, ``a / (a + b)`` for the box part."""
    S, B = sizes(space)
    c, a, b = split_theta(theta, S, B)
    parts = []
    if S:
        parts.append(c / jnp.sum(c))
    if B:
        parts.append(a / (a + b))
    return jnp.concatenate(parts)


# ---------------------------------------------------------------- sampling
def _sample_one(key, theta, S, B):
    # One point from p_θ, drawn exactly as jax.random.dirichlet and jax.random.beta do (gammas in log
    # space, so small concentrations do not underflow) but with a single jax.random.loggamma call for
    # all S + 2B concentrations: the gamma sampler is costly to compile, one instance is enough.
    #   Dirichlet: α = softmax(log G_α);   Beta: β = G_a / (G_a + G_b) = sigmoid(log G_a − log G_b)
    c, a, b = split_theta(theta, S, B)
    lg = jax.random.loggamma(key, jnp.concatenate([c, a, b]))
    parts = []
    if S:
        alpha = jnp.clip(jax.nn.softmax(lg[:S]), EPS, 1.0)
        parts.append(alpha / jnp.sum(alpha))
    if B:
        parts.append(jnp.clip(jax.nn.sigmoid(lg[S:S + B] - lg[S + B:]), EPS, 1.0 - EPS))
    return jnp.concatenate(parts)


CHUNK = 64  # rows drawn per compiled call: one compilation per space, whatever K


@functools.partial(jax.jit, static_argnums=(3, 4))
def _sample_rows(key, theta, start, S, B):
    rows = start + jnp.arange(CHUNK)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, rows)
    return jax.vmap(_sample_one, in_axes=(0, None, None, None))(keys, theta, S, B)


def sample(key, theta, space, K: int) -> jnp.ndarray:
    """K samples ``xs [K, S + B]`` from p_θ (Algorithm 2, line 4).

    Row i is drawn with the key ``fold_in(key, i)`` (so the samples of a smaller K are a prefix of
    those of a larger K) by the construction of ``jax.random.dirichlet`` / ``jax.random.beta``
    (normalized log-space gammas); the simplex part is clipped to ≥ EPS and renormalized, the box
    part clipped to [EPS, 1 − EPS], so log p_θ(xs) is finite.
    """
    S, B = sizes(space)
    K = int(K)
    if K < 1:
        raise ConfigError(f"samples: must be >= 1, got {K}")
    theta = _float(theta)
    chunks = [_sample_rows(key, theta, start, S, B) for start in range(0, K, CHUNK)]
    return (chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks))[:K]


def sample_host(rng: np.random.Generator, theta, space, K: int) -> np.ndarray:
    """K samples ``[K, S + B]`` from p_θ (eq. 6; Algorithm 2, line 4) drawn by numpy on the host
    (float64 holding float32 values).

    The distribution of :func:`sample`, by the same construction (log-space gammas, softmax for the
    simplex part, sigmoid of a difference for the box part, the same clipping), from numpy's generator
    ``rng`` instead of JAX's keys: nothing to compile, and faster on a CPU for the thousands of rows of
    the default search's Monte Carlo samples (docs/search.md, "Search overhead"). Equal to
    :func:`sample` in distribution, not bit for bit (tests/test_relaxation.py).
    """
    S, B = sizes(space)
    K = int(K)
    if K < 1:
        raise ConfigError(f"samples: must be >= 1, got {K}")
    theta = np.asarray(theta, np.float64)
    if theta.shape != (S + 2 * B,) or not np.all(theta > 0):
        raise ConfigError(f"theta: expected {S + 2 * B} positive concentrations, got {theta}")
    c, a, b = theta[:S], theta[S:].reshape(B, 2)[:, 0], theta[S:].reshape(B, 2)[:, 1]
    conc = np.concatenate([c, a, b])
    # log G(k) for G(k) ~ Gamma(k): below k = 1 as log G(k + 1) + log(U)/k (Marsaglia & Tsang), so that
    # small concentrations do not underflow to 0 (as jax.random.loggamma); U drawn for every k
    small = conc < 1.0
    lg = np.log(rng.standard_gamma(np.where(small, conc + 1.0, conc), size=(K, len(conc))))
    u = rng.random((K, len(conc)))
    with np.errstate(divide="ignore"):
        lg = np.where(small, lg + np.log(u) / conc, lg)
    parts = []
    if S:
        e = np.exp(lg[:, :S] - lg[:, :S].max(1, keepdims=True))
        alpha = np.clip(e / e.sum(1, keepdims=True), EPS, 1.0)
        parts.append(alpha / alpha.sum(1, keepdims=True))
    if B:
        parts.append(np.clip(scipy.special.expit(lg[:, S:S + B] - lg[:, S + B:]), EPS, 1.0 - EPS))
    return np.concatenate(parts, 1).astype(np.float32).astype(np.float64)


# ---------------------------------------------------------------- densities
def _gammaln_args(theta, S, B):
    # All arguments of the log-normalizer's gammaln terms in one vector (one gammaln call keeps the
    # autodiff graphs, hence compile times, small) and their signs:
    #   log Γ(Σθ_α) − Σ log Γ(θ_α,i) + Σ_j [log Γ(a_j + b_j) − log Γ(a_j) − log Γ(b_j)]
    c, a, b = split_theta(theta, S, B)
    args, signs = [], []
    if S:
        args += [jnp.sum(c)[None], c]
        signs += [1.0] + [-1.0] * S
    if B:
        args += [a + b, a, b]
        signs += [1.0] * B + [-1.0] * (2 * B)
    return jnp.concatenate(args), jnp.asarray(signs, theta.dtype)


def _log_prob(theta, x, S, B):
    theta = jnp.asarray(theta)
    x = jnp.asarray(x, theta.dtype)
    args, signs = _gammaln_args(theta, S, B)
    # sufficient statistics: log α_i and (log β_j, log(1 − β_j)), in θ's layout
    stats = [jnp.log(x[:S])] if S else []
    if B:
        beta = x[S:]
        stats.append(jnp.stack([jnp.log(beta), jnp.log1p(-beta)], axis=-1).reshape(-1))
    return jnp.dot(signs, gammaln(args)) + jnp.dot(theta - 1.0, jnp.concatenate(stats))


_log_prob_jit = jax.jit(_log_prob, static_argnums=(2, 3))
_score_jit = jax.jit(jax.grad(_log_prob), static_argnums=(2, 3))
_hessian_jit = jax.jit(jax.hessian(_log_prob), static_argnums=(2, 3))
_log_probs = jax.jit(jax.vmap(_log_prob, in_axes=(None, 0, None, None)), static_argnums=(2, 3))
_scores = jax.jit(jax.vmap(jax.grad(_log_prob), in_axes=(None, 0, None, None)), static_argnums=(2, 3))
_hessians = jax.jit(jax.vmap(jax.hessian(_log_prob), in_axes=(None, 0, None, None)), static_argnums=(2, 3))


def log_prob(theta, x, space):
    """log p_θ(x) for one point ``x [S + B]`` (Dirichlet × Betas, via ``gammaln``)."""
    S, B = sizes(space)
    return _log_prob_jit(_float(theta), _float(x), S, B)


def score(theta, x, space):
    """p̄_θ(x) = ∇_θ log p_θ(x) (Section 3.4.1), by ``jax.grad``."""
    S, B = sizes(space)
    return _score_jit(_float(theta), _float(x), S, B)


def hessian_log_prob(theta, x, space):
    """∇²_θ log p_θ(x) (Proposition 1), by ``jax.hessian``; independent of x for this family."""
    S, B = sizes(space)
    return _hessian_jit(_float(theta), _float(x), S, B)


def log_prob_batch(theta, xs, space):
    """log p_θ(x_i) for ``xs [K, S + B]``."""
    S, B = sizes(space)
    return _log_probs(_float(theta), _float(xs), S, B)


def score_batch(theta, xs, space):
    """``[K, P]`` scores ∇_θ log p_θ(x_i) (vmap of :func:`score`)."""
    S, B = sizes(space)
    return _scores(_float(theta), _float(xs), S, B)


def hessian_batch(theta, xs, space):
    """``[K, P, P]`` Hessians ∇²_θ log p_θ(x_i) (vmap of :func:`hessian_log_prob`)."""
    S, B = sizes(space)
    return _hessians(_float(theta), _float(xs), S, B)


# ---------------------------------------------------------------- Fisher matrix (NG's H in eq. 8)
def fisher(theta, space) -> jnp.ndarray:
    """The exact Fisher matrix F(θ) = E_θ[∇log p ∇log pᵀ] = −E_θ[∇² log p], block diagonal:

    * Dirichlet block: ψ₁(θ_i) δ_ij − ψ₁(Σ_k θ_k);
    * Beta block of (a, b): [[ψ₁(a) − ψ₁(a+b), −ψ₁(a+b)], [−ψ₁(a+b), ψ₁(b) − ψ₁(a+b)]],

    with ψ₁ the trigamma function (``polygamma(1, ·)``).
    """
    S, B = sizes(space)
    return _fisher(_float(theta), S, B)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _fisher(theta, S, B):
    P = S + 2 * B
    args, _ = _gammaln_args(theta, S, B)
    t1 = polygamma(1, args)  # ψ₁ of [Σθ_α, θ_α, a+b, a, b] (one call, see _gammaln_args)
    F = jnp.zeros((P, P), theta.dtype)
    if S:
        F = F.at[:S, :S].set(jnp.diag(t1[1:S + 1]) - t1[0])
    if B:
        o = S + 1 if S else 0
        tab, ta, tb = t1[o:o + B], t1[o + B:o + 2 * B], t1[o + 2 * B:o + 3 * B]
        idx = S + 2 * jnp.arange(B)
        F = F.at[idx, idx].set(ta - tab)
        F = F.at[idx + 1, idx + 1].set(tb - tab)
        F = F.at[idx, idx + 1].set(-tab)
        F = F.at[idx + 1, idx].set(-tab)
    return F
