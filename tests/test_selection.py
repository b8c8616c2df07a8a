import jax.numpy as jnp
import numpy as np
import pytest

from s2e_jax import selection
from s2e_jax.config import ConfigError


@pytest.mark.parametrize("k", [1, 3, 7, 10])
def test_small_loss_mask_keeps_exactly_the_k_smallest(k):
    rng = np.random.default_rng(k)
    loss = rng.permutation(10).astype(np.float32)  # distinct values: the k smallest are 0..k-1
    mask = np.asarray(selection.small_loss_mask(jnp.asarray(loss), k))
    assert mask.sum() == k
    np.testing.assert_array_equal(mask.astype(bool), loss < k)


def test_small_loss_mask_ties_keep_exactly_k():
    mask = np.asarray(selection.small_loss_mask(jnp.zeros(8), 3))
    np.testing.assert_array_equal(mask, [1, 1, 1, 0, 0, 0, 0, 0])


def test_num_keep_is_floor_and_at_least_one():
    assert int(selection.num_keep(0.55, 128)) == 70
    assert int(selection.num_keep(0.0, 128)) == 1
    assert int(selection.num_keep(1.0, 128)) == 128


def test_coteaching_rule_crosses_the_kept_sets():
    losses = jnp.asarray([[0.1, 0.9, 0.2, 0.8], [0.9, 0.1, 0.8, 0.2]])
    w, kept = selection.coteaching_rule(losses, None, None, 0.5, 0)
    np.testing.assert_array_equal(kept, [[1, 0, 1, 0], [0, 1, 0, 1]])
    # network 1 learns from network 2's kept samples and vice versa
    np.testing.assert_array_equal(w, [[0, 1, 0, 1], [1, 0, 1, 0]])


def test_standard_rule_keeps_everything():
    w, kept = selection.standard_rule(jnp.ones((1, 5)), None, None, 0.3, 0)
    assert float(w.sum()) == 5 and float(kept.sum()) == 5


def test_unknown_method():
    with pytest.raises(ConfigError, match="method"):
        selection.get_rule("nope")


def test_every_method_has_a_spec():
    from s2e_jax.config import METHODS

    assert set(selection.METHOD_RULES) == set(METHODS)
    for m in METHODS:
        spec = selection.get_rule(m)
        assert spec.num_nets in (1, 2) and (spec.rule is None) != (spec.weights_fn is None)
    assert selection.get_rule("coteaching_plus", init_epochs=7).rule.keywords == {"init_epochs": 7}
