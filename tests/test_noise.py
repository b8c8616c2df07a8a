import numpy as np
import pytest

from s2e_jax import noise
from s2e_jax.config import ConfigError


def test_symmetric_matrix_formula():
    r, c = 0.5, 10
    t = noise.symmetric_matrix(r, c)
    expected = np.array([[1 - r if i == j else r / (c - 1) for j in range(c)] for i in range(c)])
    np.testing.assert_array_equal(t, expected)
    np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_pair_matrix_formula():
    r, c = 0.45, 10
    t = noise.pair_matrix(r, c)
    expected = np.zeros((c, c))
    for i in range(c):
        expected[i, i] = 1 - r
        expected[i, (i + 1) % c] = r
    np.testing.assert_array_equal(t, expected)
    np.testing.assert_allclose(t.sum(axis=1), 1.0, rtol=0, atol=1e-12)


def test_transition_matrix_kinds():
    np.testing.assert_array_equal(noise.transition_matrix("none", 0.0, 4), np.eye(4))
    np.testing.assert_array_equal(noise.transition_matrix("pair", 0.3, 4), noise.pair_matrix(0.3, 4))
    np.testing.assert_array_equal(
        noise.transition_matrix("symmetric", 0.3, 4), noise.symmetric_matrix(0.3, 4))
    user = [[0.9, 0.1], [0.2, 0.8]]
    np.testing.assert_array_equal(noise.transition_matrix("matrix", 0.0, 2, matrix=user), user)


@pytest.mark.parametrize("kind,rate", [("symmetric", 0.5), ("pair", 0.45)])
def test_empirical_flip_rate(kind, rate):
    t = noise.transition_matrix(kind, rate, 10)
    y = np.arange(100_000) % 10
    y_noisy, is_clean = noise.corrupt_labels(y, t, seed=0)
    assert y_noisy.dtype == np.int32 and is_clean.dtype == bool
    np.testing.assert_array_equal(is_clean, y_noisy == y)
    assert abs(noise.actual_noise_rate(is_clean) - rate) < 0.01


@pytest.mark.parametrize("kind,rate", [("symmetric", 0.5), ("pair", 0.45)])
def test_empirical_transition_matrix(kind, rate):
    t = noise.transition_matrix(kind, rate, 10)
    y = np.arange(400_000) % 10  # 40,000 per row: atol 0.01 is 4 standard deviations
    y_noisy, _ = noise.corrupt_labels(y, t, seed=1)
    counts = np.zeros((10, 10))
    np.add.at(counts, (y, y_noisy), 1)
    np.testing.assert_allclose(counts / counts.sum(axis=1, keepdims=True), t, rtol=0, atol=0.01)


def test_zero_probability_classes_never_drawn():
    t = np.array([[0.5, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, 0.0],
                  [0.0, 0.0, 0.0, 1.0], [0.3, 0.0, 0.0, 0.7]])
    y = np.arange(20_000) % 4
    y_noisy, _ = noise.corrupt_labels(y, t, seed=0)
    assert np.all(t[y, y_noisy] > 0)


def test_identity_keeps_labels():
    y = np.arange(1000) % 7
    y_noisy, is_clean = noise.corrupt_labels(y, noise.transition_matrix("none", 0.0, 7), seed=3)
    np.testing.assert_array_equal(y_noisy, y)
    assert is_clean.all() and noise.actual_noise_rate(is_clean) == 0.0


def test_seed_determinism():
    t = noise.symmetric_matrix(0.5, 10)
    y = np.arange(5000) % 10
    a, _ = noise.corrupt_labels(y, t, seed=7)
    b, _ = noise.corrupt_labels(y, t, seed=7)
    c, _ = noise.corrupt_labels(y, t, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.any(a != c)


@pytest.mark.parametrize("rate", [1.0, -0.1, float("nan"), "abc"])
def test_bad_rate(rate):
    with pytest.raises(ConfigError, match="noise_rate"):
        noise.transition_matrix("symmetric", rate, 10)


@pytest.mark.parametrize("matrix,problem", [
    ([[0.5, 0.4], [0.0, 1.0]], "sum to 1"),
    ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]], "shape"),
    ([[1.5, -0.5], [0.0, 1.0]], "non-negative"),
    ([[np.nan, 1.0], [0.0, 1.0]], "NaN"),
    ([["a", "b"], ["c", "d"]], "numeric"),
])
def test_bad_matrix(matrix, problem):
    with pytest.raises(ConfigError, match=f"noise_matrix.*{problem}"):
        noise.transition_matrix("matrix", 0.0, 2, matrix=matrix)


def test_bad_kind_and_matrix_usage():
    with pytest.raises(ConfigError, match="noise: unknown value 'flip'"):
        noise.transition_matrix("flip", 0.2, 10)
    with pytest.raises(ConfigError, match="noise_matrix: required"):
        noise.transition_matrix("matrix", 0.0, 10)
    with pytest.raises(ConfigError, match="noise_matrix: only used"):
        noise.transition_matrix("pair", 0.2, 2, matrix=np.eye(2))
    with pytest.raises(ConfigError, match="num_classes"):
        noise.symmetric_matrix(0.2, 1)


@pytest.mark.parametrize("labels,problem", [
    ([0, 1, 10], r"\[0, 10\)"),
    ([0, -1, 2], r"\[0, 10\)"),
    ([0.0, 1.5], "integers"),
    ([[0, 1]], "1-D"),
])
def test_bad_labels(labels, problem):
    with pytest.raises(ConfigError, match=f"labels: .*{problem}"):
        noise.corrupt_labels(np.array(labels), noise.symmetric_matrix(0.2, 10), seed=0)


def test_corrupt_labels_rejects_non_square_matrix():
    with pytest.raises(ConfigError, match="noise_matrix: expected a square"):
        noise.corrupt_labels(np.zeros(3, int), np.ones((2, 3)) / 3, seed=0)
