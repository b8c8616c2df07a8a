"""F-correction (Patrini et al. 2017, "Making deep neural networks robust to label noise: a loss
correction approach"): the forward-corrected loss and the estimation of the transition matrix T.

``T[i, j] = p(noisy label j | clean label i)``. The network models the clean posterior
``p(y | x) = softmax(z)``; the noisy posterior is ``p(ỹ | x) = softmax(z) @ T`` (their eq. 4), and the
forward-corrected loss is its cross-entropy with the noisy label (their Theorem 2):

    ℓ→(z, ỹ) = CE(log(softmax(z) @ T), ỹ) = −log (softmax(z) @ T)_ỹ.

T is estimated as in their section 3.1 / released ``est_T``: train a standard network on the noisy
labels, then for each class i take the training example x̄_i the network is most confident is of
class i, and set ``T[i, :] = p(ỹ | x̄_i)``. The ``percentile97`` estimator (their ``filter_outlier``)
takes x̄_i as the most confident example *below* the 97th percentile of ``p(ỹ = i | x)`` (robust to
outliers); ``argmax`` takes the plain argmax (their eq. 9).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2e_jax import noise as noise_lib
from s2e_jax.config import FCORR_ESTIMATORS as ESTIMATORS
from s2e_jax.config import ConfigError

_LOG_FLOOR = 1e-12  # T entries are floored at 1e-12 inside the log (a zero column never gives inf)


def forward_corrected_ce(logits, labels, transition):
    """Per-sample forward-corrected loss [N, B] of logits [N, B, C], labels [B], T [C, C]:
    CE(log(softmax(z) @ T), ỹ) (Patrini et al. 2017, eq. 4 / Theorem 2), computed in log space as
    log(softmax(z) @ T)_j = logsumexp_i(log_softmax(z)_i + log T_ij)."""
    log_t = jnp.log(jnp.maximum(transition, _LOG_FLOOR))
    log_noisy = jax.nn.logsumexp(jax.nn.log_softmax(logits)[..., :, None] + log_t, axis=-2)
    return optax.softmax_cross_entropy_with_integer_labels(log_noisy, labels[None])


def estimate_transition(probs, estimator: str = "percentile97") -> np.ndarray:
    """T [C, C] from noisy-label posteriors ``probs`` [n, C] (Patrini et al. 2017, eq. 9; ``est_T``):
    row i is the posterior of the example most confidently of class i (below the 97th percentile
    of column i for ``percentile97``), renormalized to sum 1."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"fcorr_estimator: unknown value {estimator!r} "
                          f"(expected one of {', '.join(ESTIMATORS)})")
    probs = np.asarray(probs, np.float64)
    c = probs.shape[1]
    t = np.empty((c, c))
    for i in range(c):
        col = probs[:, i]
        if estimator == "percentile97":
            thresh = np.percentile(col, 97, method="higher")
            col = np.where(col >= thresh, 0.0, col)
        t[i] = probs[int(np.argmax(col))]
    return t / t.sum(1, keepdims=True)


def load_transition(path: str, num_classes: int) -> np.ndarray:
    """A user's T from an ``.npy`` file: (C, C), non-negative, rows summing to 1."""
    try:
        t = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"transition_matrix: cannot read {path} as an .npy file: {err}") from err
    try:
        return noise_lib.check_transition_matrix(t, num_classes)
    except ConfigError as err:  # same checks as noise_matrix, named after this field
        raise ConfigError(f"transition_matrix: {str(err).split(': ', 1)[-1]}") from None


def predict_proba(trainer, carry, data, x) -> np.ndarray:
    """Softmax of each network on uint8 inputs ``x`` (``data.x_*``: images, or Model 1's stored
    patches; eval mode): [N, n, C] (:meth:`s2e_jax.train.Trainer.predict_proba`)."""
    return trainer.predict_proba(carry, data, x)
