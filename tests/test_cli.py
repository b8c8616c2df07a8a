"""The command line end to end on digits, and one clear message for each bad input."""
import json
import os

import numpy as np
import pytest

from s2e_jax.cli import main


def test_train_end_to_end(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--dataset", "digits", "--noise", "pair", "--noise-rate", "0.45", "--method",
               "coteaching", "--epochs", "3", "--seed", "0", "--out", str(out), "--no-progress"])
    assert rc == 0
    for name in ("config.json", "metrics.csv", "summary.json", "curves.png"):
        assert (out / name).stat().st_size > 0, name
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and "label_precision_net2" in rows[0]
    summary = json.loads((out / "summary.json").read_text())
    assert 0.0 <= summary["final_test_acc"] <= 1.0 and summary["epochs"] == 3
    assert abs(summary["actual_noise_rate"] - 0.45) < 0.06
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["noise"] == "pair" and cfg["model_resolved"] == "mlp"
    plan = json.loads((out / "execution.json").read_text())  # the resolved execution plan: no "auto"
    assert plan["conv_impl"] == "xla" and plan["pool_s2d"] is False and "auto" not in plan.values()
    # the same run directory is never overwritten
    before = (out / "summary.json").read_text()
    rc = main(["train", "--epochs", "1", "--out", str(out), "--no-progress"])
    assert rc == 2 and "out:" in capsys.readouterr().err
    assert (out / "summary.json").read_text() == before


def _npz(tmp_path, **over):
    rng = np.random.default_rng(0)
    d = dict(x_train=rng.integers(0, 255, (40, 8, 8, 1)).astype(np.uint8), y_train=rng.integers(0, 3, 40),
             x_test=rng.integers(0, 255, (20, 8, 8, 1)).astype(np.uint8), y_test=rng.integers(0, 3, 20))
    d.update(over)
    p = tmp_path / "d.npz"
    np.savez(p, **d)
    return str(p)


@pytest.mark.parametrize("args, field", [
    (["--dataset", "nosuchset"], "dataset"),
    (["--method", "nosuch"], "method"),
    (["--noise-rate", "1.0"], "noise_rate"),
    (["--noise-rate", "-0.1"], "noise_rate"),
    (["--batch-size", "100000"], "batch_size"),
    (["--epochs", "0"], "epochs"),
    (["--dataset", "/no/such/file.npz"], "dataset"),
    (["--label-file", "/no/such/labels.npy"], "label_file"),
    (["--input-norm", "zscore"], "input_norm"),
])
def test_bad_input_one_clear_message(args, field, capsys):
    rc = main(["train", "--epochs", "1", "--no-progress", *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("error: ") and field in err and "Traceback" not in err


def test_bad_npz_inputs(tmp_path, capsys):
    bad_nan = _npz(tmp_path, x_train=np.full((40, 8, 8, 1), np.nan))
    assert main(["train", "--dataset", bad_nan, "--epochs", "1", "--no-progress"]) == 2
    assert "x_train" in capsys.readouterr().err
    os.remove(bad_nan)
    bad_len = _npz(tmp_path, y_train=np.zeros(39, np.int64))
    assert main(["train", "--dataset", bad_len, "--epochs", "1", "--no-progress"]) == 2
    assert "y_train" in capsys.readouterr().err
    os.remove(bad_len)
    bad_label = _npz(tmp_path, y_train=np.full(40, -1))
    assert main(["train", "--dataset", bad_label, "--epochs", "1", "--no-progress"]) == 2
    assert "y_train" in capsys.readouterr().err


def test_label_file_out_of_range(tmp_path, capsys):
    p = tmp_path / "labels.npy"
    np.save(p, np.full(1078, 11))
    assert main(["train", "--label-file", str(p), "--epochs", "1", "--no-progress"]) == 2
    assert "label_file" in capsys.readouterr().err


def test_npz_dataset_trains(tmp_path):
    p = _npz(tmp_path)
    out = tmp_path / "r"
    assert main(["train", "--dataset", p, "--epochs", "2", "--batch-size", "16", "--noise", "symmetric",
                 "--noise-rate", "0.2", "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["num_classes"] == 3
