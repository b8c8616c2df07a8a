"""The trainer: Algorithm 1 with Co-teaching, its forms and drivers, compile-once, determinism."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from s2e_jax import data as data_lib
from s2e_jax import models as models_lib
from s2e_jax import selection
from s2e_jax import train as T
from s2e_jax.config import ConfigError, ExecutionConfig, TrainConfig

EXECUTION = {f.name for f in dataclasses.fields(ExecutionConfig)}


@pytest.fixture(scope="module")
def digits():
    return data_lib.load_dataset("digits")


def _cfg(**kw):
    """A small training; execution settings (net_form, driver, ...) go to its ``execution`` group."""
    base = dict(dataset="digits", noise="symmetric", noise_rate=0.5, epochs=3, batch_size=64,
                decay_start=1, progress=False)
    base.update({k: v for k, v in kw.items() if k not in EXECUTION})
    return TrainConfig(execution=ExecutionConfig(**{k: v for k, v in kw.items() if k in EXECUTION}), **base)


def _ex(cfg, **kw):
    """``cfg`` with execution settings changed."""
    return cfg.replace(execution=cfg.execution.replace(**kw))


def _run(prep, seed=0, sched=None, epochs=None):
    carry = T.init_carry(prep, seed, sched)
    rows = []
    for _ in range(epochs or prep.trainer.epochs):
        carry, m = prep.trainer.run_epoch(carry, prep.data)
        rows.append(T.to_host(m))
    return carry, T.stack_epochs(rows)


def test_network_1_learns_only_from_network_2s_kept_samples(digits):
    prep = T.prepare(_cfg(method="coteaching"), digits)
    tr = prep.trainer
    carry = T.init_carry(prep, 0)
    idx = jnp.arange(64)
    xb = T.normalize(prep.data.x_train[idx], prep.data.mean, prep.data.std)
    yb = prep.data.y_train[idx]
    r = 0.5
    g, (_, kept, _) = jax.grad(tr.loss, has_aux=True)(carry.params, carry.batch_stats, xb, yb, r,
                                                       jax.random.PRNGKey(0))
    kept = np.asarray(kept).astype(bool)
    assert (kept[0] != kept[1]).any(), "the two networks must keep different samples here"

    def net_loss(p, i, mask):  # network i's plain mean CE over the samples in mask
        logits = tr.model.apply({"params": p}, xb)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
        return (ce * mask).sum() / mask.sum()

    take = lambda i: jax.tree_util.tree_map(lambda a: a[i], carry.params)  # noqa: E731
    g0 = jax.grad(net_loss)(take(0), 0, jnp.asarray(kept[1], jnp.float32))
    g1 = jax.grad(net_loss)(take(1), 1, jnp.asarray(kept[0], jnp.float32))
    for a, b in zip(jax.tree_util.tree_leaves(g0), jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a: a[0], g))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda a: a[1], g))):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    # and not from its own kept set
    g_own = jax.grad(net_loss)(take(0), 0, jnp.asarray(kept[0], jnp.float32))
    assert not np.allclose(jax.tree_util.tree_leaves(g_own)[0], jax.tree_util.tree_leaves(g0)[0])


def test_coteaching_with_R_one_equals_two_standard_trainings(digits):
    cot = T.prepare(_cfg(method="coteaching", tau=0.0), digits)
    std = T.prepare(_cfg(method="standard"), digits)
    k_init, k_data = jax.random.split(jax.random.PRNGKey(0))
    net_keys, _ = T.seed_keys(0, 2)

    def run(prep, keys):
        carry = prep.trainer.init(keys, k_data, prep.sched, prep.data.x_train)
        for _ in range(2):
            carry, m = prep.trainer.run_epoch(carry, prep.data)
        return T.to_host(m)

    m2 = run(cot, net_keys)
    for i in range(2):
        m1 = run(std, net_keys[i:i + 1])
        np.testing.assert_allclose(m2["train_loss"][i], m1["train_loss"][0], rtol=1e-4)
        np.testing.assert_allclose(m2["val_loss"][i], m1["val_loss"][0], rtol=1e-4)
        np.testing.assert_allclose(m2["test_acc"][i], m1["test_acc"][0], atol=1e-6)


def test_same_seed_same_metrics_other_seed_differs(digits):
    prep = T.prepare(_cfg(), digits)
    _, a = _run(prep, 0)
    _, b = _run(prep, 0)
    _, c = _run(prep, 1)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert not np.array_equal(a["train_loss"], c["train_loss"])


def test_compiles_once_for_a_run_and_for_two_schedules(digits):
    prep = T.prepare(_cfg(epochs=4, driver="scan"), digits)
    _run(prep, 0)
    _run(prep, 1, sched=np.asarray([0.2, 5.0, 2.0], np.float32))
    assert prep.trainer.runner._cache_size() == 1


def test_loop_driver_compiles_once(digits):
    prep = T.prepare(_cfg(epochs=3, driver="loop"), digits)
    _run(prep, 0)
    _run(prep, 1, sched=np.asarray([0.2, 5.0, 2.0], np.float32))
    assert prep.trainer.runner.step_fn._cache_size() == 1
    assert prep.trainer.runner.begin_fn._cache_size() == 1


def test_net_forms_and_drivers_agree_mlp(digits):
    ref = _run(T.prepare(_cfg(net_form="vmap", driver="scan"), digits))[1]
    for driver in ("scan", "loop"):
        got = _run(T.prepare(_cfg(net_form="fused", driver=driver), digits))[1]
        for k in ("train_loss", "val_loss", "label_precision"):
            np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=1e-5)


def _cifar_like(n=48, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    return data_lib.Dataset("cifar_like", x, y, y, x[:16], y[:16], x[16:32], y[16:32], 10)


def _plain_loss(prep, params, batch_stats, xb, yb, r, key):
    """Algorithm 1's loss written plainly: each network on its own (its own BatchNorm statistics and
    dropout key, XLA's convolutions), then the rule across them; ``(sum of losses, (per net, kept, stats))``."""
    model = models_lib.get_model(prep.model_name, 10)
    take = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)  # noqa: E731
    logits, stats = [], []
    for i in range(prep.trainer.num_nets):
        out, upd = model.apply({"params": take(params, i), "batch_stats": take(batch_stats, i)}, xb, train=True,
                               rngs={"dropout": jax.random.fold_in(key, i)}, mutable=["batch_stats"])
        logits.append(out)
        stats.append(upd["batch_stats"])
    logits = jnp.stack(logits)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb[None])
    w, kept = prep.trainer.rule(jax.lax.stop_gradient(losses), jax.lax.stop_gradient(logits), yb, r, 0, 0)
    per_net = (w * losses).sum(1) / jnp.maximum(w.sum(1), 1e-12)
    return per_net.sum(), (per_net, kept, jax.tree_util.tree_map(lambda *a: jnp.stack(a), *stats))


@pytest.mark.parametrize("model, forms", [("model1", ("vmap", "fused")),  # vmapped Model 3: minutes on a CPU
                                          pytest.param("model3", ("fused",), marks=pytest.mark.slow)])
def test_net_forms_give_the_loss_and_gradients_of_the_plain_computation(model, forms):
    """vmap and fused compute the Co-teaching loss, selection, gradients and BatchNorm statistics of
    each network computed on its own (Model 3: BatchNorm statistics and dropout keys per network)."""
    ds = _cifar_like()
    cfg = _cfg(dataset="cifar_like", model=model, epochs=1, batch_size=8, eval_batch_size=16)
    preps = {f: T.prepare(_ex(cfg, net_form=f, driver="loop"), ds) for f in forms}
    first = preps[forms[0]]
    carry = T.init_carry(first, 0)
    d = first.data
    xb = T.normalize(d.x_train[:8], d.mean, d.std)
    args = (carry.params, carry.batch_stats, xb, d.y_train[:8], 0.5, jax.random.PRNGKey(1))
    ref_g, (ref_loss, ref_kept, ref_bs) = jax.jit(jax.grad(lambda *a: _plain_loss(first, *a), has_aux=True))(*args)
    for f, prep in preps.items():
        g, (loss, kept, bs) = jax.jit(jax.grad(prep.trainer.loss, has_aux=True))(*args)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
        np.testing.assert_array_equal(kept, ref_kept)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref_g)):
            # float32 summation order differs (fused vs plain convs); BatchNorm over a batch of 8
            # amplifies it in single entries of Model 3's gradients, so compare whole tensors: a wrong
            # form (another network's kept set, stats or dropout key) moves them by O(1)
            a, b = np.asarray(a), np.asarray(b)
            assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b) + 1e-6, f
        for a, b in zip(jax.tree_util.tree_leaves(bs), jax.tree_util.tree_leaves(ref_bs)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_slices_convolutions_train_like_xla():
    """``conv_impl`` slices reaches the trainer's model and gives the same epochs (float rounding) as
    XLA's convolutions, for one training and for K trainings in one program."""
    ds = _cifar_like()
    cfg = _cfg(dataset="cifar_like", model="model1", epochs=1, batch_size=16, eval_batch_size=16,
               net_form="vmap", driver="loop", pool_s2d="off")
    other, xla = T.prepare(_ex(cfg, conv_impl="slices"), ds), T.prepare(_ex(cfg, conv_impl="xla"), ds)
    assert (other.trainer.model.conv_impl, xla.trainer.model.conv_impl) == ("slices", "xla")
    ref, got = _run(xla)[1], _run(other)[1]
    keys = ("train_loss", "val_loss", "label_precision", "kept_fraction")
    for k in keys:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    scheds = np.asarray([[0.5, 10.0, 1.0], [0.2, 2.0, 2.0], [0.4, 1.0, 1.0]], np.float32)
    many = [T.train_trials(p, scheds, [3, 4, 5], one_program=True) for p in (xla, other)]
    for k in keys:
        np.testing.assert_allclose(many[1][k], many[0][k], rtol=1e-4, atol=1e-6, err_msg=k)
    with pytest.raises(ConfigError, match=r"conv_impl: .*'fft'.*auto, xla, slices"):
        _ex(cfg, conv_impl="fft").validate()


@pytest.mark.parametrize("form", ["fused", "vmap"])
def test_pool_s2d_trains_like_conv_then_pool(form):
    """``pool_s2d`` reaches the trainer's Model 1 and gives the same epoch to float rounding: the fused
    stem and the vmapped networks alike."""
    ds = _cifar_like()
    cfg = _cfg(dataset="cifar_like", model="model1", epochs=1, batch_size=16, eval_batch_size=16,
               net_form=form, driver="loop")
    on, off = T.prepare(_ex(cfg, pool_s2d="on"), ds), T.prepare(_ex(cfg, pool_s2d="off"), ds)
    assert (on.trainer.model.pool_s2d, off.trainer.model.pool_s2d) == (True, False)
    ref, got = _run(off)[1], _run(on)[1]
    for k in ("train_loss", "val_loss", "val_acc", "label_precision", "kept_fraction"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    with pytest.raises(ConfigError, match=r"pool_s2d: .*'yes'.*auto, on, off"):
        _ex(cfg, pool_s2d="yes").validate()


def test_drivers_agree_conv():
    """One epoch as a lax.scan and as a Python loop of jitted steps give the same numbers."""
    ds = _cifar_like()
    cfg = _cfg(dataset="cifar_like", model="model1", epochs=1, batch_size=16, eval_batch_size=16,
               net_form="fused")
    ref = _run(T.prepare(_ex(cfg, driver="loop"), ds))[1]
    got = _run(T.prepare(_ex(cfg, driver="scan"), ds))[1]
    for k in ("train_loss", "val_loss", "label_precision"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("driver", ["scan", "loop"])
def test_rules_get_the_batch_index_within_the_epoch(digits, monkeypatch, driver):
    """Both drivers hand each step's index within the epoch to the rule (Co-teaching+'s warm-up
    needs it): a rule that keeps the whole batch only at index 1 keeps 1 / steps of the epoch."""
    def only_batch_1(losses, logits, labels, r, epoch, batch=0):
        w = jnp.ones_like(losses) * (batch == 1)
        return w, w

    monkeypatch.setitem(selection.METHOD_RULES, "standard", selection.MethodSpec(1, only_batch_1, False))
    prep = T.prepare(_cfg(method="standard", epochs=2, driver=driver), digits)
    steps = prep.trainer.steps_per_epoch
    assert steps > 2
    np.testing.assert_allclose(_run(prep)[1]["kept_fraction"], 1.0 / steps, rtol=1e-6)


def test_input_norm_unit_is_pixels_over_255(digits):
    """``input_norm="unit"`` (the released code's ToTensor): the network sees x / 255; the default
    standardizes each channel with the training images' statistics; both reach the trainer."""
    x = np.asarray(digits.x_train[:4])
    unit = T.prepare(_cfg(epochs=1, input_norm="unit"), digits)
    std = T.prepare(_cfg(epochs=1), digits)
    np.testing.assert_allclose(T.normalize(x, unit.data.mean, unit.data.std), x / 255.0, rtol=1e-6)
    mean, sd = T.channel_stats(digits.x_train)
    np.testing.assert_allclose(T.normalize(x, std.data.mean, std.data.std), (x / 255.0 - mean) / sd, rtol=1e-5)
    assert not np.allclose(_run(unit)[1]["train_loss"], _run(std)[1]["train_loss"])


def test_trials_in_one_program_equal_separate_trainings(digits):
    prep = T.prepare(_cfg(epochs=2), digits)
    scheds = np.asarray([[0.5, 10.0, 1.0], [0.3, 2.0, 2.0], [0.1, 1.0, 1.0]], np.float32)
    many = T.train_trials(prep, scheds, [3, 4, 5], one_program=True)  # K = 3 padded to 4: never leaks
    assert many["train_loss"].shape[0] == 3
    for i, (s, sc) in enumerate(zip([3, 4, 5], scheds)):
        _, one = _run(prep, s, sc)
        for k in ("train_loss", "test_acc", "label_precision", "r"):
            np.testing.assert_allclose(many[k][i], one[k], rtol=2e-4, atol=1e-5)


def test_schedule_is_eq1_with_noise_rate_default(digits):
    prep = T.prepare(_cfg(method="coteaching", noise_rate=0.4, epochs=3), digits)
    _, m = _run(prep)
    np.testing.assert_allclose(m["r"], [1.0, 1 - 0.4 * 0.1, 1 - 0.4 * 0.2], rtol=1e-6)
    # the kept fraction follows floor(R(t) * B) / B
    np.testing.assert_allclose(m["kept_fraction"][:, 0], np.floor(m["r"] * 64) / 64, atol=1e-6)


def test_adam_plan_matches_coteaching_code():
    lr, b1 = T.adam_plan(jnp.arange(200), lr=1e-3, epochs=200, decay_start=80, beta1=0.9, beta1_late=0.1)
    lr, b1 = np.asarray(lr), np.asarray(b1)
    assert lr[79] == pytest.approx(1e-3) and lr[80] == pytest.approx(1e-3) and lr[140] == pytest.approx(0.5e-3)
    assert b1[79] == pytest.approx(0.9) and b1[80] == pytest.approx(0.1)


def test_batch_larger_than_data(digits):
    from s2e_jax.config import ConfigError

    with pytest.raises(ConfigError, match="batch_size"):
        T.prepare(_cfg(batch_size=5000), digits)


def test_channel_stats_are_exact_for_large_uint8_data():
    """Per-channel mean/std of [0, 1]-scaled images equal a float64 reference, also on CIFAR-sized data
    (39M values per channel), where numpy's float32 mean along axis 0 stalls: 0.427 for 0.497."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    big = np.tile(x, (600, 1, 1, 1))   # the same mean and std as x
    for data, ref in ((x, x), (x[..., :1], x[..., :1]), (big, x)):
        ref = np.asarray(ref, np.float64).reshape(-1, ref.shape[-1]) / 255.0
        mean, std = T.channel_stats(data)
        assert mean.dtype == std.dtype == np.float32 and mean.shape == (data.shape[-1],)
        np.testing.assert_allclose(mean, ref.mean(0), rtol=1e-6)
        np.testing.assert_allclose(std, ref.std(0) + 1e-6, rtol=1e-5, atol=1e-7)
    f = x.astype(np.float32)   # not uint8: the same numbers the slow way
    np.testing.assert_allclose(T.channel_stats(f)[0], T.channel_stats(x)[0], rtol=1e-6)


def test_k_trials_in_one_program_run_the_plans_trainer_and_equal_trials_in_sequence():
    """A CPU training's plan (fused, loop, XLA's convolutions) is not the one K trials in one program
    run: ``trainer_for(True)`` is built once by the plan for it (vmap, slices, pool_s2d) and gives the
    trainings in sequence to float rounding."""
    ds = _cifar_like()
    cfg = _cfg(dataset="cifar_like", model="model1", epochs=1, batch_size=16, eval_batch_size=16)
    loop = T.prepare(cfg, ds)
    if loop.plan.backend == "cpu":
        assert (loop.plan.net_form, loop.plan.driver, loop.plan.one_program) == ("fused", "loop", False)
    one = loop.trainer_for(True)
    assert one is loop.trainer_for(True) and loop.trainer_for(False) is loop.trainer
    assert (one.net_form, one.model.conv_impl, one.model.pool_s2d) == ("vmap", "slices", True)
    assert T.prepare(cfg, ds, trials="one_program").trainer.model.conv_impl == "slices"
    scheds = np.asarray([[0.5, 10.0, 1.0], [0.2, 2.0, 2.0]], np.float32)
    many = T.train_trials(loop, scheds, [3, 4], one_program=True)
    seq = T.train_trials(loop, scheds, [3, 4], one_program=False)
    for k in ("train_loss", "val_loss", "label_precision"):
        np.testing.assert_allclose(many[k], seq[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_tau_is_estimated_where_no_noise_rate_is_set(digits, tmp_path):
    """With noise none or a label_file, a schedule method estimates eq. (1)'s tau (s2e_jax/noise_rate.py)
    instead of silently dropping 50% of each batch."""
    info = T.prepare(_cfg(noise="none"), digits).noise_info
    assert 0.0 <= info["tau_estimated"] < 0.2 and info["tau_method"].startswith("anchor")
    labels = tmp_path / "labels.npy"
    np.save(labels, digits.y_train)
    prep = T.prepare(_cfg(label_file=str(labels)), digits)
    assert float(prep.sched[0]) == pytest.approx(prep.noise_info["tau_estimated"])
    assert float(T.prepare(_cfg(noise="none", tau=0.1), digits).sched[0]) == pytest.approx(0.1)
    assert "tau_estimated" not in T.prepare(_cfg(noise="none", method="standard"), digits).noise_info  # no R(t)
    assert float(T.prepare(_cfg(), digits).sched[0]) == 0.5  # synthetic noise: tau = its rate


def test_a_taken_out_is_refused_before_the_data_is_loaded(tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    (out / "summary.json").write_text("{}")
    monkeypatch.setattr(T, "prepare", lambda *a, **k: pytest.fail("prepare ran before the out check"))
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        T.train(_cfg(out=str(out)))
    assert (out / "summary.json").read_text() == "{}"
