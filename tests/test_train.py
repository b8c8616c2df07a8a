"""The trainer: Algorithm 1 with Co-teaching, its forms and drivers, compile-once, determinism."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from s2e_jax import data as data_lib
from s2e_jax import selection
from s2e_jax import train as T
from s2e_jax.config import ConfigError, TrainConfig


@pytest.fixture(scope="module")
def digits():
    return data_lib.load_dataset("digits")


def _cfg(**kw):
    base = dict(dataset="digits", noise="symmetric", noise_rate=0.5, epochs=3, batch_size=64,
                decay_start=1, progress=False)
    base.update(kw)
    return TrainConfig(**base)


def _run(prep, seed=0, sched=None, epochs=None):
    carry = T.init_carry(prep, seed, sched)
    rows = []
    for _ in range(epochs or prep.trainer.epochs):
        carry, m = prep.trainer.run_epoch(carry, prep.data)
        rows.append(T._host(m))
    return carry, T._stack_epochs(rows)


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
        return T._host(m)

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
    prep = T.prepare(_cfg(epochs=4), digits)
    _run(prep, 0)
    _run(prep, 1, sched=np.asarray([0.2, 5.0, 2.0], np.float32))
    assert prep.trainer.epoch_fn._cache_size() == 1


def test_loop_driver_compiles_once(digits):
    prep = T.prepare(_cfg(epochs=3, driver="loop"), digits)
    _run(prep, 0)
    _run(prep, 1, sched=np.asarray([0.2, 5.0, 2.0], np.float32))
    assert prep.trainer.step_fn._cache_size() == 1
    assert prep.trainer.begin_fn._cache_size() == 1


@pytest.mark.parametrize("form", ["unroll", "fused"])
def test_net_forms_and_drivers_agree_mlp(digits, form):
    ref = _run(T.prepare(_cfg(net_form="vmap", driver="scan"), digits))[1]
    for driver in ("scan", "loop"):
        got = _run(T.prepare(_cfg(net_form=form, driver=driver), digits))[1]
        for k in ("train_loss", "val_loss", "label_precision"):
            np.testing.assert_allclose(got[k], ref[k], rtol=2e-4, atol=1e-5)


def _cifar_like(n=48, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n).astype(np.int32)
    x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    return data_lib.Dataset("cifar_like", x, y, y, x[:16], y[:16], x[16:32], y[16:32], 10)


@pytest.mark.parametrize("model, forms", [("model1", ("vmap", "unroll", "fused")),
                                          ("model3", ("unroll", "fused"))])  # vmapped Model 3: minutes on a CPU
def test_net_forms_give_the_same_loss_and_gradients_conv(model, forms):
    """vmap, unroll and fused compute the same Co-teaching loss, selection and gradients
    (Model 3: BatchNorm statistics and dropout keys per network)."""
    ds = _cifar_like()
    cfg = _cfg(dataset="cifar_like", model=model, epochs=1, batch_size=8, eval_batch_size=16)
    preps = {f: T.prepare(cfg.replace(net_form=f, driver="loop"), ds) for f in forms}
    carry = T.init_carry(preps["unroll"], 0)
    d = preps["unroll"].data
    xb = T.normalize(d.x_train[:8], d.mean, d.std)
    out = {}
    for f, prep in preps.items():
        fn = jax.jit(jax.grad(prep.trainer.loss, has_aux=True))
        out[f] = fn(carry.params, carry.batch_stats, xb, d.y_train[:8], 0.5, jax.random.PRNGKey(1))
    ref_g, (ref_loss, ref_kept, ref_bs) = out["unroll"]
    for f in forms[1:] if forms[0] == "unroll" else ("vmap", "fused"):
        g, (loss, kept, bs) = out[f]
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-4)
        np.testing.assert_array_equal(kept, ref_kept)
        for a, b in zip(jax.tree_util.tree_leaves(g), jax.tree_util.tree_leaves(ref_g)):
            # float32 summation order differs (grouped / fused vs plain convs); BatchNorm over a batch
            # of 8 amplifies it in single entries of Model 3's gradients, so compare whole tensors:
            # a wrong form (another network's kept set, stats or dropout key) moves them by O(1)
            a, b = np.asarray(a), np.asarray(b)
            assert np.linalg.norm(a - b) <= 1e-2 * np.linalg.norm(b) + 1e-6
        for a, b in zip(jax.tree_util.tree_leaves(bs), jax.tree_util.tree_leaves(ref_bs)):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", ["patches", "slices", "blockdiag"])
def test_conv_impl_trains_like_xla(impl):
    """``conv_impl`` reaches the trainer's model and gives the same epoch (float rounding), for one
    training and for K trainings in one program (blockdiag: the trials' networks stacked)."""
    ds = _cifar_like()
    cfg = _cfg(dataset="cifar_like", model="model1", epochs=1, batch_size=16, eval_batch_size=16,
               net_form="vmap", driver="loop")
    other = T.prepare(cfg.replace(conv_impl=impl), ds)
    assert other.trainer.model.conv_impl == impl
    xla = T.prepare(cfg.replace(conv_impl="xla"), ds)  # named: "auto" is slices in a CPU one program
    assert xla.trainer.model.conv_impl == T.default_conv_impl() == "xla"
    ref, got = _run(xla)[1], _run(other)[1]
    keys = ("train_loss", "val_loss", "label_precision", "kept_fraction")
    for k in keys:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    if impl == "blockdiag":  # (slices in the one program: test_conv_impl_auto_follows_the_driver...)
        scheds = np.asarray([[0.5, 10.0, 1.0], [0.2, 2.0, 2.0], [0.4, 1.0, 1.0]], np.float32)
        many = [T.train_trials(p, scheds, [3, 4, 5], one_program=True) for p in (xla, other)]
        for k in keys:
            np.testing.assert_allclose(many[1][k], many[0][k], rtol=1e-4, atol=1e-6, err_msg=k)
    with pytest.raises(ConfigError, match=r"conv_impl: .*'fft'.*auto, xla, patches, slices, blockdiag"):
        cfg.replace(conv_impl="fft").validate()


@pytest.mark.parametrize("form", ["fused", "vmap"])
def test_pool_s2d_trains_like_conv_then_pool(form):
    """``pool_s2d`` reaches the trainer's Model 1 (auto: on with the loop driver, CPU and GPU) and gives
    the same epoch to float rounding: the fused stem and the vmapped networks alike."""
    ds = _cifar_like()
    cfg = _cfg(dataset="cifar_like", model="model1", epochs=1, batch_size=16, eval_batch_size=16,
               net_form=form, driver="loop")
    on, off = T.prepare(cfg.replace(pool_s2d="on"), ds), T.prepare(cfg.replace(pool_s2d="off"), ds)
    assert (on.trainer.model.pool_s2d, off.trainer.model.pool_s2d) == (True, False)
    assert T.prepare(cfg, ds).trainer.model.pool_s2d is True
    ref, got = _run(off)[1], _run(on)[1]
    for k in ("train_loss", "val_loss", "val_acc", "label_precision", "kept_fraction"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    with pytest.raises(ConfigError, match=r"pool_s2d: .*'yes'.*auto, on, off"):
        cfg.replace(pool_s2d="yes").validate()


@pytest.mark.parametrize("form, driver", [("fused", "loop"), ("vmap", "scan")])
def test_stem_patches_train_like_images(form, driver):
    """``stem_patches`` stores Model 1's conv0 patches as the data (uint8, every split) and gives the
    same epochs to float rounding: the CPU's fused stem with its loop, the vmapped networks in
    lax.scan, and K trials in one program; off is the default, other models are refused."""
    ds = _cifar_like()
    # channels of their own statistics, so that a patch feature normalized as another channel shows
    ds = dataclasses.replace(ds, **{k: getattr(ds, k) // np.array([8, 2, 1], np.uint8) + np.array([0, 120, 0], np.uint8)
                                    for k in ("x_train", "x_val", "x_test")})
    cfg = _cfg(dataset="cifar_like", model="model1", epochs=1, batch_size=16, eval_batch_size=16,
               net_form=form, driver=driver)
    on, off = T.prepare(cfg.replace(stem_patches="on"), ds), T.prepare(cfg, ds)
    assert (on.trainer.model.stem_patches, off.trainer.model.stem_patches) == (True, False)
    for split in ("x_train", "x_val", "x_test"):
        a = getattr(on.data, split)
        assert a.dtype == jnp.uint8 and a.shape[1:] == (14, 14, 108), split
    np.testing.assert_array_equal(np.asarray(on.data.mean), np.tile(np.asarray(off.data.mean), 36))
    ref, got = _run(off)[1], _run(on)[1]
    for k in ("train_loss", "val_loss", "val_acc", "test_loss", "label_precision", "kept_fraction"):
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)
    if form == "vmap":
        scheds = np.asarray([[0.5, 10.0, 1.0], [0.2, 2.0, 2.0]], np.float32)
        many = [T.train_trials(p, scheds, [3, 4], one_program=True) for p in (off, on)]
        for k in ("train_loss", "val_loss", "label_precision"):
            np.testing.assert_allclose(many[1][k], many[0][k], rtol=1e-4, atol=1e-6, err_msg=k)
    with pytest.raises(ConfigError, match=r"stem_patches: .*'yes'.*off, on"):
        cfg.replace(stem_patches="yes").validate()
    with pytest.raises(ConfigError, match=r"stem_patches: only Model 1's first layer .* not model3's"):
        T.prepare(cfg.replace(model="model3", stem_patches="on"), ds)


def test_drivers_agree_conv():
    """One epoch as a lax.scan and as a Python loop of jitted steps give the same numbers."""
    ds = _cifar_like()
    cfg = _cfg(dataset="cifar_like", model="model1", epochs=1, batch_size=16, eval_batch_size=16,
               net_form="fused")
    ref = _run(T.prepare(cfg.replace(driver="loop"), ds))[1]
    got = _run(T.prepare(cfg.replace(driver="scan"), ds))[1]
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


def test_conv_impl_auto_follows_the_driver_and_the_one_program():
    """"auto" is slices only where measured faster: Model 1 vmapped inside lax.scan (the scan driver,
    K trials in one program; CPU and H100); XLA's convolution elsewhere and whatever the user names."""
    assert T.default_conv_impl() == "xla" and T.default_conv_impl("cpu", "loop", "model1") == "xla"
    assert T.default_conv_impl("cpu", "scan", "model1", "vmap") == "slices"
    assert T.default_conv_impl("gpu", "scan", "model1", "vmap") == "slices"  # H100: gpu_h100/trials
    assert T.default_conv_impl("gpu", "scan", "model2", "vmap") == "xla"
    assert T.default_conv_impl("cpu", "scan", "model2", "vmap") == "xla"
    assert T.default_conv_impl("cpu", "scan", "model1", "fused") == "xla"  # not measured
    assert T.resolve_conv_impl("blockdiag", "scan", "model1", "vmap", "cpu") == "blockdiag"
    ds = _cifar_like()
    cfg = _cfg(dataset="cifar_like", model="model1", epochs=1, batch_size=16, eval_batch_size=16,
               net_form="vmap", driver="loop")
    loop = T.prepare(cfg, ds)
    assert loop.trainer.model.conv_impl == "xla"
    assert T.prepare(cfg.replace(driver="scan"), ds).trainer.model.conv_impl == "slices"
    assert T.prepare(cfg.replace(driver="scan", net_form="fused"), ds).trainer.model.conv_impl == "xla"
    one = T.one_program_trainer(loop)
    assert one.model.conv_impl == "slices" and one.model.pool_s2d is True  # slices + s2d
    named = T.prepare(cfg.replace(conv_impl="xla", pool_s2d="off"), ds)
    assert T.one_program_trainer(named) is named.trainer
    scheds = np.asarray([[0.5, 10.0, 1.0], [0.2, 2.0, 2.0]], np.float32)
    many = T.train_trials(loop, scheds, [3, 4], one_program=True)
    assert "_sharded" in one.__dict__ and (one is loop.trainer or "_sharded" not in loop.trainer.__dict__)
    ref = T.train_trials(named, scheds, [3, 4], one_program=True)  # XLA's convolutions, same program
    for k in ("train_loss", "val_loss", "label_precision"):
        np.testing.assert_allclose(many[k], ref[k], rtol=1e-4, atol=1e-6, err_msg=k)


def test_pool_s2d_auto_follows_the_driver_and_the_one_program():
    """"auto" is on where measured faster: the CPU's loop driver, convolutions as slices (what K
    trials in one program, a vmapped lax.scan, use on CPU and GPU) and GPUs (H100); the CPU's scan
    driver with XLA's convolutions gets Model 1 without it. Same parameters and results either way."""
    cpu = jax.default_backend() == "cpu"
    assert T.resolve_pool_s2d("auto", "loop", "cpu") and not T.resolve_pool_s2d("auto", "scan", "cpu")
    assert T.resolve_pool_s2d("auto", "loop", "gpu") and T.resolve_pool_s2d("auto", "scan", "gpu")  # H100
    assert T.resolve_pool_s2d("on", "scan", "gpu") and not T.resolve_pool_s2d("off", "loop", "cpu")
    assert T.resolve_pool_s2d("auto", "scan", "cpu", "slices") and T.resolve_pool_s2d("auto", "scan", "gpu", "slices")
    assert not T.resolve_pool_s2d("auto", "scan", "gpu", "blockdiag")  # H100, 8 trials: 0.85x
    assert T.resolve_pool_s2d("auto", "loop", "cpu", "blockdiag")
    assert not T.resolve_pool_s2d("off", "scan", "cpu", "slices")
    ds = _cifar_like()
    cfg = _cfg(dataset="cifar_like", model="model1", epochs=1, batch_size=16, eval_batch_size=16,
               net_form="fused", driver="loop")
    loop = T.prepare(cfg, ds)
    assert loop.trainer.model.pool_s2d is True
    assert T.prepare(cfg.replace(driver="scan"), ds).trainer.model.pool_s2d is (not cpu)
    one = T.one_program_trainer(loop)
    assert one.model.pool_s2d is True and T.one_program_trainer(loop) is one  # made once (slices + s2d)
    xla = T.prepare(cfg.replace(conv_impl="xla"), ds)  # XLA's convolutions in the one program: without
    assert T.one_program_trainer(xla).model.pool_s2d is (not cpu)
    assert one.net_form == loop.trainer.net_form and one.epochs == loop.trainer.epochs
    forced = T.prepare(cfg.replace(pool_s2d="on", conv_impl="xla"), ds)
    assert T.one_program_trainer(forced) is forced.trainer  # "on" (and a named conv_impl) is kept
    scheds = np.asarray([[0.5, 10.0, 1.0], [0.2, 2.0, 2.0]], np.float32)
    many = T.train_trials(loop, scheds, [3, 4], one_program=True)
    assert "_sharded" in one.__dict__ and (one is loop.trainer or "_sharded" not in loop.trainer.__dict__)
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
