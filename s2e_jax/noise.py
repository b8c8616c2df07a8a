"""Label-noise transition matrices and noisy-label sampling (host side, numpy).

The matrices are exactly those of Co-teaching (Han et al., 2018): entry ``T[i, j]`` is the
probability that an example of clean class ``i`` is given the noisy label ``j``.

* symmetric: ``T[i, i] = 1 - r`` and ``T[i, j] = r / (C - 1)`` for ``j != i``;
* pair: ``T[i, i] = 1 - r`` and ``T[i, (i + 1) mod C] = r`` (each class flips to the next one).
"""

import numpy as np

from s2e_jax.config import NOISES, ConfigError

NOISE_KINDS = NOISES + ("matrix",)  # matrix: a given transition matrix


def _check_rate(rate):
    """Return ``rate`` as a float after checking that it lies in [0, 1)."""
    try:
        r = float(rate)
    except (TypeError, ValueError):
        raise ConfigError(f"noise_rate: must be a number in [0, 1), got {rate!r}") from None
    if not 0.0 <= r < 1.0:  # also rejects NaN
        raise ConfigError(f"noise_rate: must be in [0, 1), got {rate}")
    return r


def _check_num_classes(num_classes):
    """Return ``num_classes`` as an int after checking that it is at least 2."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ConfigError(f"num_classes: must be an integer >= 2, got {num_classes!r}")
    return int(num_classes)


def symmetric_matrix(rate, num_classes):
    """Symmetric noise: keep the label with probability ``1 - rate``, else flip uniformly to another class.

    Returns a float64 ``(C, C)`` matrix with diagonal ``1 - rate`` and off-diagonal ``rate / (C - 1)``.
    """
    r, c = _check_rate(rate), _check_num_classes(num_classes)
    t = np.full((c, c), r / (c - 1))
    np.fill_diagonal(t, 1.0 - r)
    return t


def pair_matrix(rate, num_classes):
    """Pair-flip noise: class ``i`` flips to class ``(i + 1) mod C`` with probability ``rate``.

    Returns a float64 ``(C, C)`` matrix with diagonal ``1 - rate`` and ``T[i, (i + 1) mod C] = rate``.
    """
    r, c = _check_rate(rate), _check_num_classes(num_classes)
    eye = np.eye(c)
    return (1.0 - r) * eye + r * np.roll(eye, 1, axis=1)


def check_transition_matrix(matrix, num_classes):
    """Validate a user transition matrix and return it as float64.

    It must have shape ``(C, C)``, finite non-negative entries and rows summing to 1 (atol 1e-6);
    otherwise a ``ConfigError`` naming ``noise_matrix`` is raised.
    """
    try:
        t = np.asarray(matrix, dtype=np.float64)
    except (TypeError, ValueError):
        raise ConfigError("noise_matrix: must be a numeric (C, C) array") from None
    if t.shape != (num_classes, num_classes):
        raise ConfigError(
            f"noise_matrix: expected shape ({num_classes}, {num_classes}), got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ConfigError("noise_matrix: contains NaN or infinite entries")
    if np.any(t < 0):
        raise ConfigError("noise_matrix: entries must be non-negative")
    sums = t.sum(axis=1)
    bad = np.flatnonzero(~np.isclose(sums, 1.0, rtol=0.0, atol=1e-6))
    if bad.size:
        raise ConfigError(
            f"noise_matrix: each row must sum to 1, row {bad[0]} sums to {sums[bad[0]]:.6g}")
    return t


def transition_matrix(kind, rate, num_classes, matrix=None):
    """The ``(C, C)`` noise transition matrix for a noise ``kind``.

    Args:
      kind: ``"none"`` (identity), ``"symmetric"``, ``"pair"`` or ``"matrix"`` (user-given).
      rate: noise rate in [0, 1); ignored for ``"none"`` and ``"matrix"`` but still validated.
      num_classes: number of classes ``C``.
      matrix: the user's ``(C, C)`` row-stochastic array; required for, and only for, ``"matrix"``.
    """
    r, c = _check_rate(rate), _check_num_classes(num_classes)
    if kind not in NOISE_KINDS:
        raise ConfigError(
            f"noise: unknown value {kind!r} (expected one of {', '.join(NOISE_KINDS)})")
    if kind == "matrix":
        if matrix is None:
            raise ConfigError("noise_matrix: required when noise is 'matrix'")
        return check_transition_matrix(matrix, c)
    if matrix is not None:
        raise ConfigError(f"noise_matrix: only used with noise 'matrix', got noise {kind!r}")
    if kind == "none":
        return np.eye(c)
    return symmetric_matrix(r, c) if kind == "symmetric" else pair_matrix(r, c)


def check_labels(labels, num_classes, field="labels"):
    """Return ``labels`` as an int32 1-D array after checking they are integers in [0, C)."""
    y = np.asarray(labels)
    if y.ndim != 1:
        raise ConfigError(f"{field}: expected a 1-D array of labels, got shape {y.shape}")
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ConfigError(f"{field}: labels must be integers, got dtype {y.dtype}")
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise ConfigError(f"{field}: contains NaN or infinite values")
        if np.any(y != np.round(y)):
            raise ConfigError(f"{field}: labels must be integers")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ConfigError(
            f"{field}: labels must be in [0, {num_classes}), got range [{y.min()}, {y.max()}]")
    return y.astype(np.int32)


def corrupt_labels(y, transition, seed):
    """Draw a noisy label for every example from row ``transition[y_i]``.

    Vectorized inverse-CDF sampling: one uniform ``u_i`` per example (``np.random.default_rng(seed)``),
    the noisy label is the first class whose cumulative probability exceeds ``u_i``.

    Returns:
      ``(y_noisy, is_clean)``: int32 noisy labels and a bool mask ``y_noisy == y``.
    """
    shape = np.shape(transition)
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ConfigError(f"noise_matrix: expected a square (C, C) array, got shape {shape}")
    c = shape[0]
    t = check_transition_matrix(transition, c)
    y = check_labels(y, c)
    cdf = np.cumsum(t, axis=1)
    # Last class with positive probability per row: guards against rows summing to 1 - eps.
    last = c - 1 - np.argmax(t[:, ::-1] > 0, axis=1)
    u = np.random.default_rng(seed).random(y.shape[0])
    y_noisy = np.minimum((u[:, None] >= cdf[y]).sum(axis=1), last[y]).astype(np.int32)
    return y_noisy, y_noisy == y


def actual_noise_rate(is_clean):
    """Fraction of labels that were flipped (0.0 for no labels)."""
    is_clean = np.asarray(is_clean, dtype=bool)
    return float(1.0 - is_clean.mean()) if is_clean.size else 0.0
