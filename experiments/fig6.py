"""Figure 6: search efficiency — best validation accuracy against the number of trainings, per algorithm.

Newton (S2E), GD, NG, random, TPE (the paper's BO) and Hyperband search the S2E space with the same
budget of full-training equivalents (Hyperband's partial trainings count by their epochs). The curve is
the mean over search seeds of the best validation accuracy of a full training so far. Writes
``fig6.png`` (one panel per noise setting) and ``fig6.md`` (best validation accuracy and its test
accuracy at the end of the budget).

    python experiments/fig6.py --dataset ../shared/data/mnist.npz --scale cpu
"""
from __future__ import annotations

import os
import sys
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paper  # noqa: E402

from s2e_jax import runs as runs_lib  # noqa: E402
from s2e_jax import search  # noqa: E402

NAMES = dict(newton="Newton (S2E)", gd="GD", ng="NG", random="random", tpe="TPE (BO)", hyperband="Hyperband")


def efficiency(trials: list, epochs: int, budget: float):
    """(cost grid 1..budget, best full-training val acc so far at each cost, test acc of that trial)."""
    trials = sorted(trials, key=lambda r: r["trial"])
    cost = np.cumsum([r["epochs"] / epochs for r in trials])
    grid = np.arange(1, int(np.floor(budget)) + 1)
    best, test = np.full(len(grid), np.nan), np.full(len(grid), np.nan)
    b, bt = -np.inf, np.nan
    j = 0
    for i, g in enumerate(grid):
        while j < len(trials) and cost[j] <= g + 1e-9:
            r = trials[j]
            if r["epochs"] == epochs and not r["failed"] and r["val_acc"] > b:
                b, bt = r["val_acc"], r["test_acc"]
            j += 1
        best[i], test[i] = (b if np.isfinite(b) else np.nan), bt
    return grid, best, test


def main(argv=None):
    p = paper.parser(__doc__)
    p.add_argument("--algos", nargs="+", default=list(search.ALGOS))
    p.add_argument("--search-seeds", nargs="+", type=int, default=None)
    args = p.parse_args(argv)
    study = paper.study_from_args(args)
    sc = study.scale
    seeds = tuple(args.search_seeds) if args.search_seeds else sc.algo_seeds
    budget = sc.algo_iterations * sc.algo_samples
    fig, axes = paper.panels(len(sc.algo_noises))
    rows = []
    for ax, (kind, rate) in zip(axes, sc.algo_noises):
        for algo in args.algos:
            bests, tests = [], []
            for seed in seeds:
                folder = os.path.join("fig6", paper.noise_key(kind, rate), f"seed{seed}")
                hb = algo == "hyperband"  # Hyperband spends a budget of full-training equivalents
                study.search(kind, rate, algo, study.space("s2e"), 10_000 if hb else sc.algo_iterations, sc.algo_samples,
                             folder, seed=seed, max_cost=budget if hb else None)
                trials = runs_lib.read_jsonl(study.path(folder, algo, "trials.jsonl"))
                grid, best, test = efficiency(trials, sc.epochs, budget)
                bests.append(best)
                tests.append(test)
            bests, tests = np.asarray(bests), np.asarray(tests)
            with warnings.catch_warnings():  # a grid point before any full training: NaN, not a warning
                warnings.simplefilter("ignore", RuntimeWarning)
                m = np.nanmean(bests, 0)
            ax.plot(grid, 100 * m, marker="o", ms=3, label=NAMES.get(algo, algo),
                    lw=2.2 if algo == "newton" else 1.2)
            rows.append((paper.noise_label(kind, rate), algo, paper.mean_std(bests[:, -1]),
                         paper.mean_std(tests[:, -1])))
        ax.set(title=paper.noise_label(kind, rate), xlabel="number of trainings (full-training equivalents)",
               ylabel="best validation accuracy (%)")
    paper.save(fig, study, "fig6.png", f"Figure 6 — search efficiency, {study.dataset}, scale {sc.name}, "
               f"search seeds {list(seeds)}")
    table = study.header(f"Figure 6: best validation accuracy after {budget} trainings "
                         f"(M={sc.algo_iterations}, K={sc.algo_samples}), mean ± std over search seeds {list(seeds)}")
    table += "| noise | algorithm | best val acc | its test acc |\n|---|---|---|---|\n"
    table += "".join(f"| {n} | {NAMES.get(a, a)} | {paper.fmt(b)} | {paper.fmt(t)} |\n" for n, a, b, t in rows)
    study.write("fig6.md", table)


if __name__ == "__main__":
    paper.main_guard(main)
