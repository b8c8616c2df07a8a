"""Run directories: atomic JSON/text writes and the metrics CSV."""
import csv
import os

import numpy as np
import pytest

from s2e_jax import runs
from s2e_jax.config import save_json


def test_failed_json_and_text_writes_leave_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "summary.json"
    save_json({"a": 1}, str(path))
    with pytest.raises(TypeError):
        save_json({"a": object()}, str(path))  # json cannot write it
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()

    runs.atomic_write_text(str(tmp_path / "t.txt"), "old")
    with pytest.raises(TypeError):
        runs.atomic_write_text(str(tmp_path / "t.txt"), b"not text")
    assert sorted(os.listdir(tmp_path)) == ["summary.json", "t.txt"]
    assert (tmp_path / "t.txt").read_text() == "old"


def test_metrics_rows_keep_the_header_s_columns(tmp_path):
    run = runs.RunDir.create(str(tmp_path / "run"))
    run.append_metrics_row(0, dict(loss=1.0, acc=np.array([0.5, 0.7])))
    run.append_metrics_row(1, dict(acc=np.array([0.6, 0.8]), loss=0.5))  # other order
    run.append_metrics_row(2, dict(loss=0.25))  # a column missing: left empty
    with open(run.path("metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "acc", "acc_net1", "acc_net2"]
    assert [r["loss"] for r in rows] == ["1", "0.5", "0.25"]
    assert [r["acc_net2"] for r in rows] == ["0.7", "0.8", ""]
    with pytest.raises(ValueError, match=r"metrics.csv: this row has column\(s\) lr that the file's header lacks"):
        run.append_metrics_row(3, dict(loss=0.1, lr=1e-3))
    assert len(open(run.path("metrics.csv")).read().splitlines()) == 4  # nothing written
