"""Estimate the noise rate from the data (``tau="auto"``): eq. (1)'s tau when no noise rate is given.

A standard network is trained on the noisy labels for ``tau_warmup_epochs`` (the warm-up; with the
run's optimizer at a constant lr and the run's seed, so the estimate is deterministic given the seed),
and its softmax on the training images gives the estimate by one of two published estimators
(``tau_estimator``):

* ``anchor`` (Patrini et al. 2017, section 3.1, as F-correction here): the anchor-point estimate T-hat
  of the transition matrix (:func:`s2e_jax.fcorrection.estimate_transition`), and
  tau-hat = 1 - sum_i pi_i T-hat_ii with pi the noisy-label prior (the probability that a label differs
  from the class, when the noisy prior stands in for the clean one). The default.
* ``gmm_loss`` (Li et al. 2020, DivideMix, section 3.1): the per-example cross-entropy losses with the
  noisy labels, min-max normalized to [0, 1], are fitted with a two-component 1-D Gaussian mixture by
  EM; an example's probability of being noisy is its posterior of the component with the larger mean,
  and tau-hat is the mean of that posterior over the training set.

Which one is the default, and why, is measured in ``docs/noise_rate.md``.
"""
from __future__ import annotations

import numpy as np

from s2e_jax.config import TAU_ESTIMATORS, ConfigError
from s2e_jax.fcorrection import estimate_transition

_EPS = 1e-12
# tau_warmup_epochs "auto": the fewest epochs of at least this many optimizer steps (measured on digits
# and MNIST: docs/noise_rate.md, "Warm-up length")
TAU_WARMUP_STEPS = 120


def warmup_epochs(config, n_train: int) -> int:
    """The warm-up's epochs: ``config.tau_warmup_epochs``, or for ``auto`` the fewest epochs of at least
    :data:`TAU_WARMUP_STEPS` steps of ``n_train // batch_size`` (at least 1)."""
    if config.tau_warmup_epochs != "auto":
        return int(config.tau_warmup_epochs)
    steps = max(1, n_train // config.batch_size)
    return max(1, -(-TAU_WARMUP_STEPS // steps))


def fit_gmm_1d(x, iters: int = 200, tol: float = 1e-8, reg_covar: float = 5e-4):
    """``(weights [2], means [2], variances [2])`` of a two-component Gaussian mixture fitted to the 1-D
    sample ``x`` by EM (Dempster et al. 1977), components sorted by mean. ``reg_covar`` is added to each
    variance as in DivideMix's ``GaussianMixture(reg_covar=5e-4)``. Deterministic start: the halves of
    the sample split at its median."""
    x = np.asarray(x, np.float64).ravel()
    if x.size < 2 or not np.isfinite(x).all():
        raise ConfigError(f"tau: cannot fit a mixture to {x.size} losses (need >= 2 finite values)")
    hi = x > np.median(x)
    if hi.all() or not hi.any():  # constant sample: both components start at the same point
        hi = np.arange(x.size) >= x.size // 2
    resp = np.stack([~hi, hi], 1).astype(np.float64)
    prev = -np.inf
    for _ in range(iters):
        nk = resp.sum(0) + _EPS
        w = nk / x.size
        mu = (resp * x[:, None]).sum(0) / nk
        var = (resp * (x[:, None] - mu) ** 2).sum(0) / nk + reg_covar
        logp = np.log(w + _EPS) - 0.5 * (np.log(2 * np.pi * var) + (x[:, None] - mu) ** 2 / var)
        top = logp.max(1, keepdims=True)
        ll = top[:, 0] + np.log(np.exp(logp - top).sum(1))
        resp = np.exp(logp - ll[:, None])
        mean_ll = float(ll.mean())
        if abs(mean_ll - prev) < tol:
            break
        prev = mean_ll
    order = np.argsort(mu)
    return w[order], mu[order], var[order]


def gmm_posterior_noisy(x, weights, means, variances) -> np.ndarray:
    """Posterior [n] of the larger-mean component of the mixture for each value of ``x``."""
    x = np.asarray(x, np.float64).ravel()
    logp = np.log(np.asarray(weights) + _EPS) - 0.5 * (np.log(2 * np.pi * np.asarray(variances))
                                                       + (x[:, None] - means) ** 2 / variances)
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return p[:, 1] / p.sum(1)


def normalize_losses(losses) -> np.ndarray:
    """Losses min-max normalized to [0, 1] (DivideMix's ``(loss - min) / (max - min)``)."""
    losses = np.asarray(losses, np.float64).ravel()
    span = losses.max() - losses.min()
    return (losses - losses.min()) / span if span > 0 else np.zeros_like(losses)


def gmm_noise_rate(losses) -> float:
    """tau-hat of DivideMix's loss mixture: mean posterior of the high-loss component of a two-component
    Gaussian mixture on the normalized per-example losses (Li et al. 2020, section 3.1)."""
    x = normalize_losses(losses)
    if not x.any():  # every loss equal: nothing tells noisy from clean
        return 0.0
    return float(gmm_posterior_noisy(x, *fit_gmm_1d(x)).mean())


def anchor_noise_rate(probs, noisy_labels, num_classes: int, estimator: str = "percentile97") -> float:
    """tau-hat = 1 - sum_i pi_i T-hat_ii: T-hat the anchor-point transition estimate from the noisy
    posteriors ``probs`` [n, C] (Patrini et al. 2017, eq. 9), pi the noisy-label prior."""
    t = estimate_transition(probs, estimator)
    prior = np.bincount(np.asarray(noisy_labels), minlength=num_classes) / len(noisy_labels)
    return float(1.0 - (prior * np.diag(t)).sum())


def per_example_losses(probs, noisy_labels) -> np.ndarray:
    """Cross-entropy [n] of posteriors ``probs`` [n, C] with the noisy labels."""
    probs = np.asarray(probs, np.float64)
    return -np.log(np.maximum(probs[np.arange(len(probs)), np.asarray(noisy_labels)], _EPS))


def estimate_from_probs(probs, noisy_labels, num_classes: int, estimator: str) -> float:
    """tau-hat of ``estimator`` (``anchor`` | ``gmm_loss``) from a network's softmax on the training set,
    clipped to [0, 0.99] (eq. (1)'s tau must be < 1)."""
    if estimator not in TAU_ESTIMATORS:
        raise ConfigError(f"tau_estimator: unknown value {estimator!r} (expected one of {', '.join(TAU_ESTIMATORS)})")
    if estimator == "gmm_loss":
        tau = gmm_noise_rate(per_example_losses(probs, noisy_labels))
    else:
        tau = anchor_noise_rate(probs, noisy_labels, num_classes)
    return float(np.clip(tau, 0.0, 0.99))
