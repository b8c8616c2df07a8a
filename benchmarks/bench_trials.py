#!/usr/bin/env python
"""Trials in one program: K Co-teaching trainings as one vmapped program against the same K trainings
run one after another, in the same run; trainings per second and the ratio, for the MLP and Model 1.

What is compared, per model and per K (``--ks``, default 1, 2, 4, 8, 16, 32):

* ``one program``: ``s2e_jax.parallel.run_trials(prep, scheds [K, P], seeds [K])`` (what
  ``train_trials(..., one_program=True)`` runs) with ``net_form=vmap, driver=scan``: the K trainings
  are one jitted program per epoch, the trial axis sharded over every device (``shard_map``) and
  ``jax.vmap`` of the trainer's epoch (a ``lax.scan`` over the batches) on each, split into waves
  when over the memory budget (``--memory-budget-mib``): what a schedule search runs on a GPU.
* ``sequential``: the same K trainings one after another with the backend's default execution
  (``s2e_jax.execution.plan``): per training ``init_carry`` then ``prep.trainer.run_epoch`` once
  per epoch, metrics fetched at the end of each training (what ``train_trials`` does with
  ``one_program=False``, its CPU default). On the CPU that is ``vmap/scan`` for the MLP and
  ``fused/loop`` for Model 1 (conv nets inside ``lax.scan`` hit jax-ml/jax#12868 on XLA's CPU
  backend); on a GPU ``vmap/scan`` for both. ``--sequential default,vmap/scan`` adds more
  sequential executions (e.g. the one program's own form run one training at a time, which
  separates the effect of vmapping trials from the form).

Every training: Co-teaching (2 networks, R(t) of eq. (1) with tau = 0.5, t_k = 10, c = 1), symmetric
noise 0.5, batch 128 (drop_last), Adam lr 1e-3, ``--epochs`` epochs (default 2; the same for every K
and both sides), trial k uses seed k (network init, shuffling, dropout); all trials share the noisy
labels, as in a search. Every epoch ends with an evaluation of both networks on the validation and
test splits (kept small). Data, built as ``s2e_jax.data.Dataset`` objects and passed to
``prepare(TrainConfig(...), dataset=ds)``:

* ``mlp``: MNIST from ``--mnist`` (default ``/work/shared/data/mnist.npz``, read with
  ``s2e_jax.data.load_dataset``) when present: the first ``--mlp-train`` (6,000) training images and
  the first ``--mlp-eval`` (500) of the validation and of the test half; else random uint8 28x28x1.
* ``model1``: random uint8 CIFAR-shaped data (32x32x3): ``--model1-train`` (2,000) training images,
  ``--model1-eval`` (256) validation and test images (speed does not depend on the pixel values).

Timing: each (execution, K) is warmed up first by one call of the same shapes with 1 epoch (the
sequential warm-up is one training, shared by every K: its programs do not depend on K); then the
K trainings of ``--epochs`` epochs are timed, ended by the host copy of their metrics (``--repeats``:
median of that many timed calls). ``trainings_per_s`` = K / seconds (``trainings_per_h`` x 3600);
``ratio`` = trainings/s / the reference sequential trainings/s at the same K (the first of
``--sequential``, by default the plan's default; > 1: faster than one after another).
``compile_s``: the seconds JAX spent tracing, lowering and compiling during the warm-up call
(``jax.monitoring`` compile events; the sequential programs are compiled once for every K, the
one program's first K includes ``init``); without those events, warm-up minus one timed epoch.
``run_trials`` pads K (to devices x a power of two); such rows say how many trainings ran, and
trainings/s counts only the K asked for. ``max_dacc``: the largest difference in final test
accuracy (any trial, any network) between the one program and the reference sequential run (a
sanity check: the same trainings, equal up to float reassociation). Memory: ``program_mib`` is XLA's
compiled footprint per device of the main program (``Compiled.memory_analysis()``: arguments +
outputs + scratch - donated; the one program's epoch, the sequential epoch (scan) or step (loop)
program), ``mib_per_trial`` the one program's per-trial share ((program - shared data) / trials per
device; sequential: the whole program); ``peak_mib`` is the process' peak so far (CPU:
``ru_maxrss``; GPU: ``peak_bytes_in_use``), so it only grows down the table.

On XLA's CPU backend the vmapped conv net is slow and gets slower per training as K grows: the kernel
gradient of a vmapped convolution is a ``batch_group_count`` convolution whose cost per group grows
with the number of groups (2K: trials x networks), on top of jax-ml/jax#12868 (convs inside
``lax.scan``). The MLP is compute-bound on a few CPU cores, so vmapping trials gains little there; the
one program is meant for GPUs, where one small network leaves most of the chip idle: on an H200, at
200 steps per epoch, 8 trials in one program gave 4.2x (MLP) and 1.97x (Model 1) the trainings/h of 8
in sequence (benchmarks/gpu_h200/followup/); on a GPU this script trains on 25,600 images by default.

Budget: a cell whose predicted time (compile + warm-up + timed, extrapolated linearly in K from the
previous K of the same execution) exceeds ``--budget`` seconds (default 90) is skipped and marked so;
on the CPU this hits the vmapped conv net (``--budget inf`` runs everything).

Usage::

    python benchmarks/bench_trials.py                     # default, ~4-6 minutes on 2 CPU cores
    python benchmarks/bench_trials.py --quick             # smoke test (K = 1, 2; 1 epoch; tiny data)
    python benchmarks/bench_trials.py --models mlp --ks 1,2,4,8,16 --epochs 3 --out /tmp/bench_trials
    python benchmarks/bench_trials.py --models model1 --sequential default,vmap/scan --budget inf
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import resource
import signal
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
from s2e_jax import execution as execution_lib  # noqa: E402
from s2e_jax import parallel  # noqa: E402
from s2e_jax import train as train_lib  # noqa: E402
from s2e_jax.config import CONV_IMPLS, ExecutionConfig, TrainConfig  # noqa: E402

BATCH = 128
NUM_CLASSES = 10
NOISE, NOISE_RATE = "symmetric", 0.5
DEFAULT_MNIST = "/work/shared/data/mnist.npz"
FORMS = ("vmap", "fused")
DRIVERS = ("scan", "loop")


# ------------------------------------------------------------------------------------------ data
def _random_dataset(name, shape, n_train, n_eval, rng):
    img = lambda n: rng.integers(0, 256, (n,) + shape, dtype=np.uint8)  # noqa: E731
    lab = lambda n: rng.integers(0, NUM_CLASSES, n).astype(np.int32)  # noqa: E731
    y = lab(n_train)
    return data_lib.Dataset(name=name, x_train=img(n_train), y_train=y, y_train_clean=y.copy(),
                            x_val=img(n_eval), y_val=lab(n_eval), x_test=img(n_eval), y_test=lab(n_eval),
                            num_classes=NUM_CLASSES)


def make_dataset(model, n_train, n_eval, mnist_path, seed=0):
    """A clean ``data.Dataset`` (``prepare`` adds the label noise) and a description of its source."""
    rng = np.random.default_rng(seed)
    if model == "mlp" and mnist_path and os.path.isfile(mnist_path):
        full = data_lib.load_dataset(mnist_path)
        if len(full.y_train) >= n_train and min(len(full.y_val), len(full.y_test)) >= n_eval:
            ds = data_lib.Dataset(
                name="mnist", x_train=full.x_train[:n_train], y_train=full.y_train[:n_train],
                y_train_clean=full.y_train_clean[:n_train], x_val=full.x_val[:n_eval], y_val=full.y_val[:n_eval],
                x_test=full.x_test[:n_eval], y_test=full.y_test[:n_eval], num_classes=full.num_classes)
            return ds, f"MNIST {n_train} train ({mnist_path})"
    shape = (28, 28, 1) if model == "mlp" else (32, 32, 3)
    desc = "x".join(map(str, shape))
    return _random_dataset(f"random{desc}", shape, n_train, n_eval, rng), f"random uint8 {desc}"


# ------------------------------------------------------------------------------------------ measuring
def peak_mib():
    """The process' peak memory so far: device peak bytes in use (GPU/TPU), else peak RSS (CPU)."""
    try:
        stats = jax.devices()[0].memory_stats() or {}
    except Exception:  # noqa: BLE001 (backends without memory stats)
        stats = {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return kib / (2**20 if sys.platform == "darwin" else 2**10)


def _stack(carries):
    return jax.tree_util.tree_map(lambda *a: jnp.stack(a), *carries)


COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")
_compile_seconds = [float("nan")]  # NaN: jax.monitoring not available, compile_s falls back to an estimate


def _on_event(event, seconds, **_):
    if event in COMPILE_EVENTS:
        _compile_seconds[0] += seconds


def listen_to_compiles():
    """Sum JAX's trace / lowering / XLA compile durations from here on (``jax.monitoring``)."""
    try:
        jax.monitoring.register_event_duration_secs_listener(_on_event)
    except AttributeError:
        return
    _compile_seconds[0] = 0.0


def warm_up(fn):
    """Run ``fn()`` (the warm-up call); return ``(seconds, compile seconds)``: JAX's trace + lowering +
    XLA compile events during the call (NaN if unavailable)."""
    c0, t0 = _compile_seconds[0], time.perf_counter()
    fn()
    return time.perf_counter() - t0, _compile_seconds[0] - c0


def program_mib(prep, k=None):
    """``(XLA scratch MiB, compiled footprint MiB)`` of an epoch program (``Compiled.memory_analysis()``):
    ``k`` given: the K-trial epoch on one device (``jax.vmap`` of the one-program trainer's epoch);
    else the trainer's epoch as one ``lax.scan`` program (for the ``loop`` driver that is the epoch's
    program, not the step program that driver runs). NaN when it cannot be had."""
    try:
        if k is not None:
            carry = _stack([train_lib.init_carry(prep, s) for s in range(k)])
            fn = jax.jit(jax.vmap(prep.trainer_for(True).epoch, in_axes=(0, None)))
        else:
            carry, fn = train_lib.init_carry(prep, 0), jax.jit(prep.trainer.epoch)
        compiled = fn.lower(carry, prep.data).compile()
        return (compiled.memory_analysis().temp_size_in_bytes / 2**20,
                (parallel.footprint_bytes(compiled) or float("nan")) / 2**20)
    except Exception:  # noqa: BLE001 (an optional number)
        return float("nan"), float("nan")


_last_report = [None]


def one_program(prep, scheds, seeds, epochs):
    """K trainings as one program: ``s2e_jax.parallel.run_trials`` (what ``train_trials`` with
    ``one_program=True`` runs, its default on GPU/TPU): the trial axis sharded over every device,
    ``vmap`` of the scan epoch on each. Final test accuracy [K, N]; the run's report is kept."""
    m, _last_report[0] = parallel.run_trials(prep, scheds, seeds, epochs=epochs,
                                             memory_budget_mib=_budget_mib[0])
    return np.asarray(m["test_acc"])[:, -1]


_budget_mib = [None]


def sequential(prep, scheds, seeds, epochs):
    """The same K trainings one after another with ``prep``'s execution (``train_trials``' loop
    branch for any driver): final test accuracy [K, N]."""
    tr, out = prep.trainer, []
    for s, sc in zip(seeds, scheds):
        carry, rows = train_lib.init_carry(prep, int(s), sc), []
        for _ in range(epochs):
            carry, m = tr.run_epoch(carry, prep.data)
            rows.append(m["test_acc"])
        out.append(np.asarray(jax.device_get(rows))[-1])  # one host copy per training
    return np.stack(out)


def timed(fn, repeats):
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


# ------------------------------------------------------------------------------------------ the run
@dataclasses.dataclass
class Execution:
    label: str      # "one program" | "sequential"
    form: str
    driver: str
    default: bool   # the backend's default execution (``execution.plan``'s)
    conv: str = "-"  # convolutions (``ExecutionConfig.conv_impl``; "-" for the MLP)
    prep: object = None
    warm_s: float = float("nan")   # sequential: the shared warm-up (one training, 1 epoch)
    compile_s: float = float("nan")  # sequential: compile seconds of that warm-up
    last: tuple = None             # (K, seconds, compile_s) of the last measured K


def conv_spec(token):
    """``--conv-impls`` token -> (ExecutionConfig.conv_impl, ExecutionConfig.pool_s2d): IMPL, IMPL+s2d
    (Model 1's conv + pool as one space-to-depth convolution) or IMPL-s2d (not); "-" (the MLP): auto."""
    if token == "-":
        return "auto", "auto"
    for suffix, s2d in (("+s2d", "on"), ("-s2d", "off")):
        if token.endswith(suffix):
            return token[: -len(suffix)], s2d
    return token, "auto"


def plan_of(e, model):
    """The execution plan ``e`` runs: one training's (sequential) or the K trials' (one program)."""
    ex = e.prep.config.execution
    return execution_lib.plan(ex, model, trials="one_program") if e.label == "one program" else e.prep.plan


def conv_label(e, model):
    """The conv column: the token, "auto" with what it resolved to."""
    if e.conv == "-" or not e.conv.startswith("auto"):
        return e.conv
    plan = plan_of(e, model)
    return f"auto ({plan.conv_impl}{'+s2d' if plan.pool_s2d else ''})"


def parse_execution(s):
    """``--sequential`` token -> (form, driver): 'default' (auto/auto) or FORM/DRIVER."""
    if s == "default":
        return "auto", "auto"
    form, _, driver = s.partition("/")
    if form not in FORMS or driver not in DRIVERS:
        raise ValueError(s)
    return form, driver


def bench_model(model, args, rows):
    n_train, n_eval = (args.mlp_train, args.mlp_eval) if model == "mlp" else (args.model1_train, args.model1_eval)
    ds, source = make_dataset(model, n_train, n_eval, args.mnist)
    steps = n_train // BATCH
    print(f"# {model} on {source}: {len(ds.y_train)} train ({steps} steps/epoch), {len(ds.y_val)} val + "
          f"{len(ds.y_test)} test; {args.epochs} epoch(s) per training", flush=True)
    base = TrainConfig(dataset=ds.name, model=model, method="coteaching", noise=NOISE, noise_rate=NOISE_RATE,
                       batch_size=BATCH, epochs=args.epochs, seed=0, progress=False)
    preps = {}

    def prep_of(form, driver, conv):
        key = (form, driver, conv)
        if key not in preps:
            impl, s2d = conv_spec(conv)
            ex = ExecutionConfig(net_form=form, driver=driver, conv_impl=impl, pool_s2d=s2d, eval_batch_size=n_eval)
            preps[key] = train_lib.prepare(base.replace(execution=ex), dataset=ds)
        return preps[key]

    default_plan = execution_lib.plan(ExecutionConfig(), model)
    seqs = []
    for s in args.sequential:
        form, driver = parse_execution(s)
        # Model 1's sequential runs use the plan's convolutions for that form and driver
        e = Execution("sequential", form, driver, conv="-" if model == "mlp" else "auto", default=False)
        e.prep = prep_of(form, driver, e.conv)
        e.form, e.driver = e.prep.plan.net_form, e.prep.plan.driver  # resolved
        e.default = (e.form, e.driver) == (default_plan.net_form, default_plan.driver)
        if all((x.form, x.driver, x.conv) != (e.form, e.driver, e.conv) for x in seqs):
            seqs.append(e)
    convs = ["-"] if model == "mlp" else args.conv_impls
    vms = [Execution("one program", "vmap", "scan", default=False, conv=c) for c in convs]
    for e in vms:
        e.prep = prep_of(e.form, e.driver, e.conv)
    sched = np.asarray(vms[0].prep.sched, np.float32)
    data_name = source.split(" (")[0]

    def row(e, k, **kw):
        r = dict(model=model, data=data_name, execution=e.label + (" (default)" if e.default else ""),
                 net_form=e.form, driver=e.driver, conv=conv_label(e, model), K=k, epochs=args.epochs, steps_per_epoch=steps)
        r.update(kw)
        rows.append(r)
        return r

    def predicted(e, k):
        """Seconds the (e, k) cell would take (linear in K from its last measured K); 0 if unknown."""
        if e.last is None:
            return 0.0
        k0, sec, comp = e.last
        per_training = sec / k0
        if e.label == "sequential":
            return per_training * k
        return comp + per_training * k * (1.0 + 1.0 / args.epochs)  # compile + warm-up epoch + timed

    results = {}
    for k in args.ks:
        scheds, seeds = np.tile(sched, (k, 1)), list(range(k))
        for e in seqs + vms:
            pred = predicted(e, k)
            if pred > args.budget:
                print(f"  {e.label} {e.form}/{e.driver} K={k}: skipped (predicted {pred:.0f} s > "
                      f"--budget {args.budget:g} s)", flush=True)
                row(e, k, note=f"skipped: predicted {pred:.0f} s > budget {args.budget:g} s")
                continue
            note = ""
            if e.label == "sequential":
                if math.isnan(e.warm_s):  # one training, 1 epoch: compiles everything every K uses
                    e.warm_s, e.compile_s = warm_up(lambda: sequential(e.prep, scheds[:1], [0], 1))
                    print(f"  warm-up {e.label} {e.form}/{e.driver}: {e.warm_s:.1f} s", flush=True)
                sec, acc = timed(lambda: sequential(e.prep, scheds, seeds, args.epochs), args.repeats)
                if math.isnan(e.compile_s):
                    e.compile_s = max(e.warm_s - sec / (k * args.epochs), 0.0)
                comp = e.compile_s
                temp, prog = program_mib(e.prep)
                mem = dict(devices=1, waves=k, program_mib=prog, mib_per_trial=prog)
            else:
                warm, comp = warm_up(lambda: one_program(e.prep, scheds, seeds, 1))
                print(f"  warm-up {e.label} K={k}: {warm:.1f} s", flush=True)
                sec, acc = timed(lambda: one_program(e.prep, scheds, seeds, args.epochs), args.repeats)
                rep = _last_report[0]
                if math.isnan(comp):
                    comp = max(warm - sec / args.epochs, 0.0)
                temp = float("nan")
                mib = lambda b: float("nan") if b is None else b / 2**20  # noqa: E731
                mem = dict(devices=rep.devices, waves=rep.waves, program_mib=mib(rep.program_bytes),
                           mib_per_trial=mib(rep.bytes_per_trial))
                if rep.padded != k:
                    note = f"ran {rep.padded} trainings (K padded to {rep.devices} device(s) x {rep.per_device})"
                if rep.waves > 1:
                    note += f"; {rep.waves} waves (memory budget {rep.budget_bytes / 2**20:.0f} MiB)"
            e.last = (k, sec, comp)
            results[e.label, e.form, e.driver, conv_label(e, model), k] = acc
            if not np.all(np.isfinite(acc)):
                raise RuntimeError(f"{model} {e.label} {e.form}/{e.driver} K={k}: non-finite test accuracy")
            r = row(e, k, seconds=sec, s_per_training=sec / k, trainings_per_s=k / sec,
                    trainings_per_h=3600.0 * k / sec, compile_s=comp, peak_mib=peak_mib(), xla_temp_mib=temp,
                    note=note, **mem)
            print(f"  {e.label} {e.form}/{e.driver} K={k}: {sec:.2f} s, {r['trainings_per_s']:.3g} trainings/s "
                  f"({r['trainings_per_h']:.0f}/h), compile {comp:.1f} s", flush=True)
    # ratios and the sanity check against the first sequential execution (the reference), per K
    d = seqs[0]
    for r in rows:
        if r["model"] != model or "seconds" not in r:
            continue
        ref = next((x for x in rows if x["model"] == model and x["K"] == r["K"] and "seconds" in x
                    and x["execution"].startswith("sequential") and (x["net_form"], x["driver"]) == (d.form, d.driver)),
                   None)
        if ref is not None:
            r["ratio"] = r["trainings_per_s"] / ref["trainings_per_s"]
        if r["execution"] == "one program" and (d.label, d.form, d.driver, conv_label(d, model), r["K"]) in results:
            a = results["one program", "vmap", "scan", r["conv"], r["K"]]
            b = results[d.label, d.form, d.driver, conv_label(d, model), r["K"]]
            r["max_dacc"] = float(np.abs(a - b).max())


# ------------------------------------------------------------------------------------------ report
COLUMNS = ("model", "data", "execution", "net_form", "driver", "conv", "K", "epochs", "steps_per_epoch", "seconds",
           "s_per_training", "trainings_per_s", "trainings_per_h", "ratio", "compile_s", "max_dacc",
           "devices", "waves", "program_mib", "mib_per_trial", "peak_mib", "note")


def _fmt(v):
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def _cells(rows):
    return [[_fmt(r.get(c, float("nan") if c != "note" else "")) for c in COLUMNS] for r in rows]


def render(rows):
    cells = _cells(rows)
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(COLUMNS)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths)).rstrip()  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(x) for x in cells])


def markdown(rows, header, notes):
    out = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(x) + " |" for x in _cells(rows)]
    return "\n".join(out + [""] + notes) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ks", default=None,
                   help="comma list of trial counts K (default 1,2,4,8,16,32; 1,2 with --quick)")
    p.add_argument("--memory-budget-mib", type=float, default=None,
                   help="per-device memory budget of the one program (default: parallel.memory_budget's); "
                        "a K over it runs in waves")
    p.add_argument("--models", default="mlp,model1", help="comma list of: mlp, model1")
    p.add_argument("--epochs", type=int, default=None, help="epochs per training (default 2; 1 with --quick)")
    p.add_argument("--conv-impls", default="auto",
                   help="comma list of auto, xla, slices: Model 1's one program once per convolution "
                        "implementation (ExecutionConfig.conv_impl; auto: the execution plan's; sequential "
                        "runs use auto); each may end in +s2d or -s2d: with or without Model 1's conv + pool "
                        "as one space-to-depth convolution (ExecutionConfig.pool_s2d; default: the plan's)")
    p.add_argument("--sequential", default="default",
                   help="comma list of sequential executions: 'default' (the execution plan's) and/or FORM/DRIVER, "
                        "e.g. default,vmap/scan; the first is the reference of ratio and max_dacc (default: default)")
    p.add_argument("--repeats", type=int, default=1, help="timed calls per cell, median reported (default 1)")
    p.add_argument("--budget", type=float, default=90.0,
                   help="skip a cell whose predicted seconds exceed this (default 90; 'inf' runs everything)")
    p.add_argument("--mnist", default=DEFAULT_MNIST, help="MNIST .npz for the mlp (random data if absent)")
    p.add_argument("--mlp-train", type=int, default=None, help="mlp training images (default 6000, 25600 on GPU/TPU; 1280 with --quick)")
    p.add_argument("--mlp-eval", type=int, default=None,
                   help="mlp val and test images each (default 500; 128 with --quick)")
    p.add_argument("--model1-train", type=int, default=None,
                   help="model1 training images (default 2000, 25600 on GPU/TPU; 512 with --quick)")
    p.add_argument("--model1-eval", type=int, default=None,
                   help="model1 val and test images each (default 256; 128 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: K = 1, 2, 1 epoch, small data")
    p.add_argument("--out", default=None, help="directory to write table.md and table.csv")
    args = p.parse_args(argv)
    q = args.quick
    defaults = dict(ks="1,2" if q else "1,2,4,8,16,32", epochs=1 if q else 2, mlp_train=1280 if q else 6000,
                    mlp_eval=128 if q else 500, model1_train=512 if q else 2000, model1_eval=128 if q else 256)
    if not q and jax.default_backend() != "cpu":
        # GPU/TPU: 200 steps per epoch, so that a training's fixed costs (init, dispatch, metrics to the
        # host; ~10-20 ms) weigh as little as in a real 200-epoch training. With 15-46 steps they halved
        # the one program's ratio on an H200 (benchmarks/gpu_h200/ against gpu_h200/followup/).
        defaults.update(mlp_train=25600, mlp_eval=512, model1_train=25600, model1_eval=512)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    try:
        args.ks = [int(x) for x in args.ks.split(",") if x.strip()]
    except ValueError:
        p.error(f"--ks: expected a comma list of positive integers, got {args.ks!r}")
    if not args.ks or min(args.ks) < 1:
        p.error("--ks: expected a comma list of positive integers")
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    if not args.models or any(m not in ("mlp", "model1") for m in args.models):
        p.error(f"--models: expected a comma list of mlp, model1, got {args.models}")
    args.conv_impls = [c.strip() for c in args.conv_impls.split(",") if c.strip()]
    if not args.conv_impls or any(conv_spec(c)[0] not in CONV_IMPLS for c in args.conv_impls):
        p.error(f"--conv-impls: expected a comma list of {', '.join(CONV_IMPLS)} (each optionally +s2d or -s2d), "
                f"got {args.conv_impls}")
    args.sequential = [s.strip() for s in args.sequential.split(",") if s.strip()]
    for s in args.sequential:
        try:
            parse_execution(s)
        except ValueError:
            p.error(f"--sequential: expected 'default' or FORM/DRIVER with FORM in {FORMS} and DRIVER in "
                    f"{DRIVERS}, got {s!r}")
    if not args.sequential:
        p.error("--sequential: give at least one execution")
    if args.epochs < 1 or args.repeats < 1 or args.budget <= 0:
        p.error("--epochs and --repeats must be >= 1, --budget > 0")
    for name in ("mlp_train", "model1_train"):
        if getattr(args, name) < BATCH:
            p.error(f"--{name.replace('_', '-')}: needs at least one batch ({BATCH} images)")
    if min(args.mlp_eval, args.model1_eval) < 1:
        p.error("--mlp-eval and --model1-eval must be >= 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    _budget_mib[0] = args.memory_budget_mib
    listen_to_compiles()
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    rows = []

    def stop(signum, frame):  # a time limit (timeout sends SIGTERM): keep the cells measured so far
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    interrupted = False
    try:
        for model in args.models:
            bench_model(model, args, rows)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: writing the cells measured so far", flush=True)
    total = time.perf_counter() - t_start
    load_after = os.getloadavg()
    dev = jax.devices()[0]
    header = (f"K Co-teaching trainings in one program vs one after another: {NOISE} noise {NOISE_RATE:g}, "
              f"batch {BATCH}, {args.epochs} epoch(s) per training; jax {jax.__version__} "
              f"({jax.default_backend()}: {dev.device_kind}), {os.cpu_count()} CPU cores ({platform.machine()}); "
              f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; total {total:.0f} s")
    notes = [
        "- one program: `parallel.run_trials` (= `train_trials(one_program=True)`) with net_form vmap, driver scan "
        "(trial axis sharded over the devices, vmap on each); sequential: "
        "the K trainings one after another (`init_carry` + `run_epoch`), `(default)` = the execution plan's.",
        "- seconds: the K trainings (init + epochs + metrics to host), after a warm-up call of the same shapes"
        + (f"; median of {args.repeats} calls" if args.repeats > 1 else "") + ". compile_s: trace + lowering + "
        "XLA compile seconds during the warm-up call (sequential: compiled once, shared by every K).",
        f"- ratio: trainings/s over the trainings/s of sequential `{args.sequential[0]}` at the same K (> 1: faster).",
        "- max_dacc: largest |difference| of final test accuracy (any trial, any network) between one program and "
        f"sequential `{args.sequential[0]}`.",
        "- devices / waves: the one program's trial axis is sharded over that many devices (`s2e_jax.parallel`), "
        "in that many waves (sequential: one training per wave). program_mib: XLA's compiled footprint per device "
        "(arguments + outputs + scratch - donated) of the one program's epoch, or of the sequential trainer's epoch "
        "as one scan program; mib_per_trial: one program: (program - shared data) / trials per device; sequential: "
        "the whole program (one training at a time).",
        "- peak_mib: process peak so far (CPU: ru_maxrss; GPU: peak_bytes_in_use), only grows down the table.",
    ]
    if load_before[0] > (os.cpu_count() or 1) * 0.5:
        notes.append(f"- WARNING: the machine was busy (load average {load_before[0]:.1f} on {os.cpu_count()} "
                     "cores): absolute numbers are noisy; compare rows of the same K (measured back to back).")
    if interrupted:
        notes.append("- INTERRUPTED (a time limit): only the cells measured before it; ratio and max_dacc are "
                     "filled in once a model's cells are all measured, so its rows may lack them.")
    print()
    print(header)
    print(render(rows) if rows else "(no cell measured)")
    print("\n".join(notes))
    if args.out:
        from bench_train import write_tables

        write_tables(args.out, "table", markdown(rows, header, notes), rows, COLUMNS)
    return rows


if __name__ == "__main__":
    main()
