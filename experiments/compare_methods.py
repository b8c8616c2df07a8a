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

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from s2e_jax.config import TrainConfig  # noqa: E402
from s2e_jax.train import train  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--methods", nargs="+", default=["standard", "coteaching"])
    p.add_argument("--noises", nargs="+", default=["pair:0.45", "symmetric:0.5"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--decay-start", type=int, default=None, help="default: 0.4 * epochs (80 of 200)")
    p.add_argument("--model", default="auto")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    decay = a.decay_start if a.decay_start is not None else int(round(0.4 * a.epochs))
    os.makedirs(a.out, exist_ok=True)
    rows = []
    for noise_spec in a.noises:
        kind, rate = noise_spec.split(":")
        for method in a.methods:
            res = []
            for seed in a.seeds:
                run_dir = os.path.join(a.out, f"{kind}{rate}-{method}-seed{seed}")
                if os.path.exists(os.path.join(run_dir, "summary.json")):  # finished earlier: reuse
                    with open(os.path.join(run_dir, "summary.json")) as f:
                        res.append(json.load(f))
                    continue
                cfg = TrainConfig(dataset=a.dataset, noise=kind, noise_rate=float(rate), method=method,
                                  epochs=a.epochs, decay_start=decay, seed=seed, model=a.model, out=run_dir,
                                  progress=False)
                res.append(train(cfg).summary)
                print(f"{kind} {rate} {method} seed {seed}: final {res[-1]['final_test_acc']:.4f}",
                      file=sys.stderr)
            stat = lambda k: (100 * np.mean([r[k] for r in res]), 100 * np.std([r[k] for r in res]))  # noqa
            rows.append((f"{kind} {float(rate):.0%}", method, stat("final_test_acc"), stat("best_test_acc"),
                         stat("last10_test_acc"), stat("final_label_precision"),
                         np.mean([r["seconds"] for r in res])))
    head = (f"{a.dataset}, {a.epochs} epochs (lr decay from {decay}), seeds {a.seeds}, "
            f"{datetime.date.today()}\n\n| noise | method | final test acc | best test acc | last-10 mean | "
            "label precision (final) | s / run |\n|---|---|---|---|---|---|---|\n")
    fmt = lambda m: f"{m[0]:.2f} ± {m[1]:.2f}"  # noqa: E731
    table = head + "".join(f"| {n} | {m} | {fmt(f)} | {fmt(b)} | {fmt(l)} | {fmt(p)} | {s:.1f} |\n"
                           for n, m, f, b, l, p, s in rows)
    print(table)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table)


if __name__ == "__main__":
    main()
