"""Figure 4: the R(t) that S2E learns per noise setting, against eq. (1) of MentorNet/Co-teaching/Co-teaching+.

Runs (or reuses) S2E's search (Algorithm 2: Newton on the eq. (4) space) per noise setting and plots
the best schedule found and the schedule of the final distribution's mean. Writes ``fig4.png`` and
``fig4.md`` (R at a few epochs and the fraction dropped at the end, against the noise rate).

    python experiments/fig4.py --dataset ../shared/data/mnist.npz --scale cpu
"""
from __future__ import annotations

import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paper  # noqa: E402

from s2e_jax import relaxation, schedules  # noqa: E402


def mean_curve(result: dict, epochs: int):
    """R(t) at the mean of the final p_theta (None when the search kept no theta)."""
    if "theta" not in result:
        return None
    space = schedules.get_space(result["space"])
    x = relaxation.mean(np.asarray(result["theta"], np.float32), space)
    return space.curve(np.asarray(x), epochs)


def main(argv=None):
    args = paper.parser(__doc__).parse_args(argv)
    study = paper.study_from_args(args)
    sc = study.scale
    fig, axes = paper.panels(len(sc.noises))
    rows = []
    for ax, (kind, rate) in zip(axes, sc.noises):
        path = study.s2e_schedule(kind, rate)
        with open(path) as f:
            best = np.asarray(json.load(f)["curve"])
        with open(os.path.join(study.s2e_search_dir(kind, rate), "newton", "result.json")) as f:
            mean = mean_curve(json.load(f), sc.epochs)
        co = paper.coteaching_curve(study, kind, rate)
        t = np.arange(sc.epochs)
        ax.plot(t, best, lw=2, label="S2E (best schedule found)")
        if mean is not None:
            ax.plot(t, mean, lw=1, label="S2E (mean of final p_θ)")
        ax.plot(t, co, "k--", label="MN / Co / Co+ (eq. 1)")
        ax.axhline(1 - rate, color="gray", ls=":", lw=0.8, label="1 − noise rate")
        ax.set(title=paper.noise_label(kind, rate), xlabel="epoch t", ylabel="R(t)", ylim=(0, 1.05))
        q = [0, sc.epochs // 4, sc.epochs // 2, (3 * sc.epochs) // 4, sc.epochs - 1]
        rows.append((paper.noise_label(kind, rate), rate, [best[i] for i in q], best[-1], co[-1]))
    paper.save(fig, study, "fig4.png", f"Figure 4 — learned R(t), {study.dataset}, scale {sc.name}")
    q = [0, sc.epochs // 4, sc.epochs // 2, (3 * sc.epochs) // 4, sc.epochs - 1]
    table = study.header("Figure 4: R(t) learned by S2E against eq. (1)")
    table += ("| noise | " + " | ".join(f"R({i})" for i in q) + " | dropped at the end: S2E | eq. (1) |\n"
              + "|---" * (len(q) + 3) + "|\n")
    for n, rate, rs, last, co_last in rows:
        table += (f"| {n} | " + " | ".join(f"{r:.3f}" for r in rs) +
                  f" | {1 - last:.1%} | {1 - co_last:.1%} |\n")
    table += ("\nThe paper (section 4.1.2): the learned R(t) is smaller on noisier data, and drops more "
              "than the noise rate late in training.\n")
    study.write("fig4.md", table)


if __name__ == "__main__":
    paper.main_guard(main)
