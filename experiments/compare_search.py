"""Every search algorithm on one problem, the same budget of trainings, next to Co-teaching's eq. (1).

Runs newton, gd, ng, random, tpe and hyperband into one search directory (so its Figure 6 plot shows
them all), trains Co-teaching with its fixed schedule on the same data, and prints a markdown table.

    python experiments/compare_search.py --dataset digits --noise pair --noise-rate 0.45 \
        --iterations 6 --samples 4 --epochs 50 --out results/search_digits_pair45
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from s2e_jax import xla_cpu  # noqa: E402

xla_cpu.configure()  # YNNPACK convolutions on XLA's CPU backend, before JAX starts

from s2e_jax import search  # noqa: E402
from s2e_jax import search_run  # noqa: E402
from s2e_jax.config import TrainConfig  # noqa: E402
from s2e_jax.train import train  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--noise", default="pair")
    p.add_argument("--noise-rate", type=float, default=0.45)
    p.add_argument("--algos", nargs="+", default=list(search.ALGOS))
    p.add_argument("--space", default="s2e")
    p.add_argument("--iterations", type=int, default=6)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    tcfg = TrainConfig(dataset=a.dataset, noise=a.noise, noise_rate=a.noise_rate, epochs=a.epochs,
                       decay_start=int(round(0.4 * a.epochs)), seed=a.seed, progress=False)
    rows = []
    budget = a.iterations * a.samples
    for algo in a.algos:
        # Hyperband spends its budget in epochs: give it the same number of full-training equivalents
        its = a.iterations if algo != "hyperband" else 10_000
        cfg = search_run.SearchConfig(tcfg, algo=algo, space=a.space, iterations=its, samples=a.samples,
                                      out=a.out, max_cost=budget if algo == "hyperband" else None)
        s = search_run.run(cfg)
        rows.append((algo, s["trainings"], s["cost"], s["best_val_acc"], s["best_test_acc"]))
        print(f"{algo}: best val {s['best_val_acc']:.4f} test {s['best_test_acc']:.4f}", file=sys.stderr)
    cot_dir = os.path.join(a.out, "coteaching_fixed")
    if os.path.exists(os.path.join(cot_dir, "summary.json")):
        with open(os.path.join(cot_dir, "summary.json")) as f:
            cot = json.load(f)
    else:
        cot = train(tcfg.replace(method="coteaching", out=cot_dir)).summary
    table = (f"{a.dataset}, {a.noise} {a.noise_rate:.0%}, space {a.space}, M={a.iterations}, K={a.samples} "
             f"({budget} trainings), {a.epochs} epochs, seed {a.seed}, {datetime.date.today()}\n\n"
             "| algorithm | trainings | cost (full trainings) | best val acc | its test acc |\n|---|---|---|---|---|\n")
    table += "".join(f"| {r[0]} | {r[1]} | {r[2]:.1f} | {100 * r[3]:.2f} | {100 * r[4]:.2f} |\n" for r in rows)
    table += (f"| Co-teaching eq. (1), fixed | 1 | 1 | {100 * cot['final_val_acc']:.2f} | "
              f"{100 * cot['final_test_acc']:.2f} |\n")
    print(table)
    with open(os.path.join(a.out, "table.md"), "w") as f:
        f.write(table)


if __name__ == "__main__":
    main()
