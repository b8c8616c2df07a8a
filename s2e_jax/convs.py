"""How a convolution of many networks is computed (``TrainConfig.conv_impl``; Table 4's conv nets).

The trainer runs N networks of a trial, and K trials, as ``vmap`` over their parameters. ``vmap`` of a
convolution over its kernel is, by XLA's rule, a *grouped* convolution (``feature_group_count`` = G,
G = K x N) whose kernel gradient is a ``batch_group_count`` convolution. Measured on an H200
(experiments/gpu_h200/followup/conv_parts.txt), cuDNN's grouped kernels for Model 1's 3 -> 6 and
6 -> 16 channels barely get cheaper per network as G grows, which is why K Model 1 trials in one
program gained only ~2x over K in sequence. The alternatives here are plain 2-D NHWC/HWIO
convolutions computed another way; every one equals ``lax.conv_general_dilated`` up to float
reassociation (tested):

* :func:`patches_conv` — image patches (``conv_general_dilated_patches``) times the kernel, one matmul;
* :func:`slices_conv` — the same product with the patches built from kh*kw strided slices (copies
  XLA fuses into one loop; no convolution anywhere, forward or backward). Model 1 inside
  ``lax.scan`` on the CPU (K trials in one program) ran 1.5-4x faster with it than with XLA's
  convolutions (3-6x the memory per trial), and 7-13x with ``conv_max_pool`` too (about the same
  memory; experiments/cpu_model1/slices.md); the CPU's loop driver was slower with it. On an
  H100, with ``conv_max_pool``, one training 1.7x per epoch (200 epochs: 39.5 -> 32.4 s) and 8
  trials in one program 1.8x
  (experiments/gpu_h100/), so the default there too (``train.default_conv_impl``);
* :func:`blockdiag_conv` — a convolution whose batching rule (``jax.custom_batching.custom_vmap``)
  stacks G networks into ONE dense convolution: networks that share their input get their kernels
  side by side (G x Cout output channels, no extra work); networks with their own inputs get the
  inputs side by side along channels and a block-diagonal kernel (G times the arithmetic, no groups),
  in chunks of at most ``BLOCKDIAG_MAX_CHANNELS`` channels (a chunked remainder stays grouped). Its
  gradients are its own (``jax.custom_vjp`` with input and kernel gradients that batch the same way),
  since reverse-mode differentiation does not pass through ``custom_vmap``.

A convolution followed by a 2x2 max-pool (Model 1's two layers) can also be computed on the input
rearranged space-to-depth (:func:`conv_max_pool`): a 2x2 block of pixels becomes 4x the channels and
the kernel becomes the four output phases side by side, so the pool is an elementwise max of four
channel blocks. Fewer, wider channels suit XLA's CPU convolutions (3 -> 6 channels is their worst
case); the arithmetic grows by ((k+1)/k)^2 for an odd k x k kernel (1.44x for 5x5), ((k+2)/k)^2 for
an even one.

:func:`materialized` makes XLA's CPU backend store a convolution's input instead of recomputing it
inside the layout transpose of the kernel gradient (Models 2 and 3).

A network's FIRST conv + pool depends on parameters only through the kernel: its patches are a
function of the data, so :func:`space_to_depth_patches` can build them once per data set (uint8) and
:func:`patches_max_pool` computes the layer from them as one matmul (Model 1's ``stem_patches``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["patches_conv", "slices_conv", "blockdiag_conv", "conv_max_pool", "space_to_depth_kernel", "materialized",
           "space_to_depth_patches", "patches_max_pool", "BLOCKDIAG_MAX_CHANNELS"]

DN = ("NHWC", "HWIO", "NHWC")
# the widest stacked convolution blockdiag_conv builds (input or output channels): G networks of a
# layer are stacked in chunks of at most this many channels (Model 1 on an H200: 16 networks of
# 6 -> 16 channels = 96 -> 256 was faster than the grouped convolution, 64 networks was slower)
BLOCKDIAG_MAX_CHANNELS = 256


def _is_nhwc(dn, ndim) -> bool:
    """Whether dimension numbers (flax passes ``ConvDimensionNumbers``) are NHWC / HWIO / NHWC."""
    if dn is None:
        return False
    want = jax.lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, DN)
    got = jax.lax.conv_dimension_numbers((1,) * ndim, (1,) * ndim, dn)
    return tuple(got) == tuple(want)


def _plain_2d(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count, batch_group_count,
              preferred_element_type):
    """Whether a ``conv_general_dilated`` call is a plain 2-D NHWC/HWIO convolution of one dtype (what
    this module computes its own way; anything else goes to XLA as is, which rejects mixed dtypes)."""
    return (feature_group_count == 1 and batch_group_count == 1 and preferred_element_type is None
            and lhs.dtype == rhs.dtype
            and all(d == 1 for d in (lhs_dilation or (1,))) and all(d == 1 for d in (rhs_dilation or (1,)))
            and lhs.ndim == 4 and _is_nhwc(dimension_numbers, lhs.ndim))


def _conv_impl(own):
    """A ``conv_general_dilated`` replacement: ``own(lhs, rhs, window_strides, padding, precision)``
    for plain 2-D convolutions, ``lax.conv_general_dilated`` for everything else."""

    @functools.wraps(own)
    def conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
             feature_group_count=1, batch_group_count=1, precision=None, preferred_element_type=None):
        if _plain_2d(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                     batch_group_count, preferred_element_type):
            return own(lhs, rhs, window_strides, padding, precision)
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers,
            feature_group_count, batch_group_count, precision, preferred_element_type)
    return conv


# ----------------------------------------------------------------------------------- patches
@_conv_impl
def patches_conv(lhs, rhs, window_strides, padding, precision=None):
    """``lax.conv_general_dilated`` for NHWC/HWIO as image patches times the kernel (one matmul).

    Under ``vmap`` the patches (a convolution with a constant kernel) fold the vmapped axis into the
    batch and the product with the kernel is a batched matmul, forward and backward. Costs kh*kw
    times the input's memory. Measured slower than XLA's convolution on an H200 (one Model 1
    training 0.57x, Model 2 0.14x, Model 1's K = 8 trials in one program 0.43x) and on this CPU
    (Model 2 0.17x); kept to measure elsewhere.
    """
    kh, kw, cin, cout = rhs.shape
    patches = jax.lax.conv_general_dilated_patches(
        lhs, (kh, kw), window_strides, padding, dimension_numbers=DN,
        precision=precision)  # [B, H', W', cin*kh*kw], features ordered (cin, kh, kw)
    w = rhs.transpose(2, 0, 1, 3).reshape(cin * kh * kw, cout)
    return jnp.einsum("bhwp,po->bhwo", patches, w, precision=precision)


@_conv_impl
def slices_conv(lhs, rhs, window_strides, padding, precision=None):
    """``lax.conv_general_dilated`` for NHWC/HWIO as kh*kw strided slices of the (padded) input side
    by side along the channels, times the kernel: one matmul.

    Unlike :func:`patches_conv`, building the patches is no convolution (XLA's patches op is one,
    with a constant kernel of kh*kw*cin output channels) but slices and a concatenation, which XLA
    fuses into one loop; their gradient is pads and adds. Under ``vmap`` over networks the product is
    a dense matmul: networks that share their input (Co-teaching's first layer) have their kernels
    side by side in one matrix, networks with their own inputs a batched matmul (cuBLAS's strided
    batched GEMM on a GPU) instead of a grouped convolution.
    """
    kh, kw, cin, cout = rhs.shape
    sh, sw = (int(s) for s in window_strides)
    if isinstance(padding, str):
        padding = jax.lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), (sh, sw), padding)
    (t, b), (l, r) = ((int(lo), int(hi)) for lo, hi in padding)
    x = jax.lax.pad(lhs, jnp.zeros((), lhs.dtype), ((0, 0, 0), (t, b, 0), (l, r, 0), (0, 0, 0)))
    ho, wo = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    if ho < 1 or wo < 1:
        raise ValueError(f"slices_conv: a {kh}x{kw} kernel does not fit the padded input "
                         f"{x.shape[1]}x{x.shape[2]}")
    cols = [jax.lax.slice(x, (0, i, j, 0), (x.shape[0], i + (ho - 1) * sh + 1, j + (wo - 1) * sw + 1, cin),
                          (1, sh, sw, 1))
            for i in range(kh) for j in range(kw)]
    patches = jnp.concatenate(cols, axis=-1)  # [B, H', W', kh*kw*cin], features ordered (kh, kw, cin)
    return jnp.einsum("bhwp,po->bhwo", patches, rhs.reshape(kh * kw * cin, cout), precision=precision)


# ----------------------------------------------------------------------------------- block-diagonal
@_conv_impl
def blockdiag_conv(lhs, rhs, window_strides, padding, precision=None):
    """``lax.conv_general_dilated`` (NHWC/HWIO) that ``vmap`` over networks turns into one dense
    convolution (module docstring); anything but a plain 2-D convolution goes to XLA as is."""
    pad = padding if isinstance(padding, str) else tuple(tuple(int(a) for a in p) for p in padding)
    return _custom_conv(tuple(int(s) for s in window_strides), pad, precision)(lhs, rhs)


def _side(a, g):
    """[g, ..., C] -> [..., g*C]: g arrays side by side along the channels."""
    return jnp.moveaxis(a, 0, -2).reshape(a.shape[1:-1] + (g * a.shape[-1],))


def _unside(a, g):
    """[..., g*C] -> [g, ..., C]."""
    return jnp.moveaxis(a.reshape(a.shape[:-1] + (g, a.shape[-1] // g)), -2, 0)


def _blockdiag(w):
    """[g, kh, kw, ci, co] -> [kh, kw, g*ci, g*co], network j's kernel in block (j, j)."""
    g, kh, kw, ci, co = w.shape
    eye = jnp.eye(g, dtype=w.dtype)
    return jnp.einsum("gh,gyxio->yxgiho", eye, w).reshape(kh, kw, g * ci, g * co)


def _diag_blocks(k, g):
    """[kh, kw, g*ci, g*co] -> [g, kh, kw, ci, co]: the diagonal blocks."""
    kh, kw, gci, gco = k.shape
    k = k.reshape(kh, kw, g, gci // g, g, gco // g)
    return jnp.einsum("yxgigo->gyxio", k)


def _chunk(g: int, ci: int, co: int) -> int:
    """Networks per stacked convolution: the largest divisor c of g with c*max(ci, co) within
    BLOCKDIAG_MAX_CHANNELS (at least 1)."""
    best = 1
    for c in range(1, g + 1):
        if g % c == 0 and c * max(ci, co) <= BLOCKDIAG_MAX_CHANNELS:
            best = c
    return best


def _chunked(fn, g, c, *arrays):
    """``fn(op)`` on chunks of c networks. All g at once (c == g): ``fn`` with the custom-batched op,
    so that an enclosing ``vmap`` stacks further. Else [g, ...] arrays as [g/c, c, ...] and ``fn`` with
    the plain op vmapped over the chunks: XLA's grouped convolutions of g/c groups."""
    if c == g:
        return fn(True)(*arrays)
    split = [a.reshape((g // c, c) + a.shape[1:]) for a in arrays]
    out = jax.vmap(fn(False))(*split)
    return out.reshape((g,) + out.shape[2:])


@functools.lru_cache(maxsize=None)
def _custom_conv(strides, padding, precision):
    """The custom-VJP convolution of one (strides, padding) made of custom-batched forward,
    input-gradient and kernel-gradient convolutions."""

    def plain(x, w):
        return jax.lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN, precision=precision)

    def plain_dx(dy, w, x):
        return jax.vjp(lambda a: plain(a, w), x)[1](dy)[0]

    def plain_dw(x, dy, w):
        return jax.vjp(lambda k: plain(x, k), w)[1](dy)[0]

    @jax.custom_batching.custom_vmap
    def fwd(x, w):
        return plain(x, w)

    @jax.custom_batching.custom_vmap
    def dx_op(dy, w, x):
        return plain_dx(dy, w, x)

    @jax.custom_batching.custom_vmap
    def dw_op(x, dy, w):
        return plain_dw(x, dy, w)

    def bcast(a, batched, g):
        return a if batched else jnp.broadcast_to(a, (g,) + a.shape)

    def fold(a):  # [g, B, ...] -> [g*B, ...]
        return a.reshape((-1,) + a.shape[2:])

    @fwd.def_vmap
    def _fwd_rule(g, in_batched, x, w):
        xb, wb = in_batched
        if not wb:  # one kernel: the networks' inputs are one larger batch
            x = bcast(x, xb, g)
            y = fwd(fold(x), w)
            return y.reshape((g, -1) + y.shape[1:]), True
        ci, co = w.shape[-2:]
        c = _chunk(g, ci, co)
        if not xb and c == g:  # one input: the kernels side by side, exactly the work of g convs
            return _unside(fwd(x, _side(w, g)), g), True
        x = bcast(x, xb, g)

        def one(custom):
            op = fwd if custom else plain
            return lambda xs, ws: _unside(op(_side(xs, xs.shape[0]), _blockdiag(ws)), xs.shape[0])
        return _chunked(one, g, c, x, w), True

    @dx_op.def_vmap
    def _dx_rule(g, in_batched, dy, w, x):
        dyb, wb, xb = in_batched
        if not wb:
            dy, x = bcast(dy, dyb, g), bcast(x, xb, g)
            dx = dx_op(fold(dy), w, fold(x))
            return dx.reshape((g, -1) + dx.shape[1:]), True
        dy, x = bcast(dy, dyb, g), bcast(x, xb, g)
        c = _chunk(g, *w.shape[-2:])

        def one(custom):
            op = dx_op if custom else plain_dx
            return lambda d, ws, xs: _unside(
                op(_side(d, d.shape[0]), _blockdiag(ws), _side(xs, xs.shape[0])), d.shape[0])
        return _chunked(one, g, c, dy, w, x), True

    @dw_op.def_vmap
    def _dw_rule(g, in_batched, x, dy, w):
        xb, dyb, wb = in_batched
        dy, w = bcast(dy, dyb, g), bcast(w, wb, g)
        ci, co = w.shape[-2:]
        c = _chunk(g, ci, co)
        if not xb and c == g:  # one input: the kernels' gradients side by side, exact
            return _unside(dw_op(x, _side(dy, g), _side(w, g)), g), True
        x = bcast(x, xb, g)

        def one(custom):
            op = dw_op if custom else plain_dw
            return lambda xs, d, ws: _diag_blocks(
                op(_side(xs, xs.shape[0]), _side(d, d.shape[0]), _blockdiag(ws)), xs.shape[0])
        return _chunked(one, g, c, x, dy, w), True

    @jax.custom_vjp
    def conv(x, w):
        return fwd(x, w)

    def conv_fwd(x, w):
        return fwd(x, w), (x, w)

    def conv_bwd(res, dy):
        x, w = res
        return dx_op(dy, w, x), dw_op(x, dy, w)

    conv.defvjp(conv_fwd, conv_bwd)
    return conv


# ----------------------------------------------------------------------------------- conv + 2x2 max-pool
def materialized(x: jax.Array) -> jax.Array:
    """``x / 1``, the 1 computed at run time: exact, and XLA's CPU backend then stores ``x`` once.

    A convolution's input (BatchNorm, ReLU) has two consumers: the convolution and, in the
    backward pass, the layout transpose that XLA's kernel gradient needs (channels first, batch
    last). XLA's CPU fusion copies cheap elementwise producers into each consumer, and fused into
    that transpose the recomputation makes it 4-5x slower than a plain transpose. A division is an
    op XLA does not duplicate, so the transpose reads the stored input. Measured on the CPU for a
    Model 2 network, forward + backward: 1,174 -> 1,049 ms (median of 12, interleaved), gradients
    bit for bit equal. ``lax.optimization_barrier`` does not do it (removed before fusion on the CPU).
    The 1 is sign(|x_0| + 1), which XLA cannot fold; a NaN in x_0 would spread, but BatchNorm
    before every such input spreads it anyway.
    """
    one = jax.lax.stop_gradient(jnp.sign(jnp.abs(x.reshape(-1)[0]) + 1))
    return x / one


def space_to_depth_kernel(kernel):
    """[kh, kw, ci, co] -> [kh//2 + 1, kw//2 + 1, 4*ci, 4*co]: the kernel of :func:`conv_max_pool`.

    Input channels are ordered (row in block, column in block, ci), as the input's 2x2 blocks;
    output channels (phase, co), phase (a, b) = the output pixel (2u + a, 2v + b) of the original
    convolution: its taps are the kernel shifted by (a, b) within a 2x2-aligned window."""
    kh, kw, ci, co = kernel.shape
    rh, rw = kh // 2 + 1, kw // 2 + 1
    phases = [jnp.pad(kernel, ((a, 2 * rh - kh - a), (b, 2 * rw - kw - b), (0, 0), (0, 0)))
              .reshape(rh, 2, rw, 2, ci, co).transpose(0, 2, 1, 3, 4, 5).reshape(rh, rw, 4 * ci, co)
              for a in (0, 1) for b in (0, 1)]
    return jnp.concatenate(phases, axis=-1)


@jax.custom_vjp
def _phase_max(y):
    """[..., 4*C] -> [..., C]: the max of the four channel blocks (elementwise; XLA's CPU reduce over
    a short middle axis was ~3x slower). Gradient: to every entry equal to its max, as
    ``models.max_pool_2x2``."""
    r = y.reshape(y.shape[:-1] + (4, y.shape[-1] // 4))
    return jnp.maximum(jnp.maximum(r[..., 0, :], r[..., 1, :]), jnp.maximum(r[..., 2, :], r[..., 3, :]))


def _phase_max_fwd(y):
    m = _phase_max(y)
    return m, (y, m)


def _phase_max_bwd(res, g):
    y, m = res
    r = y.reshape(y.shape[:-1] + (4, m.shape[-1]))
    gy = jnp.where(r == m[..., None, :], g[..., None, :], jnp.zeros((), g.dtype))
    return (gy.reshape(y.shape),)


_phase_max.defvjp(_phase_max_fwd, _phase_max_bwd)


def _space_to_depth_input(x, kh, kw, padding):
    """``x`` [B, H, W, C] -> ``(xs, ho, wo)``: the input of :func:`conv_max_pool`'s one convolution,
    ``xs`` [B, hs, ws, 4C] (2x2 blocks as channels, ordered (row, column, c)), and the pooled output
    size ho x wo. Works on any dtype (uint8 images for :func:`space_to_depth_patches`)."""
    if padding == "SAME":  # SAME for stride 1: (k - 1) zeros split low/high, then VALID
        x = jnp.pad(x, ((0, 0), ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2), (0, 0)))
    elif padding != "VALID":
        raise ValueError(f"conv_max_pool: padding must be 'VALID' or 'SAME', got {padding!r}")
    b, h, w, c = x.shape
    ho, wo = (h - kh + 1) // 2, (w - kw + 1) // 2  # pooled output size
    if ho < 1 or wo < 1:
        raise ValueError(f"conv_max_pool: a {kh}x{kw} kernel and a 2x2 pool need more than a {h}x{w} input")
    hs, ws = ho + kh // 2, wo + kw // 2  # input blocks that output needs
    # crop to 2hs x 2ws (or pad: the extra row/column meets only zero taps)
    x = jnp.pad(x[:, : 2 * hs, : 2 * ws], ((0, 0), (0, max(2 * hs - h, 0)), (0, max(2 * ws - w, 0)), (0, 0)))
    return x.reshape(b, hs, 2, ws, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, hs, ws, 4 * c), ho, wo


def conv_max_pool(x, kernel, padding="VALID", conv=None):
    """``max_pool_2x2(conv(x, kernel))`` (stride 1, NHWC/HWIO; floor-mode 2x2 pool, stride 2) computed
    as ONE convolution of the input rearranged space-to-depth with :func:`space_to_depth_kernel`,
    then the max of the four output phases. Equal up to float reassociation; ties share the
    gradient, as ``models.max_pool_2x2``. ``conv`` is the ``conv_general_dilated`` to use (XLA's by
    default; :func:`blockdiag_conv` etc. work too).

    Measured on a 2-core CPU (XLA + YNNPACK, batch 128, experiments/bench_model1_layers.py): Model
    1's first layer (3 -> 6 channels, two networks fused: 12) forward 15.8 -> 5.6 ms, forward +
    kernel gradient 20.6 -> 12.6 ms; its second (6 -> 16) forward + both gradients 14.4 -> 6.5 ms."""
    conv = jax.lax.conv_general_dilated if conv is None else conv
    xs, _, _ = _space_to_depth_input(x, *kernel.shape[:2], padding)
    y = conv(xs, space_to_depth_kernel(kernel), (1, 1), "VALID", dimension_numbers=DN)
    return _phase_max(y)


# ----------------------------------------------------------------------------------- a stem from stored patches
def space_to_depth_patches(x, kh: int, kw: int):
    """[B, H, W, C] -> [B, ho, wo, rh*rw*4C] (rh = kh//2 + 1, rw = kw//2 + 1): the patches
    :func:`slices_conv` builds inside :func:`conv_max_pool` (features ordered (tap row, tap column,
    block row, block column, c)), for a kh x kw VALID convolution + 2x2 max-pool with pooled output
    ho x wo. (No SAME: its zeros belong after the normalization, and these are normalized after.)

    For a network's FIRST layer these depend on the data only: computed once per data set (any
    dtype; uint8 images give uint8 patches, ``TrainConfig.stem_patches``), a training step's first
    layer is a gather of patch rows and one matmul (:func:`patches_max_pool`) instead of building
    them from the gathered images at every step of every trial. Costs rh*rw*4/(pool input/output
    ratio) the images' memory: 6.9x for a 32x32 image and a 5x5 kernel (14x14x108 per image)."""
    xs, ho, wo = _space_to_depth_input(x, kh, kw, "VALID")
    cols = [xs[:, i: i + ho, j: j + wo, :] for i in range(kh // 2 + 1) for j in range(kw // 2 + 1)]
    return jnp.concatenate(cols, axis=-1)


def patches_max_pool(patches, kernel, precision=None):
    """``conv_max_pool(x, kernel)`` from ``patches = space_to_depth_patches(x, kh, kw)``: one matmul
    with the space-to-depth kernel, then the max of the four output phases (the same arithmetic as
    ``conv_max_pool(x, kernel, conv=slices_conv)``)."""
    ks = space_to_depth_kernel(kernel)
    if patches.shape[-1] != ks.shape[0] * ks.shape[1] * ks.shape[2]:
        raise ValueError(f"patches_max_pool: patches with {patches.shape[-1]} features do not match a "
                         f"{kernel.shape[0]}x{kernel.shape[1]} kernel of {kernel.shape[2]} input channels "
                         f"({ks.shape[0] * ks.shape[1] * ks.shape[2]} expected)")
    y = jnp.einsum("bhwp,po->bhwo", patches, ks.reshape(-1, ks.shape[-1]), precision=precision)
    return _phase_max(y)
