"""A cheap surrogate of the search objective on the curve R_x(t), for the default S2E search.

The objective of a schedule search depends on a point x only through its curve R_x(t) (Algorithm 1
uses nothing else), and many x give nearly the same curve (the S2E space is sloppy). The surrogate is
therefore a Gaussian process on curve features, ``z(x) = R_x(t)`` at ``n_points`` epochs spread over
0..T−1, fitted to every evaluation so far:

* target: ``y = log(f − min f + ε)`` standardized (the log puts the resolution near the best values),
  ε = :data:`EPS_FRACTION` · (median f − min f) (plus a floor), so that the best value — under
  evaluation noise often the luckiest — is no outlier that the surrogate (and the search) chases;
* kernel: RBF, ``k(z, z') = exp(−|z − z'|² / (2 ℓ²))`` on the standardized target (signal variance 1),
  plus a noise variance σ²; ℓ and σ² by maximum marginal likelihood on a small grid (ℓ relative to
  the median distance between the observed curves);
* prediction: posterior mean and standard deviation (in the standardized target's units).

Everything is numpy float64 and deterministic given the data (so a resumed search refits the same
surrogate). :func:`kl_divergence` (KL between two Dirichlet × Beta distributions, the trust region of
the default step) lives here as well.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import scipy.special

from s2e_jax import relaxation
from s2e_jax.config import ConfigError

EPS_FRACTION = 1.0
LENGTH_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)          # × the median pairwise curve distance
NOISE_GRID = (1e-4, 1e-3, 1e-2, 0.05, 0.2)         # σ² in units of the standardized target's variance


def _one_blas_thread():
    """A context with one BLAS thread: the GP's matrices (n ≤ a few hundred) are far slower on a
    threaded OpenBLAS when the cores are busy. threadpoolctl comes with scikit-learn; without it, a no-op."""
    controller = threadpool_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


@functools.lru_cache(maxsize=1)
def threadpool_controller():
    """threadpoolctl's controller of the loaded BLAS libraries (None without threadpoolctl), made once:
    finding the libraries is what costs, so the default search makes it on its worker thread when the
    searcher is made (docs/search.md, "Search overhead")."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()


# ---------------------------------------------------------------- compiled in the background
_EXECUTOR: list = []  # one worker thread, made at the first request


def in_background(fn, *args) -> concurrent.futures.Future:
    """A future of ``fn(*args)`` run on one worker thread (made at the first call, joined at exit): the
    default search starts its one-off work (compilations, finding the BLAS libraries) when it is made,
    so that it runs while the first trainings are prepared and compiled, not when they are done (XLA
    compiles outside Python's lock)."""
    if not _EXECUTOR:
        _EXECUTOR.append(concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="s2e-compile"))
    return _EXECUTOR[0].submit(fn, *args)


def compile_in_background(fn, *args) -> concurrent.futures.Future:
    """A future of ``fn.lower(*args).compile()`` (``fn`` jitted, ``args`` shapes or static values),
    compiled by :func:`in_background`."""
    return in_background(lambda: fn.lower(*args).compile())


def small_program_options():
    """XLA options of the default search's small programs (curves, the estimate): on the CPU
    optimization level 1, which compiles faster than the default level with the same values; elsewhere
    XLA's defaults. Read when the first program is built (after the entry point has configured XLA)."""
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


# ---------------------------------------------------------------- curve features
CHUNK = 1024  # rows per call of the compiled curve program: one compilation per (space, T, n_points)


@functools.lru_cache(maxsize=32)
def curve_program(space, T: int, n_points: int) -> concurrent.futures.Future:
    """Future of the compiled program ``xs [CHUNK, dim] float32 -> R_x(t) [CHUNK, n_points]`` at
    ``n_points`` epochs evenly spread over 0..T−1; its compilation starts at the first call."""
    ts = np.linspace(0.0, T - 1.0, n_points).astype(np.float32)  # (numpy: no eager program)
    fn = jax.jit(lambda xs: space.curves(xs, T, ts), compiler_options=small_program_options())
    return compile_in_background(fn, jax.ShapeDtypeStruct((CHUNK, space.dim), jnp.float32))


def curve_features(space, xs, T: int, n_points: int = 20) -> np.ndarray:
    """``[n, n_points]``: R_x(t) of each row of ``xs`` at ``n_points`` epochs evenly spread over 0..T−1
    (float64 of the float32 curves), by :func:`curve_program` in chunks of :data:`CHUNK` rows."""
    xs = np.asarray(xs, np.float32)
    if xs.ndim != 2 or xs.shape[1] != space.dim:
        raise ConfigError(f"xs: expected shape [n, {space.dim}], got {xs.shape}")
    n = len(xs)
    if n == 0:
        return np.zeros((0, int(n_points)))
    program = curve_program(space, int(T), int(n_points)).result()
    padded = np.concatenate([xs, np.repeat(xs[:1], -n % CHUNK, 0)])
    return np.concatenate([np.asarray(program(padded[i:i + CHUNK]), np.float64)
                           for i in range(0, len(padded), CHUNK)])[:n]


def sample_features(space, seed: int, requests, theta, T: int, n_points: int = 20) -> list:
    """For each request ``(counters, n)``: ``(xs [n, dim], Z [n, n_points])``, numpy float64, where
    ``xs = relaxation.sample_host(numpy.random.default_rng([seed, *counters]), theta, space, n)`` (a
    stream of its own for each seed and counters) and ``Z = curve_features(space, xs, T, n_points)``;
    the curves of all requests in one pass of :func:`curve_program`."""
    reqs = []
    for counters, n in requests:
        counters, n = [int(c) for c in counters], int(n)
        if int(seed) < 0 or any(c < 0 for c in counters):
            raise ConfigError(f"sample_features: seed and counters must be >= 0, got {seed}, {counters}")
        reqs.append(relaxation.sample_host(np.random.default_rng([int(seed), *counters]), theta, space, n))
    Z = curve_features(space, np.concatenate(reqs), T, n_points)
    bounds = np.cumsum([0] + [len(xs) for xs in reqs])
    return [(xs, Z[lo:hi]) for xs, lo, hi in zip(reqs, bounds[:-1], bounds[1:])]


# ---------------------------------------------------------------- Gaussian process
def transform(fs) -> np.ndarray:
    """``log(f − min f + ε)``, standardized; ε = EPS_FRACTION · (median f − min f) with a floor."""
    fs = np.asarray(fs, np.float64)
    lo = fs.min()
    spread = float(np.median(fs) - lo)
    eps = EPS_FRACTION * spread if spread > 0 else 1.0
    eps = max(eps, 1e-12 * max(1.0, abs(lo)))
    y = np.log(fs - lo + eps)
    sd = y.std()
    return (y - y.mean()) / (sd if sd > 0 else 1.0)


def _sqdist(A, B):
    d = (A * A).sum(1)[:, None] + (B * B).sum(1)[None, :] - 2.0 * A @ B.T
    return np.maximum(d, 0.0)


class GP(NamedTuple):
    Z: np.ndarray          # [n, d] training features
    chol: np.ndarray       # lower Cholesky factor of K + σ²I
    alpha: np.ndarray      # (K + σ²I)⁻¹ y
    length: float
    noise: float
    log_ml: float


def _fit_one(D2, y, length, noise):
    K = np.exp(-0.5 * D2 / length ** 2) + (noise + 1e-8) * np.eye(len(y))
    try:
        c = scipy.linalg.cholesky(K, lower=True)
    except np.linalg.LinAlgError:
        return None
    a = scipy.linalg.cho_solve((c, True), y)
    log_ml = -0.5 * y @ a - np.log(np.diag(c)).sum() - 0.5 * len(y) * np.log(2 * np.pi)
    return c, a, float(log_ml)


def fit(Z, y) -> GP:
    with _one_blas_thread():
        return _fit(Z, y)


def _fit(Z, y) -> GP:
    """The GP with the grid's (ℓ, σ²) of largest marginal likelihood for features ``Z [n, d]`` and a
    standardized target ``y [n]``."""
    Z = np.asarray(Z, np.float64)
    y = np.asarray(y, np.float64)
    if Z.ndim != 2 or len(Z) != len(y) or len(y) < 1:
        raise ConfigError(f"surrogate: need features [n, d] and n targets, got {Z.shape} and {y.shape}")
    D2 = _sqdist(Z, Z)
    off = np.sqrt(D2[np.triu_indices(len(Z), 1)])
    med = float(np.median(off[off > 0])) if np.any(off > 0) else 1.0
    best = None
    for lf in LENGTH_GRID:
        for noise in NOISE_GRID:
            r = _fit_one(D2, y, lf * med, noise)
            if r is not None and (best is None or r[2] > best.log_ml):
                best = GP(Z, r[0], r[1], lf * med, noise, r[2])
    if best is None:
        raise ConfigError("surrogate: no kernel of the grid gives a positive-definite covariance")
    return best


def predict(gp: GP, Zs, return_sd: bool = True):
    """Posterior mean (and standard deviation) of the standardized target at features ``Zs [m, d]``."""
    with _one_blas_thread():
        return _predict(gp, Zs, return_sd)


def _predict(gp, Zs, return_sd):
    Ks = np.exp(-0.5 * _sqdist(np.asarray(Zs, np.float64), gp.Z) / gp.length ** 2)
    mean = Ks @ gp.alpha
    if not return_sd:
        return mean
    v = scipy.linalg.solve_triangular(gp.chol, Ks.T, lower=True)
    var = np.maximum(1.0 - (v * v).sum(0), 1e-12)
    return mean, np.sqrt(var)


# ---------------------------------------------------------------- trust region
def _kl_dirichlet(a, b):
    # KL(Dir(a) ‖ Dir(b)) = log Γ(Σa) − Σ log Γ(a_i) − log Γ(Σb) + Σ log Γ(b_i) + Σ (a_i − b_i)(ψ(a_i) − ψ(Σa))
    gl, dg = scipy.special.gammaln, scipy.special.digamma
    a0, b0 = a.sum(-1), b.sum(-1)
    return (gl(a0) - gl(a).sum(-1) - gl(b0) + gl(b).sum(-1)
            + ((a - b) * (dg(a) - dg(a0)[..., None])).sum(-1))


def kl_divergence(theta_p, theta_q, space) -> float:
    """KL(p_θp ‖ p_θq) between two Dirichlet × Beta distributions of ``space`` (a sum over the
    independent factors; a Beta(a, b) is a two-component Dirichlet)."""
    S, B = relaxation.sizes(space)
    p = np.asarray(theta_p, np.float64)
    q = np.asarray(theta_q, np.float64)
    total = 0.0
    if S:
        total += float(_kl_dirichlet(p[:S], q[:S]))
    if B:
        total += float(_kl_dirichlet(p[S:].reshape(B, 2), q[S:].reshape(B, 2)).sum())
    return total
