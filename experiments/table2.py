"""Table 2: best test accuracy of the search-space designs (section 4.2.1), with random search for all.

Spaces: Co-teaching's eq. (1), Single (one basis function of Table 1; the best of the four is
reported, as the paper does), RBF and MLP (4 hidden units, sigmoid output), and S2E's eq. (4). Each is
searched by random search with the same number of trainings; the reported number is the best test
accuracy over all epochs of the trial with the best validation accuracy (the paper's Table 2 reports
the best test accuracy over all epochs). Writes ``table2.md`` (with the paper's rows for the data set
next to ours) and ``table2.png`` (the best R(t) per space).

    python experiments/table2.py --dataset ../shared/data/mnist.npz --scale cpu
"""
from __future__ import annotations

import json
import os
import sys


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paper  # noqa: E402

from s2e_jax import runs as runs_lib  # noqa: E402

COLUMNS = ("coteaching", "single", "rbf", "mlp", "s2e")
NAMES = dict(coteaching="Co-teaching", single="Single", rbf="RBF", mlp="MLP", s2e="S2E")


def best_trial(search_dir: str) -> dict:
    """The finished full-length trial with the best validation accuracy."""
    trials = [t for t in runs_lib.read_jsonl(os.path.join(search_dir, "random", "trials.jsonl"))
              if not t["failed"]]
    return max(trials, key=lambda t: t["val_acc"])


def main(argv=None):
    p = paper.parser(__doc__)
    p.add_argument("--samples", type=int, default=None, help="random-search trainings per space "
                   "(default: the scale's)")
    args = p.parse_args(argv)
    study = paper.study_from_args(args)
    sc = study.scale
    n = args.samples or sc.space_samples
    fig, axes = paper.panels(len(sc.noises))
    rows = []
    for ax, (kind, rate) in zip(axes, sc.noises):
        res = {}
        for space in paper.TABLE2_SPACES:
            folder = os.path.join("table2", paper.noise_key(kind, rate), space)
            study.search(kind, rate, "random", study.space(space), iterations=1, samples=n, folder=folder)
            res[space] = best_trial(study.path(folder, ""))
        singles = [res[f"single{i}"] for i in range(1, 5)]
        res["single"] = max(singles, key=lambda t: t["best_test_acc"])  # the paper: best of the four
        res["single"]["which"] = f"f{1 + singles.index(res['single'])}"
        rows.append((paper.noise_label(kind, rate), res))
        for col in COLUMNS:
            ax.plot(res[col]["curve"], label=NAMES[col] + (f" ({res[col]['which']})" if col == "single" else ""))
        ax.set(title=paper.noise_label(kind, rate), xlabel="epoch t", ylabel="R(t)", ylim=(0, 1.05))
    paper.save(fig, study, "table2.png", f"Table 2 — best R(t) per search space (random search, {n} "
               f"trainings each), {study.dataset}, scale {sc.name}")
    ref = paper.PAPER_TABLE2.get(paper.family(study.dataset), {})
    table = study.header(f"Table 2: best test accuracy (%) per search space, random search with {n} "
                         "trainings per space (search seed 0)")
    table += "| noise | source | " + " | ".join(NAMES[c] for c in COLUMNS) + " |\n" + "|---" * (len(COLUMNS) + 2) + "|\n"
    for label, res in rows:
        best = max(COLUMNS, key=lambda c: res[c]["best_test_acc"])
        cells = [(f"**{100 * res[c]['best_test_acc']:.2f}**" if c == best else f"{100 * res[c]['best_test_acc']:.2f}")
                 for c in COLUMNS]
        table += f"| {label} | this project | " + " | ".join(cells) + " |\n"
        if label in ref:
            table += f"| {label} | paper | " + " | ".join(f"{ref[label][c]:.2f}" for c in COLUMNS) + " |\n"
    table += "\nValidation accuracy (last epoch) of the same trials, which chose them:\n\n"
    table += "| noise | " + " | ".join(NAMES[c] for c in COLUMNS) + " |\n" + "|---" * (len(COLUMNS) + 1) + "|\n"
    for label, res in rows:
        table += f"| {label} | " + " | ".join(f"{100 * res[c]['val_acc']:.2f}" for c in COLUMNS) + " |\n"
    table += ("\nSingle: the best of the four basis functions of Table 1 ("
              + ", ".join(f"{lab}: {res['single']['which']}" for lab, res in rows) + ").\n")
    study.write("table2.md", table)
    with open(study.path("table2.json"), "w") as f:
        json.dump({lab: {c: {k: res[c][k] for k in ("best_test_acc", "test_acc", "val_acc", "trial")}
                         for c in COLUMNS} for lab, res in rows}, f, indent=1)


if __name__ == "__main__":
    paper.main_guard(main)
