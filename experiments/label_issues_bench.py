"""Benchmark: how well does ``label_issues.csv`` find the flipped labels? (issue 20, part 3)

For every data set x noise x seed, where the truly flipped training labels are known:

* **ours**: one Co-teaching training (``s2e_jax.train.train``); its label report
  (:func:`s2e_jax.label_issues.suspect_table`) is scored against the true noise mask
  (``prepared.data.clean == 0``, looked up by the report's ``index`` column): ``is_issue`` as the
  binary decision, ``suspect_score`` for AUROC; plus alternatives computed from the same columns
  (AUROC of ``1 - mean p_given`` and of ``1 - selection_frequency``; the binary rule "the top
  ceil(tau * n) rows by ``suspect_score``" with tau = the noise rate the run used).
* **cleanlab** 2.x: ``cleanlab.filter.find_label_issues`` (its defaults) fed with out-of-sample
  predicted probabilities the way cleanlab documents it: k = 5 stratified folds, k trainings of the
  ``standard`` method of this same trainer, each on 4/5 of the noisy training set (same epochs and
  learning-rate schedule), each predicting its held-out fifth. AUROC uses cleanlab's
  ``rank.get_label_quality_scores`` (self-confidence).

Seconds are wall-clock of the trainings (JIT compilation included, as a user pays it) plus the
label-finding step; data loading is excluded for both. The machine is shared, so seconds are noisy.

Needs ``pip install -r requirements-bench.txt`` (cleanlab). Real MNIST is read from
``/work/shared/data/mnist.npz`` (or ``--mnist PATH``); it is not shipped with the project: without
the file the MNIST rows are skipped with a message.

    python experiments/label_issues_bench.py                       # digits (3 seeds) + MNIST (1 seed)
    python experiments/label_issues_bench.py --datasets digits --seeds 0
    python experiments/label_issues_bench.py --table-only          # print the table of rows.jsonl again

Each finished setting is appended to ``results/label_issues/rows.jsonl`` (a rerun skips settings
already there), and the table is rewritten after each one.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

DEFAULT_MNIST = os.path.join(os.path.dirname(REPO), "shared", "data", "mnist.npz")
NOISES = (("symmetric", 0.2), ("symmetric", 0.5), ("pair", 0.45))
K_FOLDS = 5


def scale_of(dataset: str) -> dict:
    """Epochs and schedule: digits at the library's defaults (200 epochs); MNIST at the paper
    scripts' ``cpu`` scale (experiments/paper.py: 10 epochs, decay from 4, t_k = 10 * 10 / 200)."""
    if dataset == "digits":
        return dict(epochs=200, decay_start=80, t_k=10.0)
    return dict(epochs=10, decay_start=4, t_k=10.0 * 10 / 200)


def binary_scores(truth, flagged) -> dict:
    from sklearn.metrics import f1_score, precision_score, recall_score

    truth, flagged = np.asarray(truth, bool), np.asarray(flagged, bool)
    return dict(precision=float(precision_score(truth, flagged, zero_division=0)),
                recall=float(recall_score(truth, flagged, zero_division=0)),
                f1=float(f1_score(truth, flagged, zero_division=0)), flagged=int(flagged.sum()))


def auroc(truth, score) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(np.asarray(truth, bool), np.asarray(score, np.float64)))


def evaluate_report(table: dict, noisy_by_index: np.ndarray, tau: float) -> dict:
    """Scores of our report's rules against the true noise mask (indexed by the ``index`` column)."""
    truth = noisy_by_index[np.asarray(table["index"])]
    n = len(truth)
    p_cols = [c for c in table if c.startswith("p_given_net")]
    p_given = np.mean([table[c] for c in p_cols], axis=0)
    out = dict(is_issue=binary_scores(truth, table["is_issue"] == 1))
    top = np.zeros(n, bool)
    top[np.argsort(-np.asarray(table["suspect_score"]), kind="stable")[:math.ceil(tau * n)]] = True
    out["top_tau"] = binary_scores(truth, top)
    out["auroc_suspect_score"] = auroc(truth, table["suspect_score"])
    out["auroc_1_minus_p_given"] = auroc(truth, 1.0 - p_given)
    out["auroc_1_minus_selection"] = auroc(truth, 1.0 - np.asarray(table["selection_frequency"]))
    return out


def heldout_probs(ds_noisy, base_cfg, seed, k=K_FOLDS):
    """cleanlab's out-of-sample probabilities: k standard trainings, each predicting its held-out
    fold. Returns ``(pred_probs [n, C], seconds of the k trainings and predictions)``."""
    import jax
    from sklearn.model_selection import StratifiedKFold

    from s2e_jax.train import train

    y = np.asarray(ds_noisy.y_train)
    probs = np.zeros((len(y), ds_noisy.num_classes), np.float64)
    cfg = base_cfg.replace(method="standard", noise="none", noise_rate=0.0, tau=None)
    seconds = 0.0
    for fold, (tr, te) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y)):
        # the fold's training set keeps the noisy labels as they are (noise "none": nothing flipped
        # again; y_train_clean := the noisy labels, so no clean label reaches the training)
        sub = dataclasses.replace(ds_noisy, x_train=ds_noisy.x_train[tr], y_train=y[tr], y_train_clean=y[tr])
        t0 = time.time()
        res = train(cfg.replace(seed=seed * 100 + fold), dataset=sub)
        prep = res.prepared
        x_te = jax.device_put(ds_noisy.x_train[te])
        probs[te] = prep.trainer.predict_proba(res.carry, prep.data, x_te)[0]
        seconds += time.time() - t0
    return probs, seconds


def run_setting(dataset: str, ds_clean, noise: str, rate: float, seed: int, path: str = "digits",
                dump: str | None = None) -> dict:
    import cleanlab
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    from s2e_jax import data as data_lib
    from s2e_jax.config import TrainConfig
    from s2e_jax.train import train

    scale = scale_of(dataset)
    cfg = TrainConfig(dataset=path, noise=noise, noise_rate=rate,
                      seed=seed, progress=False, **scale)
    # ours: one Co-teaching training (its label report is built inside train())
    t0 = time.time()
    res = train(cfg.replace(method="coteaching"), dataset=ds_clean)
    ours_seconds = time.time() - t0
    noisy_mask = np.asarray(res.prepared.data.clean) == 0            # by training index
    ours = evaluate_report(res.label_issues, noisy_mask, tau=rate)
    ours.update(seconds=ours_seconds, final_test_acc=res.summary["final_test_acc"])

    # cleanlab: the same noisy labels (prepare() applies noise with noise_seed = seed)
    ds_noisy, is_clean = data_lib.apply_noise(ds_clean, noise, rate, seed=seed)
    assert np.array_equal(np.asarray(ds_noisy.y_train), np.asarray(res.prepared.data.y_train)), "noisy labels differ"
    assert np.array_equal(~is_clean, noisy_mask)
    probs, cv_seconds = heldout_probs(ds_noisy, cfg, seed)
    y = np.asarray(ds_noisy.y_train)
    t0 = time.time()
    issues = find_label_issues(labels=y, pred_probs=probs, n_jobs=1)  # no fork: JAX is multithreaded
    quality = get_label_quality_scores(y, probs)
    find_seconds = time.time() - t0
    cl = dict(is_issue=binary_scores(noisy_mask, issues), auroc=auroc(noisy_mask, 1.0 - quality),
              seconds=cv_seconds + find_seconds, cv_seconds=cv_seconds, find_seconds=find_seconds,
              heldout_acc_vs_clean=float((probs.argmax(1) == ds_clean.y_train).mean()),
              version=cleanlab.__version__)
    if dump:  # the raw material, to score other rules without training again
        os.makedirs(dump, exist_ok=True)
        np.savez_compressed(os.path.join(dump, f"{dataset}_{noise}{rate:g}_s{seed}.npz"),
                            noisy=noisy_mask, cleanlab_probs=probs.astype(np.float32), labels=y,
                            cleanlab_issues=issues,
                            **{f"report_{k}": v for k, v in res.label_issues.items()})
    return dict(dataset=dataset, noise=noise, rate=rate, seed=seed, n_train=int(len(y)),
                actual_noise_rate=float(noisy_mask.mean()), scale=scale, ours=ours, cleanlab=cl)


# ----------------------------------------------------------------------------------- the table
def _ms(vals, fmt="{:.3f}"):
    vals = np.asarray(vals, float)
    if len(vals) == 1:
        return fmt.format(vals[0])
    return f"{fmt.format(vals.mean())} ± {fmt.format(vals.std(ddof=1))}"


def render(rows: list, command: str) -> str:
    groups = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["noise"], r["rate"]), []).append(r)
    order = {"digits": 0}
    keys = sorted(groups, key=lambda k: (order.get(k[0], 1), k[0], k[1] != "symmetric", k[2]))
    lines = [
        "| data set | noise | method | seeds | precision | recall | F1 | AUROC | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key in keys:
        g = groups[key]
        ds, noise, rate = key
        where = f"{ds} | {noise} {rate:.0%}"
        seeds = ",".join(str(r["seed"]) for r in g)

        def row(name, bin_key, auc, secs):
            b = [bin_key(r) for r in g]
            lines.append(f"| {where} | {name} | {seeds} | {_ms([x['precision'] for x in b])} | "
                         f"{_ms([x['recall'] for x in b])} | {_ms([x['f1'] for x in b])} | "
                         f"{_ms([auc(r) for r in g])} | {_ms([secs(r) for r in g], '{:.1f}')} |")

        row("ours: Co-teaching, `is_issue` (AUROC: `suspect_score`)", lambda r: r["ours"]["is_issue"],
            lambda r: r["ours"]["auroc_suspect_score"], lambda r: r["ours"]["seconds"])
        row("ours: top ⌈τ·n⌉ by `suspect_score`", lambda r: r["ours"]["top_tau"],
            lambda r: r["ours"]["auroc_suspect_score"], lambda r: r["ours"]["seconds"])
        row(f"cleanlab `find_label_issues`, {K_FOLDS}-fold standard nets (AUROC: 1 − self-confidence)",
            lambda r: r["cleanlab"]["is_issue"], lambda r: r["cleanlab"]["auroc"], lambda r: r["cleanlab"]["seconds"])
    alt = ["", "AUROC of other scores from the same report columns (same runs):", "",
           "| data set | noise | `suspect_score` | 1 − mean `p_given` (≡ `loss_rank`) | 1 − `selection_frequency` | "
           "cleanlab | flagged: `is_issue` / top-τ / cleanlab / true | actual noise | Co-teaching test acc | "
           "cleanlab held-out acc |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for key in keys:
        g = groups[key]
        ds, noise, rate = key
        fl = lambda f: f"{np.mean([f(r) for r in g]):.0f}"  # noqa: E731
        alt.append(f"| {ds} | {noise} {rate:.0%} | {_ms([r['ours']['auroc_suspect_score'] for r in g])} | "
                   f"{_ms([r['ours']['auroc_1_minus_p_given'] for r in g])} | "
                   f"{_ms([r['ours']['auroc_1_minus_selection'] for r in g])} | {_ms([r['cleanlab']['auroc'] for r in g])} | "
                   f"{fl(lambda r: r['ours']['is_issue']['flagged'])} / {fl(lambda r: r['ours']['top_tau']['flagged'])} / "
                   f"{fl(lambda r: r['cleanlab']['is_issue']['flagged'])} / "
                   f"{fl(lambda r: round(r['actual_noise_rate'] * r['n_train']))} of {g[0]['n_train']} | "
                   f"{_ms([r['actual_noise_rate'] for r in g])} | {_ms([r['ours']['final_test_acc'] for r in g])} | "
                   f"{_ms([r['cleanlab']['heldout_acc_vs_clean'] for r in g])} |")
    versions = sorted({r["cleanlab"]["version"] for r in rows})
    scales = {r["dataset"]: r["scale"] for r in rows}
    head = [
        "# Label-issue detection: our label report vs cleanlab",
        "",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- Command: `{command}`",
        "- Hardware: 2-core AMD EPYC CPU, JAX CPU (machine shared with other jobs: seconds are noisy)",
        f"- cleanlab {', '.join(versions)}, JAX {_jax_version()}, Python {platform.python_version()}",
        "- Epochs: " + "; ".join(f"{d}: {s['epochs']} epochs, lr decay from {s['decay_start']}, t_k {s['t_k']:g}"
                                 for d, s in scales.items()) + " (both methods)",
        "- Mean ± standard deviation over the seeds listed (one noisy label set per seed). Precision, recall, "
        "F1 of the binary decision and AUROC of the score, against the true noise mask (labels that differ "
        "from the clean ones). Seconds: ours = one Co-teaching training incl. the report; cleanlab = "
        f"{K_FOLDS} standard trainings + held-out predictions + `find_label_issues`.",
        "",
    ]
    return "\n".join(head + lines + alt) + "\n"


def _jax_version():
    import jax

    return jax.__version__


def load_rows(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", nargs="+", default=["digits", "mnist"], choices=["digits", "mnist"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds of digits")
    p.add_argument("--mnist-seeds", nargs="+", type=int, default=[0], help="seeds of MNIST")
    p.add_argument("--noises", nargs="+", default=[f"{k}:{r}" for k, r in NOISES], help="kind:rate")
    p.add_argument("--mnist", default=DEFAULT_MNIST, help="path of the real MNIST .npz")
    p.add_argument("--out", default=os.path.join(REPO, "results", "label_issues"))
    p.add_argument("--dump", default=None, help="also save each run's report columns, true noise mask and "
                   "cleanlab's held-out probabilities here (.npz)")
    p.add_argument("--table-only", action="store_true", help="only print the table of rows.jsonl (table.md is left as the last run wrote it)")
    args = p.parse_args(argv)
    command = "python experiments/label_issues_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    os.makedirs(args.out, exist_ok=True)
    rows_path, table_path = os.path.join(args.out, "rows.jsonl"), os.path.join(args.out, "table.md")
    rows = load_rows(rows_path)

    def write_table():
        if rows:
            text = render(rows, command.strip())
            with open(table_path, "w") as f:
                f.write(text)
            return text
        return ""

    if not args.table_only:
        try:
            import cleanlab  # noqa: F401
        except ImportError:
            sys.exit("cleanlab is not installed: pip install -r requirements-bench.txt")
        from s2e_jax import data as data_lib

        noises = [(s.split(":")[0], float(s.split(":")[1])) for s in args.noises]
        done = {(r["dataset"], r["noise"], r["rate"], r["seed"]) for r in rows}
        for dataset in args.datasets:
            if dataset == "mnist" and not os.path.isfile(args.mnist):
                print(f"skipping MNIST: {args.mnist} not found (the real MNIST is not shipped with the project; "
                      "pass --mnist PATH to an .npz with x_train, y_train, x_test, y_test)", flush=True)
                continue
            ds_clean = data_lib.load_dataset("digits" if dataset == "digits" else args.mnist,
                                     args.dump)
            for noise, rate in noises:
                for seed in (args.seeds if dataset == "digits" else args.mnist_seeds):
                    if (dataset, noise, rate, seed) in done:
                        continue
                    t0 = time.time()
                    r = run_setting(dataset, ds_clean, noise, rate, seed, "digits" if dataset == "digits" else args.mnist,
                                     args.dump)
                    rows.append(r)
                    with open(rows_path, "a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(f"{dataset} {noise} {rate:g} seed {seed}: ours F1 {r['ours']['is_issue']['f1']:.3f} "
                          f"(top-tau {r['ours']['top_tau']['f1']:.3f}, AUROC {r['ours']['auroc_suspect_score']:.3f}, "
                          f"{r['ours']['seconds']:.1f} s); cleanlab F1 {r['cleanlab']['is_issue']['f1']:.3f} "
                          f"(AUROC {r['cleanlab']['auroc']:.3f}, {r['cleanlab']['seconds']:.1f} s) "
                          f"[{time.time() - t0:.0f} s]", flush=True)
                    write_table()
    text = render(rows, command.strip()) if args.table_only and rows else write_table()
    print(text if text else "no rows yet")


if __name__ == "__main__":
    main()
