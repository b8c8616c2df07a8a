"""Standard vs Co-teaching (and any other implemented method) over noise settings and seeds.

Prints a markdown table of final, best and last-10-mean test accuracy and label precision, and writes
it (plus every run directory) under ``--out``.

    python experiments/compare_methods.py --dataset digits --epochs 200 --seeds 0 1 2 --out results/digits
    python experiments/compare_methods.py --dataset ../shared/data/mnist.npz --noises symmetric:0.5 \
        --epochs 50 --decay-start 20 --seeds 0 --out results/mnist
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from s2e_jax import xla_cpu  # noqa: E402

xla_cpu.configure()  # YNNPACK convolutions on XLA's CPU backend, before JAX starts

from s2e_jax.config import TrainConfig  # noqa: E402
from s2e_jax.train import train  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paper import current_method, final_precision, fmt, mean_precision, mean_std, read_metrics  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--methods", nargs="+", default=["standard", "coteaching"])
    p.add_argument("--noises", nargs="+", default=["pair:0.45", "symmetric:0.5"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--decay-start", type=int, default=None, help="default: 0.4 * epochs (80 of 200)")
    p.add_argument("--model", default="auto")
    p.add_argument("--input-norm", default="standardize", help="standardize | unit (pixels / 255 as the released code)")
    p.add_argument("--out", required=True, help="one folder per setting: finished runs in it are reused by name")
    a = p.parse_args(argv)
    decay = a.decay_start if a.decay_start is not None else int(round(0.4 * a.epochs))
    os.makedirs(a.out, exist_ok=True)
    rows, runs = [], {}
    for noise_spec in a.noises:
        kind, rate = noise_spec.split(":")
        for method in a.methods:
            res = []
            for seed in a.seeds:
                run_dir = os.path.join(a.out, f"{kind}{rate}-{method}-seed{seed}")
                done = os.path.join(run_dir, "summary.json")
                if os.path.exists(done) and not current_method(done, method):  # an older rule: kept aside
                    os.replace(run_dir, f"{run_dir}.stale-{int(time.time())}")
                if os.path.exists(done):  # finished earlier: reuse
                    with open(done) as f:
                        res.append(json.load(f))
                    continue
                cfg = TrainConfig(dataset=a.dataset, noise=kind, noise_rate=float(rate), method=method,
                                  epochs=a.epochs, decay_start=decay, seed=seed, model=a.model, out=run_dir,
                                  input_norm=a.input_norm,
                                  progress=False)
                res.append(train(cfg).summary)
                print(f"{kind} {rate} {method} seed {seed}: final {res[-1]['final_test_acc']:.4f}",
                      file=sys.stderr)
            runs[(f"{kind} {float(rate):.0%}", method)] = [os.path.join(a.out, f"{kind}{rate}-{method}-seed{s}")
                                                          for s in a.seeds]
            stat = lambda k: mean_std([r[k] for r in res])  # noqa: E731
            ms = [read_metrics(os.path.join(d, "metrics.csv")) for d in runs[(f"{kind} {float(rate):.0%}", method)]]
            prec = mean_std([final_precision(m) for m in ms])
            mprec = mean_std([mean_precision(m) for m in ms])
            rows.append((f"{kind} {float(rate):.0%}", method, stat("final_test_acc"), stat("best_test_acc"),
                         stat("last10_test_acc"), prec, mprec, np.mean([r["seconds"] for r in res])))
    head = (f"{a.dataset}, {a.epochs} epochs (lr decay from {decay}), seeds {a.seeds}, "
            f"{datetime.date.today()}\n\n| noise | method | final test acc | best test acc | last-10 mean | "
            "label precision (final) | label precision (mean over epochs) | s / run |\n|---|---|---|---|---|---|---|---|\n")
    table = head + "".join(f"| {n} | {m} | {fmt(f)} | {fmt(b)} | {fmt(l)} | {fmt(p, len(a.seeds))} | {fmt(mp)} | {s:.1f} |\n"
                           for n, m, f, b, l, p, mp, s in rows)
    table += ("\nLabel precision: clean fraction of the samples trained on in the last epoch; n/a or "
              "\"(i of n)\": no sample kept in that epoch (Decoupling trains only where the two networks "
              "disagree; Co-teaching+ too, but it learns from the whole batch where they agree on all of it, "
              "while the authors' step counter epoch x batch is below 5,000).\n")
    print(table)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table)
    plot(runs, os.path.join(a.out, "curves.png"), f"{a.dataset}, {a.epochs} epochs, seeds {a.seeds}")


def plot(runs: dict, path: str, title: str):
    """Test accuracy and label precision per epoch, mean ± std over seeds, one column per noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from paper import plot_bands

    noises = list(dict.fromkeys(n for n, _ in runs))
    fig, axes = plt.subplots(2, len(noises), figsize=(4.6 * len(noises), 7), squeeze=False)
    for j, noise in enumerate(noises):
        for (n, method), dirs in runs.items():
            if n != noise:
                continue
            ms = [read_metrics(os.path.join(d, "metrics.csv")) for d in dirs]
            x = np.arange(len(ms[0]["test_acc"]))
            plot_bands(axes[0][j], x, [m["test_acc"] for m in ms], method, lw=1.2)
            kept = np.stack([m["kept_fraction"] for m in ms])
            lp = np.where(kept > 0, np.stack([m["label_precision"] for m in ms]), np.nan)
            plot_bands(axes[1][j], x, lp, method, lw=1.2)
        axes[0][j].set(title=noise, xlabel="epoch", ylabel="test accuracy (%)")
        axes[1][j].set(xlabel="epoch", ylabel="label precision (%)")
        for ax in axes[:, j]:
            ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main()
