"""Tests for s2e_jax.models (Table 4 networks)."""
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from s2e_jax import convs, models
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
    """Variables of ``model`` for inputs of ``shape``, plus an input batch.

    Shapes come from ``jax.eval_shape(model.init, ...)`` (a trace, no compilation); values are
    drawn with numpy (PyTorch-like scale), because compiling JAX's PRNG for every parameter shape
    takes seconds per model on a CPU. ``test_real_init`` covers ``model.init`` itself.
    """
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0), x)

    def fill(path, leaf):
        name = jax.tree_util.keystr(path[-1:])
        if "batch_stats" in jax.tree_util.keystr(path[:1]):
            value = np.ones(leaf.shape) if "var" in name else np.zeros(leaf.shape)
        elif "scale" in name:
            value = rng.uniform(0.5, 1.5, leaf.shape)
        else:
            bound = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 16)
            value = rng.uniform(-bound, bound, leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes), jnp.asarray(x)


CASES = [
    (MLP(num_classes=10), (2, 28, 28, 1)),
    (Model1(num_classes=10), (2, 32, 32, 3)),
    (Model2(num_classes=100), (2, 32, 32, 3)),
    (Model3(num_classes=10), (2, 32, 32, 3)),
]
IDS = ["mlp", "model1", "model2", "model3"]


class Case:
    """A model with test variables, an input batch and jitted apply functions.

    jit compiles each network once per mode; eager flax would compile every op separately.
    """

    def __init__(self, model, shape):
        self.model = model
        self.variables, self.x = init(model, shape)
        # eval: logits plus every submodule's output (the stem's included); batch_stats mutable
        # so that the test can check eval mode leaves them unchanged.
        self.evaluate = jax.jit(
            lambda v, x: model.apply(
                v, x, train=False, capture_intermediates=True, mutable=["batch_stats", "intermediates"]
            )
        )
        self.skipped = jax.jit(lambda v, h: model.apply(v, h, train=False, skip_stem=True))
        # train: logits, updated batch_stats and the Dropout layers' outputs
        self.train = jax.jit(
            lambda v, x, key: model.apply(
                v,
                x,
                train=True,
                rngs={"dropout": key},
                mutable=["batch_stats", "intermediates"],
                capture_intermediates=lambda mdl, _: isinstance(mdl, nn.Dropout),
            )
        )

    def stem_out(self, variables):
        _, state = self.evaluate(variables, self.x)
        return state["intermediates"][self.model.stem_name]["__call__"][0]


fused_stem_jit = jax.jit(fused_stem, static_argnums=0)  # it is traceable; the model is static


@pytest.fixture(scope="module")
def cases():
    return {name: Case(m, s) for name, (m, s) in zip(IDS, CASES)}


def test_hand_counts():
    assert MLP_MNIST == 203_530
    assert MODEL1_C10 == 456 + 2_416 + 48_120 + 10_164 + 850 == 62_006


@pytest.mark.parametrize("name", IDS)
def test_output_shape_and_param_count(cases, name):
    case = cases[name]
    out, _ = case.evaluate(case.variables, case.x)
    assert out.shape == (2, case.model.num_classes)
    assert out.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(out)))
    expected = {
        "mlp": MLP_MNIST,
        "model1": MODEL1_C10,
        "model2": model2_expected(100),
        "model3": model3_expected(10),
    }[name]
    assert count_params(case.variables["params"]) == expected
    assert case.model.stem_name in case.variables["params"]


def test_param_count_values():
    # Pin the totals too (Model2: 541,280 with the released code's 196->16 sixth conv).
    assert model2_expected(100) == 541_280
    assert model3_expected(10) == 4_434_570


def test_layer_shapes(cases):
    p = cases["model1"].variables["params"]
    assert p["conv0"]["kernel"].shape == (5, 5, 3, 6)
    assert p["conv1"]["kernel"].shape == (5, 5, 6, 16)
    assert p["dense0"]["kernel"].shape == (400, 120)
    p = cases["model2"].variables["params"]
    assert p["conv5"]["kernel"].shape == (3, 3, 196, 16)
    assert p["dense0"]["kernel"].shape == (256, 100)
    p = cases["model3"].variables["params"]
    assert p["conv6"]["kernel"].shape == (3, 3, 256, 512)
    assert p["dense0"]["kernel"].shape == (128, 10)
    assert p["conv8"]["kernel"].shape == (3, 3, 256, 128)


def test_feature_map_shapes(cases):
    # padding per Table 4 / released code: Model1 VALID; Model2 all SAME; Model3 SAME x6 then VALID x3
    def conv_out(name, layer):
        case = cases[name]
        _, state = case.evaluate(case.variables, case.x)
        return state["intermediates"][layer]["__call__"][0].shape

    # Model 1's conv layers include their 2x2 max-pool (ConvPool): VALID 32 -> 28 -> 14, 14 -> 10 -> 5
    assert conv_out("model1", "conv0") == (2, 14, 14, 6)
    assert conv_out("model1", "conv1") == (2, 5, 5, 16)
    assert conv_out("model2", "conv1") == (2, 32, 32, 64)
    assert conv_out("model2", "conv5") == (2, 8, 8, 16)
    assert conv_out("model3", "conv5") == (2, 16, 16, 256)
    assert conv_out("model3", "conv6") == (2, 6, 6, 512)
    assert conv_out("model3", "conv8") == (2, 2, 2, 128)


def test_other_input_sizes():
    # digits (8x8x1) with the MLP; Model1 with 100 outputs (Figure 1(d)); Model1 on 28x28x1.
    m = get_model("mlp", 10)
    v, x = init(m, (3, 8, 8, 1))
    assert count_params(v["params"]) == dense_p(64, 256) + dense_p(256, 10)
    assert jax.jit(m.apply)(v, x).shape == (3, 10)
    m = get_model("model1", 100)
    shapes = jax.eval_shape(m.init, jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
    assert count_params(shapes["params"]) == MODEL1_C10 - dense_p(84, 10) + dense_p(84, 100)
    v, x = init(m, (2, 28, 28, 1))
    assert jax.jit(m.apply)(v, x).shape == (2, 100)


def test_too_small_input_is_config_error():
    with pytest.raises(ConfigError, match="model3"):
        init(Model3(num_classes=10), (1, 8, 8, 1))


@pytest.mark.parametrize("name", IDS)
def test_skip_stem_equals_full_path(cases, name):
    case = cases[name]
    full, state = case.evaluate(case.variables, case.x)
    h = state["intermediates"][case.model.stem_name]["__call__"][0]
    # the stem's own output is its pre-activation affine map (bias included)
    stem = case.variables["params"][case.model.stem_name]
    if isinstance(case.model, MLP):
        ref = case.x.reshape(case.x.shape[0], -1) @ stem["kernel"] + stem["bias"]
        np.testing.assert_allclose(np.asarray(h), np.asarray(ref), atol=1e-5, rtol=1e-5)
    else:
        assert h.shape[-1] == stem["kernel"].shape[-1]
    # skip_stem takes what follows the stem's post_stem (Model 1, whose stem includes the pool, and the MLP: ReLU)
    skipped = case.skipped(case.variables, case.model.post_stem(h))
    np.testing.assert_allclose(np.asarray(skipped), np.asarray(full), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", IDS)
def test_fused_stem_equals_separate(cases, name):
    case = cases[name]
    v1 = case.variables
    # a second, different network of the same architecture
    v2 = dict(v1, params=jax.tree_util.tree_map(lambda a: jnp.asarray(0.7 * np.asarray(a)[..., ::-1] + 0.01), v1["params"]))
    outs = fused_stem_jit(case.model, [v1["params"][case.model.stem_name], v2["params"]], case.x)
    assert len(outs) == 2
    for v, h in zip((v1, v2), outs):
        own = case.model.post_stem(case.stem_out(v))  # the network's own conv0/dense0 output, post_stem
        assert h.shape == own.shape
        np.testing.assert_allclose(np.asarray(h), np.asarray(own), atol=1e-5, rtol=1e-5)
        # and the fused outputs drive skip_stem to the same logits
        np.testing.assert_allclose(
            np.asarray(case.skipped(v, h)),
            np.asarray(case.evaluate(v, case.x)[0]),
            atol=1e-5,
            rtol=1e-5,
        )
    assert not np.allclose(np.asarray(outs[0]), np.asarray(outs[1]))


def test_fused_stem_three_networks(cases):
    case = cases["model1"]
    p = case.variables["params"]["conv0"]
    stems = [p, jax.tree_util.tree_map(lambda a: -a, p), jax.tree_util.tree_map(lambda a: 2 * a, p)]
    outs = fused_stem_jit(case.model, stems, case.x)
    post = case.model.post_stem
    for stem, out in zip(stems, outs):  # each network's own conv0 (conv + pool), then ReLU
        v = dict(case.variables, params=dict(case.variables["params"], conv0=stem))
        own = post(case.stem_out(v))
        assert out.shape == own.shape == (2, 14, 14, 6)
        np.testing.assert_allclose(np.asarray(out), np.asarray(own), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(outs[2]), 2 * np.asarray(outs[0]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["model2", "model3"])
def test_batchnorm_train_vs_eval(cases, name):
    case = cases[name]
    variables = case.variables
    # train: batch statistics; running averages updated with flax momentum 0.9 (torch 0.1)
    out, upd = case.train(variables, case.x, jax.random.PRNGKey(3))
    assert out.shape == (2, case.model.num_classes)
    old_mean = variables["batch_stats"]["bn0"]["mean"]
    new_mean = upd["batch_stats"]["bn0"]["mean"]
    assert not np.allclose(np.asarray(old_mean), np.asarray(new_mean))
    h = case.stem_out(variables)
    np.testing.assert_allclose(
        np.asarray(new_mean),
        0.9 * np.asarray(old_mean) + 0.1 * np.asarray(h.mean(axis=(0, 1, 2))),
        atol=1e-5,
        rtol=1e-4,
    )
    # eval: running averages used, nothing changes
    eval_out, state = case.evaluate(variables, case.x)
    for a, b in zip(
        jax.tree_util.tree_leaves(state["batch_stats"]), jax.tree_util.tree_leaves(variables["batch_stats"])
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # train-mode logits (batch stats) differ from eval-mode logits (running stats)
    assert not np.allclose(np.asarray(out), np.asarray(eval_out))


def test_model3_dropout(cases):
    case = cases["model3"]

    def train(key):
        return np.asarray(case.train(case.variables, case.x, key)[0])

    k1, k2 = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    np.testing.assert_array_equal(train(k1), train(k1))
    assert not np.allclose(train(k1), train(k2))
    # eval: no dropout (no rng needed) and deterministic
    np.testing.assert_array_equal(
        np.asarray(case.evaluate(case.variables, case.x)[0]), np.asarray(case.evaluate(case.variables, case.x)[0])
    )
    # with dropout, the stage-1 output differs from eval's in whole channels (F.dropout2d)
    _, state = case.train(case.variables, case.x, k1)
    dropped = np.asarray(state["intermediates"]["Dropout_0"]["__call__"][0])  # (B, 16, 16, 128)
    zero_maps = np.all(dropped == 0, axis=(1, 2))
    assert dropped.shape == (2, 16, 16, 128)
    assert 0 < zero_maps.mean() < 0.6  # about 25% of the (example, channel) maps are zeroed
    kept = ~zero_maps
    assert np.all(np.any(dropped != 0, axis=(1, 2))[kept])


def test_max_pool_equals_nn_max_pool():
    @jax.jit
    def both(x):
        ref = nn.max_pool(x, (2, 2), strides=(2, 2), padding="VALID")
        g_ref = jax.grad(lambda z: jnp.sum(jnp.sin(nn.max_pool(z, (2, 2), strides=(2, 2), padding="VALID"))))(x)
        g_out = jax.grad(lambda z: jnp.sum(jnp.sin(max_pool_2x2(z))))(x)
        return ref, max_pool_2x2(x), g_ref, g_out

    # floor mode: odd heights/widths drop the last row/column, like nn.max_pool(padding='VALID')
    for shape in [(2, 8, 8, 3), (3, 7, 9, 2)]:
        x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), jnp.float32)
        ref, out, g_ref, g_out = both(x)
        assert out.shape == ref.shape == (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
        np.testing.assert_array_equal(np.asarray(out), np.asarray(ref))
        # gradients agree as well (no ties in random data)
        np.testing.assert_allclose(np.asarray(g_out), np.asarray(g_ref), atol=1e-6)


def test_max_pool_gradient_ties_and_relu_order():
    # exact ties: every tied entry gets the window's gradient (no sharing); floor mode: none for
    # the dropped last row
    x = jnp.asarray([[1.0, 3.0], [3.0, 2.0], [9.0, 9.0]])[None, :, :, None]  # (1, 3, 2, 1)
    g = jax.grad(lambda z: 5.0 * max_pool_2x2(z).sum())(x)
    np.testing.assert_array_equal(np.asarray(g)[0, :, :, 0], [[0.0, 5.0], [5.0, 0.0], [0.0, 0.0]])
    # ReLU and max-pool commute (the models pool first): values and gradients, zeros included
    z = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 6, 3)), jnp.float32)
    z = z.at[0, :2, :2, 0].set(-1.0)  # a window with no positive entry
    w = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3, 3, 3)), jnp.float32)
    a = lambda t: (w * nn.relu(max_pool_2x2(t))).sum()  # noqa: E731
    b = lambda t: (w * max_pool_2x2(nn.relu(t))).sum()  # noqa: E731
    np.testing.assert_array_equal(np.asarray(a(z)), np.asarray(b(z)))
    np.testing.assert_array_equal(np.asarray(jax.grad(a)(z)), np.asarray(jax.grad(b)(z)))


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


def test_real_init():
    # model.init with PyTorch's default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)), kernels and biases.
    model = MLP(num_classes=10)
    x = jnp.zeros((1, 8, 8, 1))
    # an 'rbg' key: XLA CPU takes seconds to compile threefry for each parameter shape; the default
    # key type is exercised by the jax.eval_shape(model.init, PRNGKey) traces in init().
    params = jax.jit(model.init)(jax.random.key(0, impl="rbg"), x)["params"]
    assert count_params(params) == dense_p(64, 256) + dense_p(256, 10)
    for layer, fan_in in (("dense0", 64), ("dense1", 256)):
        bound = 1 / np.sqrt(fan_in)
        for leaf in params[layer].values():
            assert float(jnp.max(jnp.abs(leaf))) <= bound
            assert float(jnp.max(jnp.abs(leaf))) > 0.5 * bound


@pytest.mark.parametrize("padding,stride", [("VALID", (1, 1)), ("SAME", (1, 1)), ("SAME", (2, 2)), ((1, 2), (1, 1)),
                                            ((-1, 2), (2, 1)), ("VALID", (3, 2))])
def test_slices_conv_equals_xla_conv_values_and_gradients(padding, stride):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((3, 2, 9, 8, 4)), jnp.float32)   # 3 networks' inputs
    w = jnp.asarray(rng.standard_normal((3, 3, 5, 4, 6)), jnp.float32)   # their own 3x5 kernels
    pad = padding if isinstance(padding, str) else [padding, padding]
    dn = ("NHWC", "HWIO", "NHWC")
    own = convs.slices_conv
    xla = jax.vmap(lambda a, b: jax.lax.conv_general_dilated(a, b, stride, pad, dimension_numbers=dn))
    pat = jax.vmap(lambda a, b: own(a, b, stride, pad, dimension_numbers=dn))
    np.testing.assert_allclose(np.asarray(pat(x, w)), np.asarray(xla(x, w)), atol=1e-5, rtol=1e-5)
    loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b)))  # noqa: E731
    for ga, gb in zip(jax.grad(loss(pat), (0, 1))(x, w), jax.grad(loss(xla), (0, 1))(x, w)):
        np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), atol=1e-4, rtol=1e-4)


def test_slices_conv_under_nested_vmap_with_a_shared_input():
    """Trials x networks, as the trainer runs K trials: the networks of a trial share their input
    (one matmul, kernels side by side), the trials have their own (a batched matmul)."""
    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.standard_normal((4, 5, 11, 10, 3)), jnp.float32)      # 4 trials' batches
    w = jnp.asarray(rng.standard_normal((4, 2, 5, 5, 3, 6)), jnp.float32)    # 2 networks each
    dn = ("NHWC", "HWIO", "NHWC")

    def nested(conv):
        one = lambda a, b: conv(a, b, (1, 1), "VALID", dimension_numbers=dn)  # noqa: E731
        return jax.vmap(jax.vmap(one, in_axes=(None, 0)))

    xla, own = nested(jax.lax.conv_general_dilated), nested(convs.slices_conv)
    np.testing.assert_allclose(np.asarray(own(x, w)), np.asarray(xla(x, w)), atol=1e-5, rtol=1e-5)
    loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b)))  # noqa: E731
    for ga, gb in zip(jax.grad(loss(own), (0, 1))(x, w), jax.grad(loss(xla), (0, 1))(x, w)):
        np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), atol=1e-4, rtol=1e-4)
    jaxpr = str(jax.make_jaxpr(jax.grad(loss(own), 1))(x, w))
    assert "conv_general_dilated" not in jaxpr  # no convolution, forward or backward
    with pytest.raises(TypeError):  # mixed dtypes go to XLA as they are, which rejects them (no silent promotion)
        convs.slices_conv(x[0].astype(jnp.bfloat16), w[0, 0], (1, 1), "VALID", dimension_numbers=dn)
    with pytest.raises(ValueError, match=r"slices_conv: a 5x5 kernel does not fit the padded input 4x4"):
        convs.slices_conv(x[0, :, :4, :4], w[0, 0], (1, 1), "VALID", dimension_numbers=dn)


def test_slices_conv_hands_other_convolutions_to_xla():
    x = jnp.ones((1, 6, 6, 4))
    w = jnp.ones((3, 3, 2, 4))  # feature_group_count=2: not a plain convolution
    dn = ("NHWC", "HWIO", "NHWC")
    got = convs.slices_conv(x, w, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2)
    want = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=dn, feature_group_count=2)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize("name", ["model1", "model2", "model3"])
def test_conv_impl_gives_the_same_network(name):
    impl = "slices"
    xla, pat = get_model(name, 10), get_model(name, 10, conv_impl=impl)
    assert (xla.conv_impl, pat.conv_impl) == ("xla", impl)
    pairs = [(xla, pat)]
    if name == "model1":  # both forms of its conv + pool layers (pool_s2d)
        pairs += [(get_model(name, 10, pool_s2d=s), get_model(name, 10, conv_impl=impl, pool_s2d=s)) for s in (False, True)]
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 32, 32, 3)), jnp.float32)
    v = init(xla, x.shape)[0]
    for xla, pat in pairs:
        np.testing.assert_allclose(np.asarray(pat.apply(v, x)), np.asarray(xla.apply(v, x)), atol=1e-5, rtol=1e-4)
        stem = v["params"]["conv0"]
        for a, b in zip(fused_stem(pat, [stem, stem], x), fused_stem(xla, [stem, stem], x)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


def test_conv_impl_errors():
    with pytest.raises(ConfigError, match=r"conv_impl: unknown value 'fft' \(expected one of xla, slices\)"):
        get_model("model1", 10, conv_impl="fft")
    assert isinstance(get_model("mlp", 10, conv_impl="slices"), MLP)  # the MLP has no convolution


def _grad_program(model, x, y):
    """The jitted loss gradient of ``model`` in training mode; returns (grads, optimized HLO text)."""
    v = init(model, x.shape)[0]

    def loss(p):
        out, _ = model.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"],
                             rngs={"dropout": jax.random.PRNGKey(1)})
        return -jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], 1).mean()

    g = jax.jit(jax.grad(loss))
    return g(v["params"]), g.lower(v["params"]).compile().as_text()


def _recomputing_transposes(hlo):
    """Fused computations that transpose AND recompute a ReLU (``maximum``): the slow path."""
    blocks = [b for b in hlo.split("\n\n") if b.startswith("%fused_computation")]
    return [b.split(" ", 1)[0] for b in blocks if " transpose(" in b and " maximum(" in b]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["model2", "model3"])
def test_materialize_gives_the_same_gradients(name):
    x = jnp.asarray(np.random.default_rng(2).standard_normal((4, 32, 32, 3)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 3])
    got, _ = _grad_program(get_model(name, 10, materialize=True), x, y)
    want, _ = _grad_program(get_model(name, 10, materialize=False), x, y)
    for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-9)
    assert get_model(name, 10, materialize=False).materialize is False and get_model(name, 10).materialize is False


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA's CPU fusion")
def test_materialize_keeps_relu_out_of_the_kernel_gradients_transposes():
    """What it is for: without it XLA's CPU fusion recomputes BatchNorm + ReLU inside the layout
    transposes of the kernel gradients (4-5x slower than a plain transpose); with it, nowhere."""
    x = jnp.asarray(np.random.default_rng(3).standard_normal((4, 32, 32, 3)), jnp.float32)
    y = jnp.asarray([0, 1, 2, 3])
    _, plain = _grad_program(get_model("model2", 10, materialize=False), x, y)
    _, stored = _grad_program(get_model("model2", 10, materialize=True), x, y)
    assert _recomputing_transposes(plain), "XLA no longer fuses them: re-measure models.materialized"
    assert not _recomputing_transposes(stored)


def test_materialized_is_exact_and_passes_gradients():
    x = jnp.asarray([[-2.5, 0.0], [3.0, 1e-30]], jnp.float32)
    np.testing.assert_array_equal(np.asarray(jax.jit(models.materialized)(x)), np.asarray(x))
    g = jax.grad(lambda a: (models.materialized(a) * jnp.arange(4.0).reshape(2, 2)).sum())(x)
    np.testing.assert_array_equal(np.asarray(g), np.arange(4.0).reshape(2, 2))


# ----------------------------------------------------------------------------------- conv + pool
def _conv_then_pool(x, w, padding):
    y = jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return max_pool_2x2(y)


@pytest.mark.parametrize("shape,kernel,padding", [
    ((2, 32, 32, 3), (5, 5, 3, 12), "VALID"),   # Model 1's fused stem
    ((2, 14, 14, 6), (5, 5, 6, 16), "VALID"),   # Model 1's second layer
    ((3, 9, 11, 2), (3, 4, 2, 5), "VALID"),     # odd sizes, an even kernel width, non-square
    ((2, 7, 8, 3), (3, 3, 3, 4), "SAME"),
    ((2, 7, 8, 3), (4, 2, 3, 4), "SAME"),       # SAME with even kernel sizes
    ((1, 6, 6, 1), (5, 5, 1, 2), "VALID"),      # the smallest input: one pooled pixel
])
def test_conv_max_pool_equals_conv_then_pool(shape, kernel, padding):
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    w = jnp.asarray(rng.standard_normal(kernel), jnp.float32)
    want = _conv_then_pool(x, w, padding)
    got = jax.jit(convs.conv_max_pool, static_argnums=2)(x, w, padding)
    assert got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-4, rtol=1e-5)
    loss = lambda f: lambda a, b: jnp.sum(jnp.sin(f(a, b, padding)))  # noqa: E731
    for ga, gb in zip(jax.grad(loss(convs.conv_max_pool), (0, 1))(x, w), jax.grad(loss(_conv_then_pool), (0, 1))(x, w)):
        np.testing.assert_allclose(np.asarray(ga), np.asarray(gb), atol=1e-4, rtol=1e-4)


def test_conv_max_pool_ties_share_the_gradient_and_errors():
    x = jnp.ones((1, 4, 4, 1))  # every window of the 1x1 convolution ties
    w = jnp.ones((1, 1, 1, 1))
    g = jax.grad(lambda a: convs.conv_max_pool(a, w).sum())(x)
    np.testing.assert_array_equal(np.asarray(g), np.asarray(jax.grad(lambda a: _conv_then_pool(a, w, "VALID").sum())(x)))
    np.testing.assert_array_equal(np.asarray(g), np.ones((1, 4, 4, 1)))
    with pytest.raises(ValueError, match="padding must be 'VALID' or 'SAME'"):
        convs.conv_max_pool(x, w, "FULL")
    with pytest.raises(ValueError, match="need more than a 5x5 input"):
        convs.conv_max_pool(jnp.ones((1, 5, 5, 1)), jnp.ones((5, 5, 1, 1)))


@pytest.mark.slow
def test_model1_pool_s2d_is_the_same_network():
    plain, s2d = get_model("model1", 10, pool_s2d=False), get_model("model1", 10, pool_s2d=True)
    assert (plain.pool_s2d, s2d.pool_s2d) == (False, True)
    assert get_model("model1", 10).pool_s2d is False  # the plain computation unless the plan says otherwise
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 32, 32, 3)), jnp.float32)
    v = s2d.init(jax.random.PRNGKey(0), x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, v, plain.init(jax.random.PRNGKey(0), x))
    y = jnp.arange(4) % 10

    def loss(model):
        return lambda p: optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, x), y).mean()

    np.testing.assert_allclose(np.asarray(s2d.apply(v, x)), np.asarray(plain.apply(v, x)), atol=1e-5, rtol=1e-5)
    ga, gb = jax.grad(loss(s2d))(v["params"]), jax.grad(loss(plain))(v["params"])
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4), ga, gb)
    # the s2d form's convolutions see 4x the channels: 3 -> 12 (stem), 6 -> 24
    jaxpr = str(jax.make_jaxpr(lambda a: s2d.apply(v, a))(x))
    assert "f32[4,16,16,12]" in jaxpr and "f32[4,7,7,24]" in jaxpr


def test_conv_pool_params_equal_nn_conv_params():
    """ConvPool creates kernel and bias as nn.Conv does (names, shapes, init draws)."""
    from s2e_jax.models import ConvPool, _conv

    class A(nn.Module):
        @nn.compact
        def __call__(self, x):
            return ConvPool(6, 5, name="c")(x)

    class B(nn.Module):
        @nn.compact
        def __call__(self, x):
            return _conv(x.shape[-1], 6, 5, "VALID", "c")(x)

    x = jnp.ones((1, 12, 12, 3))
    pa, pb = A().init(jax.random.PRNGKey(3), x), B().init(jax.random.PRNGKey(3), x)
    jax.tree_util.tree_map(np.testing.assert_array_equal, pa, pb)
    # mixed dtypes promote as nn.Conv's do (float32 input, bfloat16 parameters), in both forms
    p16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), pa["params"]["c"])
    want = B().apply({"params": {"c": p16}}, x)
    for s2d in (False, True):
        got = ConvPool(6, 5, s2d=s2d).apply({"params": p16}, x)
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), np.asarray(max_pool_2x2(want)), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("impl", ["xla", "slices"])
def test_pool_s2d_under_nested_vmap_of_trials_and_networks(impl):
    """What K trials in one program run on a GPU with pool_s2d on: vmap over trials of vmap over
    networks, each with its own input; values and gradients equal the plain layers'."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((2, 2, 3, 32, 32, 3)), jnp.float32)  # [trials, nets, B, ...]
    y = jnp.asarray(rng.integers(0, 10, (2, 2, 3)))
    plain, s2d = get_model("model1", 10, pool_s2d=False), get_model("model1", 10, conv_impl=impl, pool_s2d=True)
    keys = jax.random.split(jax.random.PRNGKey(0), 4).reshape(2, 2, 2)
    params = jax.vmap(jax.vmap(lambda k: plain.init(k, x[0, 0])["params"]))(keys)

    def loss(model):
        def one(p, xx, yy):
            return optax.softmax_cross_entropy_with_integer_labels(model.apply({"params": p}, xx), yy).mean()
        return jax.jit(jax.grad(lambda p: jax.vmap(jax.vmap(one))(p, x, y).sum()))

    got, want = loss(s2d)(params), loss(plain)(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-4),
                           got, want)
