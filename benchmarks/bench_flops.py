#!/usr/bin/env python
"""The floor: FLOPs of one Co-teaching training epoch per model (counted by XLA), the FLOP/s the
trainer achieves, and its fraction of the device's peak measured in the same run.

Per model (``--models``: the MLP on MNIST shapes, Models 1-3 on CIFAR shapes, batch 128, 2 networks):

* **FLOPs per epoch**, from XLA's own count (``jax.jit(...).lower(...).compile().cost_analysis()
  ["flops"]``) of the trainer's pure epoch (``prep.trainer.epoch``), with the timed run's execution
  plan. XLA's cost analysis counts a loop body once, whatever its trip count, so the epoch is counted
  twice on trainings of one step (128 images): with one validation and one test image (``step``: the
  train step — forward of both networks, per-sample losses, small-loss selection, backward, Adam — plus
  the epoch's setup), and with ``--n-eval`` of each in one evaluation chunk (the difference: the
  evaluation). FLOPs per epoch = ``steps x step + evaluation``. ``flops_per_image``: per training
  image (both networks, forward + backward), for comparison with a paper's count. These are the FLOPs
  XLA executes: Model 1 with ``pool_s2d`` (the plan's default except inside ``lax.scan`` on the CPU
  with XLA's convolutions) computes its convolutions space-to-depth, 1.44x the arithmetic of the
  plain layers in less time.
* **achieved FLOP/s** = FLOPs per epoch / the median seconds of a timed epoch of ``Trainer.run_epoch``
  with the execution plan's defaults (``s2e_jax.execution.plan``; ``--net-form``/``--driver``
  override), after one warm-up epoch.
* **peak**: the best FLOP/s of a large jitted ``float32`` matmul (``--peak-n``; default 2048 on a
  CPU, 8192 on a GPU/TPU; ``2 n^3`` FLOPs each) measured in the same run, with the default matmul
  precision (what the models use); ``--precision bfloat16`` measures a bf16 matmul and runs the models
  in bf16. ``fraction`` = achieved / peak.

Data: random uint8 of the model's shape (speed does not depend on the values), ``--steps`` steps per
epoch (``N`` or ``MODEL=N,...``), ``--n-eval`` validation and test images each.

Usage::

    python benchmarks/bench_flops.py                                    # every model, default sizes
    python benchmarks/bench_flops.py --models mlp,model1 --steps mlp=40,model1=10 --repeats 2
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from s2e_jax import xla_cpu  # noqa: E402

xla_cpu.configure()  # YNNPACK convolutions on XLA's CPU backend, before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from s2e_jax import data as data_lib  # noqa: E402
from s2e_jax import models as models_lib  # noqa: E402
from s2e_jax import train as train_lib  # noqa: E402
from s2e_jax.config import PRECISIONS, ExecutionConfig, TrainConfig  # noqa: E402

BATCH = 128
MODELS = ("mlp", "model1", "model2", "model3")
SHAPES = dict(mlp=(28, 28, 1), model1=(32, 32, 3), model2=(32, 32, 3), model3=(32, 32, 3))
CLASSES = dict(mlp=10, model1=10, model2=100, model3=10)
DEFAULT_STEPS = dict(mlp=100, model1=20, model2=4, model3=2)
GPU_STEPS = dict(mlp=390, model1=390, model2=100, model3=40)


def _flops(compiled) -> float:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):  # older jax: one dict per program
        ca = ca[0] if ca else {}
    return float((ca or {}).get("flops", float("nan")))


def make_data(model, steps, n_eval, seed=0):
    """A clean random ``data.Dataset`` of the model's shape (``prepare`` adds the label noise)."""
    rng = np.random.default_rng(seed)
    shape, nc = SHAPES[model], CLASSES[model]
    n = steps * BATCH
    img = lambda k: rng.integers(0, 256, (k,) + shape, dtype=np.uint8)  # noqa: E731
    lab = lambda k: rng.integers(0, nc, k).astype(np.int32)  # noqa: E731
    y = lab(n)
    return data_lib.Dataset(f"random{shape}", img(n), y, y.copy(), img(n_eval), lab(n_eval), img(n_eval),
                            lab(n_eval), nc)


def build(model, steps, n_eval, form, driver, precision):
    """``(prep, carry)``: a Co-teaching training of ``steps`` steps per epoch, as ``train.train`` builds it;
    one evaluation chunk per split (``eval_batch_size = n_eval``)."""
    ex = ExecutionConfig(net_form=form or "auto", driver=driver or "auto", precision=precision,
                         eval_batch_size=n_eval)
    cfg = TrainConfig(dataset=f"random-{model}", model=model, method="coteaching", noise="symmetric",
                      noise_rate=0.2, epochs=200, batch_size=BATCH, seed=0, progress=False, execution=ex)
    prep = train_lib.prepare(cfg, dataset=make_data(model, steps, n_eval))
    return prep, train_lib.init_carry(prep, 0)


def _epoch_program_flops(model, n_eval, form, driver, precision) -> float:
    """XLA's FLOP count of the pure epoch of a one-step training with ``n_eval`` val and test images."""
    prep, carry = build(model, 1, n_eval, form, driver, precision)
    return _flops(jax.jit(prep.trainer.epoch).lower(carry, prep.data).compile())


def epoch_flops(model, steps, n_eval, form, driver, precision):
    """``(FLOPs of one epoch, FLOPs of one train step)``: steps x step + the evaluation (see the module
    docstring; the step's count includes the epoch's setup and two one-image evaluations, < 1%)."""
    f_step = _epoch_program_flops(model, 1, form, driver, precision)
    f_eval = _epoch_program_flops(model, n_eval, form, driver, precision) - f_step
    return steps * f_step + f_eval, f_step


def time_epochs(prep, carry, repeats):
    tr, data = prep.trainer, prep.data
    carry, m = tr.run_epoch(carry, data)  # warm-up (compile)
    jax.block_until_ready((carry, m))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        carry, m = tr.run_epoch(carry, data)
        jax.block_until_ready((carry, m))
        times.append(time.perf_counter() - t0)
    if not np.all(np.isfinite(np.asarray(m["train_loss"]))):
        raise RuntimeError("non-finite training loss")
    return statistics.median(times)


def peak_flops(n, precision, repeats=5):
    """Best FLOP/s of a jitted n x n matmul chain (``2 n^3`` FLOPs per product)."""
    dt = jnp.bfloat16 if precision == "bfloat16" else jnp.float32
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dt)
    b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dt) / np.sqrt(n)
    reps = 4

    @jax.jit
    def f(a, b):
        for _ in range(reps):
            a = a @ b
        return a

    jax.block_until_ready(f(a, b))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(a, b))
        best = min(best, time.perf_counter() - t0)
    return reps * 2 * n**3 / best


COLUMNS = ("model", "params", "net_form", "driver", "precision", "steps", "flops_per_step", "flops_per_epoch",
           "flops_per_image", "epoch_s", "achieved_gflops", "peak_gflops", "fraction")


def _fmt(v):
    if isinstance(v, float):
        if v != v:
            return "-"
        if abs(v) >= 1e6:
            return f"{v:.3e}"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def markdown(rows):
    out = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    return "\n".join(out + ["| " + " | ".join(_fmt(r.get(c, float("nan"))) for c in COLUMNS) + " |"
                            for r in rows])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(MODELS), help="comma list of: " + ", ".join(MODELS))
    p.add_argument("--steps", default=None, help="steps per epoch: N or MODEL=N,... (default: mlp 100, "
                                                 "model1 20, model2 4, model3 2; on GPU/TPU mlp 390, "
                                                 "model1 390, model2 100, model3 40)")
    p.add_argument("--repeats", type=int, default=2, help="timed epochs, median (default 2)")
    p.add_argument("--n-eval", type=int, default=256, help="validation and test images each (default 256)")
    p.add_argument("--net-form", default=None, help="override the execution plan's net_form (vmap | fused)")
    p.add_argument("--driver", default=None, help="override the execution plan's driver (scan | loop)")
    p.add_argument("--precision", default="float32", help="float32 | bfloat16 (models and peak matmul)")
    p.add_argument("--peak-n", type=int, default=None, help="matmul size of the peak (default 2048 CPU, 8192 GPU)")
    p.add_argument("--count-only", default="", help="comma list of models whose FLOPs are counted but whose "
                                                     "epochs are not timed (e.g. model3 on a small CPU)")
    p.add_argument("--out", default=None, help="write the table to this markdown file")
    args = p.parse_args(argv)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or any(m not in MODELS for m in args.models):
        p.error(f"--models: expected a comma list of {', '.join(MODELS)}")
    from bench_train import parse_steps

    # GPU/TPU: enough steps that an epoch is not mostly launch and evaluation time (on an H200 the
    # CPU defaults made epochs of 7-25 ms)
    base = DEFAULT_STEPS if jax.default_backend() == "cpu" else GPU_STEPS
    steps = dict(base, **parse_steps(args.steps or None, MODELS, p.error))
    if min(steps.values()) < 1 or args.repeats < 1 or args.n_eval < 1:
        p.error("--steps, --repeats and --n-eval must be >= 1")
    args.steps = steps
    args.count_only = {m.strip() for m in args.count_only.split(",") if m.strip()}
    if args.precision not in PRECISIONS:
        p.error(f"--precision: expected one of {', '.join(PRECISIONS)}")
    return args


def main(argv=None):
    args = parse_args(argv)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    n = args.peak_n or (2048 if jax.default_backend() == "cpu" else 8192)
    peak = peak_flops(n, args.precision)
    print(f"peak ({args.precision} {n}x{n} matmul): {peak / 1e9:.1f} GFLOP/s", flush=True)
    rows = []
    for model in args.models:
        prep, carry = build(model, args.steps[model], args.n_eval, args.net_form, args.driver, args.precision)
        flops, f_step = epoch_flops(model, args.steps[model], args.n_eval, args.net_form, args.driver,
                                    args.precision)
        sec = float("nan") if model in args.count_only else time_epochs(prep, carry, args.repeats)
        achieved = flops / sec
        rows.append(dict(model=model, params=models_lib.count_params(jax.tree_util.tree_map(lambda a: a[0],
                                                                                          carry.params)),
                         net_form=prep.plan.net_form, driver=prep.plan.driver, precision=args.precision,
                         steps=args.steps[model], flops_per_step=f_step, flops_per_epoch=flops,
                         flops_per_image=f_step / BATCH, epoch_s=sec, achieved_gflops=achieved / 1e9,
                         peak_gflops=peak / 1e9, fraction=achieved / peak))
        print(f"  {model}: {flops:.3e} FLOPs/epoch, {sec:.2f} s/epoch, {achieved / 1e9:.2f} GFLOP/s "
              f"({achieved / peak:.1%} of peak)", flush=True)
    peak_end = peak_flops(n, args.precision)
    load_after = os.getloadavg()
    dev = jax.devices()[0]
    header = (f"FLOPs of a Co-teaching epoch (batch {BATCH}, 2 networks, Adam) and achieved FLOP/s; jax "
              f"{jax.__version__} ({jax.default_backend()}: {dev.device_kind}), {os.cpu_count()} CPU cores "
              f"({platform.machine()}); load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
              f"peak {peak / 1e9:.1f} GFLOP/s at the start, {peak_end / 1e9:.1f} at the end; "
              f"total {time.perf_counter() - t_start:.0f} s")
    notes = [
        "- flops_*: XLA's cost analysis of the compiled epoch (train step x steps + evaluation + setup); "
        "flops_per_image = train-step FLOPs / batch (2 networks, forward + backward + Adam).",
        f"- achieved = FLOPs per epoch / median epoch seconds ({args.repeats} timed after one warm-up); "
        f"peak = best of a jitted {n}x{n} {args.precision} matmul chain, measured at the start of the run.",
    ]
    table = markdown(rows)
    print()
    print(header)
    print()
    print(table)
    print()
    print("\n".join(notes))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(header + "\n\n" + table + "\n\n" + "\n".join(notes) + "\n")
    return rows


if __name__ == "__main__":
    main()
