"""Table 5: S2E against ASNG, the weight-sharing variant of natural gradient (Appendix B.2).

ASNG (:mod:`s2e_jax.asng`) trains one pair of networks shared by every θ, alternating updates of w and
θ; its final schedule (the mean of p_θ) is then trained from scratch, like S2E's searched schedule.
S2E is Newton's search on the eq. (4) space followed by Co-teaching with the best schedule (the same
runs as ``fig3.py``). Both are trained with the scale's seeds. Writes ``table5.md`` (final test
accuracy, mean ± std, with the paper's CIFAR-10 row when the data set is CIFAR-10, and the search cost
in wall-clock seconds) and ``table5.png`` (the R(t) of each).

    python experiments/table5.py --dataset ../shared/data/mnist.npz --scale cpu
"""
from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import paper  # noqa: E402

from s2e_jax import asng  # noqa: E402
from s2e_jax import runs as runs_lib  # noqa: E402


def asng_run(study: paper.Study, kind: str, rate: float, seed: int) -> dict:
    """ASNG with its retraining, cached in ``asng/<noise>-seed<seed>``."""
    out = study.path("asng", f"{paper.noise_key(kind, rate)}-seed{seed}", "")
    cfg = asng.AsngConfig(study.config(kind, rate, seed=seed), space=study.space("s2e"), out=out)
    t0 = time.time()
    res = asng.run(cfg)
    print(f"  asng {os.path.relpath(out, study.root)}: test {res['test_acc']:.4f} ({time.time() - t0:.0f} s)",
          file=sys.stderr)
    return res


def main(argv=None):
    args = paper.parser(__doc__).parse_args(argv)
    study = paper.study_from_args(args)
    sc = study.scale
    fig, axes = paper.panels(len(sc.noises))
    rows = []
    for ax, (kind, rate) in zip(axes, sc.noises):
        s2e = study.method_runs("s2e", kind, rate)
        search_secs = sum(t["seconds"] for t in runs_lib.read_jsonl(
            os.path.join(study.s2e_search_dir(kind, rate), "newton", "trials.jsonl")))
        with open(os.path.join(study.s2e_search_dir(kind, rate), "newton", "best_schedule.json")) as f:
            s2e_curve = json.load(f)["curve"]
        asngs = [asng_run(study, kind, rate, seed) for seed in sc.asng_seeds]
        rows.append(dict(
            noise=paper.noise_label(kind, rate),
            s2e=paper.mean_std([r["summary"]["final_test_acc"] for r in s2e]),
            s2e_best=paper.mean_std([r["summary"]["best_test_acc"] for r in s2e]),
            asng=paper.mean_std([a["retrain"]["final_test_acc"] for a in asngs]),
            asng_best=paper.mean_std([a["retrain"]["best_test_acc"] for a in asngs]),
            shared=paper.mean_std([a["shared"]["final_test_acc"] for a in asngs]),
            s2e_secs=search_secs, asng_secs=float(np.mean([a["seconds"] for a in asngs]))))
        t = np.arange(sc.epochs)
        ax.plot(t, s2e_curve, lw=2, label="S2E (Newton, best)")
        for i, a in enumerate(asngs):
            ax.plot(t, a["curve"], lw=1, ls="--", label=f"ASNG (mean of p_θ), seed {sc.asng_seeds[i]}")
        ax.plot(t, paper.coteaching_curve(study, kind, rate), "k:", label="Co-teaching (eq. 1)")
        ax.set(title=paper.noise_label(kind, rate), xlabel="epoch t", ylabel="R(t)", ylim=(0, 1.05))
    paper.save(fig, study, "table5.png", f"Table 5 — R(t) of S2E and ASNG, {study.dataset}, scale {sc.name}")
    ref = paper.PAPER_TABLE5.get(paper.family(study.dataset), {})
    table = study.header("Table 5: test accuracy (%) of S2E and ASNG (weight sharing), mean ± std over seeds (ASNG: seeds " + str(list(sc.asng_seeds)) + ")")
    table += ("| noise | S2E final | S2E best | ASNG final (retrained) | ASNG best (retrained) | "
              "ASNG shared networks, final | S2E search s | ASNG search s |" + (" paper S2E | paper ASNG |" if ref else "")
              + "\n" + "|---" * (8 + (2 if ref else 0)) + "|\n")
    for r in rows:
        table += (f"| {r['noise']} | {paper.fmt(r['s2e'])} | {paper.fmt(r['s2e_best'])} | {paper.fmt(r['asng'])} | "
                  f"{paper.fmt(r['asng_best'])} | {paper.fmt(r['shared'])} | {r['s2e_secs']:.0f} | "
                  f"{r['asng_secs']:.0f} |")
        if ref:
            table += f" {ref[r['noise']]['s2e']:.2f} | {ref[r['noise']]['asng']:.2f} |" if r["noise"] in ref else " | |"
        table += "\n"
    table += ("\nS2E search s: the wall time of all trainings of S2E's search (one seed); ASNG search s: one "
              "ASNG training (mean over seeds), without its retraining.\n")
    study.write("table5.md", table)


if __name__ == "__main__":
    paper.main_guard(main)
