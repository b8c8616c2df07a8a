#!/usr/bin/env python
"""Model 1's two conv + 2x2 max-pool layers, alone: XLA's convolution then the pool (``pool_s2d``
off), the same layer as one space-to-depth convolution (``convs.conv_max_pool``, ``pool_s2d`` on),
and PyTorch's ``conv2d`` + ``max_pool2d``; one table.

Layers (batch ``--batch``, 5x5 VALID convolutions, float32):

* ``conv0``: the first layer of both networks of a Co-teaching step, fused (what ``fused_stem``
  runs): 32x32x3 -> 12 channels -> 14x14x12;
* ``conv1``: one network's second layer: 14x14x6 -> 16 channels -> 5x5x16.

Parts, each one jitted program (PyTorch: eager autograd) fed the same arrays every call: ``fwd``
(forward), ``fwd+dW`` (forward and the kernel's gradient: what training needs of ``conv0``), and
``fwd+dW+dx`` (also the input's gradient: what training needs of ``conv1``). Time: median of
``--repeats`` calls after a warm-up, all forms of a part interleaved call by call.

Usage::

    python benchmarks/bench_model1_layers.py --out benchmarks/cpu_model1/layers.md
    python benchmarks/bench_model1_layers.py --repeats 3 --batch 16 --no-torch   # smoke test
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from s2e_jax import xla_cpu  # noqa: E402

xla_cpu.configure()  # YNNPACK convolutions on XLA's CPU backend, as the entry points run

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from s2e_jax import models as models_lib  # noqa: E402

LAYERS = {"conv0": (32, 3, 12), "conv1": (14, 6, 16)}  # input size, in, out channels
PARTS = ("fwd", "fwd+dW", "fwd+dW+dx")


def jax_part(part, s2d):
    layer = lambda x, w, b: models_lib.conv_pool(x, w, b, "VALID", "xla", s2d)  # noqa: E731

    if part == "fwd":
        return jax.jit(layer)
    def grads(x, w, b, g):
        if part == "fwd+dW":
            y, vjp = jax.vjp(lambda w_: layer(x, w_, b), w)
        else:
            y, vjp = jax.vjp(lambda x_, w_: layer(x_, w_, b), x, w)
        return y, vjp(g)
    return jax.jit(grads)


def torch_part(part, x, w, b, g):
    import torch
    import torch.nn.functional as F

    def run():
        xx = x.detach().requires_grad_(part == "fwd+dW+dx")
        ww = w.detach().requires_grad_(part != "fwd")
        y = F.max_pool2d(F.conv2d(xx, ww, b), 2)
        if part != "fwd":
            y.backward(g)
        return y

    if part == "fwd":
        def fwd():
            with torch.no_grad():
                return F.max_pool2d(F.conv2d(x, w, b), 2)
        return fwd
    return run


def timed(fn, args, block):
    t0 = time.perf_counter()
    block(fn(*args))
    return time.perf_counter() - t0


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=21, help="timed calls per form and part (median reported)")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch")
    p.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--out", default=None, help="a .md file for the table")
    a = p.parse_args(argv)
    if a.batch < 1 or a.repeats < 1:
        p.error("--batch and --repeats must be >= 1")
    torch = None
    if not a.no_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed; JAX only", file=sys.stderr)
        else:
            if a.torch_threads:
                torch.set_num_threads(a.torch_threads)
    rng = np.random.default_rng(0)
    rows = []
    for name, (h, ci, co) in LAYERS.items():
        x = rng.standard_normal((a.batch, h, h, ci)).astype(np.float32)
        w = (rng.standard_normal((5, 5, ci, co)) / np.sqrt(25 * ci)).astype(np.float32)
        b = (rng.standard_normal(co) * 0.1).astype(np.float32)
        ho = (h - 4) // 2
        g = rng.standard_normal((a.batch, ho, ho, co)).astype(np.float32)
        jx = tuple(jnp.asarray(v) for v in (x, w, b, g))
        for part in PARTS:
            forms = {}
            for label, s2d in (("XLA conv, then pool", False), ("space-to-depth (pool_s2d)", True)):
                fn = jax_part(part, s2d)
                args = jx[:3] if part == "fwd" else jx
                forms[label] = (fn, args, jax.block_until_ready)
            if torch is not None:
                tx = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
                tw = torch.from_numpy(w.transpose(3, 2, 0, 1).copy())
                tg = torch.from_numpy(g.transpose(0, 3, 1, 2).copy())
                forms["PyTorch conv2d + max_pool2d"] = (torch_part(part, tx, tw, torch.from_numpy(b), tg), (),
                                                         lambda r: None)
            times = {k: [] for k in forms}
            for k, (fn, args, block) in forms.items():
                timed(fn, args, block)  # warm-up (compile)
            for _ in range(a.repeats):
                for k, (fn, args, block) in forms.items():
                    times[k].append(timed(fn, args, block))
            base = statistics.median(times["XLA conv, then pool"])
            for k, ts in times.items():
                med = statistics.median(ts)
                rows.append((name, part, k, med * 1e3, base / med))
                print(f"  {name} {part:10s} {k:28s} {med * 1e3:8.2f} ms  x{base / med:5.2f}", flush=True)
    header = (f"Model 1's conv + 2x2 max-pool layers alone, batch {a.batch}, float32; jax {jax.__version__} "
              f"({jax.default_backend()}"
              + (f", YNNPACK {'on' if xla_cpu.active() else 'off'}" if jax.default_backend() == "cpu" else "")
              + ")" + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch is not None else "")
              + f"; median of {a.repeats} interleaved calls")
    lines = [header, "", "| layer | part | form | ms | speed vs XLA conv, then pool |", "|---|---|---|---:|---:|"]
    lines += [f"| {n} | {pt} | {k} | {ms:.2f} | {r:.2f} |" for n, pt, k, ms, r in rows]
    lines += ["", "conv0: both networks' first layers fused (32x32x3 -> 12 channels); conv1: one network's "
              "second layer (14x14x6 -> 16). fwd+dW: forward and kernel gradient (what training needs of "
              "conv0); fwd+dW+dx: also the input gradient (conv1)."]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)
        print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
