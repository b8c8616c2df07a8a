"""Search algorithms over a schedule space, behind one ask/tell interface (Sections 3.4 and 4.2.2).

The search sees a batched objective ``objective(xs [K, dim], budget=None) -> fs [K]`` (lower is
better; ``budget`` is a number of epochs and is only passed by :class:`Hyperband`; the driver calls
``objective(xs)`` when the budget is ``None`` = full training). The search budget is counted in
trainings (objective evaluations of single points), as in Figure 6 of the paper.

Searchers (all :class:`Searcher`):

* :class:`SurrogateNewton` — the default S2E search (algo ``newton``): the relaxation's Newton step
  with ∇J, ∇²J estimated (eq. 7, Proposition 1) on thousands of samples scored by a Gaussian-process
  surrogate of f on the curve R_x(t), fitted to every training so far; KL trust region; half of each
  batch at the surrogate's lowest confidence bounds (see docs/search.md);
* :class:`Relaxation` — stochastic relaxation (eq. 6) with the update of eq. (8); ``curvature``
  selects H: ``'newton'`` (S2E as published, algo ``newton_paper``: H = ∇²J of Proposition 1 from
  the K samples of one iteration), ``'gd'`` (H = I) or ``'ng'`` (H = exact Fisher matrix, natural gradient);
* :class:`RandomSearch` — uniform samples (p_θ with θ = 1);
* :class:`TPE` — Bayesian optimization with Optuna's TPE (imported lazily);
* :class:`Hyperband` — Li et al. (2017), budget = epochs.

Interface: ``ask(n=None) -> (xs, budget)``, ``tell(xs, fs) -> records``, ``best() -> (x, f)``,
``state_dict()`` (JSON-serializable) and ``load_state_dict(d)``; ``history`` is a list of records
``{iteration, trial, x, f, budget, cost, failed}``. All randomness is derived from ``seed`` and the
iteration counter (``fold_in(PRNGKey(seed), iteration)``; the default newton's numpy streams
``default_rng([seed, iteration, purpose])``), never from a stateful RNG, so a searcher
restored from ``state_dict`` asks exactly what the uninterrupted one would. ``ask`` is idempotent
until the matching ``tell``.

:func:`run_search` is the ask → objective → tell loop; :func:`make_searcher` the factory.
"""
from __future__ import annotations

import functools
import inspect
import math
import warnings
from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from s2e_jax import relaxation, surrogate
from s2e_jax.config import ConfigError

ALGOS = ("newton", "newton_paper", "gd", "ng", "random", "tpe", "hyperband")
CURVATURES = ("newton", "gd", "ng")
STATE_VERSION = 1


def _check_int(field, value, lo):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
        raise ConfigError(f"{field}: must be an integer >= {lo}, got {value!r}")
    return int(value)


def _check_pos(field, value, allow_zero=False):
    ok = (not isinstance(value, bool) and isinstance(value, (int, float, np.floating, np.integer))
          and math.isfinite(value) and (value >= 0 if allow_zero else value > 0))
    if not ok:
        raise ConfigError(f"{field}: must be a finite number {'>=' if allow_zero else '>'} 0, got {value!r}")
    return float(value)


def _key(seed: int, *counters: int):
    """The jax key of one draw: ``fold_in(PRNGKey(seed), counter)`` (stateless, hence resumable)."""
    key = jax.random.PRNGKey(seed)
    for c in counters:
        key = jax.random.fold_in(key, c)
    return key


# ====================================================================== base class
class Searcher:
    """Common ask/tell bookkeeping: pending ask, failed values, history, best, state.

    Args:
      space: a :class:`s2e_jax.schedules.Space`.
      samples: K, the number of points per ask (the batch given to the objective).
      seed: the seed of every random draw.
      worst: the value recorded for failed (non-finite) evaluations; ``None`` uses the worst finite
        value seen so far (e.g. pass 1.0 when f is an error rate).
    """

    name = "base"

    def __init__(self, space, samples: int = 8, seed: int = 0, worst: Optional[float] = None):
        relaxation.sizes(space)  # validates the space
        self.space = space
        self.dim = int(space.dim)
        self.samples = _check_int("samples", samples, 1)
        self.seed = _check_int("seed", seed, 0)
        if worst is not None:
            worst = float(worst)
            if not math.isfinite(worst):
                raise ConfigError(f"worst: must be a finite number, got {worst!r}")
        self.worst = worst
        self.iteration = 0          # completed ask/tell rounds
        self.history: list[dict] = []
        self._pending = None        # (xs, budget) of the last ask, until told

    # -------------------------------------------------------------- to implement
    def _propose(self, n: int):
        """``(xs [n, dim], budget)`` for the current iteration (deterministic given the state)."""
        raise NotImplementedError

    def _update(self, xs: np.ndarray, fs: np.ndarray, failed: np.ndarray):
        """Learn from one told batch (``fs`` already has failed values filled in)."""

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, d: dict):
        pass

    # -------------------------------------------------------------- interface
    def ask(self, n: Optional[int] = None):
        """``(xs [n, dim] float64, budget)``: the points to evaluate next (``n`` defaults to K).

        Calling ``ask`` again before ``tell`` returns the same points.
        """
        if n is not None:
            n = _check_int("n", n, 1)
        if self._pending is None or (n is not None and len(self._pending[0]) != n):
            xs, budget = self._propose(n if n is not None else self.samples)
            self._pending = (np.asarray(xs, np.float64), budget)
        xs, budget = self._pending
        return xs.copy(), budget

    def tell(self, xs, fs) -> list[dict]:
        """Report ``fs [n]`` for the points ``xs`` of the last ask; returns the new history records.

        Non-finite values (NaN: failed training) are replaced by ``worst`` (or the worst finite value
        seen so far) and recorded with ``failed: True``; the search continues.
        """
        if self._pending is None:
            raise ConfigError("tell: no pending ask (call ask() first)")
        pxs, budget = self._pending
        xs = np.asarray(xs, np.float64).reshape(len(pxs), -1) if np.size(xs) == pxs.size else None
        if xs is None or not np.array_equal(xs, pxs):
            raise ConfigError("tell: xs do not match the points of the last ask()")
        fs = np.asarray(fs, np.float64).reshape(-1)
        if fs.shape != (len(pxs),):
            raise ConfigError(f"tell: expected {len(pxs)} objective values, got {fs.size}")
        failed = ~np.isfinite(fs)
        if failed.any():
            fs = fs.copy()
            fs[failed] = self._fill_value(fs[~failed])
        cost = self._cost(budget)
        records = []
        for x, f, bad in zip(pxs, fs, failed):
            records.append({"iteration": self.iteration, "trial": len(self.history) + len(records),
                            "x": [float(v) for v in x], "f": float(f), "budget": budget,
                            "cost": cost, "failed": bool(bad)})
        self._update(pxs, fs, failed)
        self.history.extend(records)
        self.iteration += 1
        self._pending = None
        return records

    def _fill_value(self, finite_now: np.ndarray) -> float:
        if self.worst is not None:
            return self.worst
        seen = [r["f"] for r in self.history if not r["failed"]] + [float(v) for v in finite_now]
        return max(seen) if seen else 0.0  # nothing finite yet: any constant (a no-op for the updates)

    def _cost(self, budget) -> float:
        """Cost of one evaluation in full-training equivalents."""
        return 1.0

    @property
    def cost(self) -> float:
        """Total cost so far in full-training equivalents (= number of trainings unless Hyperband)."""
        return float(sum(r["cost"] for r in self.history))

    def summary(self) -> dict:
        """Counts for logs: trainings (evaluations), objective calls, cost in full-training
        equivalents (differs from trainings for Hyperband), failed trainings and the best value."""
        return {"algo": self.name, "iterations": self.iteration, "objective_calls": self.iteration,
                "trainings": len(self.history), "cost": self.cost,
                "failed": sum(1 for r in self.history if r["failed"]), "best_f": self.best()[1]}

    def best(self):
        """``(x, f)`` of the best non-failed evaluation at full budget (``(None, inf)`` if none)."""
        recs = [r for r in self.history if not r["failed"] and r["cost"] >= 1.0]
        if not recs:
            return None, float("inf")
        r = min(recs, key=lambda r: r["f"])
        return np.asarray(r["x"]), r["f"]

    def state_dict(self) -> dict:
        """JSON-serializable state (seed, counters, history, algorithm-specific state)."""
        d = {"algo": self.name, "version": STATE_VERSION, "space": self.space.name, "dim": self.dim,
             "samples": self.samples, "seed": self.seed, "worst": self.worst,
             "iteration": self.iteration, "history": [dict(r) for r in self.history]}
        d.update(self._extra_state())
        return d

    def load_state_dict(self, d: dict):
        """Restore a state from :meth:`state_dict` (same algorithm and space; options from the constructor)."""
        if not isinstance(d, dict):
            raise ConfigError(f"state: expected a dict, got {type(d).__name__}")
        if d.get("algo") != self.name:
            raise ConfigError(f"state: saved by algo {d.get('algo')!r}, cannot load into {self.name!r}")
        if d.get("dim") != self.dim:
            raise ConfigError(f"state: saved for a space of dimension {d.get('dim')}, this space has {self.dim}")
        if d.get("samples") != self.samples:
            raise ConfigError(f"state: saved with samples={d.get('samples')}, this searcher has {self.samples}")
        if d.get("space") != self.space.name:  # spaces of one dimension (rbf/mlp, single1..4) differ
            raise ConfigError(f"state: saved for space {d.get('space')!r}, this searcher searches {self.space.name!r}")
        if d.get("worst") != self.worst:
            raise ConfigError(f"state: saved with worst={d.get('worst')}, this searcher has {self.worst}")
        self._load_extra_state(d)  # checks its options before it changes anything; then the rest
        self.seed = int(d["seed"])
        self.iteration = int(d["iteration"])
        self.history = [dict(r) for r in d["history"]]
        self._pending = None
        return self


# ====================================================================== stochastic relaxation (eq. 6-8)
@functools.partial(jax.jit, static_argnums=(3, 4))
def _estimate(theta, xs, w, S, B):
    """Monte Carlo ∇J (eq. 7) and ∇²J (Proposition 1) from K samples and their weights w_i."""
    s = jax.vmap(jax.grad(relaxation._log_prob), in_axes=(None, 0, None, None))(theta, xs, S, B)     # [K, P]
    h = jax.vmap(jax.hessian(relaxation._log_prob), in_axes=(None, 0, None, None))(theta, xs, S, B)  # [K, P, P]
    g = jnp.mean(w[:, None] * s, axis=0)                                               # eq. (7)
    H = jnp.mean(w[:, None, None] * (h + s[:, :, None] * s[:, None, :]), axis=0)       # Proposition 1
    return g, H


def weights(fs, baseline: bool = True) -> np.ndarray:
    """w_i = f_i − b_i with the leave-one-out baseline b_i = mean_{j≠i} f_j (= K/(K−1)·(f_i − f̄)),
    or w_i = f_i without baseline (or when K = 1)."""
    fs = np.asarray(fs, np.float64)
    K = len(fs)
    if not baseline or K < 2:
        return fs
    return (fs - fs.mean()) * (K / (K - 1.0))


def _estimate_summed(theta, xs, w, S, B):
    """:func:`_estimate` computed with fewer operations, for thousands of samples: the weighted mean of
    the per-sample Hessians is the Hessian of the weighted mean of log p (linearity), the weighted outer
    products one matrix product. Equal to :func:`_estimate` up to float rounding (tests/test_search.py)."""
    K = xs.shape[0]
    log_probs = jax.vmap(relaxation._log_prob, in_axes=(None, 0, None, None))
    s = jax.vmap(jax.grad(relaxation._log_prob), in_axes=(None, 0, None, None))(theta, xs, S, B)     # [K, P]
    g = w @ s / K                                                                                     # eq. (7)
    H = jax.hessian(lambda th: w @ log_probs(th, xs, S, B) / K)(theta) + (s.T * w) @ s / K            # Prop. 1
    return g, H


@functools.lru_cache(maxsize=8)
def _summed_estimate_program(S: int, B: int, rows: int):
    """Future of :func:`_estimate_summed` compiled for ``rows`` samples, called as
    ``program(theta, xs, w)`` (the default newton's; compiled in the background, see
    :func:`surrogate.compile_in_background`)."""
    fn = jax.jit(_estimate_summed, static_argnums=(3, 4), compiler_options=surrogate.small_program_options())
    f = jnp.result_type(float)
    shape = jax.ShapeDtypeStruct
    return surrogate.compile_in_background(fn, shape((S + 2 * B,), f), shape((rows, S + B), f), shape((rows,), f), S, B)


def estimate(theta, xs, fs, space, baseline: bool = True, program=None):
    """``(g, H)``: the estimators of ∇J(θ) (eq. 7) and ∇²J(θ) (Proposition 1), numpy float64.

    g = 1/K Σ w_i ∇log p_θ(x_i),  H = 1/K Σ w_i [∇²log p_θ(x_i) + ∇log p_θ(x_i) ∇log p_θ(x_i)ᵀ],
    with w_i = f(x_i), or with ``baseline`` (K ≥ 2) w_i = f(x_i) − b_i, b_i the mean of the other
    K − 1 values (leave-one-out, :func:`weights`). Because E[∇log p] = 0 and
    E[∇²log p + ∇log p ∇log pᵀ] = ∇²∫p = 0, subtracting a b_i independent of x_i leaves both
    expectations unchanged: the leave-one-out estimators stay exactly unbiased while their variance
    drops (the plain sample-mean baseline would be biased by a factor (K−1)/K, i.e. O(1/K)).

    ``program``: a compiled estimate called as ``program(theta, xs, w)`` instead of :func:`_estimate`
    (the same values up to rounding), given numpy inputs of the default float dtype.
    """
    S, B = relaxation.sizes(space)
    w = weights(fs, baseline)
    if program is not None:
        f = jnp.result_type(float)
        g, H = program(np.asarray(theta, f), np.asarray(xs, f), np.asarray(w, f))
        return np.asarray(g, np.float64), np.asarray(H, np.float64)
    g, H = _estimate(relaxation._float(theta), relaxation._float(xs), relaxation._float(w), S, B)
    return np.asarray(g, np.float64), np.asarray(H, np.float64)


def safeguard(H, eta: float, L: float) -> np.ndarray:
    """Assumption 3(i): symmetrize H and replace its eigenvalues λ by clip(|λ|, η, L).

    The result is symmetric positive definite with spectrum in [η, L]; taking |λ| turns the
    negative-curvature directions of an indefinite Hessian into descent directions ("saddle-free"
    Newton) instead of ascent ones.
    """
    lam, V = _clipped_eigh(H, eta, L)
    return (V * lam) @ V.T


def _clipped_eigh(H, eta, L):
    H = np.asarray(H, np.float64)
    lam, V = scipy.linalg.eigh(0.5 * (H + H.T))  # (scipy: numpy's threaded OpenBLAS is slow at this size)
    return np.clip(np.abs(lam), eta, L), V


def solve_safeguarded(H, g, eta: float, L: float) -> np.ndarray:
    """safeguard(H, η, L)⁻¹ g, from the eigen-decomposition (V diag(1/λ') Vᵀ g)."""
    lam, V = _clipped_eigh(H, eta, L)
    return V @ ((V.T @ np.asarray(g, np.float64)) / lam)


def project(theta, theta_min: float) -> np.ndarray:
    """Projection onto {θ ≥ θ_min} (keeps p_θ a proper, unimodal-or-flat Dirichlet × Beta)."""
    return np.maximum(np.asarray(theta, np.float64), theta_min)


class Relaxation(Searcher):
    """Stochastic relaxation (eq. 6) minimized with the update of eq. (8); S2E when ``curvature='newton'``.

    Each iteration samples K points from p_θ (Algorithm 2, lines 3-6), estimates ∇J by eq. (7) and
    (Newton) ∇²J by Proposition 1 (line 7), and updates (line 8, eq. 8)

        θ ← Π_{θ ≥ θ_min}( θ − ρ H⁻¹ ∇J(θ) ),

    with H = safeguard(∇²J estimate) for ``'newton'``, H = I for ``'gd'`` and H = safeguard(Fisher)
    for ``'ng'`` (safeguard: Assumption 3(i), eigenvalues → clip(|λ|, η, L)).

    Eq. (8) in the paper prints ``θ + ρ H⁻¹ ∇J``; for the minimization of J in (6) the step must go
    against the gradient (the "−" of eq. 9), which is what is implemented.

    This implements the paper (eq. 7, Proposition 1, eq. 8, Assumption 3). The authors' released
    code (as reviewed for this project; not re-checked here) differs: it builds the update from the
    single best sample of each batch and multiplies the gradient elementwise by the curvature instead
    of solving H⁻¹g.

    Defaults (measured on the synthetic schedule-fitting objective of ``tests/test_search.py``):
    ρ = 1 (the undamped Newton / natural-gradient step; ρ = 2..4 concentrated p_θ faster there, see
    the project notes), η = 0.1 and L = 1e3 (with ``normalize`` the eigenvalues of the Proposition 1
    estimate were 1e-9..30: η caps the amplification of any direction at 1/η = 10, L is a formal
    bound that is rarely active), θ_min = 1 (as the authors' release: p_θ never becomes U-shaped).
    These η, L do not satisfy Theorem 1's conditions (2 − Lη + η² ≥ 0 and 2η² + Lη − 2 ≥ 0 need
    Lη ≈ 2), so its guarantee is not claimed for the defaults; ``eta=0.1, L=20`` would meet them.
    For ``'ng'`` the exact Fisher matrix is positive definite already; the same clip still applies,
    so once p_θ concentrates (smallest Fisher eigenvalue below η: 0.03 at a Beta(3, 3) block) NG's
    steps along an eigenvector of eigenvalue λ < η are shrunk by the factor η/λ. Pass a small ``eta``
    for the undamped natural gradient.

    Args (besides :class:`Searcher`'s):
      curvature: ``'newton'`` | ``'gd'`` | ``'ng'``.
      rho: step size ρ of eq. (8); ``None`` = :attr:`DEFAULT_RHO` of the curvature.
      eta, L: eigenvalue bounds η ≤ σ(H) ≤ L of Assumption 3 (newton, ng).
      theta_min: lower bound of θ after each update (1 as in the authors' release).
      baseline: subtract the leave-one-out mean of f (unbiased variance reduction, see :func:`estimate`).
      normalize: divide f by its sample standard deviation before estimating. Scaling f by c > 0
        scales both eq. (7) and Prop. 1 by c, so the Newton direction H⁻¹g is unchanged, but ρ, η, L
        become independent of the units of f (validation errors of schedules differ by 1e-3..1e-1);
        for GD and NG it makes the step size scale-free. (The per-batch std is itself random, so
        the normalized estimates are unbiased only up to that positive factor.)
    """

    DEFAULT_RHO = {"newton": 1.0, "gd": 1.0, "ng": 1.0}  # with normalize=True; the one place to change them

    def __init__(self, space, samples: int = 8, seed: int = 0, curvature: str = "newton",
                 rho: Optional[float] = None, eta: float = 0.1, L: float = 1e3,
                 theta_min: float = 1.0, baseline: bool = True, normalize: bool = True,
                 worst: Optional[float] = None):
        super().__init__(space, samples, seed, worst)
        if curvature not in CURVATURES:
            raise ConfigError(f"curvature: unknown value {curvature!r} (expected one of {', '.join(CURVATURES)})")
        self.curvature = curvature
        self.name = "newton_paper" if curvature == "newton" else curvature
        self.rho = _check_pos("rho", self.DEFAULT_RHO[curvature] if rho is None else rho)
        self.eta = _check_pos("eta", eta)
        self.L = _check_pos("L", L)
        if self.L < self.eta:
            raise ConfigError(f"L: must be >= eta ({self.eta}), got {self.L}")
        self.theta_min = _check_pos("theta_min", theta_min)
        self.baseline = bool(baseline)
        self.normalize = bool(normalize)
        self.theta = project(np.ones(relaxation.n_params(space)), self.theta_min)  # θ¹ = 1 (theta_init)
        self.last_step: dict = {}

    def _propose(self, n):
        key = _key(self.seed, self.iteration)
        xs = relaxation.sample(key, self.theta, self.space, n)  # Algorithm 2, line 4
        return np.asarray(xs, np.float64), None

    def direction(self, xs, fs) -> np.ndarray:
        """H⁻¹ ∇J(θ) from one batch (before the step size and projection)."""
        fs = np.asarray(fs, np.float64)
        if self.normalize and len(fs) >= 2:
            sd = float(np.std(fs))
            fs = fs / sd if sd > 0 else fs
        g, Hn = estimate(self.theta, xs, fs, self.space, self.baseline, program=self._estimate_program())
        if self.curvature == "gd":
            d = g                                                                    # H = I
        else:
            if self.curvature == "newton":
                H = Hn                                                               # Proposition 1
            else:
                H = np.asarray(relaxation.fisher(self.theta, self.space), np.float64)  # natural gradient
            d = solve_safeguarded(H, g, self.eta, self.L)                            # Assumption 3(i)
        self.last_step = {"grad_norm": float(np.linalg.norm(g)), "step_norm": float(self.rho * np.linalg.norm(d))}
        return d

    def _estimate_program(self):
        return None  # estimate()'s default program

    def _update(self, xs, fs, failed):
        if failed.all():
            return  # no information about J's slope in this batch
        d = self.direction(xs, fs)
        self.theta = project(self.theta - self.rho * d, self.theta_min)             # eq. (8), minimization

    def mean(self) -> np.ndarray:
        """E_θ[x] under the current θ."""
        return np.asarray(relaxation.mean(self.theta, self.space), np.float64)

    def _extra_state(self):
        return {"theta": [float(v) for v in self.theta],
                "options": {"rho": self.rho, "eta": self.eta, "L": self.L, "theta_min": self.theta_min,
                            "baseline": self.baseline, "normalize": self.normalize}}

    def _load_extra_state(self, d):
        mine = self._extra_state()["options"]
        for k, v in d.get("options", {}).items():  # a resumed search must step as the one that saved it
            if mine.get(k) != v:
                raise ConfigError(f"state: saved with {k}={v}, this searcher has {mine.get(k)}")
        theta = np.asarray(d["theta"], np.float64)
        if theta.shape != self.theta.shape:
            raise ConfigError(f"state: theta has {theta.size} entries, expected {self.theta.size}")
        self.theta = theta


def NewtonPaper(space, **kw) -> Relaxation:
    """S2E's searcher as published (algo ``newton_paper``): :class:`Relaxation` with ``curvature='newton'``."""
    return Relaxation(space, curvature="newton", **kw)


def GD(space, **kw) -> Relaxation:
    """Gradient descent on J: :class:`Relaxation` with ``curvature='gd'`` (H = I)."""
    return Relaxation(space, curvature="gd", **kw)


def NG(space, **kw) -> Relaxation:
    """Natural gradient on J: :class:`Relaxation` with ``curvature='ng'`` (H = Fisher)."""
    return Relaxation(space, curvature="ng", **kw)


# ====================================================================== S2E's default: surrogate-assisted Newton
class SurrogateNewton(Relaxation):
    """The default S2E search (algo ``newton``): the stochastic relaxation (eq. 6) over Dirichlet × Beta
    with Newton steps (eq. 7, Proposition 1, eq. 8, Assumption 3), whose ∇J and ∇²J are estimated on
    a surrogate of f instead of on the K trainings of one iteration.

    The paper's estimator (:class:`Relaxation`, algo ``newton_paper``) averages over the K = 6..8
    trainings of one iteration: with 36 parameters its Proposition 1 estimate has rank K and its
    gradient a low signal-to-noise ratio, so the search is no better than random search at equal
    trainings (issue 21). This searcher spends the same trainings better:

    1. surrogate: a Gaussian process (:mod:`s2e_jax.surrogate`) on the curve R_x(t) at ``n_points``
       epochs, fitted to *every* training so far (target log(f − min f + ε), standardized; ℓ and the
       noise by marginal likelihood), refitted each iteration;
    2. estimates: each of ``steps`` Newton steps per iteration uses ``mc_samples`` fresh samples of p_θ
       scored by the surrogate's mean, with the paper's :func:`estimate` (eq. 7, Proposition 1) and
       :func:`solve_safeguarded` (Assumption 3) — the same estimator, thousands of samples instead of K;
    3. step: θ ← Π(θ − ρ H⁻¹g) (eq. 8) with ρ halved from ``rho`` until KL(p_θnew ‖ p_θ) ≤ ``kl_max``
       (a trust region on the distribution instead of a fixed ρ);
    4. trainings: of the K points of an iteration, ⌊``explore`` · K⌋ are the lowest confidence bounds
       (surrogate mean − sd) among ``candidates`` samples of p_θ, the rest plain samples of p_θ (which
       keep the surrogate honest where p_θ puts its mass). The first iteration (no data) is K plain
       samples of θ¹ = 1 (uniform, as random search's).

    How it runs: the samples are drawn by numpy on the host (:func:`relaxation.sample_host`, p_θ's
    distribution without a compiled sampler), each from the stream of (seed, iteration, purpose); the
    curves and the estimate are two compiled programs of fixed shapes (:func:`surrogate.curve_program`,
    :func:`_estimate_summed`) whose compilation starts on a worker thread when the searcher is made.
    The surrogate is a deterministic function of the history, so a restored search asks what the
    uninterrupted one would; the state adds θ, the options, the sampler and the last fit's
    hyperparameters (for logs; they are recomputed, not trusted).

    Args (besides :class:`Searcher`'s): ``epochs`` (T of R_x(t); search_run passes the training's),
    ``rho`` (the first step size tried), ``eta``, ``L``, ``theta_min`` as in :class:`Relaxation`,
    ``kl_max``, ``steps``, ``mc_samples``, ``candidates``, ``explore`` (fraction in [0, 1]) and
    ``n_points`` as above.
    """

    MIN_FIT = 3  # trainings needed before the surrogate is used
    SAMPLER = "numpy"  # recorded in the state: the draws of another sampler differ

    def __init__(self, space, samples: int = 8, seed: int = 0, epochs: int = 200, rho: float = 1.0,
                 eta: float = 0.1, L: float = 1e3, theta_min: float = 1.0, kl_max: float = 0.5,
                 steps: int = 2, mc_samples: int = 2000, candidates: int = 1000, explore: float = 0.5,
                 n_points: int = 20, worst: Optional[float] = None):
        super().__init__(space, samples, seed, "newton", rho, eta, L, theta_min, baseline=True,
                         normalize=True, worst=worst)
        self.name = "newton"
        self.epochs = _check_int("epochs", epochs, 1)
        self.kl_max = _check_pos("kl_max", kl_max)
        self.steps = _check_int("steps", steps, 0)
        self.mc_samples = _check_int("mc_samples", mc_samples, 2)
        self.candidates = _check_int("candidates", candidates, 1)
        self.explore = _check_pos("explore", explore, allow_zero=True)
        if self.explore > 1:
            raise ConfigError(f"explore: must be a fraction in [0, 1], got {explore!r}")
        self.n_points = _check_int("n_points", n_points, 2)
        self.fit_info: dict = {}
        self._gp = None  # (number of trainings it was fitted to, surrogate.GP)
        self._known_z: dict = {}  # x.tobytes() -> curve features of the points proposed by this process
        # its one-off work starts now, on a worker thread: its two compiled programs (curves, the
        # estimate) and the BLAS thread control of the GP
        surrogate.curve_program(space, self.epochs, self.n_points)
        _summed_estimate_program(*relaxation.sizes(space), self.mc_samples)
        surrogate.in_background(surrogate.threadpool_controller)

    # -------------------------------------------------------------- surrogate
    def _features(self, xs):
        """Curve features of ``xs``: those of this process's proposals from ``_known_z`` (same values),
        the others (the first batch's, a restored history's) computed once and kept there."""
        xs = np.asarray(xs, np.float64)
        missing = [x for x in xs if x.tobytes() not in self._known_z]
        if missing:
            z = surrogate.curve_features(self.space, np.stack(missing), self.epochs, self.n_points)
            self._known_z.update((x.tobytes(), zi) for x, zi in zip(missing, z))
        return np.stack([self._known_z[x.tobytes()] for x in xs]) if len(xs) else np.zeros((0, self.n_points))

    def _fit(self, xs, fs):
        gp = surrogate.fit(self._features(xs), surrogate.transform(fs))
        self._gp = (len(fs), gp)
        self.fit_info = {"trainings": len(fs), "length": gp.length, "noise": gp.noise, "log_ml": gp.log_ml}
        return gp

    def _surrogate(self):
        """The GP fitted to the whole history (refitted after a restore: a function of the history)."""
        if self._gp is not None and self._gp[0] == len(self.history):
            return self._gp[1]
        xs = np.asarray([r["x"] for r in self.history], np.float64)
        fs = np.asarray([r["f"] for r in self.history], np.float64)
        return self._fit(xs, fs)

    # -------------------------------------------------------------- ask / tell
    def _estimate_program(self):
        return _summed_estimate_program(*relaxation.sizes(self.space), self.mc_samples).result()

    def _sample(self, *requests):
        """``[(xs, curve features)]`` for each request ``(counters, n)``: n samples of p_θ from the numpy
        stream of (seed, *counters) and their curves (:func:`surrogate.sample_features`)."""
        return surrogate.sample_features(self.space, self.seed, requests, self.theta, self.epochs, self.n_points)

    def _propose(self, n):
        n_lcb = int(math.floor(self.explore * n)) if len(self.history) >= self.MIN_FIT else 0
        if not n_lcb:  # plain samples only (the first batch): no curves needed now, the fit makes them
            return relaxation.sample_host(np.random.default_rng([self.seed, self.iteration]), self.theta,
                                          self.space, n), None
        requests = ([((self.iteration,), n - n_lcb)] if n > n_lcb else []) + [
            ((self.iteration, 1_000_001), max(self.candidates, n_lcb))]
        drawn = self._sample(*requests)  # plain samples and candidates curved together
        xs, zs = drawn[0] if n > n_lcb else (np.zeros((0, self.dim)), np.zeros((0, self.n_points)))
        cands, zc = drawn[-1]
        mean, sd = surrogate.predict(self._surrogate(), zc)
        pick = np.argsort(mean - sd, kind="stable")[:n_lcb]              # lowest confidence bounds
        xs, zs = np.concatenate([xs, cands[pick]]), np.concatenate([zs, zc[pick]])
        self._known_z.update((x.tobytes(), z) for x, z in zip(xs, zs))  # for the fits (no curve program)
        return xs, None

    def _update(self, xs, fs, failed):
        all_x = np.asarray([r["x"] for r in self.history] + list(xs), np.float64)
        all_f = np.asarray([r["f"] for r in self.history] + list(fs), np.float64)
        if len(all_f) < self.MIN_FIT:
            return
        gp = self._fit(all_x, all_f)
        kls = []
        for step in range(self.steps):
            (ks, zk), = self._sample(((self.iteration, 2_000_001 + step), self.mc_samples))
            m = surrogate.predict(gp, zk, return_sd=False)
            d = self.direction(ks, m)                                    # eq. (7), Prop. 1, Assumption 3
            rho = self.rho
            for _ in range(60):                                          # trust region on KL(p_new ‖ p_old)
                new = project(self.theta - rho * d, self.theta_min)      # eq. (8), minimization
                kl = surrogate.kl_divergence(new, self.theta, self.space)
                if kl <= self.kl_max:
                    break
                rho *= 0.5
            else:
                new, kl = self.theta, 0.0
            kls.append(kl)
            self.theta = new
        self.last_step = dict(self.last_step, kl=kls)

    def _extra_state(self):
        d = super()._extra_state()
        d["estimator"] = "surrogate"
        d["sampler"] = self.SAMPLER
        d["options"].update(epochs=self.epochs, kl_max=self.kl_max, steps=self.steps,
                            mc_samples=self.mc_samples, candidates=self.candidates, explore=self.explore,
                            n_points=self.n_points)
        d["surrogate_fit"] = dict(self.fit_info)
        return d

    def _load_extra_state(self, d):
        if d.get("estimator") != "surrogate":
            raise ConfigError("state: saved by the paper's estimator (algo 'newton' before the surrogate-"
                              "assisted default); it cannot be resumed by the default newton: start a new "
                              "search (algo newton_paper is that estimator)")
        if d.get("sampler") != self.SAMPLER:
            raise ConfigError("state: saved by an earlier version of the default newton, which drew its samples "
                              "with JAX's keys; it cannot be resumed by this version: start a new search")
        super()._load_extra_state(d)
        self.fit_info = dict(d.get("surrogate_fit", {}))
        self._gp = None


# ====================================================================== random search
class RandomSearch(Searcher):
    """Random search (Bergstra & Bengio, 2012): K uniform samples per ask (p_θ with θ = 1).

    With the same seed its first batch equals the first batch of :class:`Relaxation`.
    """

    name = "random"

    def _propose(self, n):
        theta = relaxation.theta_init(self.space)
        return np.asarray(relaxation.sample(_key(self.seed, self.iteration), theta, self.space, n), np.float64), None


# ====================================================================== TPE (Optuna)
class TPE(Searcher):
    """Bayesian optimization with the Tree-structured Parzen Estimator (Bergstra et al., 2011) of Optuna.

    Parametrization: the box part of x is ``suggest_float(b_j, 0, 1)``; the simplex part uses S
    unconstrained ``u_i`` in [0, 1] mapped to the simplex by x_i = −log u_i / Σ_k −log u_k (uniform u
    gives exactly Dirichlet(1), the uniform distribution on the simplex, via exponential variables).

    Determinism and resume: the sampler is re-created before every ask with a seed derived from
    ``(seed, number of told trials)``, and the state is the list of told (params, f). Loading rebuilds
    the study with ``add_trial`` and therefore asks exactly what the uninterrupted search would.
    Within one batch the sampler uses ``constant_liar`` so that the K points differ.
    """

    name = "tpe"

    def __init__(self, space, samples: int = 8, seed: int = 0, n_startup_trials: int = 10,
                 constant_liar: bool = True, multivariate: bool = False, worst: Optional[float] = None):
        super().__init__(space, samples, seed, worst)
        import optuna  # lazily: the package works without optuna unless TPE is used

        self._optuna = optuna
        self.n_startup_trials = _check_int("n_startup_trials", n_startup_trials, 0)
        self.constant_liar = bool(constant_liar)
        self.multivariate = bool(multivariate)
        S, B = relaxation.sizes(space)
        self._names = [f"u{i}" for i in range(S)] + [f"b{j}" for j in range(B)]
        self._dists = {k: optuna.distributions.FloatDistribution(0.0, 1.0) for k in self._names}
        self._told: list[dict] = []   # {"params": {...}, "f": float}
        self._study = None
        self._trials = None

    def _params_to_x(self, params: dict) -> np.ndarray:
        S = self.space.n_simplex
        u = np.asarray([params[k] for k in self._names], np.float64)
        x = u.copy()
        if S:
            e = -np.log(np.clip(u[:S], 1e-12, 1.0))
            x[:S] = e / e.sum() if e.sum() > 0 else np.full(S, 1.0 / S)
        return x

    def _sampler(self):
        seed = int(np.random.SeedSequence([self.seed, len(self._told)]).generate_state(1)[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", self._optuna.exceptions.ExperimentalWarning)
            return self._optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=self.n_startup_trials, multivariate=self.multivariate,
                constant_liar=self.constant_liar)

    def _get_study(self):
        if self._study is None:
            optuna = self._optuna
            optuna.logging.set_verbosity(optuna.logging.WARNING)
            self._study = optuna.create_study(direction="minimize", sampler=self._sampler())
            for t in self._told:
                self._study.add_trial(optuna.trial.create_trial(
                    params=dict(t["params"]), distributions=dict(self._dists), value=float(t["f"])))
        return self._study

    def _propose(self, n):
        study = self._get_study()
        if self._trials:  # a new ask of a different size: drop the untold trials of the last one
            for t in self._trials:
                study.tell(t, state=self._optuna.trial.TrialState.FAIL)
            self._study, self._trials = None, None
            study = self._get_study()
        study.sampler = self._sampler()
        self._trials = [study.ask(self._dists) for _ in range(n)]
        xs = np.stack([self._params_to_x(t.params) for t in self._trials])
        return xs, None

    def _update(self, xs, fs, failed):
        for t, f in zip(self._trials, fs):
            self._study.tell(t, float(f))
            self._told.append({"params": {k: float(v) for k, v in t.params.items()}, "f": float(f)})
        self._trials = None

    def _extra_state(self):
        return {"told": [{"params": dict(t["params"]), "f": t["f"]} for t in self._told],
                "options": {"n_startup_trials": self.n_startup_trials, "constant_liar": self.constant_liar,
                            "multivariate": self.multivariate}}

    def _load_extra_state(self, d):
        mine = self._extra_state()["options"]
        for k, v in d.get("options", {}).items():  # (states saved before options were recorded: none)
            if mine.get(k) != v:
                raise ConfigError(f"state: saved with {k}={v}, this searcher has {mine.get(k)}")
        self._told = [{"params": {k: float(v) for k, v in t["params"].items()}, "f": float(t["f"])}
                      for t in d["told"]]
        self._study, self._trials = None, None


# ====================================================================== Hyperband
def hyperband_brackets(max_budget: int, eta: int = 3, min_budget: int = 1) -> list[list[tuple[int, int]]]:
    """The brackets of Hyperband (Li et al., 2017) as lists of rungs ``(n_configs, epochs)``.

    s_max = ⌊log_η(R / r_min)⌋; bracket s = s_max..0 starts n = ⌈(s_max+1)/(s+1) · η^s⌉ configurations
    at R·η^{-s} epochs; rung i keeps ⌊n η^{-i}⌋ configurations with R·η^{i-s} epochs (rounded to an
    integer ≥ r_min; the last rung of every bracket is exactly R).
    """
    s_max = 0
    while min_budget * eta ** (s_max + 1) <= max_budget:
        s_max += 1
    brackets = []
    for s in range(s_max, -1, -1):
        n = math.ceil((s_max + 1) / (s + 1) * eta ** s)
        rungs = []
        for i in range(s + 1):
            n_i = n // eta ** i
            r_i = max_budget if i == s else max(min_budget, int(round(max_budget * float(eta) ** (i - s))))
            if n_i < 1:
                break
            rungs.append((n_i, r_i))
        brackets.append(rungs)
    return brackets


class Hyperband(Searcher):
    """Hyperband (Li et al., 2017): successive halving over brackets; the budget is epochs.

    Configurations are sampled uniformly (as :class:`RandomSearch`); rung i of a bracket evaluates
    its configurations with ``budget = epochs`` and keeps the best ⌊n_i/η⌋ for the next rung. After
    the last bracket it starts over with new configurations. Each ask returns at most ``samples``
    configurations of the current rung (``samples=None``: the whole rung), all with one budget.
    Cost is recorded per evaluation as ``epochs / max_budget`` (full-training equivalents);
    :meth:`best` only considers full-budget evaluations.
    """

    name = "hyperband"

    def __init__(self, space, max_budget: int, samples: Optional[int] = 8, seed: int = 0, eta: int = 3,
                 min_budget: int = 1, worst: Optional[float] = None):
        super().__init__(space, 1 if samples is None else samples, seed, worst)
        self.batch = None if samples is None else self.samples
        self.max_budget = _check_int("max_budget", max_budget, 1)
        self.eta = _check_int("eta", eta, 2)
        self.min_budget = _check_int("min_budget", min_budget, 1)
        if self.min_budget > self.max_budget:
            raise ConfigError(f"min_budget: must be <= max_budget ({self.max_budget}), got {self.min_budget}")
        self.brackets = hyperband_brackets(self.max_budget, self.eta, self.min_budget)
        self.bracket = 0     # global bracket counter (the bracket run is brackets[bracket % len])
        self.rung = 0
        self._start_bracket()

    def _start_bracket(self):
        rungs = self.brackets[self.bracket % len(self.brackets)]
        n = rungs[0][0]
        theta = relaxation.theta_init(self.space)
        xs = relaxation.sample(_key(self.seed, self.bracket), theta, self.space, n)
        self.rung = 0
        self.configs = [[float(v) for v in x] for x in np.asarray(xs, np.float64)]
        self.results: list[float] = []

    @property
    def rung_budget(self) -> int:
        return self.brackets[self.bracket % len(self.brackets)][self.rung][1]

    def _propose(self, n):
        lo = len(self.results)
        xs = np.asarray(self.configs[lo:lo + n], np.float64)
        return xs, self.rung_budget

    def ask(self, n: Optional[int] = None):
        """The next ≤ n configurations of the current rung and its epochs (default n: ``samples``,
        or the rest of the rung when ``samples=None``)."""
        if n is None:
            n = self.batch if self.batch is not None else len(self.configs) - len(self.results)
        return super().ask(n)

    def _cost(self, budget):
        return float(budget) / self.max_budget

    def _update(self, xs, fs, failed):
        self.results.extend(float(f) for f in fs)
        if len(self.results) < len(self.configs):
            return
        rungs = self.brackets[self.bracket % len(self.brackets)]
        if self.rung + 1 < len(rungs):
            keep = rungs[self.rung + 1][0]                         # ⌊n_i / η⌋
            order = np.argsort(np.asarray(self.results), kind="stable")[:keep]
            self.configs = [self.configs[i] for i in order]
            self.results = []
            self.rung += 1
        else:
            self.bracket += 1
            self._start_bracket()

    def _extra_state(self):
        return {"bracket": self.bracket, "rung": self.rung, "configs": self.configs, "results": self.results,
                "max_budget": self.max_budget, "eta": self.eta, "min_budget": self.min_budget}

    def _load_extra_state(self, d):
        for k in ("max_budget", "eta", "min_budget"):
            if d[k] != getattr(self, k):
                raise ConfigError(f"state: saved with {k}={d[k]}, this searcher has {getattr(self, k)}")
        self.bracket, self.rung = int(d["bracket"]), int(d["rung"])
        self.configs = [[float(v) for v in x] for x in d["configs"]]
        self.results = [float(f) for f in d["results"]]


# ====================================================================== driver and factory
class SearchResult(NamedTuple):
    x: Optional[np.ndarray]   # best point (full budget, not failed)
    f: float                  # its objective value
    history: list             # every evaluation record


def run_search(searcher: Searcher, objective: Callable, iterations: Optional[int] = None,
               on_trial: Optional[Callable[[dict], None]] = None, max_cost: Optional[float] = None,
               on_iteration: Optional[Callable[[Searcher, list], None]] = None) -> SearchResult:
    """Loop ask → objective → tell until ``searcher.iteration == iterations`` (a total, so that a
    restored searcher continues where it stopped) or ``searcher.cost >= max_cost``.

    ``objective(xs)`` is called (``objective(xs, budget=epochs)`` when the searcher asks for a budget);
    NaN values mark failed trainings: they are recorded with ``failed: True`` and the worst value
    (see :class:`Searcher`), and the search continues. ``on_trial(record)`` is called for every new
    history record after the searcher has been told (so ``searcher.state_dict()`` is current), and
    ``on_iteration(searcher, records)`` once per ask/tell round (e.g. to checkpoint the state).
    """
    if iterations is None and max_cost is None:
        raise ConfigError("iterations: give iterations and/or max_cost")
    if iterations is not None:
        iterations = _check_int("iterations", iterations, 0)
    while (iterations is None or searcher.iteration < iterations) and (
            max_cost is None or searcher.cost < max_cost):
        xs, budget = searcher.ask()
        fs = objective(xs) if budget is None else objective(xs, budget=budget)
        records = searcher.tell(xs, np.asarray(fs, np.float64).reshape(-1))
        if on_trial is not None:
            for r in records:
                on_trial(r)
        if on_iteration is not None:
            on_iteration(searcher, records)
    x, f = searcher.best()
    return SearchResult(x, f, searcher.history)


_FACTORY = {"newton": SurrogateNewton, "newton_paper": NewtonPaper, "gd": GD, "ng": NG,
            "random": RandomSearch, "tpe": TPE, "hyperband": Hyperband}
_OPTIONS = {
    "newton": SurrogateNewton, "newton_paper": Relaxation, "gd": Relaxation, "ng": Relaxation,
    "random": RandomSearch, "tpe": TPE, "hyperband": Hyperband,
}


def make_searcher(algo: str, space, samples: int = 8, seed: int = 0, **opts) -> Searcher:
    """The searcher ``algo`` (newton | newton_paper | gd | ng | random | tpe | hyperband) over ``space``.

    ``opts`` are the keyword arguments of the class (e.g. ``rho``, ``eta``, ``L``, ``theta_min`` for
    the relaxation searchers; ``epochs`` (T of the curve R_x(t)) for newton; ``max_budget`` is required for hyperband; ``worst`` for all).
    """
    if algo not in _FACTORY:
        raise ConfigError(f"algo: unknown search algorithm {algo!r} (expected one of {', '.join(ALGOS)})")
    params = inspect.signature(_OPTIONS[algo].__init__).parameters
    allowed = set(params) - {"self", "space", "samples", "seed", "curvature"}
    bad = sorted(set(opts) - allowed)
    if bad:
        raise ConfigError(f"{bad[0]}: not an option of the {algo} searcher (options: {', '.join(sorted(allowed))})")
    if algo == "hyperband" and opts.get("max_budget") is None:
        raise ConfigError("max_budget: hyperband needs the number of epochs of a full training")
    return _FACTORY[algo](space, samples=samples, seed=seed, **opts)
