"""What a training leaves: saved networks and predictions, checkpoints and resume, the label report."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import s2e_jax
from s2e_jax import checkpoint, data, inference, label_issues
from s2e_jax.config import ConfigError, TrainConfig
from s2e_jax.train import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("take") / "run")
    res = train(TrainConfig(dataset="digits", noise="pair", noise_rate=0.45, epochs=12, progress=False, out=out))
    return out, res


# ------------------------------------------------------------------ saved networks, predictions
def test_loaded_networks_reproduce_the_final_test_accuracy(run_dir):
    out, res = run_dir
    summary = json.load(open(os.path.join(out, "summary.json")))
    model = s2e_jax.load(out)
    ds = data.load_digits()
    n = len(ds.y_test)
    for i, acc in enumerate(summary["final_test_acc_per_net"]):
        correct = int((model.predict(ds.x_test, net=i) == ds.y_test).sum())
        assert correct == round(acc * n), (i, correct, acc * n)
    mean_p = model.predict_proba(ds.x_test)
    np.testing.assert_allclose(mean_p, 0.5 * (model.predict_proba(ds.x_test, net=0)
                                              + model.predict_proba(ds.x_test, net=1)), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(mean_p.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(model.predict(ds.x_test), mean_p.argmax(1))
    # (n, H, W) without the channel axis is read as train reads it
    np.testing.assert_array_equal(model.predict(ds.x_test[..., 0]), model.predict(ds.x_test))


def test_predict_refuses_bad_images_and_runs_without_networks(run_dir, tmp_path):
    out, _ = run_dir
    model = s2e_jax.load(out)
    with pytest.raises(ConfigError, match=r"image shape do not match .* trained on \(8, 8, 1\)"):
        model.predict(np.zeros((2, 9, 8, 1), np.uint8))
    with pytest.raises(ConfigError, match=r"channels do not match"):
        model.predict(np.zeros((2, 8, 8, 3), np.uint8))
    with pytest.raises(ConfigError, match=r"net: must be an integer in \[0, 1\]"):
        model.predict(np.zeros((2, 8, 8, 1), np.uint8), net=2)
    with pytest.raises(ConfigError, match="holds no saved networks"):
        s2e_jax.load(str(tmp_path))
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    for root, _dirs, files in os.walk(broken / "model"):
        for f in files:
            with open(os.path.join(root, f), "wb") as fh:
                fh.write(b"garbage")
    with pytest.raises(ConfigError, match="cannot read the saved networks"):
        s2e_jax.load(str(broken))


def test_predict_command_writes_one_probability_per_class(run_dir, tmp_path):
    out, _ = run_dir
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    preds = tmp_path / "preds.csv"
    cmd = [sys.executable, "-m", "s2e_jax", "predict", "--run", out, "--data", "digits", "--split", "val",
           "--out", str(preds)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(open(preds)))
    assert rows[0] == ["index", "prediction"] + [f"p{c}" for c in range(10)]
    ds = data.load_digits()
    assert len(rows) - 1 == len(ds.y_val)
    want = s2e_jax.load(out).predict(ds.x_val)
    np.testing.assert_array_equal([int(r[1]) for r in rows[1:]], want)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr


# ------------------------------------------------------------------ the label report
def test_suspect_table_orders_and_columns_on_a_constructed_case():
    given = np.array([0, 1, 2, 1])
    probs = np.zeros((2, 4, 3))
    probs[:, 0] = [0.9, 0.05, 0.05]       # confident in its label, always selected: least suspect
    probs[:, 1] = [0.8, 0.1, 0.1]         # predicted 0, given 1, rarely selected: most suspect
    probs[:, 2] = [0.2, 0.2, 0.6]
    probs[:, 3] = [0.3, 0.4, 0.3]
    selected = np.array([[10, 1, 8, 5], [10, 0, 6, 5]], float)
    seen = np.array([10, 10, 10, 10], float)
    t = label_issues.suspect_table(given, probs, selected, seen)
    assert list(t) == ["index", "given_label", "predicted_label", "p_given_net1", "p_given_net2",
                       "selected_net1", "selected_net2", "selection_frequency", "loss_rank", "suspect_score",
                       "is_issue"]
    np.testing.assert_array_equal(t["index"], [1, 3, 2, 0])
    np.testing.assert_allclose(t["suspect_score"], [1 - (0.1 + 0.05) / 2, 1 - (0.4 + 0.5) / 2,
                                                    1 - (0.6 + 0.7) / 2, 1 - (0.9 + 1.0) / 2])
    np.testing.assert_array_equal(t["is_issue"], [1, 0, 0, 0])
    np.testing.assert_array_equal(t["predicted_label"], [0, 1, 2, 0])
    np.testing.assert_allclose(t["loss_rank"], [1.0, 2 / 3, 1 / 3, 0.0])
    with pytest.raises(ValueError, match="shapes do not agree"):
        label_issues.suspect_table(given[:3], probs, selected, seen)


def test_training_writes_the_label_report_sorted_most_suspect_first(run_dir):
    out, res = run_dir
    t = inference.read_label_issues(out)
    assert sorted(t["index"]) == list(range(res.summary["n_train"]))
    assert np.all(np.diff(t["suspect_score"]) <= 1e-6)
    assert 0 <= t["selection_frequency"].min() and t["selection_frequency"].max() <= 1
    np.testing.assert_array_equal(t["index"], res.label_issues["index"])
    # the given labels are the noisy ones the networks trained on
    np.testing.assert_array_equal(t["given_label"], np.asarray(res.prepared.data.y_train)[t["index"]])
    # the selection counts are counted by the trainer: Co-teaching at pair 45% keeps ~55% late on
    assert 0.5 < res.label_issues["selection_frequency"].mean() < 1.0
    # flipped labels are more suspect than kept ones on average
    noisy = np.asarray(res.prepared.data.clean)[t["index"]] == 0
    assert t["suspect_score"][noisy].mean() > t["suspect_score"][~noisy].mean() + 0.1


# ------------------------------------------------------------------ checkpoints and resume
def test_checkpoint_policy():
    now = [0.0]
    every = checkpoint.Policy(3, clock=lambda: now[0])
    assert [e for e in range(1, 10) if every.due(e, 9)] == [3, 6]
    never = checkpoint.Policy(0, clock=lambda: now[0])
    assert not any(never.due(e, 9) for e in range(1, 10))
    auto = checkpoint.Policy("auto", clock=lambda: now[0])
    now[0] = checkpoint.AUTO_MIN_SECONDS - 1
    assert not auto.due(1, 100)
    now[0] = checkpoint.AUTO_MIN_SECONDS
    assert auto.due(2, 100)
    auto.saved(2.0)  # a save of 2 s: the next one after 50 x 2 s = 100 s
    now[0] += 99
    assert not auto.due(3, 100)
    now[0] += 1
    assert auto.due(4, 100) and not auto.due(100, 100)


def _train_cmd(out, epochs=150, seed=0):
    return [sys.executable, "-m", "s2e_jax", "train", "--dataset", "digits", "--epochs", str(epochs),
            "--checkpoint-every", "5", "--seed", str(seed), "--no-progress", "--out", out]


def _metric_rows(out):
    p = os.path.join(out, "metrics.csv")
    return max(0, len(open(p).read().splitlines()) - 1) if os.path.exists(p) else 0


def _newest_checkpoint(out):
    ck = os.path.join(out, "checkpoints")
    steps = [int(d) for d in os.listdir(ck) if d.isdigit()] if os.path.isdir(ck) else []
    return max(steps, default=0)


def _kill_after(cmd, out, epoch, env):
    """Start ``cmd``, kill -9 it once the checkpoint after ``epoch`` epochs (or a later one) exists, and
    check it had not finished. (The number of checkpoint folders is no clock: only the newest
    ``checkpoint.KEEP`` are kept.)"""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if _newest_checkpoint(out) >= epoch:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(os.path.join(out, "summary.json"))
    rows = _metric_rows(out)
    assert rows < 150, rows
    return rows


@pytest.mark.slow
def test_kill_9_twice_then_resume_gives_the_same_files_bit_for_bit(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
    ref, out = str(tmp_path / "ref"), str(tmp_path / "killed")
    subprocess.run(_train_cmd(ref), env=env, check=True, capture_output=True, timeout=600)
    first = _kill_after(_train_cmd(out), out, 5, env)
    # resumed, then killed again three checkpoints later
    second = _kill_after(_train_cmd(out), out, _newest_checkpoint(out) + 15, env)
    assert second > first
    r = subprocess.run(_train_cmd(out), env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    timing = json.load(open(os.path.join(out, "timing.json")))
    assert timing["resumed_from_epoch"] >= 15
    for name in ("metrics.csv", "summary.json", "label_issues.csv"):
        assert open(os.path.join(out, name), "rb").read() == open(os.path.join(ref, name), "rb").read(), name
    # a finished run is not run again, another config is refused: nothing changes
    before = open(os.path.join(out, "metrics.csv")).read()
    for cmd, msg in ((_train_cmd(out), "finished training"), (_train_cmd(out, seed=1), "another config")):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert open(os.path.join(out, "metrics.csv")).read() == before


def test_resume_in_process_equals_uninterrupted(tmp_path, monkeypatch):
    """A training that dies in epoch 7 (checkpoint at epoch 4, metric rows written after it) resumes to
    the uninterrupted result, its checkpoints removed at the end; a damaged checkpoint is one message."""
    from s2e_jax import train as train_lib

    cfg = TrainConfig(dataset="digits", epochs=8, checkpoint_every=4, progress=False)
    ref = train(cfg.replace(out=str(tmp_path / "ref")))
    out = str(tmp_path / "cut")
    orig, calls = train_lib.Trainer.run_epoch, [0]

    def dying(self, carry, data):
        calls[0] += 1
        if calls[0] == 7:
            raise KeyboardInterrupt
        return orig(self, carry, data)

    monkeypatch.setattr(train_lib.Trainer, "run_epoch", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg.replace(out=out))
    monkeypatch.undo()
    assert _metric_rows(out) == 6 and os.listdir(os.path.join(out, "checkpoints")) == ["4"]
    damaged = str(tmp_path / "damaged")
    shutil.copytree(out, damaged)
    res = train(cfg.replace(out=out))
    assert json.load(open(os.path.join(out, "timing.json")))["resumed_from_epoch"] == 4
    assert open(os.path.join(out, "metrics.csv")).read() == open(os.path.join(ref.run_dir, "metrics.csv")).read()
    assert res.summary["final_test_acc"] == ref.summary["final_test_acc"]
    assert not os.path.exists(os.path.join(out, "checkpoints"))
    for root, _dirs, files in os.walk(os.path.join(damaged, "checkpoints", "4")):
        for f in files:
            open(os.path.join(root, f), "wb").write(b"x")
    with pytest.raises(ConfigError, match="checkpoint: cannot (open|restore) .*checkpoints"):
        train(cfg.replace(out=damaged))


def test_a_search_training_resumes_from_its_checkpoint(tmp_path, monkeypatch):
    """A search killed in the middle of a training loses only the epochs since that training's last
    checkpoint, and ends with the trials of an uninterrupted search."""
    import dataclasses

    from s2e_jax import search_run
    from s2e_jax import train as train_lib

    cfg = search_run.SearchConfig(train=TrainConfig(dataset="digits", epochs=12, checkpoint_every=3, progress=False),
                                  algo="random", iterations=1, samples=2, out=str(tmp_path / "cut"))
    search_run.run(dataclasses.replace(cfg, out=str(tmp_path / "ref")))
    orig, calls = train_lib.Trainer.run_epoch, [0]

    def counting(limit):
        def run_epoch(self, carry, data):
            calls[0] += 1
            if calls[0] == limit:
                raise KeyboardInterrupt  # the process dies in epoch 8 of the second training
            return orig(self, carry, data)
        return run_epoch

    monkeypatch.setattr(train_lib.Trainer, "run_epoch", counting(12 + 8))
    with pytest.raises(KeyboardInterrupt):
        search_run.run(cfg)
    ck = tmp_path / "cut" / "random" / "checkpoints"
    assert sorted(os.listdir(ck)) == ["trial_1"]  # trial 0 recorded, its checkpoints removed
    assert "6" in os.listdir(ck / "trial_1" / "checkpoints")
    calls[0] = 0
    monkeypatch.setattr(train_lib.Trainer, "run_epoch", counting(-1))
    search_run.run(cfg)
    assert calls[0] == 12 - 6  # resumed from epoch 6
    assert not os.listdir(ck)

    def trials(root):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in open(os.path.join(root, "random", "trials.jsonl"))]
    assert trials(tmp_path / "cut") == trials(tmp_path / "ref")


@pytest.mark.parametrize("trials", ["sequential", "one_program"])
def test_a_search_killed_after_a_checkpoint_resumes_from_it(tmp_path, monkeypatch, trials):
    """Both ways of running a search's trainings (in sequence, K in one program) save checkpoints
    and resume from them, to the trials of an uninterrupted search."""
    import dataclasses

    from s2e_jax import search_run

    cfg = search_run.SearchConfig(train=TrainConfig(dataset="digits", epochs=8, checkpoint_every=2, progress=False),
                                  algo="random", iterations=1, samples=2, out=str(tmp_path / "cut"), trials=trials)
    search_run.run(dataclasses.replace(cfg, out=str(tmp_path / "ref")))
    save, restore, saves, restored = (checkpoint.TrainingCheckpoints.save, checkpoint.TrainingCheckpoints.restore,
                                      [], [])

    def dying_save(self, epochs_done, carry, rows):
        out = save(self, epochs_done, carry, rows)
        saves.append(epochs_done)
        if len(saves) == 2:
            raise KeyboardInterrupt  # killed right after its second checkpoint (epoch 4 of the first)
        return out

    monkeypatch.setattr(checkpoint.TrainingCheckpoints, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        search_run.run(cfg)
    assert saves == [2, 4]

    def recording_restore(self, like):
        out = restore(self, like)
        restored.append(None if out is None else len(out[1]))
        return out

    monkeypatch.setattr(checkpoint.TrainingCheckpoints, "restore", recording_restore)
    search_run.run(cfg)
    assert restored[0] == 4

    def trials_of(root):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"}
                for line in open(os.path.join(root, "random", "trials.jsonl"))]
    assert trials_of(tmp_path / "cut") == trials_of(tmp_path / "ref")
    assert not os.listdir(tmp_path / "cut" / "random" / "checkpoints")


def test_report_issues_prints_the_most_suspect_labels(tmp_path, capsys):
    from s2e_jax import cli

    out = str(tmp_path / "r")
    assert cli.main(["train", "--dataset", "digits", "--epochs", "3", "--noise", "pair", "--noise-rate", "0.45",
                     "--report-issues", "4", "--no-progress", "--out", out]) == 0
    text = capsys.readouterr().out
    lines = text.split("the 4 most suspect training labels:\n", 1)[1].strip().splitlines()
    assert lines[0].split() == ["index", "given", "predicted", "p(given)", "selected", "score"]
    table = inference.read_label_issues(out)
    assert [int(line.split()[0]) for line in lines[1:]] == list(table["index"][:4])
    assert cli.main(["train", "--dataset", "digits", "--epochs", "3", "--report-issues", "-1"]) == 2
