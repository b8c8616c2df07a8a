"""Tests for s2e_jax.search: Newton / GD / NG (eq. 7, 8, Prop. 1, Assumption 3), random, TPE, Hyperband."""
import ast
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2e_jax import relaxation, search
from s2e_jax.config import ConfigError
from s2e_jax.schedules import get_space

S2E = get_space("s2e")
T = 50
# The hidden target of the synthetic objective: a fixed point x* of the S2E space.
X_STAR = np.concatenate([[0.1, 0.6, 0.2, 0.1], np.random.default_rng(7).uniform(0.2, 0.8, 16)])


_curves = jax.jit(lambda xs: S2E.curves(xs, T))
TARGET = np.asarray(S2E.curve(X_STAR, T))


def synthetic(xs):
    """Mean squared distance between R(t; x) and the hidden target curve, t = 0..T−1."""
    c = np.asarray(_curves(jnp.asarray(xs, jnp.float32)), np.float64)
    return np.mean((c - TARGET) ** 2, axis=1)


def cheap(xs):
    """A fast deterministic objective for bookkeeping tests."""
    xs = np.asarray(xs)
    return np.sum((xs - 0.3) ** 2, axis=1)


# ---------------------------------------------------------------- Assumption 3 safeguards
def test_safeguard_makes_indefinite_matrix_positive_definite_with_bounded_spectrum():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(12, 12))
    H = A + A.T                                   # indefinite
    H[0, 1] += 0.5                                # and not exactly symmetric
    lam = np.linalg.eigvalsh(0.5 * (H + H.T))
    assert lam.min() < 0 < lam.max()
    eta, L = 0.5, 3.0
    G = search.safeguard(H, eta, L)
    np.testing.assert_allclose(G, G.T, atol=1e-12)
    mu = np.linalg.eigvalsh(G)
    assert mu.min() >= eta - 1e-9 and mu.max() <= L + 1e-9
    np.testing.assert_allclose(np.sort(mu), np.sort(np.clip(np.abs(lam), eta, L)), atol=1e-9)
    # same eigenvectors as the symmetrized H
    Hs = 0.5 * (H + H.T)
    np.testing.assert_allclose(G @ Hs, Hs @ G, atol=1e-8)
    # a well-conditioned positive-definite matrix is left unchanged
    P = A @ A.T / 12 + np.eye(12)
    assert np.linalg.eigvalsh(P).max() < 100
    np.testing.assert_allclose(search.safeguard(P, 1e-3, 100.0), P, atol=1e-9)
    g = rng.normal(size=12)
    np.testing.assert_allclose(search.solve_safeguarded(H, g, eta, L), np.linalg.solve(G, g), atol=1e-9)


def test_projection_keeps_theta_above_theta_min():
    theta = np.array([0.2, 1.0, 3.0, -5.0])
    np.testing.assert_array_equal(search.project(theta, 1.0), [1.0, 1.0, 3.0, 1.0])
    s = search.make_searcher("gd", S2E, samples=8, seed=0, rho=50.0, theta_min=1.0)
    search.run_search(s, synthetic, iterations=3)
    assert s.theta.min() >= 1.0 and (s.theta > 1.0).any()


# ---------------------------------------------------------------- eq. (7) and Proposition 1
def _exact_J(theta):
    # f(x) = α_0 + β_1 (a simplex and a box coordinate): J(θ) = θ_α0 / Σθ_α + a_1 / (a_1 + b_1)
    c = theta[:4]
    a, b = theta[4 + 2], theta[4 + 3]
    return c[0] / c.sum() + a / (a + b)


def _f_lin(xs):
    return xs[:, 0] + xs[:, 5]


THETA = np.linspace(1.0, 3.0, 36).astype(np.float32)
_exact_grad = jax.jit(jax.grad(_exact_J))
_exact_hessian = jax.jit(jax.hessian(_exact_J))


# search._estimate (eq. 7, Prop. 1) vmapped over independent batches
_many_estimates = jax.jit(jax.vmap(lambda th, x, w: search._estimate(th, x, w, 4, 16), in_axes=(None, 0, 0)))


def _batches_of_estimates(K, n, baseline, seed):
    """``n`` independent estimates (g, H) from batches of K samples of p_θ, f(x) = α_0 + β_1."""
    rng = np.random.default_rng(seed)
    c, ab = THETA[:4].astype(np.float64), THETA[4:].astype(np.float64).reshape(16, 2)
    alpha = rng.dirichlet(c, size=(n, K))
    beta = rng.beta(ab[:, 0], ab[:, 1], size=(n, K, 16))
    xs = np.concatenate([alpha, beta], -1).clip(relaxation.EPS, 1 - relaxation.EPS)
    fs = xs[..., 0] + xs[..., 5]
    ws = np.stack([search.weights(f, baseline) for f in fs])
    gs, Hs = _many_estimates(jnp.asarray(THETA), jnp.asarray(xs, jnp.float32), jnp.asarray(ws, jnp.float32))
    # the public estimator gives the same numbers on one batch
    g0, H0 = search.estimate(THETA, xs[0], fs[0], S2E, baseline=baseline)
    np.testing.assert_allclose(g0, gs[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(H0, Hs[0], rtol=1e-5, atol=1e-6)
    return np.asarray(gs, np.float64), np.asarray(Hs, np.float64)


@pytest.mark.parametrize("K,baseline", [(8, True), (8, False), (2, True)])
def test_gradient_and_hessian_estimators_are_unbiased(K, baseline):
    g_true = np.asarray(_exact_grad(jnp.asarray(THETA)), np.float64)
    H_true = np.asarray(_exact_hessian(jnp.asarray(THETA)), np.float64)
    n = 8192 // K
    gs, Hs = _batches_of_estimates(K, n, baseline, seed=K + baseline)
    g_se = gs.std(0) / np.sqrt(n)
    H_se = Hs.std(0) / np.sqrt(n)
    # each entry within 5 standard errors (plus float32 slack); the entries that matter are non-zero
    assert np.abs(g_true).max() > 0.05 and np.abs(H_true).max() > 0.01
    assert np.all(np.abs(gs.mean(0) - g_true) <= 5 * g_se + 1e-4)
    assert np.all(np.abs(Hs.mean(0) - H_true) <= 5 * H_se + 1e-4)
    # and the estimates are informative: the relative error of the average is small
    assert np.linalg.norm(gs.mean(0) - g_true) < 0.25 * np.linalg.norm(g_true)


def test_summed_estimate_of_the_default_search_equals_the_plain_estimate():
    # the default newton's program (Hessian of the weighted mean, one matrix product) against
    # _estimate (per-sample Hessians and outer products, as Proposition 1 reads), on 2,000 samples
    theta = np.random.default_rng(1).uniform(1.0, 5.0, 36)
    xs = relaxation.sample_host(np.random.default_rng(2), theta, S2E, 2000)
    fs = synthetic(xs)
    program = search._summed_estimate_program(4, 16, 2000).result()
    g, H = search.estimate(theta, xs, fs, S2E, program=program)
    g0, H0 = search.estimate(theta, xs, fs, S2E)
    assert np.abs(H0).max() > 0.01
    np.testing.assert_allclose(g, g0, rtol=1e-4, atol=1e-5 * np.abs(g0).max())
    np.testing.assert_allclose(H, H0, rtol=1e-4, atol=1e-5 * np.abs(H0).max())


def test_sample_mean_baseline_would_be_biased_but_leave_one_out_is_not():
    # With K = 2 the plain sample-mean baseline halves the gradient: (f_i − f̄) = (f_i − f_j)/2.
    g_true = np.asarray(_exact_grad(jnp.asarray(THETA)), np.float64)
    gs, _ = _batches_of_estimates(2, 4096, True, seed=11)
    ratio = np.dot(gs.mean(0), g_true) / np.dot(g_true, g_true)
    assert 0.85 < ratio < 1.15, ratio   # a sample-mean baseline would give ≈ 0.5


@pytest.mark.parametrize("algo", ["newton", "newton_paper", "gd", "ng"])
def test_update_descends(algo):
    # minimizing f(x) = α_0 + β_1 must move p_θ's mean of those coordinates down (sign of eq. 8)
    s = search.make_searcher(algo, S2E, samples=8, seed=1, **({"epochs": T} if algo == "newton" else {}))
    before = float(_exact_J(np.asarray(s.theta)))
    search.run_search(s, _f_lin, iterations=10)
    after = float(_exact_J(np.asarray(s.theta)))
    assert after < before - 0.1, (before, after)


# ---------------------------------------------------------------- synthetic schedule-fitting objective
def _run(algo, seed, M=30, K=8):
    s = search.make_searcher(algo, S2E, samples=K, seed=seed, **({"epochs": T} if algo == "newton" else {}))
    res = search.run_search(s, synthetic, iterations=M)
    fs = np.array([r["f"] for r in res.history])
    assert len(fs) == M * K and s.cost == M * K
    return res, fs


def test_paper_newton_on_synthetic_objective_reaches_threshold():
    # The paper's estimator (eq. 7, Prop. 1 on one batch). Measured (10 seeds, M = 30, K = 8): best
    # 0.5e-4..3.7e-4, mean f of the last 3 batches 0.013..0.030; under the uniform distribution E f ≈ 0.075.
    res, fs = _run("newton_paper", seed=0)
    assert res.f < 1e-3
    assert np.mean(fs[-24:]) < 0.045
    np.testing.assert_allclose(synthetic(res.x[None])[0], res.f, rtol=1e-6)


def _best_so_far(algo, seed, M, K):
    return np.minimum.accumulate(_run(algo, seed, M, K)[1])


def test_default_newton_finds_better_schedules_per_training_than_random_search():
    # Figure 6's measure: the best f found after n trainings (60 = 10 x 6), over 3 search seeds; the
    # default (surrogate-assisted) S2E search must find at most half of random search's best f, from
    # 30 trainings on. (The measured numbers are in docs/search.md.)
    M, K = 10, 6
    newton = np.mean([_best_so_far("newton", seed, M, K) for seed in range(3)], axis=0)
    random = np.mean([_best_so_far("random", seed, M, K) for seed in range(3)], axis=0)
    for n in (30, 60):
        assert newton[n - 1] < 0.5 * random[n - 1], (n, newton[n - 1], random[n - 1])


# ---------------------------------------------------------------- ask / tell bookkeeping
def test_ask_is_idempotent_and_tell_checks_points():
    s = search.make_searcher("newton", S2E, samples=8, seed=0)
    xs, budget = s.ask()
    assert xs.shape == (8, 20) and budget is None
    np.testing.assert_array_equal(s.ask()[0], xs)
    with pytest.raises(ConfigError, match="tell"):
        s.tell(xs + 0.01, cheap(xs))
    with pytest.raises(ConfigError, match="tell"):
        s.tell(xs, cheap(xs)[:3])
    recs = s.tell(xs, cheap(xs))
    assert [r["trial"] for r in recs] == list(range(8)) and s.iteration == 1
    assert set(recs[0]) >= {"iteration", "x", "f", "budget", "failed", "cost"}
    with pytest.raises(ConfigError, match="tell"):
        s.tell(xs, cheap(xs))   # nothing pending
    # the first batch: plain samples of θ¹ = 1 (uniform) from the stream of (seed, iteration 0)
    np.testing.assert_array_equal(relaxation.sample_host(np.random.default_rng([0, 0]), np.ones(36), S2E, 8), xs)


@pytest.mark.parametrize("algo", ["newton", "newton_paper", "ng", "random", "tpe", "hyperband"])
def test_resume_gives_identical_run(algo):
    opts = {"max_budget": 9} if algo == "hyperband" else {"epochs": T} if algo == "newton" else {}
    K = 4 if algo == "tpe" else 8   # (K = 8 shares compilations with the other tests)

    def make():
        return search.make_searcher(algo, S2E, samples=K, seed=3, **opts)

    full = make()
    asked_full = []
    for _ in range(6):
        xs, b = full.ask()
        asked_full.append((xs, b))
        full.tell(xs, cheap(xs))

    part = make()
    for _ in range(3):
        xs, _ = part.ask()
        part.tell(xs, cheap(xs))
    state = json.loads(json.dumps(part.state_dict()))
    resumed = make().load_state_dict(state)
    for i in range(3, 6):
        xs, b = resumed.ask()
        np.testing.assert_array_equal(xs, asked_full[i][0])
        assert b == asked_full[i][1]
        resumed.tell(xs, cheap(xs))
    assert resumed.history == full.history
    assert resumed.state_dict() == json.loads(json.dumps(full.state_dict()))
    if algo in ("newton", "newton_paper", "ng"):
        np.testing.assert_array_equal(resumed.theta, full.theta)
        assert not np.allclose(full.theta, 1.0)


def test_load_state_checks_algorithm_and_batch_size():
    s = search.make_searcher("random", S2E, samples=4)
    with pytest.raises(ConfigError, match="state"):
        search.make_searcher("newton", S2E, samples=4).load_state_dict(s.state_dict())
    with pytest.raises(ConfigError, match="state: saved with samples=4"):
        search.make_searcher("random", S2E, samples=8).load_state_dict(s.state_dict())
    with pytest.raises(ConfigError, match="state"):
        search.make_searcher("random", get_space("coteaching"), samples=4).load_state_dict(s.state_dict())


def test_load_state_checks_the_space_and_the_options():
    """Spaces of one dimension (rbf / mlp: 13) and other step options are refused, not resumed."""
    assert get_space("rbf").dim == get_space("mlp").dim
    s = search.make_searcher("newton", get_space("rbf"), samples=2)
    xs, _ = s.ask()
    s.tell(xs, [0.3, 0.2])
    saved = s.state_dict()
    with pytest.raises(ConfigError, match="state: saved for space 'rbf'"):
        search.make_searcher("newton", get_space("mlp"), samples=2).load_state_dict(saved)
    other = search.make_searcher("newton", get_space("rbf"), samples=2, rho=3.0)
    with pytest.raises(ConfigError, match="state: saved with rho=1.0"):
        other.load_state_dict(saved)
    assert other.iteration == 0 and other.history == [] and np.all(other.theta == 1.0)  # unchanged
    with pytest.raises(ConfigError, match="state: saved with worst=None"):
        search.make_searcher("newton", get_space("rbf"), samples=2, worst=1.0).load_state_dict(saved)
    search.make_searcher("newton", get_space("rbf"), samples=2).load_state_dict(saved)  # the same: fine
    tpe = search.make_searcher("tpe", get_space("rbf"), samples=2).state_dict()
    with pytest.raises(ConfigError, match="state: saved with n_startup_trials=10"):
        search.make_searcher("tpe", get_space("rbf"), samples=2, n_startup_trials=3).load_state_dict(tpe)
    search.make_searcher("tpe", get_space("rbf"), samples=2).load_state_dict(tpe)


def test_failed_trainings_are_recorded_and_search_continues():
    calls = []

    def flaky(xs):
        fs = synthetic(xs)
        fs[::3] = np.nan        # every third training fails
        if len(calls) == 2:
            fs[:] = np.nan      # a batch where everything fails
        calls.append(1)
        return fs

    seen = []
    s = search.make_searcher("newton", S2E, samples=8, seed=0)
    res = search.run_search(s, flaky, iterations=6, on_trial=seen.append)
    assert len(seen) == 48 and seen == res.history
    failed = [r for r in res.history if r["failed"]]
    assert len(failed) == 8 + 5 * 3
    ok_fs = [r["f"] for r in res.history if not r["failed"]]
    for r in failed:   # replaced by the worst finite value seen so far
        assert np.isfinite(r["f"]) and r["f"] <= max(ok_fs) + 1e-12
    assert np.isfinite(s.theta).all() and s.iteration == 6
    assert not any(r["failed"] for r in res.history if r["f"] == res.f)
    # a configured worst value (e.g. error rate 1.0)
    s = search.make_searcher("random", S2E, samples=8, seed=0, worst=1.0)
    res = search.run_search(s, flaky, iterations=1)
    assert [r["f"] for r in res.history if r["failed"]] == [1.0, 1.0, 1.0]


def test_run_search_iterations_is_a_total_and_max_cost():
    s = search.make_searcher("random", S2E, samples=4, seed=0)
    search.run_search(s, cheap, iterations=2)
    rounds = []
    res = search.run_search(s, cheap, iterations=5, on_iteration=lambda srch, recs: rounds.append(len(recs)))
    assert s.iteration == 5 and len(res.history) == 20 and rounds == [4, 4, 4]
    assert res.f == min(r["f"] for r in res.history)
    s = search.make_searcher("random", S2E, samples=4, seed=0)
    search.run_search(s, cheap, max_cost=10)
    assert s.cost == 12
    with pytest.raises(ConfigError, match="iterations"):
        search.run_search(s, cheap)


# ---------------------------------------------------------------- Hyperband
def test_hyperband_brackets():
    assert search.hyperband_brackets(9, 3) == [[(9, 1), (3, 3), (1, 9)], [(5, 3), (1, 9)], [(3, 9)]]
    b27 = search.hyperband_brackets(27, 3)
    assert b27[0] == [(27, 1), (9, 3), (3, 9), (1, 27)] and b27[-1] == [(4, 27)] and len(b27) == 4
    assert [r[-1][1] for r in search.hyperband_brackets(200, 3)] == [200] * 5   # s_max = 4
    assert search.hyperband_brackets(200, 3)[0][0] == (81, 2)


def test_hyperband_runs_rungs_with_epoch_budgets_and_keeps_the_best():
    calls = []

    def objective(xs, budget):
        calls.append((len(xs), budget))
        return xs[:, 0] + 0.0 * budget

    s = search.make_searcher("hyperband", S2E, samples=None, seed=0, max_budget=9)
    rungs = []
    for _ in range(6):     # one full cycle of the three brackets: 3 + 2 + 1 rungs
        xs, budget = s.ask()
        rungs.append(xs)
        s.tell(xs, objective(xs, budget))
    assert calls == [(9, 1), (3, 3), (1, 9), (5, 3), (1, 9), (3, 9)]
    # successive halving keeps the best ⌊n/η⌋
    np.testing.assert_array_equal(rungs[1], rungs[0][np.argsort(rungs[0][:, 0])[:3]])
    np.testing.assert_array_equal(rungs[2], rungs[1][:1])
    # cost in full-training equivalents: Σ n·r / R
    assert s.cost == pytest.approx((9 * 1 + 3 * 3 + 1 * 9 + 5 * 3 + 1 * 9 + 3 * 9) / 9)
    assert len(s.history) == 22
    # best is taken among full-budget evaluations only
    full = [r for r in s.history if r["budget"] == 9]
    assert s.best()[1] == min(r["f"] for r in full)
    # the next cycle starts with new configurations
    assert s.ask()[1] == 1 and s.bracket == 3


def test_hyperband_batches_and_driver_passes_budget():
    calls = []

    def objective(xs, budget=None):
        calls.append((len(xs), budget))
        return cheap(xs)

    s = search.make_searcher("hyperband", S2E, samples=4, seed=0, max_budget=9)
    search.run_search(s, objective, max_cost=5.0)
    assert calls[:5] == [(4, 1), (4, 1), (1, 1), (3, 3), (1, 9)]
    assert s.history[-1]["cost"] == 1.0 and s.history[0]["cost"] == pytest.approx(1 / 9)
    summary = s.summary()   # stopped once the cost reached 5 full trainings
    assert summary["objective_calls"] == len(calls) and summary["trainings"] == sum(n for n, _ in calls)
    assert summary["cost"] == pytest.approx(sum(n * b for n, b in calls) / 9)
    assert 5.0 <= summary["cost"] < 5.0 + 1.0 and summary["trainings"] > summary["cost"]


# ---------------------------------------------------------------- TPE and factory
def test_tpe_maps_uniforms_to_the_simplex_and_improves():
    s = search.make_searcher("tpe", S2E, samples=4, seed=0, n_startup_trials=8)
    res = search.run_search(s, cheap, iterations=8)
    xs = np.array([r["x"] for r in res.history])
    np.testing.assert_allclose(xs[:, :4].sum(1), 1.0, atol=1e-9)
    assert xs.min() >= 0 and xs.max() <= 1
    fs = cheap(xs)
    assert np.mean(fs[-8:]) < np.mean(fs[:8])


def test_make_searcher_validation():
    with pytest.raises(ConfigError, match="^algo: unknown"):
        search.make_searcher("bohb", S2E)
    with pytest.raises(ConfigError, match="^rho"):
        search.make_searcher("newton", S2E, rho=-1.0)
    with pytest.raises(ConfigError, match="^L"):
        search.make_searcher("newton", S2E, eta=1.0, L=0.5)
    with pytest.raises(ConfigError, match="^max_budget"):
        search.make_searcher("hyperband", S2E)
    with pytest.raises(ConfigError, match="^lr"):
        search.make_searcher("random", S2E, lr=0.1)
    with pytest.raises(ConfigError, match="^samples"):
        search.make_searcher("newton", S2E, samples=0)
    for algo in search.ALGOS:
        opts = {"max_budget": 9} if algo == "hyperband" else {}
        assert search.make_searcher(algo, S2E, **opts).name == algo


def test_optuna_is_imported_lazily():
    # no module-level import of optuna (the package must work without it unless TPE is used)
    tree = ast.parse(open(search.__file__).read())
    top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    names = [a.name for n in top for a in n.names] + [n.module for n in top if isinstance(n, ast.ImportFrom)]
    assert "numpy" in names and not any(name and name.split(".")[0] == "optuna" for name in names)


# ---------------------------------------------------------------- the default: surrogate-assisted Newton
def test_kl_divergence_is_exact_for_dirichlet_times_beta():
    from s2e_jax import surrogate

    p = np.linspace(1.0, 3.0, 36)
    q = p[::-1].copy()
    assert surrogate.kl_divergence(p, p, S2E) == pytest.approx(0.0, abs=1e-12)
    kl = surrogate.kl_divergence(p, q, S2E)
    assert kl > 0
    # Monte Carlo: E_p[log p(x) − log q(x)]
    xs = relaxation.sample(jax.random.PRNGKey(0), p, S2E, 20000)
    mc = np.asarray(relaxation.log_prob_batch(p, xs, S2E) - relaxation.log_prob_batch(q, xs, S2E), np.float64)
    assert abs(mc.mean() - kl) < 4 * mc.std() / np.sqrt(len(mc)) + 1e-3, (mc.mean(), kl)


def test_gp_surrogate_interpolates_and_is_unsure_far_from_data():
    from s2e_jax import surrogate

    rng = np.random.default_rng(0)
    Z = rng.uniform(size=(40, 3))
    y = np.sin(3 * Z[:, 0]) + Z[:, 1] ** 2
    y = (y - y.mean()) / y.std()
    gp = surrogate.fit(Z, y)
    mean, sd = surrogate.predict(gp, Z)
    assert np.max(np.abs(mean - y)) < 0.1 and sd.max() < 0.2
    Zt = rng.uniform(size=(200, 3))
    yt = (np.sin(3 * Zt[:, 0]) + Zt[:, 1] ** 2 - (np.sin(3 * Z[:, 0]) + Z[:, 1] ** 2).mean()) / \
        (np.sin(3 * Z[:, 0]) + Z[:, 1] ** 2).std()
    assert np.corrcoef(surrogate.predict(gp, Zt, return_sd=False), yt)[0, 1] > 0.95
    _, far = surrogate.predict(gp, Z + 10.0)
    assert far.min() > 0.9
    # the target transform is monotone and standardized
    t = surrogate.transform([0.3, 0.1, 0.2, 0.5])
    assert list(np.argsort(t)) == [1, 2, 0, 3] and abs(t.mean()) < 1e-12 and abs(t.std() - 1) < 1e-12
    with pytest.raises(ConfigError, match="surrogate"):
        surrogate.fit(Z, y[:5])


def test_default_newton_steps_stay_in_the_kl_trust_region_and_explore():
    from s2e_jax import surrogate

    s = search.make_searcher("newton", S2E, samples=6, seed=0, epochs=T, kl_max=0.3)
    for _ in range(4):
        old = s.theta.copy()
        xs, _ = s.ask()
        s.tell(xs, synthetic(xs))
        assert len(s.last_step["kl"]) == 2 and max(s.last_step["kl"]) <= 0.3 + 1e-9
        assert surrogate.kl_divergence(s.theta, old, S2E) > 0
    # after the first batch, half of each batch are the surrogate's lowest confidence bounds, the rest
    # plain samples of p_θ (from the stream of (seed, iteration))
    xs, _ = s.ask()
    plain = relaxation.sample_host(np.random.default_rng([0, s.iteration]), s.theta, S2E, 3)
    np.testing.assert_array_equal(xs[:3], plain)
    assert s.state_dict()["surrogate_fit"]["trainings"] == 24


def test_default_newton_refuses_a_state_of_the_paper_estimator_and_checks_options():
    paper = search.make_searcher("newton_paper", S2E, samples=4)
    xs, _ = paper.ask()
    paper.tell(xs, cheap(xs))
    old = dict(paper.state_dict(), algo="newton")   # as the default 'newton' saved it before
    with pytest.raises(ConfigError, match="state: saved by the paper's estimator"):
        search.make_searcher("newton", S2E, samples=4).load_state_dict(old)
    s = search.make_searcher("newton", S2E, samples=4, epochs=T)
    for _ in range(2):
        xs, _ = s.ask()
        s.tell(xs, cheap(xs))
    with pytest.raises(ConfigError, match="state: saved with epochs=50"):
        search.make_searcher("newton", S2E, samples=4).load_state_dict(s.state_dict())
    with pytest.raises(ConfigError, match="^explore"):
        search.make_searcher("newton", S2E, explore=1.5)
    with pytest.raises(ConfigError, match="^kl_max"):
        search.make_searcher("newton", S2E, kl_max=0.0)
    with pytest.raises(ConfigError, match="^epochs"):
        search.make_searcher("newton", S2E, epochs=0)
    with pytest.raises(ConfigError, match="^epochs: not an option of the random"):
        search.make_searcher("random", S2E, epochs=50)


def test_default_newton_sample_features_are_the_streams_samples_and_their_curves():
    # surrogate.sample_features (the default newton's draws): each request's rows are sample_host from the
    # stream of (seed, *counters), with their curves R_x(t) (checked against the space's own curve);
    # requests are curved together, across the compiled program's chunks
    from s2e_jax import surrogate

    theta = np.random.default_rng(0).uniform(1.0, 6.0, 36)
    for space, th, seed, requests in [(S2E, theta, 0, [((3, 2_000_001), 1100)]),
                                      (S2E, np.ones(36), 5, [((0,), 3), ((0, 1_000_001), 1000)]),
                                      (get_space("rbf"), np.linspace(1.0, 4.0, 26), 2, [((1, 7), 600), ((1,), 2)])]:
        drawn = surrogate.sample_features(space, seed, requests, th, T, 20)
        assert len(drawn) == len(requests)
        ts = jnp.asarray(np.linspace(0.0, T - 1.0, 20), jnp.float32)
        for (counters, n), (xs, z) in zip(requests, drawn):
            ref = relaxation.sample_host(np.random.default_rng([seed, *counters]), th, space, n)
            np.testing.assert_array_equal(xs, ref)
            assert z.shape == (n, 20) and z.dtype == np.float64
            np.testing.assert_array_equal(z, surrogate.curve_features(space, ref, T, 20))
            for i in (0, n - 1):
                params = space.decode(jnp.asarray(ref[i], jnp.float32), T)
                curve = np.asarray([space.rate(t, params, T) for t in ts], np.float64)
                np.testing.assert_allclose(z[i], curve, rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="^sample_features"):
        surrogate.sample_features(S2E, 0, [((-1,), 3)], theta, T)


def test_default_newton_compiles_on_its_worker_thread_and_nothing_after_its_first_iteration():
    # the default newton's two programs are compiled on the worker thread that its construction starts
    # (none on the caller's thread in ask/tell), all before its first tell returns, and after that
    # nothing is traced or compiled (fixed shapes: one curve program for every n, one estimate of
    # mc_samples rows); unusual mc_samples / n_points so that no other test has compiled these shapes
    import threading

    from jax._src import dispatch

    events, where = [], {"phase": "searcher", "iteration": 0}

    def listener(event, duration, **kw):
        if event in (dispatch.JAXPR_TRACE_EVENT, dispatch.BACKEND_COMPILE_EVENT):
            events.append((event, threading.current_thread().name, where["phase"], where["iteration"]))

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        s = search.make_searcher("newton", S2E, samples=4, seed=3, epochs=T, mc_samples=1500, candidates=700,
                                 n_points=17)
        for it in range(4):
            where.update(phase="searcher", iteration=it)
            xs, _ = s.ask()
            where["phase"] = "objective"   # (the synthetic objective compiles its own program)
            fs = synthetic(xs)
            where["phase"] = "searcher"
            s.tell(xs, fs)
        worker = [e for e in events if e[1].startswith("s2e-compile")]
        compiled = [e for e in worker if e[0] == dispatch.BACKEND_COMPILE_EVENT]
        assert len(compiled) == 2 and all(e[3] == 0 for e in worker), worker   # curves and the estimate
        caller = [e for e in events if not e[1].startswith("s2e-compile") and e[2] == "searcher"]
        assert caller == [], f"traces/compilations in ask/tell on the caller's thread: {caller}"
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
