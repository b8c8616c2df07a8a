"""Table 4 networks (MLP, Models 1-3) as Flax linen modules.

Contract (docs/design.md):

* input: float32 NHWC, already normalized; output: logits ``(B, num_classes)``;
* ``module.apply(variables, x, train=bool, rngs={'dropout': key}, mutable=['batch_stats'])``;
* every network's first layer is the submodule named ``model.stem_name`` (``'conv0'`` for the
  conv models, ``'dense0'`` for the MLP); ``__call__(x, train=False, skip_stem=False)`` with
  ``skip_stem=True`` takes ``x`` to be that layer's output (pre-activation, bias included), so a
  trainer can run the stems of several networks as ONE fused conv / matmul (:func:`fused_stem`).

Choices taken from the released code of the papers Table 4 cites (documented where they are used):

* Model 2 is ``CNN`` of Co-teaching+ (Yu et al., 2019, ``xingruiyu/coteaching_plus/model.py``).
  Table 4 lists two "3x3 Conv, 196" layers followed by "Dense 256->100"; the released code's sixth
  conv has **16** output channels (``nn.Conv2d(196, 16, 3, padding=1)``), so after three 2x2 pools
  32->4 the flattened feature is 16*4*4 = 256, which is exactly Table 4's "Dense 256->100".
* Model 3 is ``CNN`` of Co-teaching (Han et al., 2018, ``bhanML/Co-teaching/model.py``): the first
  six convs use padding 1 (SAME), the last three padding 0 (VALID); dropout is ``F.dropout2d``,
  i.e. whole feature maps are dropped (here: ``nn.Dropout(broadcast_dims=(1, 2))``).
* BatchNorm uses PyTorch's defaults (momentum 0.1 in torch terms = 0.9 in flax, eps 1e-5).
  (Torch keeps an unbiased running variance, flax the biased one; negligible for batch 128.)
* Weights and biases use PyTorch's default initialisation (the released code never re-inits):
  ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))`` for kernels and biases of every Conv/Dense.
* Max-pooling is written as reshape + max with its own gradient (:func:`max_pool_2x2`), which is
  floor pooling like ``F.max_pool2d(kernel_size=2, stride=2)``; XLA's gradient of
  ``reduce_window`` is slow on CPU. ReLU then max-pool is computed as max-pool then ReLU (equal,
  a quarter of the elements), and the layers after the stem that act per channel without
  parameters are each model's ``post_stem``, so a fused stem runs them once for all networks.
* Model 1's conv + pool pairs are one layer each (:class:`ConvPool`), computed as one space-to-depth
  convolution with ``pool_s2d`` (:func:`s2e_jax.convs.conv_max_pool`; the execution plan decides,
  :mod:`s2e_jax.execution`).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import flax.linen as nn

from s2e_jax import config
from s2e_jax.config import ConfigError
from s2e_jax.convs import conv_max_pool, materialized, slices_conv

_CONV_FNS = {"slices": slices_conv}

__all__ = [
    "MLP",
    "Model1",
    "Model2",
    "Model3",
    "MODEL_NAMES",
    "get_model",
    "default_model",
    "count_params",
    "fused_stem",
    "max_pool_2x2",
    "materialized",
    "ConvPool",
    "conv_pool",
    "CONV_IMPLS",
]

MODEL_NAMES = ("mlp", "model1", "model2", "model3")
CONV_IMPLS = tuple(c for c in config.CONV_IMPLS if c != "auto")  # XLA's convolution, or :func:`s2e_jax.convs.slices_conv`

# BatchNorm settings: PyTorch defaults (momentum=0.1 in torch == 0.9 in flax, eps=1e-5).
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _torch_uniform(fan_in: int):
    """PyTorch's default Conv/Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kernel and bias)."""
    bound = 1.0 / math.sqrt(max(int(fan_in), 1))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _conv(x_channels: int, features: int, kernel: int, padding: str, name: str,
          impl: str = "xla") -> nn.Conv:
    fan_in = kernel * kernel * x_channels
    kw = {} if impl == "xla" else dict(conv_general_dilated=_CONV_FNS[impl])
    return nn.Conv(
        features,
        (kernel, kernel),
        padding=padding,
        kernel_init=_torch_uniform(fan_in),
        bias_init=_torch_uniform(fan_in),
        name=name,
        **kw,
    )


def _dense(in_features: int, features: int, name: str) -> nn.Dense:
    return nn.Dense(
        features,
        kernel_init=_torch_uniform(in_features),
        bias_init=_torch_uniform(in_features),
        name=name,
    )


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
    return nn.BatchNorm(
        use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name
    )


def _check_spatial(x: jnp.ndarray, size: int, model: str) -> None:
    """Raise ConfigError when a feature map is smaller than ``size`` x ``size`` (a VALID conv's
    kernel, or 1 before flattening): the images are too small for this network."""
    if x.shape[1] < size or x.shape[2] < size:
        raise ConfigError(
            f"model: {model} needs larger images; a {size}x{size} layer got a "
            f"{x.shape[1]}x{x.shape[2]} feature map"
        )


def _windows(x: jnp.ndarray) -> jnp.ndarray:
    """NHWC -> (B, H/2, 2, W/2, 2, C), floor mode (an odd last row/column is dropped)."""
    b, h, w, c = x.shape
    h2, w2 = h // 2, w // 2
    return x[:, : 2 * h2, : 2 * w2, :].reshape(b, h2, 2, w2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jnp.ndarray) -> jnp.ndarray:
    """2x2 max-pool with stride 2 on NHWC, floor mode (odd rows/columns are dropped).

    Equal to ``nn.max_pool(x, (2, 2), strides=(2, 2), padding='VALID')``, written as reshape + max
    with its own gradient: one select over the input (``g`` where an entry equals its window's max,
    else 0). XLA's gradients are slower on its CPU backend: ``reduce_window``'s much, and reshape +
    max's (ties share the gradient: a compare, a count and a divide) too (docs/performance.md,
    "1. Training throughput"). On exact ties within a window every tied entry gets the gradient
    (PyTorch gives it to one); behind a ReLU a tie is measure-zero unless at 0, where the ReLU's
    gradient is 0 anyway.
    """
    return _windows(x).max(axis=(2, 4))


def _max_pool_fwd(x):
    y = max_pool_2x2(x)
    return y, (x, y)


def _max_pool_bwd(res, g):
    x, y = res
    win = _windows(x)
    hit = win == y[:, :, None, :, None, :]
    gx = jnp.where(hit, g[:, :, None, :, None, :], jnp.zeros((), g.dtype)).reshape(
        x.shape[0], 2 * y.shape[1], 2 * y.shape[2], x.shape[3])
    if gx.shape != x.shape:  # floor mode: the dropped last row/column gets no gradient
        gx = jnp.pad(gx, [(0, 0), (0, x.shape[1] - gx.shape[1]), (0, x.shape[2] - gx.shape[2]), (0, 0)])
    return (gx,)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def _conv_fn(impl: str):
    return _CONV_FNS.get(impl, jax.lax.conv_general_dilated)


def conv_pool(x, kernel, bias, padding: str = "VALID", conv_impl: str = "xla", s2d: bool = False):
    """A stride-1 convolution, its bias, then a 2x2 max-pool (floor mode): ``max_pool_2x2(conv + b)``,
    or with ``s2d`` the same as one space-to-depth convolution (:func:`s2e_jax.convs.conv_max_pool`;
    the bias is added after the pool: a per-channel constant commutes with a max)."""
    conv = _conv_fn(conv_impl)
    if s2d:
        return conv_max_pool(x, kernel, padding, conv) + bias
    y = conv(x, kernel, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return max_pool_2x2(y + bias)


class ConvPool(nn.Module):
    """A Conv layer followed by a 2x2 max-pool, as one layer (:func:`conv_pool`): parameters
    ``kernel`` [k, k, Cin, features] and ``bias`` like ``nn.Conv``'s (same names, shapes and init),
    output the pooled map. ``s2d`` computes it space-to-depth (where it measured faster:
    docs/performance.md, "Execution defaults")."""

    features: int
    kernel_size: int
    padding: str = "VALID"
    conv_impl: str = "xla"
    s2d: bool = False

    @nn.compact
    def __call__(self, x):
        k = self.kernel_size
        ci = x.shape[-1]
        init = _torch_uniform(k * k * ci)
        kernel = self.param("kernel", init, (k, k, ci, self.features))
        bias = self.param("bias", init, (self.features,))
        x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias)  # as nn.Conv
        return conv_pool(x, kernel, bias, self.padding, self.conv_impl, self.s2d)


# ----------------------------------------------------------------------------------------------
# Table 4 networks
# ----------------------------------------------------------------------------------------------
class MLP(nn.Module):
    """Table 4, "MLP on MNIST": flatten -> Dense 256 ReLU -> Dense C.

    MNIST (784 -> 256 -> 10): 203,530 parameters. The first Dense is ``dense0`` (the stem).
    """

    num_classes: int = 10
    hidden: int = 256

    stem_name = "dense0"  # class attribute (not a dataclass field)
    post_stem = staticmethod(nn.relu)  # what follows the stem, per unit and without parameters

    @nn.compact
    def __call__(self, x, train: bool = False, skip_stem: bool = False):
        if not skip_stem:  # with skip_stem, x already is relu(dense0(x)) (B, hidden)
            x = x.reshape((x.shape[0], -1))
            x = self.post_stem(_dense(x.shape[-1], self.hidden, "dense0")(x))
        return _dense(self.hidden, self.num_classes, "dense1")(x)


class Model1(nn.Module):
    """Table 4, Model 1 (LeNet-like; Co-teaching+'s ``CNN_small`` for CIFAR-10).

    5x5 Conv 6 (VALID) ReLU, 2x2 max-pool; 5x5 Conv 16 (VALID) ReLU, 2x2 max-pool;
    Dense 16*5*5 -> 120 ReLU; Dense 120 -> 84 ReLU; Dense 84 -> C.
    32x32x3, C=10: 456 + 2,416 + 48,120 + 10,164 + 850 = 62,006 parameters.

    Each conv and its pool are one :class:`ConvPool` layer (``conv0``, ``conv1``: the pooled map),
    ReLU after the pool (equal: ReLU is monotone; a quarter of the elements). ``pool_s2d`` computes
    them space-to-depth (:func:`s2e_jax.convs.conv_max_pool`; the default, :func:`get_model`).
    """

    num_classes: int = 10
    conv_impl: str = "xla"  # CONV_IMPLS: XLA's convolution or one of :mod:`s2e_jax.convs`
    pool_s2d: bool = False  # each conv + pool as one space-to-depth convolution

    stem_name = "conv0"
    stem_kernel = 5
    stem_padding = "VALID"
    stem_pool = True  # the stem layer includes a 2x2 max-pool (ConvPool)
    post_stem = staticmethod(nn.relu)  # what follows the stem, per unit and without parameters

    @nn.compact
    def __call__(self, x, train: bool = False, skip_stem: bool = False):
        layer = lambda f, name: ConvPool(f, 5, "VALID", self.conv_impl, self.pool_s2d, name=name)  # noqa: E731
        if not skip_stem:  # with skip_stem, x already is post_stem(conv0(x))
            _check_spatial(x, 6, "model1")
            x = self.post_stem(layer(6, "conv0")(x))
        _check_spatial(x, 6, "model1")
        x = nn.relu(layer(16, "conv1")(x))
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(_dense(x.shape[-1], 120, "dense0")(x))
        x = nn.relu(_dense(120, 84, "dense1")(x))
        return _dense(84, self.num_classes, "dense2")(x)


class Model2(nn.Module):
    """Table 4, Model 2 (Co-teaching+'s ``CNN`` for CIFAR-100).

    [3x3 Conv 64 BN ReLU] x2, 2x2 max-pool; [3x3 Conv 128 BN ReLU] x2, 2x2 max-pool;
    3x3 Conv 196 BN ReLU, 3x3 Conv 16 BN ReLU, 2x2 max-pool; flatten (16*4*4 = 256) -> Dense C.

    All convs use padding 1 (SAME). The sixth conv has 16 output channels as in the released code
    (``self.c6 = nn.Conv2d(196, 16, ...)``), which is what makes Table 4's "Dense 256->100"
    consistent (Table 4's second "Conv, 196" apparently lists the width of the block, not of c6).
    """

    num_classes: int = 100
    conv_impl: str = "xla"  # CONV_IMPLS
    materialize: bool = False  # store each conv's input (:func:`materialized`; CPU default)

    stem_name = "conv0"
    stem_kernel = 3
    stem_padding = "SAME"
    post_stem = staticmethod(lambda x: x)  # BatchNorm (with parameters) follows the stem

    # (features, max-pool after this conv)
    layers = ((64, False), (64, True), (128, False), (128, True), (196, False), (16, True))

    @nn.compact
    def __call__(self, x, train: bool = False, skip_stem: bool = False):
        for i, (features, pool) in enumerate(self.layers):
            if i > 0 or not skip_stem:
                if i > 0 and self.materialize:
                    x = materialized(x)
                x = _conv(x.shape[-1], features, 3, "SAME", f"conv{i}", self.conv_impl)(x)
            x = _batch_norm(train, f"bn{i}")(x)
            x = nn.relu(max_pool_2x2(x) if pool else x)  # = pool(relu(.)), a quarter of the ReLUs
        _check_spatial(x, 1, "model2")
        x = x.reshape((x.shape[0], -1))
        return _dense(x.shape[-1], self.num_classes, "dense0")(x)


class Model3(nn.Module):
    """Table 4, Model 3 (Co-teaching's 9-layer CNN, Han et al. 2018).

    [3x3 Conv 128 BN LReLU(0.01)] x3, 2x2 max-pool stride 2, Dropout 0.25;
    [3x3 Conv 256 BN LReLU] x3, 2x2 max-pool stride 2, Dropout 0.25;
    3x3 Conv 512, 256, 128 (VALID) each BN LReLU; global average pool; Dense 128 -> C.

    The first six convs use padding 1 (SAME), the last three padding 0 (VALID), as in the released
    code. Dropout follows its ``F.dropout2d``: whole channels are dropped per example. It is active
    only with ``train=True`` (needs ``rngs={'dropout': key}``); the released code calls the
    functional ``F.dropout2d`` whose ``training`` defaults to True, i.e. it also drops at test
    time -- we treat that as a bug and evaluate deterministically.
    """

    num_classes: int = 10
    dropout_rate: float = 0.25
    conv_impl: str = "xla"  # CONV_IMPLS
    materialize: bool = False  # store each conv's input (:func:`materialized`; CPU default)

    stem_name = "conv0"
    stem_kernel = 3
    stem_padding = "SAME"
    post_stem = staticmethod(lambda x: x)  # BatchNorm (with parameters) follows the stem

    # (features, padding)
    layers = (
        (128, "SAME"), (128, "SAME"), (128, "SAME"),
        (256, "SAME"), (256, "SAME"), (256, "SAME"),
        (512, "VALID"), (256, "VALID"), (128, "VALID"),
    )

    @nn.compact
    def __call__(self, x, train: bool = False, skip_stem: bool = False):
        for i, (features, padding) in enumerate(self.layers):
            if i > 0 or not skip_stem:
                if padding == "VALID":
                    _check_spatial(x, 3, "model3")
                if i > 0 and self.materialize:
                    x = materialized(x)
                x = _conv(x.shape[-1], features, 3, padding, f"conv{i}", self.conv_impl)(x)
            x = _batch_norm(train, f"bn{i}")(x)
            if i in (2, 5):  # pool then LeakyReLU = LeakyReLU then pool (monotone), fewer elements
                x = nn.leaky_relu(max_pool_2x2(x), negative_slope=0.01)
                # F.dropout2d: one Bernoulli draw per (example, channel).
                x = nn.Dropout(self.dropout_rate, broadcast_dims=(1, 2))(
                    x, deterministic=not train
                )
            else:
                x = nn.leaky_relu(x, negative_slope=0.01)
        x = jnp.mean(x, axis=(1, 2))  # global average pool (avg_pool2d over the full map)
        return _dense(x.shape[-1], self.num_classes, "dense0")(x)


# ----------------------------------------------------------------------------------------------
# fused stem
# ----------------------------------------------------------------------------------------------
def _stem_of(params: Mapping[str, Any], stem_name: str) -> Mapping[str, Any]:
    """Accept a stem layer's params ``{'kernel', 'bias'}``, a params tree, or ``{'params': ...}``."""
    if "params" in params and "kernel" not in params:
        params = params["params"]
    if stem_name in params:
        params = params[stem_name]
    if "kernel" not in params or "bias" not in params:
        raise ValueError(f"fused_stem: expected params of the '{stem_name}' layer (kernel, bias)")
    return params


def fused_stem(model: nn.Module, stem_params: Sequence[Mapping[str, Any]], x: jnp.ndarray):
    """Run the first layer of N networks of the same architecture as ONE conv (or one matmul).

    ``stem_params[k]`` is network k's stem params (``params[model.stem_name]``, i.e. a dict with
    ``kernel`` and ``bias``; a whole params tree is also accepted). The kernels and biases are
    concatenated along the output-channel axis, one convolution is run on ``x`` and the result is
    split back: returns a list of N arrays, the k-th equal to ``model.post_stem`` of network k's
    ``conv0``/``dense0`` output, ready for ``model.apply(..., skip_stem=True)``. Model 1's stem is
    its first conv with its max-pool (:class:`ConvPool`); ``post_stem`` (what follows the stem
    per unit, without parameters: Model 1's and the MLP's ReLU) runs once on the fused output,
    before the split.
    """
    stems = [_stem_of(p, model.stem_name) for p in stem_params]
    if not stems:
        return []
    kernel = jnp.concatenate([jnp.asarray(s["kernel"]) for s in stems], axis=-1)
    bias = jnp.concatenate([jnp.asarray(s["bias"]) for s in stems], axis=-1)
    if isinstance(model, MLP):
        y = x.reshape((x.shape[0], -1)) @ kernel + bias
    elif getattr(model, "stem_pool", False):  # Model 1: conv + pool, one ConvPool layer
        y = conv_pool(x, kernel, bias, model.stem_padding, model.conv_impl, model.pool_s2d)
    else:
        conv = _conv_fn(model.conv_impl)
        y = conv(x, kernel, (1, 1), model.stem_padding, dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias
    y = model.post_stem(y)
    sizes = [s["kernel"].shape[-1] for s in stems]
    splits = [sum(sizes[: k + 1]) for k in range(len(sizes) - 1)]
    return jnp.split(y, splits, axis=-1)


# ----------------------------------------------------------------------------------------------
# registry / utilities
# ----------------------------------------------------------------------------------------------
def get_model(name: str, num_classes: int, conv_impl: str = "xla", materialize: bool = False,
              pool_s2d: bool = False) -> nn.Module:
    """Build a Table 4 network by name: 'mlp', 'model1', 'model2' or 'model3'. How it computes (the
    execution plan's, :mod:`s2e_jax.execution`; the same numbers to float rounding): ``conv_impl``
    (one of :data:`CONV_IMPLS`), ``pool_s2d`` (Model 1: each conv + pool as one space-to-depth
    convolution, :func:`conv_pool`), ``materialize`` (Models 2-3: each convolution's input stored,
    :func:`materialized`)."""
    key = str(name).strip().lower()
    if key not in MODEL_NAMES:
        raise ConfigError(f"model: unknown model {name!r} (expected {', '.join(MODEL_NAMES)})")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes: must be an integer >= 2, got {num_classes!r}")
    if conv_impl not in CONV_IMPLS:
        raise ConfigError(f"conv_impl: unknown value {conv_impl!r} (expected one of {', '.join(CONV_IMPLS)})")
    if key == "mlp":
        return MLP(num_classes=num_classes)
    if key == "model1":  # its second conv's input comes from a max-pool, which XLA stores anyway
        return Model1(num_classes=num_classes, conv_impl=conv_impl, pool_s2d=bool(pool_s2d))
    cls = {"model2": Model2, "model3": Model3}[key]
    return cls(num_classes=num_classes, conv_impl=conv_impl, materialize=bool(materialize))


def default_model(dataset_name: str, num_channels: int | None = None) -> str:
    """The paper's network for a data set (Table 4): MNIST/digits -> 'mlp', CIFAR-10 -> 'model1',
    CIFAR-100 -> 'model2'. Any other data set (e.g. an ``.npz`` path): 'mlp' for 1-channel images,
    'model1' for others; ``num_channels`` is then required.
    """
    key = str(dataset_name).strip().lower()
    known = {"mnist": "mlp", "digits": "mlp", "cifar10": "model1", "cifar100": "model2"}
    if key in known:
        return known[key]
    if num_channels is None:
        raise ConfigError(
            f"model: no default model for dataset {dataset_name!r} without its channel count; "
            f"choose one of {', '.join(MODEL_NAMES)}"
        )
    return "mlp" if int(num_channels) == 1 else "model1"


def count_params(params: Any) -> int:
    """Total number of scalars in a pytree (pass ``variables['params']`` for trainable params).

    Works on arrays and on ``jax.eval_shape`` outputs (``ShapeDtypeStruct``), so
    ``count_params(jax.eval_shape(model.init, key, x)['params'])`` counts without initialising.
    """
    return int(
        sum(math.prod(getattr(leaf, "shape", None) or jnp.shape(leaf)) for leaf in jax.tree_util.tree_leaves(params))
    )
