#!/usr/bin/env python
"""Where a vmapped Model 1 step loses time as the trial axis grows: each convolution of Model 1,
forward + backward (gradients of kernel and input), for G networks (G = trials x 2), computed
several ways, and the whole network's forward + backward; one table.

Why: on an NVIDIA H200, K = 8 Model 1 trainings in one vmapped program ran only 2x as fast as 8 in
sequence while the MLP's ran 4.2x (benchmarks/gpu_h200/): the suspects are XLA's grouped
convolutions (``vmap`` of a convolution over its kernel gives ``feature_group_count`` = G and a
``batch_group_count`` kernel gradient).

Ways (each inside one jitted ``lax.scan`` of ``--iters`` iterations whose carry is the kernels,
nudged by their gradients, so nothing is hoisted; time per iteration, median of ``--repeats``):

* ``vmap``: ``jax.vmap`` of an NHWC/HWIO convolution over (input, kernel) — what the trainer runs;
* ``vmap_nchw``: the same in NCHW/OIHW layout;
* ``unroll``: a Python loop of G convolutions inside the program;
* ``blockdiag``: one dense convolution over the G inputs stacked along channels with a
  block-diagonal kernel (G times the FLOPs, no groups; written out here, not a library option);
* ``slices``: ``convs.slices_conv`` (image patches from strided slices x kernel, no convolution)
  under vmap (``ExecutionConfig.conv_impl='slices'``).

The whole network (``model1 fwd+bwd``) is timed with each ``--model-impls`` (``conv_impl``), with
``pool_s2d`` as the execution plan resolves it for K trials in one program.

Usage: ``python benchmarks/bench_conv_parts.py --gs 2,16`` (CPU: small ``--batch``).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from s2e_jax import convs  # noqa: E402
from s2e_jax import execution as execution_lib  # noqa: E402
from s2e_jax import models as models_lib  # noqa: E402
from s2e_jax.config import ExecutionConfig  # noqa: E402

DN = ("NHWC", "HWIO", "NHWC")
LAYERS = {"conv0": (32, 3, 6), "conv1": (14, 6, 16)}  # Model 1: input size, in, out channels (5x5 VALID)


def conv_nhwc(x, w):
    return jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=DN)


def conv_nchw(x, w):
    y = jax.lax.conv_general_dilated(x.transpose(0, 3, 1, 2), w.transpose(3, 2, 0, 1), (1, 1), "VALID",
                                     dimension_numbers=("NCHW", "OIHW", "NCHW"))
    return y.transpose(0, 2, 3, 1)


def stack_channels(xs):
    """[G, B, H, W, C] -> [B, H, W, G*C]: the G inputs side by side along channels."""
    g, b, h, w, c = xs.shape
    return xs.transpose(1, 2, 3, 0, 4).reshape(b, h, w, g * c)


def unstack_channels(y, g):
    """[B, H, W, G*C] -> [G, B, H, W, C]."""
    b, h, w, gc = y.shape
    return y.reshape(b, h, w, g, gc // g).transpose(3, 0, 1, 2, 4)


def blockdiag_kernel(ws):
    """[G, kh, kw, Ci, Co] -> [kh, kw, G*Ci, G*Co]: kernel g on the diagonal block g."""
    g, kh, kw, ci, co = ws.shape
    eye = jnp.eye(g, dtype=ws.dtype)
    return jnp.einsum("gh,gklio->klgiho", eye, ws).reshape(kh, kw, g * ci, g * co)


def grouped(way):
    """f(xs [G,B,H,W,Ci], ws [G,5,5,Ci,Co]) -> ys [G,B,H',W',Co]."""
    if way == "vmap":
        return jax.vmap(conv_nhwc)
    if way == "vmap_nchw":
        return jax.vmap(conv_nchw)
    if way == "slices":
        return jax.vmap(lambda x, w: convs.slices_conv(x, w, (1, 1), "VALID", dimension_numbers=DN))
    if way == "unroll":
        return lambda xs, ws: jnp.stack([conv_nhwc(xs[g], ws[g]) for g in range(xs.shape[0])])
    if way == "blockdiag":
        return lambda xs, ws: unstack_channels(conv_nhwc(stack_channels(xs), blockdiag_kernel(ws)), xs.shape[0])
    raise ValueError(way)


def scan_time(step, carry, iters, repeats):
    @jax.jit
    def run(c):
        return jax.lax.scan(lambda c, _: (step(c), None), c, None, length=iters)[0]

    out = jax.block_until_ready(run(carry))  # compile + warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(run(out))
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / iters


def layer_step(way, xs):
    f = grouped(way)

    def step(c):
        ws, xs_ = c
        (gw, gx) = jax.grad(lambda w, x: jnp.sum(f(x, w) ** 2), argnums=(0, 1))(ws, xs_)
        return ws - 1e-9 * gw, xs_ - 1e-9 * gx
    return step


def model_step(g, batch, x, impl="xla"):
    # pool_s2d as K trials in one program run it (a vmapped lax.scan)
    plan = execution_lib.plan(ExecutionConfig(conv_impl=impl), "model1", trials="one_program")
    model = models_lib.get_model("model1", 10, conv_impl=impl, pool_s2d=plan.pool_s2d)
    keys = jax.random.split(jax.random.PRNGKey(0), g)
    params = jax.vmap(lambda k: model.init({"params": k}, x[0, :1])["params"])(keys)

    def loss(p):
        logits = jax.vmap(lambda pp, xx: model.apply({"params": pp}, xx))(p, x)
        return jnp.sum(logits ** 2)

    def step(p):
        gr = jax.grad(loss)(p)
        return jax.tree_util.tree_map(lambda a, b: a - 1e-9 * b, p, gr)
    return step, params


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gs", default="2,16", help="comma list of G (networks: trials x 2)")
    p.add_argument("--ways", default="vmap,vmap_nchw,unroll,blockdiag,slices")
    p.add_argument("--model-impls", default="xla,slices", help="conv_impl of the whole-network rows")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)
    gs = [int(x) for x in a.gs.split(",")]
    ways = a.ways.split(",")
    dev = jax.devices()[0]
    print(f"Model 1 convolutions, forward + backward, G networks, batch {a.batch}; jax {jax.__version__} on "
          f"{jax.default_backend()}: {getattr(dev, 'device_kind', dev)}", flush=True)
    rows = []
    rng = np.random.default_rng(0)
    for g in gs:
        for name, (hw, ci, co) in LAYERS.items():
            xs = jnp.asarray(rng.standard_normal((g, a.batch, hw, hw, ci)), jnp.float32)
            ws = jnp.asarray(rng.standard_normal((g, 5, 5, ci, co)) * 0.1, jnp.float32)
            for way in ways:
                t = scan_time(layer_step(way, xs), (ws, xs), a.iters, a.repeats)
                rows.append((g, name, way, t))
                print(f"  G={g:3d} {name} {way:10s} {t * 1e6:9.1f} us", flush=True)
        x = jnp.asarray(rng.standard_normal((g, a.batch, 32, 32, 3)), jnp.float32)
        for impl in a.model_impls.split(","):
            step, params = model_step(g, a.batch, x, impl)
            t = scan_time(step, params, a.iters, a.repeats)
            rows.append((g, "model1 fwd+bwd", f"vmap, conv_impl={impl}", t))
            print(f"  G={g:3d} model1 fwd+bwd vmap conv_impl={impl} {t * 1e6:9.1f} us", flush=True)
    print("\n| G | part | way | us per iteration | us per network |\n|---|---|---|---|---|")
    for g, name, way, t in rows:
        print(f"| {g} | {name} | {way} | {t * 1e6:.1f} | {t * 1e6 / g:.1f} |")


if __name__ == "__main__":
    main()
