#!/usr/bin/env python
"""A whole Co-teaching training at the paper's scale, timed: Model 1 (or any Table 4 model) on
CIFAR-10-shaped data, 200 epochs (issue 5's target: under 60 s on an H100).

What is timed: ``train.prepare`` (data to the device, the trainer), ``init_carry`` and every epoch of
``prep.trainer.run_epoch`` as ``train.train`` runs them (the execution plan's defaults; per epoch
the networks are evaluated on the validation and test halves and one small metrics copy goes to the
host), each epoch ended by ``jax.block_until_ready``. Data: random uint8 images of the data set's
shape (CIFAR-10: 50,000 training, 10,000 test = 5,000 validation + 5,000 test), 20% symmetric noise;
speed does not depend on the pixels.

``--epochs`` is the training's length (its learning-rate and R(t) schedules); ``--run-epochs N``
(or ``--max-seconds S``: as many as fit in S seconds, at least 2) times only the first epochs and
projects the whole: setup + first epoch (compile included) + the rest at the median of the timed
later epochs. ``projected_s`` equals ``seconds`` when every epoch ran.

Usage::

    python benchmarks/bench_full.py                            # Model 1, 200 epochs (a GPU)
    python benchmarks/bench_full.py --run-epochs 3             # projected from 3 epochs (a CPU)
    python benchmarks/bench_full.py --models mlp,model1 --run-epochs 3 --out /tmp/full.md
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

from s2e_jax import data as data_lib  # noqa: E402
from s2e_jax import train as train_lib  # noqa: E402
from s2e_jax.config import CONV_IMPLS, ExecutionConfig, TrainConfig  # noqa: E402

# the paper's data shapes per model (Table 4: MLP on MNIST, Models 1-2 on CIFAR-10, 3 on CIFAR-100)
SHAPES = dict(mlp=("MNIST", (28, 28, 1), 10, 60000, 10000), model1=("CIFAR-10", (32, 32, 3), 10, 50000, 10000),
              model2=("CIFAR-10", (32, 32, 3), 10, 50000, 10000),
              model3=("CIFAR-100", (32, 32, 3), 100, 50000, 10000))


def random_dataset(model: str, n_train=None, n_test=None, seed=0) -> data_lib.Dataset:
    """Random uint8 images and labels of ``model``'s data set shape (``n_train``/``n_test`` override)."""
    name, shape, classes, n_tr, n_te = SHAPES[model]
    n_tr, n_te = n_train or n_tr, n_test or n_te
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n_tr + n_te,) + shape, dtype=np.uint8)
    y = rng.integers(0, classes, n_tr + n_te).astype(np.int32)
    h = n_tr + n_te // 2  # the test split's first half is the validation split (as data.load_dataset)
    return data_lib.Dataset(name=f"random {name}", x_train=x[:n_tr], y_train=y[:n_tr], y_train_clean=y[:n_tr].copy(),
                            x_val=x[n_tr:h], y_val=y[n_tr:h], x_test=x[h:], y_test=y[h:], num_classes=classes)


def time_training(model: str, epochs: int, run_epochs: int, batch_size: int, ds, precision="float32",
                  seed=0, max_seconds=None, conv_impl="auto") -> dict:
    """Time ``run_epochs`` epochs of a ``epochs``-epoch Co-teaching training (fewer once
    ``max_seconds`` have passed, at least 2); one table row."""
    cfg = TrainConfig(dataset=ds.name, model=model, noise="symmetric", noise_rate=0.2, epochs=epochs,
                      batch_size=batch_size, decay_start=min(80, epochs - 1), seed=seed, progress=False,
                      execution=ExecutionConfig(precision=precision, conv_impl=conv_impl))
    start = time.perf_counter()
    prep = train_lib.prepare(cfg, dataset=ds)
    carry = train_lib.init_carry(prep, seed)
    jax.block_until_ready(carry)
    setup = time.perf_counter() - start
    times, rows = [], []
    for _ in range(run_epochs):
        if max_seconds is not None and len(times) >= 2 and time.perf_counter() - start > max_seconds:
            break
        t0 = time.perf_counter()
        carry, metrics = prep.trainer.run_epoch(carry, prep.data)
        rows.append(jax.device_get(metrics))   # what train.train copies per epoch
        jax.block_until_ready(carry)
        times.append(time.perf_counter() - t0)
    seconds = setup + sum(times)
    rest = statistics.median(times[1:]) if len(times) > 1 else times[0]
    run_epochs = len(times)
    projected = setup + times[0] + rest * (epochs - 1) if run_epochs < epochs else seconds
    steps = len(ds.y_train) // batch_size
    acc = float(np.mean(rows[-1]["test_acc"]))
    return dict(model=model, data=f"{ds.name} {len(ds.y_train)} train", epochs=epochs, run_epochs=run_epochs,
                net_form=prep.plan.net_form, driver=prep.plan.driver,
                conv="-" if model == "mlp" else prep.plan.conv_impl + ("+s2d" if prep.plan.pool_s2d else ""),
                setup_s=setup,
                first_epoch_s=times[0], epoch_s=rest, seconds=seconds, projected_s=projected,
                images_per_s=steps * batch_size / rest, final_test_acc=acc)


COLS = ("model", "data", "epochs", "run_epochs", "net_form", "driver", "conv", "setup_s", "first_epoch_s", "epoch_s",
        "seconds", "projected_s", "images_per_s", "final_test_acc")


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:,.0f}"
    return str(v)


def table(rows) -> str:
    out = ["| " + " | ".join(COLS) + " |", "|" + "---|" * len(COLS)]
    out += ["| " + " | ".join(_fmt(r[c]) for c in COLS) + " |" for r in rows]
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="model1", help="comma list of: " + ", ".join(SHAPES))
    p.add_argument("--epochs", type=int, default=200, help="the training's length (default 200, the paper's)")
    p.add_argument("--run-epochs", type=int, default=None,
                   help="epochs actually timed (default: all); fewer project the whole")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="stop timing after this many seconds (at least 2 epochs) and project the rest")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--n-train", type=int, default=None, help="training images (default: the data set's)")
    p.add_argument("--n-test", type=int, default=None, help="test images, halved into val/test (default: the data set's)")
    p.add_argument("--precision", default="float32", help="float32 | bfloat16")
    p.add_argument("--conv-impl", default="auto", choices=CONV_IMPLS,
                   help="ExecutionConfig.conv_impl (default auto: the execution plan's)")
    p.add_argument("--out", default=None, help="also write the table to this markdown file")
    a = p.parse_args(argv)
    models = [m.strip() for m in a.models.split(",") if m.strip()]
    bad = [m for m in models if m not in SHAPES]
    if bad:
        p.error(f"--models: unknown {', '.join(bad)} (expected: {', '.join(SHAPES)})")
    run_epochs = a.epochs if a.run_epochs is None else a.run_epochs
    if not 1 <= run_epochs <= a.epochs:
        p.error(f"--run-epochs: must be in 1..--epochs ({a.epochs}), got {run_epochs}")
    dev = jax.devices()[0]
    head = (f"Whole Co-teaching trainings ({a.epochs} epochs, batch {a.batch_size}, {a.precision}); jax "
            f"{jax.__version__} on {jax.default_backend()}: {getattr(dev, 'device_kind', dev)}; "
            f"{os.cpu_count()} CPU cores ({platform.machine()})"
            + (f"; YNNPACK convolutions {'on' if xla_cpu.active() else 'off'}"
               if jax.default_backend() == "cpu" else ""))
    print(head, flush=True)
    rows = []
    for m in models:
        ds = random_dataset(m, a.n_train, a.n_test)
        rows.append(time_training(m, a.epochs, run_epochs, a.batch_size, ds, a.precision,
                                  max_seconds=a.max_seconds, conv_impl=a.conv_impl))
        print(f"  {m}: {rows[-1]['projected_s']:.1f} s for {a.epochs} epochs "
              f"({rows[-1]['epoch_s']:.3g} s/epoch, {rows[-1]['images_per_s']:,.0f} images/s)", flush=True)
    text = head + "\n\n" + table(rows) + (
        "\n\n- setup_s: data to the device + trainer + init; first_epoch_s includes compilation; epoch_s: "
        "median of the later timed epochs; projected_s: setup + first epoch + (epochs - 1) x epoch_s "
        "(= seconds when every epoch ran).\n")
    print("\n" + text)
    if a.out:
        os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
        with open(a.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
