"""R(t): how many small-loss samples to keep at epoch t (Algorithm 1, step 3).

Every schedule is a pure jnp function ``rate(t, params, T) -> R`` of the epoch ``t`` (a float, traced)
and a parameter array ``params`` (traced), so a training can change either without recompiling, and a
batch of K schedules is a ``vmap`` away. A search space (:class:`Space`) adds ``decode``, which maps a
search point ``x`` — a simplex part (Dirichlet) followed by a box part in [0, 1] (Beta) — to ``params``.

Spaces: ``s2e`` (eq. 4 with Table 1; ``s2e_paper``: with section 3.3.2's ranges, see DEFAULT_RANGES), and the ablations of Table 2: ``coteaching`` (eq. 1), ``single``
(one basis function of Table 1), ``rbf`` and ``mlp`` (general function approximators of t).

``NAME@S`` is space NAME on a clock running S times faster: R(t) = R_NAME(S t) over S T epochs. Table 1's
decay terms act on the epoch t itself (e^{-a2 t^a1}, (1 + a2 t)^{-a1}) with ranges made for 200
epochs, so a training shrunk to T epochs keeps the paper's schedule shapes with ``s2e@{200/T}`` (as
the learning-rate schedule and eq. (1)'s t_k are scaled).
"""
from __future__ import annotations

import dataclasses
import functools
import json
import warnings
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from s2e_jax.config import ConfigError, save_json

R_MIN = 0.01  # the authors' release caps the forget rate at 0.99

# Ranges of a1..a4 for the Table 1 basis functions: decay exponent a1, decay rate a2, rise weight a3,
# rise exponent a4. The default (space ``s2e``) departs from section 3.3.2 ("we set all beta_i's to be
# in the range [0, 1]"): a2, a3 in [0, 0.5], a4 in [0, 2], taken at the start as the authors' released
# code's (not verified since: that code is not at hand) and kept because every search under results/
# used them. ``s2e_paper`` is eq. (4) with the paper's ranges, PAPER_RANGES.
DEFAULT_RANGES = ((0.0, 1.0), (0.0, 0.5), (0.0, 0.5), (0.0, 2.0))
PAPER_RANGES = ((0.0, 1.0),) * 4  # section 3.3.2


def _clip(r):
    return jnp.clip(r, R_MIN, 1.0)


# ---------------------------------------------------------------- eq. (1): Co-teaching's schedule
def coteaching_rate(t, params, T=None):
    """Eq. (1): R(t) = 1 - tau * min((t / t_k)^c, 1); ``params = (tau, t_k, c)``."""
    del T
    tau, t_k, c = params[0], params[1], params[2]
    return _clip(1.0 - tau * jnp.minimum((t / t_k) ** c, 1.0))


def constant_rate(t, params, T=None):
    """R(t) = 1: keep every sample (Standard training)."""
    del params, T
    return jnp.ones_like(jnp.asarray(t, jnp.float32))


# ---------------------------------------------------------------- Table 1: basis functions
def _pow(t, a):
    # t**a with 0**0 = 1 and a gradient-safe t = 0 (t >= 0 here).
    return jnp.where(t > 0, jnp.power(jnp.maximum(t, 1e-12), a), jnp.where(a == 0, 1.0, 0.0))


def _decay_exp(t, a1, a2):
    return jnp.exp(-a2 * _pow(t, a1))  # e^{-a2 t^a1}


def _decay_poly(t, a1, a2):
    return (1.0 + a2 * t) ** (-a1)  # 1 / (1 + a2 t)^a1


def _rise_pow(t, a4, T):
    return _pow(t / T, a4)  # (t / T)^a4


def _rise_log(t, a4, T):
    return jnp.log1p(_pow(t, a4)) / jnp.log1p(_pow(jnp.asarray(T, jnp.float32), a4))  # log(1+t^a4)/log(1+T^a4)


def basis(i, t, a, T):
    """Table 1 basis function f_{i+1}(t; a), ``a = (a1, a2, a3, a4)``, ``i`` in 0..3 (static)."""
    a1, a2, a3, a4 = a[0], a[1], a[2], a[3]
    decay = _decay_exp(t, a1, a2) if i in (0, 1) else _decay_poly(t, a1, a2)
    rise = _rise_pow(t, a4, T) if i in (0, 2) else _rise_log(t, a4, T)
    # f(0) = 1 + a3 * rise(0); rise(0) = 0 unless a4 == 0, keep R(0) = 1 by masking t = 0.
    return decay + a3 * jnp.where(t > 0, rise, 0.0)


def s2e_rate(t, params, T):
    """Eq. (4): R(t) = sum_i alpha_i f_i(t; a_i); ``params = [alpha (4), a (4x4) flattened]``."""
    alpha, a = params[:4], params[4:].reshape(4, 4)
    return _clip(sum(alpha[i] * basis(i, t, a[i], T) for i in range(4)))


def _scale(u, ranges):
    lo = jnp.asarray([r[0] for r in ranges], jnp.float32)
    hi = jnp.asarray([r[1] for r in ranges], jnp.float32)
    return lo + (hi - lo) * u


# ---------------------------------------------------------------- ablation spaces (Table 2)
def _rbf_rate(t, params, T):
    # 1 input (t / T), 4 Gaussian RBF units, sigmoid output; params = [centers, precisions (the decoded
    # 10^(3x): they multiply the squared distance), weights, bias]. R(0) = 1, as every space here:
    # Assumption 1's start, which section 4.2.1 does not impose on these spaces (one epoch of difference).
    c, w, v, b = params[0:4], params[4:8], params[8:12], params[12]
    h = jnp.exp(-((t / T - c) ** 2) * w)
    r = jax.nn.sigmoid(jnp.dot(v, h) + b)
    return _clip(jnp.where(t > 0, r, 1.0))


def _mlp_rate(t, params, T):
    # 1 input (t / T), 4 ReLU units, sigmoid output; params = [w1 (4), b1 (4), w2 (4), b2]; R(0) = 1 (as rbf).
    w1, b1, w2, b2 = params[0:4], params[4:8], params[8:12], params[12]
    h = jnp.maximum(w1 * (t / T) + b1, 0.0)
    r = jax.nn.sigmoid(jnp.dot(w2, h) + b2)
    return _clip(jnp.where(t > 0, r, 1.0))


@dataclasses.dataclass(frozen=True)
class Space:
    """A search space of schedules.

    ``x`` has ``n_simplex`` simplex coordinates (Dirichlet, 0 for none) followed by ``n_box``
    coordinates in [0, 1] (Beta). ``decode(x, T) -> params``; ``rate(t, params, T) -> R`` in [R_MIN, 1].
    """

    name: str
    n_simplex: int
    n_box: int
    decode: Callable
    rate: Callable

    @property
    def dim(self) -> int:
        return self.n_simplex + self.n_box

    def curves(self, xs, T, ts=None):
        """``[n, len(ts)]``: R(t) of each row of ``xs [n, dim]`` at the epochs ``ts`` (default 0..T-1);
        pure jnp, to use under ``jit`` and ``vmap``."""
        ts = jnp.arange(T, dtype=jnp.float32) if ts is None else ts

        def one(x):
            params = self.decode(x, T)
            return jax.vmap(lambda t: self.rate(t, params, T))(ts)

        return jax.vmap(one)(xs)

    def curve(self, x, T):
        """R(t) for t = 0..T-1 of the point ``x`` (numpy, host)."""
        return np.asarray(self.curves(jnp.asarray(x, jnp.float32)[None], T)[0])


def make_s2e_space(ranges=DEFAULT_RANGES, name: str = "s2e") -> Space:
    """Eq. (4) with the four basis functions of Table 1: x = [alpha (simplex, 4), beta (4x4 in [0,1])],
    beta scaled to ``ranges`` (a1..a4)."""
    ranges = tuple(tuple(float(v) for v in r) for r in ranges)

    def decode(x, T=None):
        return jnp.concatenate([x[:4], _scale(x[4:].reshape(4, 4), ranges).reshape(-1)])

    return Space(name, 4, 16, decode, s2e_rate)


def make_single_space(i: int, ranges=DEFAULT_RANGES) -> Space:
    """One basis function f_i of Table 1 (the 'Single' ablation): x = beta_i in [0,1]^4."""

    def decode(x, T=None):
        alpha = jnp.zeros(4).at[i].set(1.0)
        a = jnp.zeros((4, 4)).at[i].set(_scale(x, ranges))
        return jnp.concatenate([alpha, a.reshape(-1)])

    return Space(f"single{i + 1}", 0, 4, decode, s2e_rate)


def make_coteaching_space(max_tk: float | None = None) -> Space:
    """Eq. (1)'s space: tau in [0, 0.99], t_k in [1, T] (or [1, max_tk]), c in [0.5, 2] continuous
    (Appendix B.1 samples c from {0.5, 1, 2}; a continuous c contains those and lets the gradient-
    based searchers move)."""

    def decode(x, T):
        hi = float(max_tk if max_tk is not None else T)
        return jnp.stack([x[0] * 0.99, 1.0 + x[1] * (hi - 1.0), 0.5 + 1.5 * x[2]])

    return Space("coteaching", 0, 3, decode, coteaching_rate)


def make_rbf_space() -> Space:
    """RBF network: centers in [0,1], widths 10^[0,3], output weights and bias in [-10, 10]."""

    def decode(x, T=None):
        return jnp.concatenate([x[0:4], 10.0 ** (3.0 * x[4:8]), -10.0 + 20.0 * x[8:13]])

    return Space("rbf", 0, 13, decode, _rbf_rate)


def make_mlp_space() -> Space:
    """MLP: first-layer weights and biases in [-10, 10], output weights and bias in [-10, 10]."""

    def decode(x, T=None):
        return -10.0 + 20.0 * x

    return Space("mlp", 0, 13, decode, _mlp_rate)


SPACES = ("s2e", "s2e_paper", "coteaching", "single", "single1", "single2", "single3", "single4", "rbf", "mlp")


def _time_scaled(base: Space, scale: float, name: str) -> Space:
    def decode(x, T):
        return base.decode(x, T * scale)

    def rate(t, params, T):
        return base.rate(t * scale, params, T * scale)

    return Space(name, base.n_simplex, base.n_box, decode, rate)


def get_space(name: str, ranges=DEFAULT_RANGES) -> Space:
    """The search space called ``name`` (``single`` is ``single1``; ``NAME@S``: NAME with time scaled by S).

    One object per (name, ranges) in a process, so that what is compiled or cached for a space (the
    default search's curve program, say) is reused by every search of it."""
    try:
        ranges = tuple((float(lo), float(hi)) for lo, hi in ranges)
    except (TypeError, ValueError):
        raise ConfigError(f"ranges: expected (low, high) pairs, got {ranges!r}") from None
    return _get_space(name, ranges)


@functools.lru_cache(maxsize=None)
def _get_space(name, ranges) -> Space:
    if isinstance(name, str) and "@" in name:
        base, _, sc = name.partition("@")
        try:
            scale = float(sc)
        except ValueError:
            scale = float("nan")
        if not np.isfinite(scale) or scale <= 0:
            raise ConfigError(f"space: the time scale of {name!r} must be a positive number (e.g. s2e@20)")
        return _time_scaled(_get_space(base, ranges), scale, name)
    if name == "s2e":
        return make_s2e_space(ranges)
    if name == "s2e_paper":
        return make_s2e_space(PAPER_RANGES, "s2e_paper")
    if name == "coteaching":
        return make_coteaching_space()
    if name in ("single", "single1", "single2", "single3", "single4"):
        return make_single_space(int(name[-1]) - 1 if name != "single" else 0, ranges)
    if name == "rbf":
        return make_rbf_space()
    if name == "mlp":
        return make_mlp_space()
    raise ConfigError(f"space: unknown search space '{name}' (expected one of {', '.join(SPACES)})")


def save_schedule_file(path: str, space: Space, x, epochs: int, **extra):
    """Write a searched schedule (``best_schedule.json``) that ``train --schedule`` reuses."""
    x = np.asarray(x, np.float64)
    save_json(dict(space=space.name, x=x.tolist(), epochs=int(epochs),
                   curve=space.curve(x, epochs).tolist(), **extra), path)


def load_schedule_file(path: str, epochs: Optional[int] = None):
    """``(space, x)`` from a ``best_schedule.json``; errors name the field.

    ``x`` must lie in the space's domain (simplex part ≥ 0 summing to 1, box part in [0, 1]). Given
    ``epochs`` other than the file's, a warning says that R(t) is not the searched curve (the rise
    terms of eq. 4 use t/T, the decays absolute epochs).
    """
    try:
        with open(path) as f:
            d = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"schedule: file not found: {path}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"schedule: not valid JSON ({e}): {path}") from None
    if not isinstance(d, dict) or "space" not in d or "x" not in d:
        raise ConfigError(f"schedule: expected an object with 'space' and 'x': {path}")
    space = get_space(d["space"])
    x = np.asarray(d["x"], np.float32)
    if x.shape != (space.dim,) or not np.all(np.isfinite(x)):
        raise ConfigError(f"schedule: 'x' must hold {space.dim} finite numbers for space "
                          f"'{space.name}', got shape {x.shape}")
    simplex, box = x[:space.n_simplex].astype(np.float64), x[space.n_simplex:]
    tol = 1e-4
    if space.n_simplex and (np.any(simplex < -tol) or abs(simplex.sum() - 1.0) > tol):
        raise ConfigError(f"schedule: the first {space.n_simplex} entries of 'x' (the weights α) must be "
                          f">= 0 and sum to 1, got {simplex.tolist()}: {path}")
    if np.any(box < -tol) or np.any(box > 1 + tol):
        raise ConfigError(f"schedule: the last {space.n_box} entries of 'x' must lie in [0, 1], "
                          f"got {box.tolist()}: {path}")
    saved = d.get("epochs")
    if saved is not None and (isinstance(saved, bool) or not isinstance(saved, int) or saved < 1):
        raise ConfigError(f"schedule: 'epochs' must be a positive integer, got {saved!r}: {path}")
    if epochs is not None and saved is not None and saved != int(epochs):
        warnings.warn(f"schedule: {path} was searched for {saved} epochs and is used for {epochs}: "
                      f"R(t) is not the searched curve (see its 'curve')", stacklevel=2)
    return space, x
