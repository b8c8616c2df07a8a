"""Tests for s2e_jax.relaxation: p_θ = Dirichlet × Beta (Section 3.4.1), its score, Hessian and Fisher."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special, stats

from s2e_jax import relaxation
from s2e_jax.config import ConfigError
from s2e_jax.schedules import get_space

S2E = get_space("s2e")               # S = 4, B = 16, θ has 36 entries
BOX = get_space("coteaching")        # S = 0, B = 3


def _theta(space, seed=0, lo=1.0, hi=4.0):
    return np.random.default_rng(seed).uniform(lo, hi, relaxation.n_params(space)).astype(np.float32)


def _split(theta, S, B):
    theta = np.asarray(theta, np.float64)
    return theta[:S], theta[S::2][:B], theta[S + 1::2][:B]


def _xs(theta, space, n=8, seed=0):
    return np.asarray(relaxation.sample(jax.random.PRNGKey(seed), theta, space, n))


def _np_xs(theta, space, n=8, seed=0):
    """Samples of p_θ drawn by numpy (independent of relaxation.sample, no compilation)."""
    S, B = space.n_simplex, space.n_box
    c, a, b = _split(theta, S, B)
    rng = np.random.default_rng(seed)
    parts = [rng.dirichlet(c, size=n)] if S else []
    if B:
        parts.append(rng.beta(a, b, size=(n, B)))
    return np.concatenate(parts, 1).clip(relaxation.EPS, 1 - relaxation.EPS)


def scipy_log_prob(theta, x, S, B):
    c, a, b = _split(theta, S, B)
    x = np.asarray(x, np.float64)
    lp = 0.0
    if S:
        alpha = x[:S] / x[:S].sum()  # scipy insists on an exact float64 simplex
        lp += stats.dirichlet.logpdf(alpha, c)
    if B:
        lp += stats.beta.logpdf(x[S:], a, b).sum()
    return lp


def closed_score(theta, x, S, B):
    """∇_θ log p: ψ(Σθ) − ψ(θ_i) + log α_i;  ψ(a+b) − ψ(a) + log β,  ψ(a+b) − ψ(b) + log(1 − β)."""
    c, a, b = _split(theta, S, B)
    x = np.asarray(x, np.float64)
    out = []
    if S:
        out.append(special.digamma(c.sum()) - special.digamma(c) + np.log(x[:S]))
    if B:
        beta = x[S:]
        out.append(np.stack([special.digamma(a + b) - special.digamma(a) + np.log(beta),
                             special.digamma(a + b) - special.digamma(b) + np.log1p(-beta)], -1).reshape(-1))
    return np.concatenate(out)


def closed_fisher(theta, S, B):
    c, a, b = _split(theta, S, B)
    P = S + 2 * B
    F = np.zeros((P, P))
    t1 = lambda v: special.polygamma(1, v)  # noqa: E731
    if S:
        F[:S, :S] = np.diag(t1(c)) - t1(c.sum())
    for j in range(B):
        i = S + 2 * j
        F[i:i + 2, i:i + 2] = [[t1(a[j]) - t1(a[j] + b[j]), -t1(a[j] + b[j])],
                               [-t1(a[j] + b[j]), t1(b[j]) - t1(a[j] + b[j])]]
    return F


# ---------------------------------------------------------------- layout
def test_layout_and_init():
    assert relaxation.n_params(S2E) == 36 and relaxation.n_params(BOX) == 6
    np.testing.assert_array_equal(relaxation.theta_init(S2E), np.ones(36))
    c, a, b = relaxation.split_theta(jnp.arange(10.0), 2, 4)
    np.testing.assert_array_equal(c, [0, 1])
    np.testing.assert_array_equal(a, [2, 4, 6, 8])
    np.testing.assert_array_equal(b, [3, 5, 7, 9])
    bad = dataclasses.replace(S2E, n_simplex=1)
    with pytest.raises(ConfigError, match="space"):
        relaxation.n_params(bad)
    with pytest.raises(ConfigError, match="samples"):
        relaxation.sample(jax.random.PRNGKey(0), relaxation.theta_init(S2E), S2E, 0)


def test_uniform_at_theta_one():
    # θ¹ = 1 (Algorithm 2, line 1): log p is the constant log((S−1)!) (uniform simplex × unit box).
    xs = _xs(relaxation.theta_init(S2E), S2E)
    lp = np.asarray(relaxation.log_prob_batch(relaxation.theta_init(S2E), xs, S2E))
    np.testing.assert_allclose(lp, np.log(6.0), rtol=1e-5)


# ---------------------------------------------------------------- sampling
def test_sample_support_determinism_and_moments():
    theta = _theta(S2E, 1, 0.3, 5.0)  # small concentrations too: samples pile up at the edges
    xs = _xs(theta, S2E, 2048, seed=0)
    S = S2E.n_simplex
    assert xs.shape == (2048, 20) and np.isfinite(xs).all()
    np.testing.assert_allclose(xs[:, :S].sum(1), 1.0, atol=1e-5)
    assert xs.min() >= relaxation.EPS * 0.99 and xs[:, S:].max() <= 1 - relaxation.EPS
    assert np.isfinite(np.asarray(relaxation.log_prob_batch(theta, xs[:64], S2E))).all()
    # same key -> same samples; a smaller K is a prefix of a larger one
    np.testing.assert_array_equal(_xs(theta, S2E, 8, 3), _xs(theta, S2E, 8, 3))
    np.testing.assert_array_equal(_xs(theta, S2E, 5, 3), _xs(theta, S2E, 8, 3)[:5])
    # moments of Dirichlet and Beta
    mean = np.asarray(relaxation.mean(theta, S2E))
    c, a, b = _split(theta, S, S2E.n_box)
    var = np.concatenate([mean[:S] * (1 - mean[:S]) / (c.sum() + 1), a * b / ((a + b) ** 2 * (a + b + 1))])
    se = np.sqrt(var / len(xs))
    assert np.all(np.abs(xs.mean(0) - mean) < 5 * se)
    np.testing.assert_allclose(xs.var(0), var, rtol=0.2)


@pytest.mark.parametrize("space,lo,hi", [(S2E, 0.3, 5.0), (S2E, 0.02, 0.2), (BOX, 1.0, 8.0)],
                         ids=["s2e", "s2e-tiny-concentrations", "box"])
def test_sample_host_has_the_distribution_of_sample(space, lo, hi):
    # numpy's draws on the host (the default search's sampler) against relaxation.sample (JAX's keys):
    # the same support and clipping, the same means, variances and per-coordinate distributions
    theta = _theta(space, 4, lo, hi)
    S = space.n_simplex
    n = 4096
    host = relaxation.sample_host(np.random.default_rng(0), theta, space, n)
    ref = _xs(theta, space, n, seed=1)
    assert host.shape == ref.shape and host.dtype == np.float64 and np.isfinite(host).all()
    np.testing.assert_array_equal(host, host.astype(np.float32))   # float32 values, as sample's
    if S:
        np.testing.assert_allclose(host[:, :S].sum(1), 1.0, atol=1e-5)
    assert host.min() >= relaxation.EPS * 0.99 and host[:, S:].max() <= 1 - relaxation.EPS
    # two-sample Kolmogorov–Smirnov test per coordinate (Bonferroni over the coordinates); the mass
    # clipped to EPS (renormalized: last bits differ between the samplers) counted as one value
    def clipped(x):
        return np.where(x < 2 * relaxation.EPS, 0.0, np.where(x > 1 - 2 * relaxation.EPS, 1.0, x))

    p = [stats.ks_2samp(clipped(host[:, j]), clipped(ref[:, j])).pvalue for j in range(host.shape[1])]
    assert min(p) > 1e-3 / host.shape[1], f"coordinate {int(np.argmin(p))}: p = {min(p):.2g}"
    se = np.sqrt((host.var(0) + ref.var(0)) / n)
    assert np.all(np.abs(host.mean(0) - ref.mean(0)) < 5 * se + 1e-9)
    # the same generator state gives the same draws; another state others
    np.testing.assert_array_equal(relaxation.sample_host(np.random.default_rng([7, 1]), theta, space, 9),
                                  relaxation.sample_host(np.random.default_rng([7, 1]), theta, space, 9))
    assert not np.array_equal(relaxation.sample_host(np.random.default_rng([7, 2]), theta, space, 9),
                              relaxation.sample_host(np.random.default_rng([7, 1]), theta, space, 9))
    with pytest.raises(ConfigError, match="^samples"):
        relaxation.sample_host(np.random.default_rng(0), theta, space, 0)
    with pytest.raises(ConfigError, match="^theta"):
        relaxation.sample_host(np.random.default_rng(0), -theta, space, 3)


# ---------------------------------------------------------------- densities
@pytest.mark.parametrize("space", [S2E, BOX], ids=["s2e", "box"])
def test_log_prob_matches_scipy(space):
    S, B = space.n_simplex, space.n_box
    theta = _theta(space, 2, 0.5, 6.0)
    xs = _np_xs(theta, space, seed=2)
    ours = np.asarray(relaxation.log_prob_batch(theta, xs, space))
    ref = np.array([scipy_log_prob(theta, x, S, B) for x in xs])
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(float(relaxation.log_prob(theta, xs[0], space)), ref[0], rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("space", [S2E, BOX], ids=["s2e", "box"])
def test_score_matches_closed_form_and_finite_differences(space):
    S, B = space.n_simplex, space.n_box
    theta = _theta(space, 3)
    xs = _np_xs(theta, space, seed=3)
    scores = np.asarray(relaxation.score_batch(theta, xs, space))
    for x, s in zip(xs[:3], scores[:3]):
        np.testing.assert_allclose(s, closed_score(theta, x, S, B), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.asarray(relaxation.score(theta, x, space)), s, rtol=1e-5, atol=1e-5)
        # central differences of scipy's float64 log-density
        h, th = 1e-5, np.asarray(theta, np.float64)
        fd = np.array([(scipy_log_prob(th + h * e, x, S, B) - scipy_log_prob(th - h * e, x, S, B)) / (2 * h)
                       for e in np.eye(len(th))])
        np.testing.assert_allclose(s, fd, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("space", [S2E, BOX], ids=["s2e", "box"])
def test_hessian_matches_closed_form_and_is_minus_fisher(space):
    S, B = space.n_simplex, space.n_box
    theta = _theta(space, 4)
    xs = _np_xs(theta, space, seed=4)
    hs = np.asarray(relaxation.hessian_batch(theta, xs, space))
    F = closed_fisher(theta, S, B)
    for h in hs:  # the Hessian of log p does not depend on x, and −∇² log p is the Fisher matrix
        np.testing.assert_allclose(-h, F, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(relaxation.hessian_log_prob(theta, xs[0], space)), hs[0], atol=1e-6)
    np.testing.assert_allclose(np.asarray(relaxation.fisher(theta, space)), F, rtol=1e-4, atol=1e-5)
    # second-order central differences of scipy's float64 log-density (a few entries, incl. off-diagonal)
    x, th, h = xs[0], np.asarray(theta, np.float64), 1e-3
    lp = lambda t: scipy_log_prob(t, x, S, B)  # noqa: E731
    P = len(th)
    for i, j in [(0, 0), (0, 1), (P - 2, P - 1), (P - 1, P - 1), (P - 3, P - 3)]:
        ei, ej = np.eye(P)[i] * h, np.eye(P)[j] * h
        fd = (lp(th + ei + ej) - lp(th + ei - ej) - lp(th - ei + ej) + lp(th - ei - ej)) / (4 * h * h)
        assert abs(hs[0][i, j] - fd) < 1e-3 + 1e-3 * abs(fd), (i, j, hs[0][i, j], fd)


def test_fisher_is_expected_outer_product_of_scores():
    theta = _theta(S2E, 5, 1.0, 3.0)
    F = np.asarray(relaxation.fisher(theta, S2E), np.float64)
    np.testing.assert_allclose(F, F.T, atol=1e-7)
    assert np.linalg.eigvalsh(F).min() > 0
    s = np.asarray(relaxation.score_batch(theta, _np_xs(theta, S2E, 4096, seed=5), S2E), np.float64)
    # E[score] = 0 and E[score scoreᵀ] = F (Monte Carlo over 4096 samples)
    assert np.abs(s.mean(0)).max() < 5 * np.sqrt(np.diag(F).max() / len(s))
    emp = s.T @ s / len(s)
    assert np.linalg.norm(emp - F) / np.linalg.norm(F) < 0.1
    np.testing.assert_allclose(np.diag(emp), np.diag(F), rtol=0.15)
