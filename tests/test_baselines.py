"""The baselines of section 4.1 (Co-teaching+, MentorNet, Decoupling, F-correction, Reweight):
each rule's choice on a constructed batch, T's estimation, Reweight's meta-gradient, and the trainer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2e_jax import data as data_lib
from s2e_jax import fcorrection, noise, selection
from s2e_jax import train as T
from s2e_jax.config import ConfigError, TrainConfig


@pytest.fixture(scope="module")
def digits():
    return data_lib.load_dataset("digits")


def _cfg(**kw):
    base = dict(dataset="digits", noise="pair", noise_rate=0.45, epochs=2, batch_size=64, decay_start=1,
                progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _logits_with_preds(preds, c=3):
    """Logits [N, B, C] whose argmax is ``preds`` [N, B]."""
    return jnp.asarray(np.eye(c)[np.asarray(preds)] * 5.0, jnp.float32)


# ------------------------------------------------------------------------------ Co-teaching+
def test_coteaching_plus_small_loss_among_disagreement_crossed():
    # predictions differ on samples 0, 3, 5 (D, |D| = 3); R = 0.7 -> floor(0.7 * 3) = 2 kept of D
    logits = _logits_with_preds([[0, 1, 2, 0, 1, 2], [1, 1, 2, 1, 1, 0]])
    losses = jnp.asarray([[0.6, 0.5, 0.2, 0.3, 0.05, 0.9],   # net 1: smallest overall is sample 4 (not in D)
                          [0.2, 0.6, 0.1, 0.8, 0.4, 0.7]])
    w, kept = selection.coteaching_plus_rule(losses, logits, None, 0.7, jnp.int32(3), init_epochs=3)
    np.testing.assert_array_equal(kept, [[1, 0, 0, 1, 0, 0], [1, 0, 0, 0, 0, 1]])  # sample 0 is not dropped
    np.testing.assert_array_equal(w, [[1, 0, 0, 0, 0, 1], [1, 0, 0, 1, 0, 0]])      # crossed
    jitted = jax.jit(selection.get_rule("coteaching_plus", init_epochs=3).rule)  # fixed shapes, traced r, epoch
    np.testing.assert_array_equal(jitted(losses, logits, None, 0.7, 3)[1], kept)
    # before init_epochs: plain Co-teaching, floor(0.7 * 6) = 4 small-loss samples of the whole batch
    w0, kept0 = selection.coteaching_plus_rule(losses, logits, None, 0.7, jnp.int32(2), init_epochs=3)
    wc, keptc = selection.coteaching_rule(losses, logits, None, 0.7, 0)
    np.testing.assert_array_equal(kept0, keptc)
    np.testing.assert_array_equal(w0, wc)
    np.testing.assert_array_equal(kept0[0], [0, 1, 1, 1, 1, 0])


def test_coteaching_plus_keeps_all_of_a_small_disagreement_set():
    """floor(R |D|) == 0 keeps all of D (the authors' ``if len(ind_1_update) == 0``), crossed."""
    preds = [[0, 1, 2, 0], [0, 1, 2, 1]]  # D = {3}: floor(0.5 * 1) = 0
    w, kept = selection.coteaching_plus_rule(jnp.ones((2, 4)), _logits_with_preds(preds), None, 0.5,
                                             jnp.int32(5), jnp.int32(900), init_epochs=0)
    np.testing.assert_array_equal(kept, [[0, 0, 0, 1], [0, 0, 0, 1]])
    np.testing.assert_array_equal(w, kept)


@pytest.mark.parametrize("epoch, batch, whole", [(0, 0, True), (9, 499, True), (9, 500, False),
                                                 (4, 1000, False), (199, 0, True)])
def test_coteaching_plus_empty_disagreement_learns_the_whole_batch_only_early(epoch, batch, whole):
    """No disagreement: the whole batch while the authors' step = (1-based epoch) x batch < 5000
    (10 x 499 = 4990 learns, 10 x 500 = 5000 does not), else nothing from this batch."""
    preds = [[0, 1, 2, 0], [0, 1, 2, 0]]
    rule = jax.jit(selection.get_rule("coteaching_plus", init_epochs=0).rule)
    w, kept = rule(jnp.ones((2, 4)), _logits_with_preds(preds), None, 0.9, epoch, batch)
    np.testing.assert_array_equal(w, np.full((2, 4), float(whole)))
    np.testing.assert_array_equal(kept, w)


def test_init_epochs_auto_by_dataset():
    names = ("mnist", "digits", "cifar10", "cifar100", "x.npz")
    assert [TrainConfig(dataset=d).resolved_init_epochs() for d in names] == [0, 0, 20, 5, 0]
    assert TrainConfig(dataset="cifar10", init_epochs=3).resolved_init_epochs() == 3
    with pytest.raises(ConfigError, match="init_epochs"):
        TrainConfig(init_epochs=-1).validate()


# ------------------------------------------------------------------------------ MentorNet, Decoupling
def test_mentornet_keeps_its_own_small_loss_samples():
    losses = jnp.asarray([[0.4, 0.1, 0.9, 0.3, 0.2]])
    w, kept = selection.selfpaced_rule(losses, None, None, 0.6, 0)  # floor(0.6 * 5) = 3
    np.testing.assert_array_equal(kept, [[0, 1, 0, 1, 1]])
    np.testing.assert_array_equal(w, kept)  # learns from its own selection


def test_decoupling_updates_both_on_disagreement_only():
    logits = _logits_with_preds([[0, 1, 2, 0, 2], [0, 2, 2, 1, 2]])
    w, kept = selection.decoupling_rule(jnp.ones((2, 5)), logits, None, 0.3, 0)
    np.testing.assert_array_equal(w, [[0, 1, 0, 1, 0], [0, 1, 0, 1, 0]])
    np.testing.assert_array_equal(kept, w)


def test_no_disagreement_means_zero_loss_and_zero_gradient(digits):
    prep = T.prepare(_cfg(method="decoupling"), digits)
    tr = prep.trainer
    net_keys, data_key = T.seed_keys(0, 1)
    carry = tr.init(jnp.concatenate([net_keys, net_keys]), data_key, prep.sched, prep.data.x_train)  # twins
    idx = jnp.arange(64)
    xb = T.normalize(prep.data.x_train[idx], prep.data.mean, prep.data.std)
    g, (per_net, kept, _) = jax.jit(jax.grad(tr.loss, has_aux=True))(
        carry.params, carry.batch_stats, xb, prep.data.y_train[idx], 0.8, jax.random.PRNGKey(0), 0,
        prep.data.transition)
    assert float(kept.sum()) == 0 and np.all(np.asarray(per_net) == 0)
    assert all(float(jnp.abs(a).max()) == 0 for a in jax.tree_util.tree_leaves(g))


# ------------------------------------------------------------------------------ F-correction
def test_forward_corrected_loss_values():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 5, 3)).astype(np.float32)
    y = np.asarray([0, 1, 2, 2, 1])
    t = noise.pair_matrix(0.3, 3)
    got = jax.jit(fcorrection.forward_corrected_ce)(jnp.asarray(logits), jnp.asarray(y),
                                                    jnp.asarray(t, jnp.float32))
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    want = -np.log(np.take_along_axis(p @ t, np.broadcast_to(y[None, :, None], (2, 5, 1)), -1)[..., 0])
    np.testing.assert_allclose(got, want, rtol=1e-5)
    ident = fcorrection.forward_corrected_ce(jnp.asarray(logits), jnp.asarray(y), jnp.eye(3))
    np.testing.assert_allclose(ident, selection.cross_entropy(jnp.asarray(logits), jnp.asarray(y)), rtol=1e-5)


@pytest.mark.parametrize("estimator", ["percentile97", "argmax"])
@pytest.mark.parametrize("kind", ["pair", "random"])
def test_transition_estimate_recovers_T_from_a_synthetic_model(estimator, kind):
    rng = np.random.default_rng(1)
    c, per_class = 5, 400
    if kind == "pair":
        true_t = noise.pair_matrix(0.4, c)
    else:  # a random row-stochastic T with a dominant diagonal
        true_t = rng.dirichlet(np.ones(c) * 0.5, c) * 0.5 + np.eye(c) * 0.5
    # a synthetic clean posterior: half the samples of each class near-certain, half ambiguous
    ys = np.repeat(np.arange(c), per_class)
    easy = rng.random(len(ys)) < 0.5
    conf = np.where(easy, rng.uniform(0.995, 1.0, len(ys)), rng.uniform(0.3, 0.9, len(ys)))
    clean = (1 - conf)[:, None] * rng.dirichlet(np.ones(c), len(ys)) + conf[:, None] * np.eye(c)[ys]
    est = fcorrection.estimate_transition(clean @ true_t, estimator)  # the noisy posterior, eq. (4)
    np.testing.assert_allclose(est.sum(1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(est, true_t, atol=0.01)


def test_transition_file_is_traced_not_compiled_in(digits, tmp_path):
    t1, t2 = noise.pair_matrix(0.45, 10), noise.symmetric_matrix(0.3, 10)
    np.save(tmp_path / "t.npy", t1)
    prep = T.prepare(_cfg(method="fcorrection", transition_matrix=str(tmp_path / "t.npy")), digits)
    np.testing.assert_allclose(prep.data.transition, t1, rtol=1e-6)
    carry = T.init_carry(prep, 0)
    a, _ = prep.trainer.run_epoch(carry, prep.data)
    b, _ = prep.trainer.run_epoch(carry, prep.data._replace(transition=jnp.asarray(t2, jnp.float32)))
    assert prep.trainer.runner._cache_size() == 1  # another T, same program
    assert not np.allclose(jax.tree_util.tree_leaves(a.params)[0], jax.tree_util.tree_leaves(b.params)[0])
    # and the step's loss is the forward-corrected one
    idx = jnp.arange(64)
    xb = T.normalize(prep.data.x_train[idx], prep.data.mean, prep.data.std)
    yb = prep.data.y_train[idx]
    loss, _ = jax.jit(prep.trainer.loss)(carry.params, carry.batch_stats, xb, yb, 1.0, jax.random.PRNGKey(0),
                                         0, prep.data.transition)
    logits = prep.trainer.model.apply({"params": jax.tree_util.tree_map(lambda a: a[0], carry.params)}, xb)
    p = np.asarray(jax.nn.softmax(logits), np.float64)
    want = -np.log((p @ t1)[np.arange(64), np.asarray(yb)]).mean()
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)


def test_a_diverged_warm_up_network_is_one_clear_error(digits, monkeypatch):
    """F-correction estimating T from a warm-up network whose softmax is NaN (it diverged) stops with
    one message naming the way out, instead of training on a NaN transition matrix."""
    monkeypatch.setattr(fcorrection, "predict_proba", lambda *a, **k: np.full((1, 5, 10), np.nan))
    with pytest.raises(ConfigError, match=r"fcorrection: the warm-up network \(1 epochs of standard training\) "
                                          r"diverged .* give transition_matrix"):
        T.prepare(_cfg(method="fcorrection", epochs=1), digits)


def test_transition_file_errors_name_the_field(tmp_path):
    np.save(tmp_path / "bad.npy", np.ones((3, 3)))
    with pytest.raises(ConfigError, match="transition_matrix: .*sum to 1"):
        fcorrection.load_transition(str(tmp_path / "bad.npy"), 3)
    with pytest.raises(ConfigError, match="transition_matrix: .*shape"):
        fcorrection.load_transition(str(tmp_path / "bad.npy"), 4)
    with pytest.raises(ConfigError, match="transition_matrix: only used with method fcorrection"):
        TrainConfig(method="coteaching", transition_matrix=str(tmp_path / "bad.npy")).validate()


# ------------------------------------------------------------------------------ Reweight
def _linear_forward(params, x):
    """A softmax-regression model as N = 1 stacked networks."""
    return (x @ params["w"] + params["b"][:, None, :])  # [N, B, C] for x [B, D]


def _reweight(*args):
    return _reweight_jit(_linear_forward, selection.cross_entropy, *args)


_reweight_jit = jax.jit(selection.reweight_weights, static_argnums=(0, 1))


def _np_meta_objective(w0, b0, x, y, xv, yv, alpha, eps):
    """L_clean(θ − α ∇_θ Σ ε_i ℓ_i(θ)) of a softmax-regression model, in float64 numpy."""
    def probs(w, b, x):
        z = x @ w + b
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    c = w0.shape[1]
    d = eps[:, None] * (probs(w0, b0, x) - np.eye(c)[y])  # ε_i ∂ℓ_i/∂z_i
    w1, b1 = w0 - alpha * x.T @ d, b0 - alpha * d.sum(0)
    return -np.log(probs(w1, b1, xv)[np.arange(len(yv)), yv]).mean()


def test_reweight_weights_match_a_finite_difference_meta_gradient():
    rng = np.random.default_rng(0)
    b, m, dim, c, alpha = 8, 6, 4, 3, 0.7
    w0, b0 = rng.normal(size=(dim, c)), rng.normal(size=c) * 0.1
    x, y = rng.normal(size=(b, dim)), rng.integers(0, c, b)
    xv, yv = rng.normal(size=(m, dim)), rng.integers(0, c, m)
    params = {"w": jnp.asarray(w0[None], jnp.float32), "b": jnp.asarray(b0[None], jnp.float32)}
    f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
    w, kept = _reweight( params, f32(x), jnp.asarray(y),
                                         f32(xv), jnp.asarray(yv), alpha)
    h, g = 1e-5, np.empty(b)
    for i in range(b):  # central differences of the meta objective in ε_i at ε = 0
        e = np.zeros(b)
        e[i] = h
        g[i] = (_np_meta_objective(w0, b0, x, y, xv, yv, alpha, e)
                - _np_meta_objective(w0, b0, x, y, xv, yv, alpha, -e)) / (2 * h)
    want = np.maximum(-g, 0)
    want = want / want.sum()
    assert 0 < (want > 0).sum() < b  # some weights zero, some not: a real test of the clipping
    np.testing.assert_allclose(np.asarray(w[0]), want, atol=2e-5)
    np.testing.assert_array_equal(np.asarray(kept[0]), want > 0)


def _two_clusters():
    """Class 0 at e0, class 1 at e1; a zero-initialized softmax regression (uniform posteriors)."""
    e = np.eye(2, dtype=np.float32)
    params = {"w": jnp.zeros((1, 2, 2)), "b": jnp.zeros((1, 2))}
    xv, yv = jnp.asarray(e[[0, 1, 0, 1]]), jnp.asarray([0, 1, 0, 1])
    return e, params, xv, yv


def test_reweight_zero_weight_exactly_on_mislabeled_samples():
    e, params, xv, yv = _two_clusters()
    x = jnp.asarray(e[[0, 0, 1, 1, 0, 1]])
    y = jnp.asarray([0, 1, 1, 0, 0, 1])  # samples 1 and 3 carry the other cluster's label
    w, kept = _reweight( params, x, y, xv, yv, 0.1)
    np.testing.assert_allclose(np.asarray(w[0]), [0.25, 0, 0.25, 0, 0.25, 0.25], rtol=1e-5)
    np.testing.assert_array_equal(kept[0], [1, 0, 1, 0, 1, 1])
    # every sample mislabeled: all weights zero (no NaN from 0 / 0), hence no update
    w, _ = _reweight( params, jnp.asarray(e), jnp.asarray([1, 0]),
                                      xv, yv, 0.1)
    np.testing.assert_array_equal(np.asarray(w), 0.0)


def test_reweight_in_the_trainer(digits):
    prep = T.prepare(_cfg(method="reweight"), digits)
    tr = prep.trainer
    carry = T.init_carry(prep, 0)
    idx = jnp.arange(64)
    xb = T.normalize(prep.data.x_train[idx], prep.data.mean, prep.data.std)
    yb = prep.data.y_train[idx]
    key = jax.random.PRNGKey(3)
    w, kept = jax.jit(tr.meta_weights)(carry, xb, yb, prep.data, key)
    assert w.shape == (1, 64) and float(w.min()) >= 0
    np.testing.assert_allclose(float(w.sum()), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(kept, np.asarray(w) > 0)
    loss, (per_net, kept2, _) = jax.jit(tr.loss)(carry.params, carry.batch_stats, xb, yb, 1.0, key, 0,
                                                 prep.data.transition, (w, kept))
    np.testing.assert_array_equal(kept2, kept)
    logits = tr.model.apply({"params": jax.tree_util.tree_map(lambda a: a[0], carry.params)}, xb)
    ce = selection.cross_entropy(logits[None], yb)
    np.testing.assert_allclose(float(loss), float((w * ce).sum()), rtol=1e-5)
    _, m = tr.run_epoch(carry, prep.data)
    assert np.isfinite(np.asarray(m["train_loss"])).all() and 0 < float(m["label_precision"][0]) <= 1
