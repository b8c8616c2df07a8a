"""Figure 3: test accuracy per epoch (mean ± std over seeds) of every method of section 4.1, S2E included.

S2E is Co-teaching trained with the schedule that S2E's search (Algorithm 2, Newton on the eq. (4)
space) found for the same data and noise; the search runs first (cached in ``search_s2e/``). Writes
``fig3.png`` (one panel per noise setting) and ``fig3.md`` (final, best and last-10-mean test accuracy
and final label precision of every method, mean ± std over seeds).

    python experiments/fig3.py --dataset ../shared/data/mnist.npz --scale cpu
    python experiments/fig3.py --dataset digits --scale smoke --out /tmp/results
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paper  # noqa: E402


def main(argv=None):
    p = paper.parser(__doc__)
    p.add_argument("--methods", nargs="+", default=list(paper.METHODS) + ["s2e"])
    args = p.parse_args(argv)
    study = paper.study_from_args(args)
    for m in args.methods:
        if m not in paper.LABELS:
            raise paper.ConfigError(f"methods: unknown method {m!r} (expected one of {', '.join(paper.LABELS)})")
    noises = study.scale.noises
    fig, axes = paper.panels(len(noises))
    rows = []
    for ax, (kind, rate) in zip(axes, noises):
        for method in args.methods:
            runs = study.method_runs(method, kind, rate)
            s = [r["summary"] for r in runs]
            rows.append((paper.noise_label(kind, rate), method,
                         paper.mean_std([x["final_test_acc"] for x in s]),
                         paper.mean_std([x["best_test_acc"] for x in s]),
                         paper.mean_std([x["last10_test_acc"] for x in s]),
                         paper.mean_std([paper.final_precision(r["metrics"]) for r in runs]),
                         paper.mean_std([paper.mean_precision(r["metrics"]) for r in runs]), len(runs)))
            acc = paper.curves(runs, "test_acc")
            paper.plot_bands(ax, np.arange(acc.shape[1]), acc, paper.LABELS[method],
                             lw=2.2 if method == "s2e" else 1.2)
        ax.set(title=paper.noise_label(kind, rate), xlabel="epoch", ylabel="test accuracy (%)")
    paper.save(fig, study, "fig3.png", f"Figure 3 — {study.dataset}, scale {study.scale.name}, "
               f"seeds {list(study.scale.seeds)}")
    table = study.header("Figure 3 (test accuracy) and label precision, mean ± std over seeds")
    table += ("| noise | method | final test acc | best test acc | last-10 mean | label precision (final) | "
              "label precision (mean over epochs) |\n|---|---|---|---|---|---|---|\n")
    table += "".join(f"| {n} | {paper.LABELS[m]} | {paper.fmt(f)} | {paper.fmt(b)} | {paper.fmt(l)} | "
                     f"{paper.fmt(lp, k)} | {paper.fmt(mlp)} |\n" for n, m, f, b, l, lp, mlp, k in rows)
    table += ("\nLabel precision: the fraction of clean labels among the samples a method trains on "
              "(Standard, F-correction, Reweight: all samples); n/a or (i of n): in the last epoch the method kept no sample (Decoupling keeps only samples where the two networks disagree, and they can come to agree on all; Co-teaching+ too, but it learns from the whole batch where they agree on all of it, while the authors' step counter epoch x batch is below 5,000). S2E: Co-teaching with the schedule of "
              "`search_s2e/<noise>/newton/best_schedule.json`.\n")
    study.write("fig3.md", table)


if __name__ == "__main__":
    paper.main_guard(main)
