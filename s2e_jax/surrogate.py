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
    controller = _threadpool_controller()
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


@functools.lru_cache(maxsize=1)
def _threadpool_controller():
    # made once (at the first fit, after numpy's and scipy's BLAS are loaded): finding the loaded
    # libraries is what costs (docs/search.md, "Searcher overhead")
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # pragma: no cover
        return None
    return ThreadpoolController()


# ---------------------------------------------------------------- curve features
ROWS = 256  # curve features are computed on row counts padded to a multiple of this


@functools.lru_cache(maxsize=32)
def _curve_fn(space, T: int, n_points: int):
    ts = jnp.asarray(np.linspace(0.0, T - 1.0, n_points), jnp.float32)

    def one(x):
        params = space.decode(x, T)
        return jax.vmap(lambda t: space.rate(t, params, T))(ts)

    return jax.jit(jax.vmap(one))


def curve_features(space, xs, T: int, n_points: int = 20) -> np.ndarray:
    """``[n, n_points]``: R_x(t) of each row of ``xs`` at ``n_points`` epochs evenly spread over 0..T−1."""
    xs = np.asarray(xs, np.float32)
    if xs.ndim != 2 or xs.shape[1] != space.dim:
        raise ConfigError(f"xs: expected shape [n, {space.dim}], got {xs.shape}")
    n = len(xs)
    padded = -(-max(n, 1) // ROWS) * ROWS  # a few compiled shapes, whatever the history's length
    xs = np.concatenate([xs, np.repeat(xs[:1] if n else np.full((1, space.dim), 0.5, np.float32), padded - n, 0)])
    return np.asarray(_curve_fn(space, int(T), int(n_points))(jnp.asarray(xs)), np.float64)[:n]


# ---------------------------------------------------------------- fused sampling + curve features
SAMPLE_CHUNK = 512  # rows per call of the fused program below (see sample_features)
_NO_COUNTER = -1


def small_program_options():
    """XLA options of the default search's small programs (sampling + curves, the estimate): on the
    CPU optimization level 1, which compiles the gamma sampler faster than the default level and gives
    bit-identical values (level 0, as for the trainer's init programs, changed the last bits; figures in
    docs/search.md, "Searcher overhead"). Elsewhere XLA's defaults. Read when the first program is
    built (after the entry point has configured XLA)."""
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


@functools.lru_cache(maxsize=32)
def _sample_curve_fn(space, T: int, n_points: int):
    S, B = relaxation.sizes(space)
    ts = jnp.asarray(np.linspace(0.0, T - 1.0, n_points), jnp.float32)

    def curve(x):
        params = space.decode(x, T)
        return jax.vmap(lambda t: space.rate(t, params, T))(ts)

    def key_of(seed, counters):  # = search._key(seed, *counters), counters < 0 skipped
        key = jax.random.PRNGKey(seed)
        for i in range(counters.shape[0]):
            key = jnp.where(counters[i] >= 0, jax.random.fold_in(key, counters[i]), key)
        return key

    def fn(seed, counters, starts, split, theta):
        # rows r < split: row starts[0] + r of the draw keyed by counters[0]; the others: row
        # starts[1] + r − split of the draw keyed by counters[1]
        r = jnp.arange(SAMPLE_CHUNK)
        first = r < split
        key = jnp.where(first[:, None], key_of(seed, counters[0])[None], key_of(seed, counters[1])[None])
        keys = jax.vmap(jax.random.fold_in)(key, jnp.where(first, starts[0] + r, starts[1] + r - split))
        xs = jax.vmap(relaxation._sample_one, in_axes=(0, None, None, None))(keys, theta, S, B)
        return xs, jax.vmap(curve)(xs)

    return jax.jit(fn, compiler_options=small_program_options())


def _pack(sizes):
    """Chunks of SAMPLE_CHUNK rows, each a list of at most two (request, first row, rows)."""
    chunks, cur, room = [], [], SAMPLE_CHUNK
    for i, n in enumerate(sizes):
        done = 0
        while done < n:
            if room == 0 or len(cur) == 2:
                chunks.append(cur)
                cur, room = [], SAMPLE_CHUNK
            take = min(room, n - done)
            cur.append((i, done, take))
            done += take
            room -= take
    return chunks + ([cur] if cur else [])


def sample_features(space, seed: int, requests, theta, T: int, n_points: int = 20) -> list:
    """For each request ``(counters, n)``: ``(xs [n, dim], Z [n, n_points])``, numpy float64, where
    ``xs = relaxation.sample(key, theta, space, n)`` with ``key = fold_in(...fold_in(PRNGKey(seed),
    counters[0])..., counters[-1])`` (at most two counters, each in [0, 2³¹)) and
    ``Z = curve_features(space, xs, T, n_points)``.

    Bit-identical to those calls (tests/test_search.py), but all requests are drawn by one compiled
    program of :data:`SAMPLE_CHUNK` rows (a chunk may hold the rows of two requests), called
    ⌈Σn / SAMPLE_CHUNK⌉ times or once more: no recompilation for any n or counters, one dispatch per
    chunk, no eager operations. (A chunk of 512 rows reproduced relaxation.sample's 64-row chunks bit
    for bit on the CPU; 1024 rows did not, in the last bit of the simplex part.)"""
    reqs = []
    for counters, n in requests:
        counters, n = [int(c) for c in counters], int(n)
        if len(counters) > 2 or any(c < 0 or c >= 2 ** 31 for c in counters):
            raise ConfigError(f"sample_features: expected at most two counters in [0, 2**31), got {counters}")
        if n < 1:
            raise ConfigError(f"samples: must be >= 1, got {n}")
        reqs.append((counters, n))
    if not 0 <= int(seed) < 2 ** 32:  # (PRNGKey of larger seeds: the plain calls)
        out = []
        for counters, n in reqs:
            key = jax.random.PRNGKey(int(seed))
            for c in counters:
                key = jax.random.fold_in(key, c)
            xs = np.asarray(relaxation.sample(key, theta, space, n), np.float64)
            out.append((xs, curve_features(space, xs, T, n_points)))
        return out
    fn = _sample_curve_fn(space, int(T), int(n_points))
    ctr = [np.asarray(c + [_NO_COUNTER] * (2 - len(c)), np.int32) for c, _ in reqs]
    th = np.asarray(theta, np.float32)
    seed = np.uint32(seed)
    chunks = _pack([n for _, n in reqs])

    def run(chunk):
        (i, s0, n0), (j, s1, _) = chunk[0], chunk[-1]
        out = fn(seed, np.stack([ctr[i], ctr[j]]), np.asarray([s0, s1], np.int32),
                 np.int32(n0 if len(chunk) == 2 else SAMPLE_CHUNK), th)
        return np.asarray(out[0]), np.asarray(out[1])

    outs = [run(c) for c in chunks]
    parts = [([], []) for _ in reqs]
    for chunk, (xs, z) in zip(chunks, outs):
        at = 0
        for i, _, take in chunk:
            parts[i][0].append(xs[at:at + take])
            parts[i][1].append(z[at:at + take])
            at += take
    return [(np.concatenate(a).astype(np.float64), np.concatenate(b).astype(np.float64)) for a, b in parts]


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
