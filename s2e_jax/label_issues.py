"""Which training labels look wrong: ``label_issues.csv`` of a training.

Two signals of each training example, per network:

* its *selection frequency*: the fraction of the mini-batches it was in where the network kept it in
  its small-loss set (Algorithm 1, step 3; counted on the device by the trainer, ``Carry.selected``);
  small-loss selection is what Co-teaching relies on to tell clean labels from noisy ones;
* the final networks' probability of its given label (the self-confidence of Northcutt et al. 2021,
  "Confident learning"), and its loss rank.

``suspect_score = 1 - (mean p(given label) + mean selection frequency) / 2`` in [0, 1]; rows are
sorted by it, most suspect first (ties by index). ``is_issue`` flags the examples whose predicted
label (the networks' mean probability) is not the given one. docs/label_issues.md has the measured
precision and recall against known noise.
"""
from __future__ import annotations

import csv
import os

import numpy as np

COLUMNS_HEAD = ("index", "given_label", "predicted_label")


def suspect_table(given, probs, selected, seen) -> dict:
    """The report as ``{column: array [n]}``, most suspect first.

    Args:
      given: int [n], the training labels the networks were trained on.
      probs: float [N, n, C], each network's softmax on the training examples (eval mode).
      selected: [N, n], mini-batches in which network n kept example i; seen: [n], mini-batches with i.
    """
    given = np.asarray(given, np.int64)
    probs = np.asarray(probs, np.float64)
    selected = np.asarray(selected, np.float64)
    seen = np.asarray(seen, np.float64)
    n_nets, n = probs.shape[:2]
    if given.shape != (n,) or selected.shape != (n_nets, n) or seen.shape != (n,):
        raise ValueError(f"suspect_table: shapes do not agree: given {given.shape}, probs {probs.shape}, "
                         f"selected {selected.shape}, seen {seen.shape}")
    p_given = probs[:, np.arange(n), given]                         # [N, n]
    freq = selected / np.maximum(seen, 1.0)[None]                   # [N, n]; never in a batch: 0
    predicted = probs.mean(0).argmax(-1)
    loss = -np.log(np.maximum(p_given.mean(0), 1e-12))
    loss_rank = np.empty(n)
    loss_rank[np.argsort(loss, kind="stable")] = np.arange(n) / max(n - 1, 1)  # 0: smallest loss, 1: largest
    score = 1.0 - 0.5 * (p_given.mean(0) + freq.mean(0))
    order = np.lexsort((np.arange(n), -score))
    cols = dict(index=np.arange(n), given_label=given, predicted_label=predicted)
    for i in range(n_nets):
        cols[f"p_given_net{i + 1}"] = p_given[i]
    for i in range(n_nets):
        cols[f"selected_net{i + 1}"] = freq[i]
    cols.update(selection_frequency=freq.mean(0), loss_rank=loss_rank, suspect_score=score,
                is_issue=(predicted != given).astype(np.int64))
    return {k: v[order] for k, v in cols.items()}


def write_csv(path: str, table: dict):
    """Write the table atomically (temp file, rename)."""
    tmp = f"{path}.tmp{os.getpid()}"
    keys = list(table)
    n = len(table[keys[0]]) if keys else 0
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(keys)
        for j in range(n):
            w.writerow([int(table[k][j]) if np.issubdtype(table[k].dtype, np.integer) else f"{table[k][j]:.6g}"
                        for k in keys])
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def format_top(table: dict, k: int) -> str:
    """The ``k`` most suspect rows as an aligned text table (``--report-issues K``)."""
    k = min(int(k), len(table["index"]))
    head = ("index", "given", "predicted", "p(given)", "selected", "score")
    lines = [" ".join(f"{h:>9}" for h in head)]
    p_cols = [c for c in table if c.startswith("p_given_net")]
    for j in range(k):
        p = np.mean([table[c][j] for c in p_cols])
        lines.append(f"{table['index'][j]:>9} {table['given_label'][j]:>9} {table['predicted_label'][j]:>9} "
                     f"{p:>9.3f} {table['selection_frequency'][j]:>9.3f} {table['suspect_score'][j]:>9.3f}")
    return "\n".join(lines)
