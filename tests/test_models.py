"""Tests for s2e_jax.models (Table 4 networks)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2e_jax import models
from s2e_jax.config import ConfigError
from s2e_jax.models import (
    MLP,
    Model1,
    Model2,
    Model3,
    count_params,
    default_model,
    fused_stem,
    get_model,
    max_pool_2x2,
)


def conv_p(k, cin, cout):
    """Parameters of a kxk Conv with bias."""
    return k * k * cin * cout + cout


def dense_p(fin, fout):
    return fin * fout + fout


def bn_p(c):
    """Trainable BatchNorm parameters (scale, bias)."""
    return 2 * c


# ---- expected counts from Table 4's layer lists (+ the released code, see models.py) ----------
MLP_MNIST = dense_p(28 * 28, 256) + dense_p(256, 10)
MODEL1_C10 = conv_p(5, 3, 6) + conv_p(5, 6, 16) + dense_p(16 * 5 * 5, 120) + dense_p(120, 84) + dense_p(84, 10)


def model2_expected(c):
    chans = [3, 64, 64, 128, 128, 196, 16]
    n = sum(conv_p(3, a, b) + bn_p(b) for a, b in zip(chans[:-1], chans[1:]))
    return n + dense_p(16 * 4 * 4, c)  # 32 -> 16 -> 8 -> 4 after three pools; Table 4 "Dense 256->100"


def model3_expected(c):
    chans = [3, 128, 128, 128, 256, 256, 256, 512, 256, 128]
    n = sum(conv_p(3, a, b) + bn_p(b) for a, b in zip(chans[:-1], chans[1:]))
    return n + dense_p(128, c)


def init(model, shape, seed=0):
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), shape, jnp.float32)
    variables = model.init(jax.random.PRNGKey(seed), x, train=False)
    return variables, x


CASES = [
    (MLP(num_classes=10), (2, 28, 28, 1)),
    (Model1(num_classes=10), (2, 32, 32, 3)),
    (Model2(num_classes=100), (2, 32, 32, 3)),
    (Model3(num_classes=10), (2, 32, 32, 3)),
]
IDS = ["mlp", "model1", "model2", "model3"]


@pytest.fixture(scope="module")
def inited():
    return {name: (m, *init(m, s)) for name, (m, s) in zip(IDS, CASES)}


def test_hand_counts():
    assert MLP_MNIST == 203_530
    assert MODEL1_C10 == 456 + 2_416 + 48_120 + 10_164 + 850 == 62_006


@pytest.mark.parametrize("name", IDS)
def test_output_shape_and_param_count(inited, name):
    model, variables, x = inited[name]
    out = model.apply(variables, x, train=False)
    assert out.shape == (2, model.num_classes)
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    expected = {
        "mlp": MLP_MNIST,
        "model1": MODEL1_C10,
        "model2": model2_expected(100),
        "model3": model3_expected(10),
    }[name]
    assert count_params(variables["params"]) == expected
    assert model.stem_name in variables["params"]


def test_param_count_values():
    # Pin the totals too (Model2: 540,196 with the released code's 196->16 sixth conv).
    assert model2_expected(100) == 540_196
    assert model3_expected(10) == 4_395_210


def test_layer_shapes(inited):
    p = inited["model1"][1]["params"]
    assert p["conv0"]["kernel"].shape == (5, 5, 3, 6)
    assert p["conv1"]["kernel"].shape == (5, 5, 6, 16)
    assert p["dense0"]["kernel"].shape == (400, 120)
    p = inited["model2"][1]["params"]
    assert p["conv5"]["kernel"].shape == (3, 3, 196, 16)
    assert p["dense0"]["kernel"].shape == (256, 100)
    p = inited["model3"][1]["params"]
    assert p["conv6"]["kernel"].shape == (3, 3, 256, 512)
    assert p["dense0"]["kernel"].shape == (128, 10)


def test_other_input_sizes():
    # digits (8x8x1) with the MLP; Model1 with 100 outputs (Figure 1(d)); Model1 on 28x28x1.
    m = get_model("mlp", 10)
    v, x = init(m, (3, 8, 8, 1))
    assert count_params(v["params"]) == dense_p(64, 256) + dense_p(256, 10)
    assert m.apply(v, x).shape == (3, 10)
    m = get_model("model1", 100)
    v, x = init(m, (2, 32, 32, 3))
    assert count_params(v["params"]) == MODEL1_C10 - dense_p(84, 10) + dense_p(84, 100)
    v, x = init(m, (2, 28, 28, 1))
    assert m.apply(v, x).shape == (2, 100)


def test_too_small_input_is_config_error():
    with pytest.raises(ConfigError, match="model3"):
        init(Model3(num_classes=10), (1, 8, 8, 1))


@pytest.mark.parametrize("name", IDS)
def test_skip_stem_equals_full_path(inited, name):
    model, variables, x = inited[name]
    stem = variables["params"][model.stem_name]
    if isinstance(model, MLP):
        h = x.reshape(x.shape[0], -1) @ stem["kernel"] + stem["bias"]
    else:
        h = nn.Conv(stem["kernel"].shape[-1], stem["kernel"].shape[:2], padding=model.stem_padding).apply(
            {"params": stem}, x
        )
    full = model.apply(variables, x, train=False)
    skipped = model.apply(variables, h, train=False, skip_stem=True)
    np.testing.assert_allclose(np.asarray(skipped), np.asarray(full), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", IDS)
def test_fused_stem_equals_separate(name):
    model, shape = dict(zip(IDS, CASES))[name]
    v1, x = init(model, shape, seed=0)
    v2, _ = init(model, shape, seed=7)
    outs = fused_stem(model, [v1["params"][model.stem_name], v2["params"]], x)
    assert len(outs) == 2
    for v, h in zip((v1, v2), outs):
        # network's own stem output, captured through flax's intermediates
        _, state = model.apply(
            v, x, train=False, capture_intermediates=lambda mdl, _: mdl.name == model.stem_name
        )
        own = state["intermediates"][model.stem_name]["__call__"][0]
        assert h.shape == own.shape
        np.testing.assert_allclose(np.asarray(h), np.asarray(own), atol=1e-5, rtol=1e-5)
        # and the fused outputs drive skip_stem to the same logits
        np.testing.assert_allclose(
            np.asarray(model.apply(v, h, train=False, skip_stem=True)),
            np.asarray(model.apply(v, x, train=False)),
            atol=1e-5,
            rtol=1e-5,
        )


@pytest.mark.parametrize("name", ["model2", "model3"])
def test_batchnorm_train_vs_eval(inited, name):
    model, variables, x = inited[name]
    rngs = {"dropout": jax.random.PRNGKey(3)}
    # train: batch statistics, running averages updated with momentum 0.9
    out, upd = model.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"])
    assert out.shape == (2, model.num_classes)
    old_mean = variables["batch_stats"]["bn0"]["mean"]
    new_mean = upd["batch_stats"]["bn0"]["mean"]
    assert not np.allclose(np.asarray(old_mean), np.asarray(new_mean))
    h = model.apply(
        variables, x, train=False, capture_intermediates=lambda mdl, _: mdl.name == "conv0"
    )[1]["intermediates"]["conv0"]["__call__"][0]
    np.testing.assert_allclose(
        np.asarray(new_mean), 0.1 * np.asarray(h.mean(axis=(0, 1, 2))), atol=1e-5, rtol=1e-4
    )
    # eval: running averages used, nothing changes
    _, upd_eval = model.apply(variables, x, train=False, mutable=["batch_stats"])
    for a, b in zip(jax.tree_util.tree_leaves(upd_eval), jax.tree_util.tree_leaves(variables["batch_stats"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # train-mode logits (batch stats) differ from eval-mode logits (running stats)
    assert not np.allclose(np.asarray(out), np.asarray(model.apply(variables, x, train=False)))


def test_model3_dropout(inited):
    model, variables, x = inited["model3"]

    def run(key, train):
        return np.asarray(
            model.apply(variables, x, train=train, rngs={"dropout": key}, mutable=["batch_stats"])[0]
        )

    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    np.testing.assert_array_equal(run(k1, True), run(k1, True))
    assert not np.allclose(run(k1, True), run(k2, True))
    np.testing.assert_array_equal(run(k1, False), run(k2, False))
    np.testing.assert_array_equal(run(k1, False), np.asarray(model.apply(variables, x)))


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (3, 7, 9, 2), (1, 5, 5, 1), (2, 32, 32, 6)])
def test_max_pool_equals_nn_max_pool(shape):
    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    ref = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
    out = max_pool_2x2(x)
    assert out.shape == ref.shape
    np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
    # gradients agree as well (no ties in random data)
    g_ref = jax.grad(lambda z: jnp.sum(jnp.sin(nn.max_pool(z, (2, 2), strides=(2, 2), padding="VALID"))))(x)
    g_out = jax.grad(lambda z: jnp.sum(jnp.sin(max_pool_2x2(z))))(x)
    np.testing.assert_allclose(np.asarray(g_out), np.asarray(g_ref), atol=1e-6)


def test_get_model_and_errors():
    for name, cls in zip(IDS, (MLP, Model1, Model2, Model3)):
        m = get_model(name, 7)
        assert isinstance(m, cls) and m.num_classes == 7
    assert isinstance(get_model("Model2", 100), Model2)
    with pytest.raises(ConfigError, match=r"model: unknown model 'x' \(expected mlp, model1, model2, model3\)"):
        get_model("x", 10)
    with pytest.raises(ValueError):  # ConfigError is a ValueError
        get_model("resnet", 10)
    with pytest.raises(ConfigError, match="num_classes"):
        get_model("mlp", 1)


def test_default_model():
    assert default_model("mnist") == "mlp"
    assert default_model("digits") == "mlp"
    assert default_model("cifar10") == "model1"
    assert default_model("cifar100") == "model2"
    assert default_model("/data/x.npz", num_channels=1) == "mlp"
    assert default_model("/data/x.npz", num_channels=3) == "model1"
    with pytest.raises(ConfigError):
        default_model("/data/x.npz")


def test_count_params():
    assert count_params({"a": jnp.zeros((3, 4)), "b": {"c": jnp.zeros(5)}}) == 17
    assert count_params({}) == 0
    assert models.MODEL_NAMES == ("mlp", "model1", "model2", "model3")


def test_torch_style_init_bounds(inited):
    # PyTorch default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for kernels and biases.
    p = inited["model1"][1]["params"]
    bound = 1 / np.sqrt(5 * 5 * 3)
    for leaf in (p["conv0"]["kernel"], p["conv0"]["bias"]):
        assert float(jnp.max(jnp.abs(leaf))) <= bound
    assert float(jnp.std(p["conv0"]["kernel"])) > 0.5 * bound / np.sqrt(3)
