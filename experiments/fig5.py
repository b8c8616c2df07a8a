"""Figure 5: label precision per epoch (mean ± std over seeds) of MentorNet, Co-teaching, Co-teaching+, S2E.

Label precision is the fraction of clean labels among the samples a method keeps in a mini-batch
(Han et al. 2018). Reuses the runs of ``fig3.py`` (same folder) and trains what is missing. Writes
``fig5.png`` and ``fig5.md`` (mean label precision over all epochs and at the last epoch).

    python experiments/fig5.py --dataset ../shared/data/mnist.npz --scale cpu
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paper  # noqa: E402

METHODS = ("mentornet", "coteaching", "coteaching_plus", "s2e")


def main(argv=None):
    args = paper.parser(__doc__).parse_args(argv)
    study = paper.study_from_args(args)
    noises = study.scale.noises
    fig, axes = paper.panels(len(noises))
    rows = []
    for ax, (kind, rate) in zip(axes, noises):
        for method in METHODS:
            runs = study.method_runs(method, kind, rate)
            lp = np.where(paper.curves(runs, "kept_fraction") > 0, paper.curves(runs, "label_precision"), np.nan)
            rows.append((paper.noise_label(kind, rate), method, paper.mean_std(np.nanmean(lp, 1)),
                         paper.mean_std(lp[:, -1]), len(runs)))
            paper.plot_bands(ax, np.arange(lp.shape[1]), lp, paper.LABELS[method],
                             lw=2.2 if method == "s2e" else 1.2)
        ax.axhline(100 * (1 - rate), color="k", ls=":", lw=0.8, label="clean fraction of the data")
        ax.set(title=paper.noise_label(kind, rate), xlabel="epoch", ylabel="label precision (%)")
    paper.save(fig, study, "fig5.png", f"Figure 5 — label precision, {study.dataset}, scale "
               f"{study.scale.name}, seeds {list(study.scale.seeds)}")
    table = study.header("Figure 5: label precision, mean ± std over seeds")
    table += "| noise | method | mean over epochs | last epoch |\n|---|---|---|---|\n"
    table += "".join(f"| {n} | {paper.LABELS[m]} | {paper.fmt(a)} | {paper.fmt(b, k)} |\n" for n, m, a, b, k in rows)
    table += "\nEpochs in which a method kept no sample have no label precision and are left out.\n"
    study.write("fig5.md", table)


if __name__ == "__main__":
    paper.main_guard(main)
