"""How a convolution of the conv nets is computed (the execution plan's ``conv_impl`` and ``pool_s2d``;
:mod:`s2e_jax.execution`). Every form equals ``lax.conv_general_dilated`` (and a 2x2 max-pool) up to
float reassociation (tests/test_models.py); which one runs where, and why, is docs/performance.md's
"Execution defaults".

* :func:`slices_conv` — a convolution as kh*kw strided slices of the input side by side (copies XLA
  fuses into one loop) times the kernel: one matmul, no convolution forward or backward. Under
  ``vmap`` over networks and trials it is a dense (batched) matmul instead of a grouped convolution.
* :func:`conv_max_pool` — a convolution followed by a 2x2 max-pool (Model 1's layers) as ONE
  convolution of the input rearranged space-to-depth: a 2x2 block of pixels becomes 4x the channels,
  the kernel the four output phases side by side (:func:`space_to_depth_kernel`), and the pool an
  elementwise max of four channel blocks. The arithmetic grows by ((k+1)/k)^2 for an odd k x k
  kernel (1.44x for 5x5).
* :func:`materialized` — makes XLA's CPU backend store a convolution's input instead of recomputing
  it inside the layout transpose of the kernel gradient (Models 2 and 3).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

__all__ = ["slices_conv", "conv_max_pool", "space_to_depth_kernel", "materialized"]

DN = ("NHWC", "HWIO", "NHWC")

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


# ----------------------------------------------------------------------------------- slices
@_conv_impl
def slices_conv(lhs, rhs, window_strides, padding, precision=None):
    """``lax.conv_general_dilated`` for NHWC/HWIO as kh*kw strided slices of the (padded) input side
    by side along the channels, times the kernel: one matmul.

    Building the patches is no convolution (as XLA's patches op would be) but slices and a
    concatenation, which XLA fuses into one loop; their gradient is pads and adds. Under ``vmap`` over networks the product is
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


# ----------------------------------------------------------------------------------- conv + 2x2 max-pool
def materialized(x: jax.Array) -> jax.Array:
    """``x / 1``, the 1 computed at run time: exact, and XLA's CPU backend then stores ``x`` once.

    A convolution's input (BatchNorm, ReLU) has two consumers: the convolution and, in the
    backward pass, the layout transpose that XLA's kernel gradient needs (channels first, batch
    last). XLA's CPU fusion copies cheap elementwise producers into each consumer, and fused into
    that transpose the recomputation makes it several times slower than a plain transpose. A
    division is an op XLA does not duplicate, so the transpose reads the stored input; gradients bit
    for bit equal (docs/performance.md, "Execution defaults"). ``lax.optimization_barrier`` does not
    do it (removed before fusion on the CPU).
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
    a short middle axis was slower: docs/performance.md, "1. Training throughput"). Gradient: to
    every entry equal to its max, as ``models.max_pool_2x2``."""
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
    size ho x wo."""
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
    default, or :func:`slices_conv`)."""
    conv = jax.lax.conv_general_dilated if conv is None else conv
    xs, _, _ = _space_to_depth_input(x, *kernel.shape[:2], padding)
    y = conv(xs, space_to_depth_kernel(kernel), (1, 1), "VALID", dimension_numbers=DN)
    return _phase_max(y)
