#!/usr/bin/env python
"""Training throughput of Co-teaching: the s2e_jax trainer against a plain PyTorch loop.

What is timed (both sides, same run, same data):

* Co-teaching with 2 networks, batch 128 (drop_last), per-sample cross-entropy, each network keeps
  its floor(R(t)*B) smallest-loss samples and the *other* network learns from them (mean over the
  kept samples, divided once), Adam lr 1e-3; R(t) is eq. (1) with tau = 0.2, t_k = 10, c = 1.
* (a) ``mlp`` (784-256-10) on MNIST-shaped data: the real MNIST from ``--mnist``
  (default ``/work/shared/data/mnist.npz``, loaded with ``s2e_jax.data.load_dataset``) when present,
  else random uint8 data of shape 28x28x1;
  (b) ``model1`` (conv5x5x6 VALID, pool, conv5x5x16 VALID, pool, 400-120-84-10) on random uint8
  CIFAR-shaped data (32x32x3). Training labels get 20% symmetric noise (speed does not depend on it).
* The training split has exactly ``--steps * 128`` examples, so one epoch = ``--steps`` steps.

JAX: ``s2e_jax.train.prepare(TrainConfig(..., execution=ExecutionConfig(...)), dataset=ds)`` and
``train.init_carry``, once for every (net_form, driver) asked for (``ExecutionConfig``; "auto": the
execution plan's default, ``s2e_jax.execution.plan``). Whole epochs of ``prep.trainer.run_epoch`` are
timed, each ended by ``jax.block_until_ready`` on (carry, metrics). ``compile_s`` = first epoch -
median epoch.
``run_epoch`` always evaluates both networks on the validation and test splits; they are kept tiny
(``--n-eval`` = 256 examples each) and the PyTorch loop does the same per-epoch evaluation, so both
sides time the same work.

PyTorch: the released Co-teaching code's loop (on ``--torch-device``, default cuda when available;
batches moved to it per step as the released code's ``.cuda()``) (per-step Python, ``DataLoader(TensorDataset,
shuffle=True, drop_last=True)``, forward both nets, per-sample CE, argsort, keep the floor(R*B)
smallest, cross update, ``zero_grad/backward/step`` per network). Inputs are pre-normalized float32
NCHW tensors (no per-sample transforms). Threads: torch's default (``torch.get_num_threads()``,
all cores) and 1 thread (``--torch-threads``); on a shared machine multi-threaded PyTorch can be
many times slower than 1 thread (its threads spin-wait for each other), hence both rows.

Timing: every configuration (PyTorch and JAX) first runs one warm-up epoch; then up to ``--repeats``
timed epochs of each are run round-robin (so a changing load from other processes hits all alike),
a configuration getting no more once its timed epochs took ``--budget`` seconds; the median epoch is
reported (``best_images_per_s``: the fastest). ``ratio_vs_torch`` = images/s / PyTorch's (default
threads) images/s on the same model (> 1: faster than PyTorch); ``ratio_vs_torch_1thr`` likewise.

``--xla-default``: the default execution once more in a child process with XLA's default CPU
convolutions, i.e. without the YNNPACK flag the entry points set (``s2e_jax.xla_cpu``):
what that flag is worth, in the same run.

Usage::

    python benchmarks/bench_train.py                 # everything (~15 min on a busy 2-core machine)
    python benchmarks/bench_train.py --quick         # smoke test (few steps)
    python benchmarks/bench_train.py --models model1 --forms fused --drivers loop --out /tmp/bench
    python benchmarks/bench_train.py --no-torch      # JAX only (torch not installed)
    # every Table 4 model, the backend's default execution only, reduced sizes:
    python benchmarks/bench_train.py --models mlp,model1,model2,model3 --forms auto \
        --steps mlp=40,model1=10,model2=3,model3=1 --repeats 2
    # on a GPU (PyTorch on cuda when available; --precision bfloat16 for bf16 compute):
    python benchmarks/bench_train.py --models mlp,model1,model2,model3 --forms auto --torch-threads default

Optional requirement: ``pip install -r requirements-bench.txt`` (torch, CPU).
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from s2e_jax import xla_cpu  # noqa: E402

xla_cpu.configure()  # YNNPACK convolutions on XLA's CPU backend, before JAX starts

import jax  # noqa: E402

from s2e_jax import data as data_lib  # noqa: E402
from s2e_jax import execution as execution_lib  # noqa: E402
from s2e_jax import train as train_lib  # noqa: E402
from s2e_jax.config import CONV_IMPLS, PRECISIONS, ExecutionConfig, TrainConfig  # noqa: E402

BATCH = 128
LR = 1e-3
NUM_CLASSES = 10
TAU, T_K, C = 0.2, 10.0, 1.0   # eq. (1) parameters of the schedule
EPOCHS = 200                   # the trainer's T (only sets the lr plan; never reached here)
DEFAULT_MNIST = "/work/shared/data/mnist.npz"
FORMS = ("vmap", "fused")
DRIVERS = ("scan", "loop")


# ------------------------------------------------------------------------------------------ data
MODELS = ("mlp", "model1", "model2", "model3")
CLASSES = dict(mlp=10, model1=10, model2=100, model3=10)  # Table 4: Model 2 is CIFAR-100's


def make_dataset(model, n_train, n_eval, seed, mnist_path):
    """A clean ``data.Dataset`` with ``n_train`` training and ``n_eval`` val / test examples (``prepare``
    adds the label noise) and a description of its source."""
    rng = np.random.default_rng(seed)
    source = "random"
    if model == "mlp" and mnist_path and os.path.isfile(mnist_path):
        full = data_lib.load_dataset(mnist_path)
        if len(full.y_train) >= n_train:
            ds = dataclasses.replace(
                full, name="mnist", x_train=full.x_train[:n_train], y_train=full.y_train[:n_train],
                y_train_clean=full.y_train_clean[:n_train], x_val=full.x_val[:n_eval],
                y_val=full.y_val[:n_eval], x_test=full.x_test[:n_eval], y_test=full.y_test[:n_eval])
            source = f"MNIST ({mnist_path})"
        else:
            ds = None
    else:
        ds = None
    if ds is None:
        shape = (28, 28, 1) if model == "mlp" else (32, 32, 3)
        nc = CLASSES[model]
        img = lambda n: rng.integers(0, 256, (n,) + shape, dtype=np.uint8)  # noqa: E731
        lab = lambda n: rng.integers(0, nc, n).astype(np.int32)  # noqa: E731
        y = lab(n_train)
        ds = data_lib.Dataset(name=f"random{shape}", x_train=img(n_train), y_train=y, y_train_clean=y.copy(),
                              x_val=img(n_eval), y_val=lab(n_eval), x_test=img(n_eval), y_test=lab(n_eval),
                              num_classes=nc)
        source = f"random uint8 {'x'.join(map(str, shape))}" + (f", {nc} classes" if nc != NUM_CLASSES else "")
    return ds, source


# ------------------------------------------------------------------------------------------ JAX
def _block(tree):
    return jax.block_until_ready(tree)


class JaxRunner:
    """One execution of the trainer; ``warmup()`` runs the first epoch (compile), ``epoch()`` one
    timed epoch of ``prep.trainer.run_epoch`` ended by ``jax.block_until_ready`` on (carry, metrics)."""

    def __init__(self, ds, model_name, execution: ExecutionConfig, seed=0):
        cfg = TrainConfig(dataset=ds.name, model=model_name, method="coteaching", noise="symmetric",
                          noise_rate=TAU, t_k=T_K, c=C, epochs=EPOCHS, batch_size=BATCH, lr=LR, seed=seed,
                          progress=False, execution=execution)
        self.prep = train_lib.prepare(cfg, dataset=ds)
        self.plan = self.prep.plan
        self.carry = _block(train_lib.init_carry(self.prep, seed))
        self.steps = len(ds.y_train) // BATCH
        self.metrics = None

    def epoch(self):
        t0 = time.perf_counter()
        self.carry, self.metrics = self.prep.trainer.run_epoch(self.carry, self.prep.data)
        _block((self.carry, self.metrics))
        return time.perf_counter() - t0

    warmup = epoch

    def loss(self):
        return float(np.mean(np.asarray(self.metrics["train_loss"])))


def measure(runners, repeats, budget_s=float("inf")):
    """Warm up every runner (first epoch: compile + run), then time up to ``repeats`` epochs of each,
    round-robin, so that a changing load from other processes hits every runner alike. A runner
    whose timed epochs already took ``budget_s`` seconds gets no more (at least one is timed)."""
    first = {}
    for name, r in runners.items():
        first[name] = r.warmup()
        print(f"  warm-up {name}: {first[name]:.1f} s", flush=True)
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, r in runners.items():
            if sum(times[name]) < budget_s:
                times[name].append(r.epoch())
    out = {}
    for name, r in runners.items():
        med, best = statistics.median(times[name]), min(times[name])
        loss = r.loss()
        if not np.isfinite(loss):
            raise RuntimeError(f"{name}: non-finite training loss")
        out[name] = dict(steps=r.steps, epochs=len(times[name]), epoch_s=med, best_epoch_s=best, steps_per_s=r.steps / med,
                         images_per_s=r.steps * BATCH / med, best_images_per_s=r.steps * BATCH / best,
                         compile_s=max(first[name] - med, 0.0), train_loss=loss)
    return out


# ------------------------------------------------------------------------------------------ PyTorch
def torch_model(name, in_shape):
    import torch.nn as tnn

    h, w, c = in_shape
    if name == "mlp":
        return tnn.Sequential(tnn.Flatten(), tnn.Linear(h * w * c, 256), tnn.ReLU(), tnn.Linear(256, NUM_CLASSES))
    if name == "model1":
        side = ((h - 4) // 2 - 4) // 2
        return tnn.Sequential(
            tnn.Conv2d(c, 6, 5), tnn.ReLU(), tnn.MaxPool2d(2),
            tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
            tnn.Linear(16 * side * side, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(),
            tnn.Linear(84, NUM_CLASSES))
    if name == "model2":  # Co-teaching+'s CNN (s2e_jax.models.Model2)
        layers, cin = [], c
        for features, pool in ((64, False), (64, True), (128, False), (128, True), (196, False), (16, True)):
            layers += [tnn.Conv2d(cin, features, 3, padding=1), tnn.BatchNorm2d(features), tnn.ReLU()]
            layers += [tnn.MaxPool2d(2)] if pool else []
            cin = features
        return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(16 * (h // 8) * (w // 8), CLASSES["model2"]))
    if name == "model3":  # Co-teaching's 9-layer CNN (s2e_jax.models.Model3)
        layers, cin = [], c
        for i, (features, pad) in enumerate(((128, 1), (128, 1), (128, 1), (256, 1), (256, 1), (256, 1),
                                             (512, 0), (256, 0), (128, 0))):
            layers += [tnn.Conv2d(cin, features, 3, padding=pad), tnn.BatchNorm2d(features), tnn.LeakyReLU(0.01)]
            layers += [tnn.MaxPool2d(2), tnn.Dropout2d(0.25)] if i in (2, 5) else []
            cin = features
        return tnn.Sequential(*layers, tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(128, NUM_CLASSES))
    raise ValueError(f"no PyTorch version of {name}")


class TorchRunner:
    """The released Co-teaching loop in PyTorch (CPU) with ``threads`` intra-op threads."""

    def __init__(self, ds, model_name, threads, seed=0, device="cpu"):
        import torch
        from torch.utils.data import DataLoader, TensorDataset

        self.torch, self.threads, self.device = torch, threads, torch.device(device)
        torch.manual_seed(seed)
        x = ds.x_train.astype(np.float32) / 255.0
        mean = x.reshape(-1, x.shape[-1]).mean(0)
        std = x.reshape(-1, x.shape[-1]).std(0) + 1e-6
        to_t = lambda a: torch.from_numpy(((a.astype(np.float32) / 255.0 - mean) / std)  # noqa: E731
                                          .transpose(0, 3, 1, 2).copy())
        train_set = TensorDataset(to_t(ds.x_train), torch.from_numpy(ds.y_train.astype(np.int64)))
        self.loader = DataLoader(train_set, batch_size=BATCH, shuffle=True, drop_last=True, num_workers=0)
        self.evals = [(to_t(ds.x_val).to(self.device), torch.from_numpy(ds.y_val.astype(np.int64)).to(self.device)),
                      (to_t(ds.x_test).to(self.device), torch.from_numpy(ds.y_test.astype(np.int64)).to(self.device))]
        self.nets = [torch_model(model_name, ds.x_train.shape[1:]).to(self.device) for _ in range(2)]
        self.opts = [torch.optim.Adam(n.parameters(), lr=LR) for n in self.nets]
        self.steps = len(self.loader)
        self.t = 0
        self._loss = float("nan")

    def _epoch(self):
        torch = self.torch
        F = torch.nn.functional
        (net1, net2), (opt1, opt2) = self.nets, self.opts
        net1.train(), net2.train()
        r = max(min(1.0 - TAU * min((self.t / T_K) ** C, 1.0), 1.0), 0.01)
        total, steps = 0.0, 0
        for xb, yb in self.loader:
            xb, yb = xb.to(self.device), yb.to(self.device)  # the released code's .cuda() per step
            out1, out2 = net1(xb), net2(xb)
            ce1 = F.cross_entropy(out1, yb, reduction="none")
            ce2 = F.cross_entropy(out2, yb, reduction="none")
            ind1, ind2 = torch.argsort(ce1.detach()), torch.argsort(ce2.detach())
            keep = max(int(r * len(yb)), 1)
            u1, u2 = ind1[:keep], ind2[:keep]
            loss1 = F.cross_entropy(out1[u2], yb[u2])  # net 1 learns from net 2's small-loss samples
            loss2 = F.cross_entropy(out2[u1], yb[u1])
            opt1.zero_grad()
            loss1.backward()
            opt1.step()
            opt2.zero_grad()
            loss2.backward()
            opt2.step()
            total += float(loss1.detach()) + float(loss2.detach())  # like the released code's logging
            steps += 1
        net1.eval(), net2.eval()
        with torch.no_grad():  # the same per-epoch evaluation as Trainer.run_epoch
            for xe, ye in self.evals:
                for net in (net1, net2):
                    (net(xe).argmax(1) == ye).float().mean().item()
        self.t += 1
        self._loss = total / (2 * steps)

    def epoch(self):
        prev = self.torch.get_num_threads()
        self.torch.set_num_threads(self.threads)
        try:
            t0 = time.perf_counter()
            self._epoch()
            if self.device.type == "cuda":
                self.torch.cuda.synchronize()
            return time.perf_counter() - t0
        finally:
            self.torch.set_num_threads(prev)

    warmup = epoch

    def loss(self):
        return self._loss


# ------------------------------------------------------------------------------------------ report
COLUMNS = ("model", "data", "impl", "net_form", "driver", "conv", "steps", "epochs", "epoch_s", "steps_per_s", "images_per_s",
           "best_images_per_s", "compile_s", "ratio_vs_torch", "ratio_vs_torch_1thr", "train_loss")


def _fmt(v):
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def render(rows):
    cells = [[_fmt(r.get(c, float("nan"))) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(COLUMNS)]
    line = lambda xs: "  ".join(x.rjust(w) for x, w in zip(xs, widths))  # noqa: E731
    return "\n".join([line(COLUMNS), line(["-" * w for w in widths])] + [line(x) for x in cells])


def markdown(rows, header, notes):
    out = [header, "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(_fmt(r.get(c, float("nan"))) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(out + [""] + notes) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", default=None,
                   help="training steps per timed epoch: N for every model, or MODEL=N,... (default: mlp 150, "
                        "model1 60, model2 20, model3 5; 8/8/2/2 with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help="timed epochs per configuration after the warm-up epoch (default 3; 1 with --quick)")
    p.add_argument("--models", default="mlp,model1", help="comma list of: mlp, model1, model2, model3")
    p.add_argument("--forms", default=",".join(FORMS),
                   help="comma list of net_form: vmap, fused, or 'auto' (the execution plan's default form "
                        "and driver, s2e_jax.execution.plan; --drivers is then ignored for it)")
    p.add_argument("--precision", default="float32", help="JAX compute precision: float32 | bfloat16")
    p.add_argument("--conv-impl", default="auto", choices=CONV_IMPLS,
                   help="how JAX computes convolutions (ExecutionConfig.conv_impl; default auto: the plan's)")
    p.add_argument("--pool-s2d", default="auto",
                   help="comma list of auto, on, off: Model 1 with each conv + pool as one space-to-depth "
                        "convolution (ExecutionConfig.pool_s2d; auto: the plan's), each timed in the same run")
    p.add_argument("--torch-device", default=None, help="PyTorch device (default: cuda when available, else cpu)")
    p.add_argument("--drivers", default=",".join(DRIVERS), help="comma list of driver: scan, loop")
    p.add_argument("--budget", type=float, default=12.0,
                   help="seconds of timed epochs after which a configuration gets no more repeats "
                        "(at least one; default 12)")
    p.add_argument("--n-eval", type=int, default=256, help="validation and test examples each (default 256)")
    p.add_argument("--mnist", default=DEFAULT_MNIST, help="MNIST .npz for the mlp (random data if absent)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch baseline")
    p.add_argument("--torch-threads", default="default,1",
                   help="comma list of torch thread counts; 'default' = torch.get_num_threads() (default: default,1)")
    p.add_argument("--xla-default", action="store_true",
                   help="also time the default execution with XLA's default CPU convolutions, i.e. without "
                        "the YNNPACK flag the entry points set (s2e_jax.xla_cpu), in a child process")
    p.add_argument("--quick", action="store_true", help="smoke test: few steps, one timed epoch")
    p.add_argument("--out", default=None, help="directory to write bench_train.md and bench_train.csv")
    args = p.parse_args(argv)

    def listed(s, allowed, what):
        xs = [x.strip() for x in s.split(",") if x.strip()]
        bad = [x for x in xs if allowed is not None and x not in allowed]
        if bad or not xs:
            p.error(f"--{what}: expected a comma list of {', '.join(allowed)}, got {s!r}")
        return xs

    args.models = listed(args.models, MODELS, "models")
    args.forms = listed(args.forms, FORMS + ("auto",), "forms")
    if args.precision not in PRECISIONS:
        p.error(f"--precision: expected one of {', '.join(PRECISIONS)}, got {args.precision!r}")
    args.drivers = listed(args.drivers, DRIVERS, "drivers")
    args.pool_s2d = list(dict.fromkeys(listed(args.pool_s2d, ("auto", "on", "off"), "pool-s2d")))
    threads = listed(args.torch_threads, None, "torch-threads")
    if any(t != "default" and not (t.isdigit() and int(t) > 0) for t in threads):
        p.error(f"--torch-threads: expected 'default' or positive integers, got {args.torch_threads!r}")
    args.torch_threads = threads
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    args.steps = parse_steps(args.steps, MODELS, p.error)
    if args.repeats < 1 or args.n_eval < 1:
        p.error("--steps, --repeats and --n-eval must be >= 1")
    return args


def steps_for(args, model):
    if model in args.steps:
        return args.steps[model]
    if args.quick:
        return 8 if model in ("mlp", "model1") else 2
    return dict(mlp=150, model1=60, model2=20, model3=5)[model]


CHILD_WORKER = "--_child-worker"
CHILD_KINDS = {  # kind: (environment of the child, what it measures)
    "xla-default": ({xla_cpu.OPT_OUT: "0"},
                    "the trainer's default execution with XLA's default CPU convolutions (no YNNPACK)"),
}


def child(args, model, steps, kind):
    """Run :func:`child_worker` for ``kind`` in a child process (XLA flags are read once, when
    JAX starts, so a different setting needs a different process); returns its results."""
    env = dict(os.environ)
    for k, v in CHILD_KINDS[kind][0].items():
        if k.endswith("+"):
            env[k[:-1]] = (env.get(k[:-1], "") + " " + v).strip()
        else:
            env[k] = v
    if kind == "xla-default":  # drop the flag this process's import of s2e_jax appended
        env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if xla_cpu.FLAG_NAME not in f)
    spec = dict(kind=kind, model=model, steps=steps, repeats=args.repeats, budget=args.budget,
                n_eval=args.n_eval, mnist=args.mnist)
    cmd = [sys.executable, os.path.abspath(__file__), CHILD_WORKER, json.dumps(spec)]
    print(f"  child process: {CHILD_KINDS[kind][1]}", flush=True)
    try:
        proc = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired:
        print(f"  {kind} child timed out; skipped", file=sys.stderr)
        return {}
    if proc.returncode != 0:
        why = [ln for ln in proc.stderr.splitlines() if "rendezvous" in ln or "Error" in ln][-1:]
        print(f"  {kind} child failed (exit {proc.returncode}); skipped. {why[0][:300] if why else ''}"
, file=sys.stderr)
        return {}
    return {k: tuple(v) for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items()}


def child_worker(spec):
    """The child of :func:`child` (``xla-default``): the default execution without YNNPACK."""
    ds, _ = make_dataset(spec["model"], spec["steps"] * BATCH, spec["n_eval"], 0, spec["mnist"])
    if xla_cpu.active():
        raise SystemExit("xla-default worker: YNNPACK is still on")
    runner = JaxRunner(ds, spec["model"], ExecutionConfig(eval_batch_size=spec["n_eval"]))
    name = f"jax {runner.plan.net_form}/{runner.plan.driver}, XLA default convs"
    meta = {name: dict(impl="jax, XLA default convs", net_form=runner.plan.net_form, driver=runner.plan.driver)}
    with contextlib.redirect_stdout(sys.stderr):
        res = measure({name: runner}, spec["repeats"], spec["budget"])
    print(json.dumps({k: (res[k], meta[k]) for k in meta}))


def write_tables(out, stem, md, rows, columns):
    """``<out>/<stem>.md`` (the printed table) and ``<out>/<stem>.csv`` (one row per measurement)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{stem}.md"), "w") as f:
        f.write(md)
    with open(os.path.join(out, f"{stem}.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in columns})
    print(f"wrote {os.path.join(out, stem + '.md')} and {stem}.csv")


def parse_steps(text, models, error) -> dict:
    """``--steps``: ``N`` (every model) or ``MODEL=N,...``; ``error(message)`` on anything else."""
    steps = {}
    if text is None:
        return steps
    try:
        for item in text.split(","):
            name, _, n = item.strip().rpartition("=")
            if name and name not in models:
                raise ValueError(name)
            for m in ([name] if name else models):
                steps[m] = int(n)
    except ValueError:
        error(f"--steps: expected N or MODEL=N,... with MODEL one of {', '.join(models)}, got {text!r}")
    if any(v < 1 for v in steps.values()):
        error("--steps must be >= 1")
    return steps


def main(argv=None):
    args = parse_args(argv)
    torch_version, default_threads, torch_device = None, None, "cpu"
    if not args.no_torch:
        try:
            import torch
        except ImportError:
            print("torch is not installed (pip install -r requirements-bench.txt); running JAX only",
                  file=sys.stderr)
            args.no_torch = True
        else:
            torch_version, default_threads = torch.__version__, torch.get_num_threads()
            torch_device = args.torch_device or ("cuda" if torch.cuda.is_available() else "cpu")
    load_before = os.getloadavg()
    rows = []
    t_start = time.perf_counter()
    for model in args.models:
        steps = steps_for(args, model)
        ds, source = make_dataset(model, steps * BATCH, args.n_eval, 0, args.mnist)
        data_name = source.split(" (")[0]
        print(f"# {model} on {source}: {len(ds.y_train)} train ({steps} steps/epoch), "
              f"{len(ds.y_val)} val + {len(ds.y_test)} test", flush=True)
        runners, meta = {}, {}
        # PyTorch trains on the noisy labels prepare() makes for seed 0 (speed does not depend on them)
        noisy = data_lib.apply_noise(ds, "symmetric", TAU, seed=0)[0]
        if not args.no_torch:
            for t in args.torch_threads:
                n = default_threads if t == "default" else int(t)
                name = f"torch {n}thr" + (" (default)" if t == "default" else "")
                if name.split(" (")[0] in [k.split(" (")[0] for k in runners]:
                    continue  # e.g. default == 1 thread
                runners[name] = TorchRunner(noisy, model, n, device=torch_device)
                meta[name] = dict(impl=name, net_form="-", driver="python", torch_threads=n, default=t == "default")
        default_plan = execution_lib.plan(ExecutionConfig(), model)
        pairs = []
        for form in args.forms:
            for driver in (args.drivers if form != "auto" else ["auto"]):
                if (form, driver) not in pairs:
                    pairs.append((form, driver))
        pools = args.pool_s2d if model == "model1" else ["auto"]
        for (form, driver), pool in [(pair, pool) for pair in pairs for pool in pools]:
            ex = ExecutionConfig(net_form=form, driver=driver, conv_impl=args.conv_impl, pool_s2d=pool,
                                 precision=args.precision, eval_batch_size=args.n_eval)
            runner = JaxRunner(ds, model, ex)
            plan = runner.plan
            name = f"jax {plan.net_form}/{plan.driver}" + ("" if pool == "auto" else f" s2d={pool}")
            if name in runners:
                continue  # e.g. 'auto' resolved to a form also asked for
            runners[name] = runner
            default = all(getattr(plan, k) == getattr(default_plan, k)
                          for k in ("net_form", "driver", "conv_impl", "pool_s2d")) and pool == "auto"
            meta[name] = dict(impl="jax" + (" (default)" if default else "")
                              + ("" if args.precision == "float32" else f" {args.precision}")
                              + ("" if model == "mlp" or args.conv_impl == "auto" else f" conv={plan.conv_impl}")
                              + ("" if pool == "auto" else f" pool_s2d={pool}"),
                              net_form=plan.net_form, driver=plan.driver,
                              conv="-" if model == "mlp" else plan.conv_impl + ("+s2d" if plan.pool_s2d else ""))
        results = measure(runners, args.repeats, args.budget)
        for kind in (["xla-default"] if args.xla_default else []):
            for name, (res, m) in child(args, model, steps, kind).items():
                results[name], meta[name] = res, m
        base = next((results[k]["images_per_s"] for k in runners if meta[k].get("default")), None)
        base1 = next((results[k]["images_per_s"] for k in runners if meta[k].get("torch_threads") == 1), None)
        for name, res in results.items():
            row = dict(res, model=model, data=data_name, **meta[name])
            if row["impl"].startswith("torch"):
                row["compile_s"] = float("nan")
            row["ratio_vs_torch"] = res["images_per_s"] / base if base else float("nan")
            row["ratio_vs_torch_1thr"] = res["images_per_s"] / base1 if base1 else float("nan")
            rows.append(row)
            print(f"  {name}: {res['steps_per_s']:.1f} steps/s, {res['images_per_s']:.0f} images/s", flush=True)
    total = time.perf_counter() - t_start
    load_after = os.getloadavg()

    header = (f"Co-teaching training throughput, batch {BATCH}, 2 networks, Adam lr {LR:g}; "
              f"jax {jax.__version__} ({jax.default_backend()}, {jax.device_count()} device(s)"
              + (f", YNNPACK {'on' if xla_cpu.active() else 'off'}" if jax.default_backend() == "cpu" else "")
              + ")"
              + (f" [{jax.devices()[0].device_kind}]" if jax.default_backend() != "cpu" else "")
              + (f", torch {torch_version} on {torch_device} (default {default_threads} threads)"
                 if torch_version else "")
              + f"; {os.cpu_count()} CPU cores ({platform.machine()})"
              + (f"; GLIBC_TUNABLES={os.environ['GLIBC_TUNABLES']} (both sides)" if os.environ.get("GLIBC_TUNABLES")
                 else "")
              + f"; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; total {total:.0f} s")
    notes = [
        f"- One warm-up epoch, then up to {args.repeats} timed epochs per configuration (`epochs`; no more once "
        f"its timed epochs took {args.budget:g} s), interleaved round-robin; epoch_s / steps_per_s / images_per_s: "
        "median epoch; best_images_per_s: fastest epoch.",
        "- compile_s = warm-up epoch - median epoch (JAX only).",
        f"- Every epoch (JAX `Trainer.run_epoch` and the PyTorch loop alike) evaluates both networks on "
        f"{args.n_eval} validation + {args.n_eval} test examples.",
        "- ratio_vs_torch = images/s / images/s of PyTorch with its default threads; ratio_vs_torch_1thr: "
        "against PyTorch with 1 thread.",
    ]
    if load_before[0] > (os.cpu_count() or 1) * 0.5:
        notes.append(f"- WARNING: the machine was busy (load average {load_before[0]:.1f} on "
                     f"{os.cpu_count()} cores): absolute numbers are noisy; multi-threaded PyTorch suffers most.")
    print()
    print(header)
    print(render(rows))
    print("\n".join(notes))
    for model in args.models:
        jrows = [r for r in rows if r["model"] == model and r["impl"].startswith("jax")]
        if jrows:
            best = max(jrows, key=lambda r: r["images_per_s"])
            print(f"fastest JAX execution for {model}: net_form={best['net_form']}, driver={best['driver']} "
                  f"({best['steps_per_s']:.1f} steps/s, {best['images_per_s']:.0f} images/s)")
    if args.out:
        write_tables(args.out, "bench_train", markdown(rows, header, notes), rows, COLUMNS)
    return rows


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == CHILD_WORKER:
        child_worker(json.loads(sys.argv[2]))
    else:
        main()
