"""A search as a run: trials.jsonl, best_schedule.json reused by train, resume after a crash or kill -9."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from s2e_jax import search_run
from s2e_jax.config import ConfigError, ExecutionConfig, TrainConfig


def _cfg(out, algo="newton", iterations=3):
    t = TrainConfig(dataset="digits", noise="pair", noise_rate=0.45, epochs=3, batch_size=64,
                    decay_start=1, progress=False, seed=1)
    return search_run.SearchConfig(t, algo=algo, space="s2e", iterations=iterations, samples=2, out=str(out))


def _strip(recs):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in recs]


def _trials(out, algo="newton"):
    with open(os.path.join(out, algo, "trials.jsonl")) as f:
        return _strip([json.loads(line) for line in f])


def _killed_after_trials(n, run):
    """``run()`` killed (KeyboardInterrupt) right after the n-th line it appends to a trials.jsonl."""
    original, calls = search_run.runs.append_line, {"n": 0}

    def crashing_append(path, line):
        original(path, line)
        if path.endswith("trials.jsonl"):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt("simulated kill")

    search_run.runs.append_line = crashing_append
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        search_run.runs.append_line = original


def test_search_writes_its_run_dir_and_resumes_after_a_crash(tmp_path, small_digits):
    ref = search_run.run(_cfg(tmp_path / "ref"), small_digits)
    assert ref["trainings"] == 6
    for name in ("trials.jsonl", "state.json", "theta.jsonl", "best_schedule.json", "result.json"):
        assert (tmp_path / "ref" / "newton" / name).exists(), name
    for name in ("schedule.png", "search_efficiency.png", "search_config.json"):
        assert (tmp_path / "ref" / name).exists(), name
    plan = json.loads((tmp_path / "ref" / "newton" / "execution.json").read_text())  # "auto" resolved
    assert plan["one_program"] is False and plan["backend"] == "cpu" and "auto" not in plan.values()
    recs = _trials(tmp_path / "ref")
    assert len(recs) == 6 and all(len(r["curve"]) == 3 and r["curve"][0] == 1.0 for r in recs)

    # crash in the middle of iteration 2 (after its first training was recorded), then resume
    crashed = tmp_path / "crash"
    _killed_after_trials(3, lambda: search_run.run(_cfg(crashed), small_digits))
    assert len(_trials(crashed)) == 3
    resumed = search_run.run(_cfg(crashed), small_digits)
    assert _trials(crashed) == recs
    assert resumed["best_x"] == ref["best_x"] and resumed["theta"] == ref["theta"]


def test_finished_search_is_not_rerun_and_other_settings_are_refused(tmp_path, small_digits):
    out = tmp_path / "s"
    search_run.run(_cfg(out, algo="random", iterations=1), small_digits)
    before = (out / "random" / "trials.jsonl").read_text()
    search_run.run(_cfg(out, algo="random", iterations=1), small_digits)
    assert (out / "random" / "trials.jsonl").read_text() == before
    other = _cfg(out, algo="random")
    other.train = other.train.replace(noise_rate=0.2)
    with pytest.raises(ConfigError, match="out"):
        search_run.run(other, small_digits)


def test_a_cached_training_of_another_schedule_is_refused(tmp_path, small_digits):
    """trials.jsonl's trials are reused by number only when they hold the schedule (and budget) the
    search asks now; otherwise (the searcher changed since) a clear error, and the file is kept."""
    out = tmp_path / "s"
    search_run.run(_cfg(out, algo="random", iterations=1), small_digits)
    path = out / "random" / "trials.jsonl"
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    recs[1]["x"][0] += 1e-3
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    (out / "random" / "state.json").unlink()  # the search starts over and meets its cached trials
    before = path.read_text()
    with pytest.raises(ConfigError, match="trial 1: .*another schedule"):
        search_run.run(_cfg(out, algo="random", iterations=1), small_digits)
    assert path.read_text() == before
    recs[1]["x"][0] -= 1e-3 - 1e-7           # the same x up to float32 sampling noise ...
    recs[0]["epochs"] = 2                    # ... but another budget
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    with pytest.raises(ConfigError, match="trial 0: .*2 epochs; .* 3 epochs"):
        search_run.run(_cfg(out, algo="random", iterations=1), small_digits)


def test_theta_log_missing_its_last_line_is_completed_on_resume(tmp_path, small_digits):
    """state.json is written before theta.jsonl: a kill between them loses no line for good."""
    out = tmp_path / "s"
    search_run.run(_cfg(out, iterations=2), small_digits)
    log = out / "newton" / "theta.jsonl"
    full = log.read_text()
    assert [json.loads(line)["iteration"] for line in full.splitlines()] == [1, 2]
    log.write_text(full.splitlines(keepends=True)[0])
    search_run.run(_cfg(out, iterations=2), small_digits)  # finished: nothing trains, the line comes back
    assert log.read_text() == full


def test_identity_names_files_by_their_content(tmp_path, monkeypatch):
    """``--dataset mnist.npz`` from its folder, ``/abs/mnist.npz`` and a copy elsewhere resume the same
    search; another file does not; a saved identity with plain paths (older runs) still matches; a
    data set name (not a file) stays as it is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mnist.npz").write_bytes(b"data")
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "mnist.npz").write_bytes(b"data")
    (tmp_path / "other.npz").write_bytes(b"other")

    def ident(dataset):
        c = _cfg(tmp_path / "s")
        c.train = c.train.replace(dataset=dataset)
        return search_run._identity(c)

    rel, ab, cp = ident("mnist.npz"), ident(str(tmp_path / "mnist.npz")), ident("copy/mnist.npz")
    assert rel == ab == cp and rel["train"]["dataset"].startswith("sha256:")
    assert ident("other.npz") != rel
    assert ident("digits")["train"]["dataset"] == "digits"
    old = dict(rel, train=dict(rel["train"], dataset=str(tmp_path / "mnist.npz")))  # as saved before
    assert search_run.runs.identity_files_by_content(old) == rel


def test_identity_leaves_out_default_fields_added_later(tmp_path):
    """Fields added after directories were made (precision, input_norm) join the identity only when
    they are not their default, so older search directories still resume."""
    c = _cfg(tmp_path)
    assert "input_norm" not in search_run._identity(c)["train"] and "precision" not in search_run._identity(c)["train"]
    c.train = c.train.replace(input_norm="unit")
    assert search_run._identity(c)["train"]["input_norm"] == "unit"


def test_identity_leaves_out_how_trainings_run(tmp_path):
    """How a training runs (forms, drivers, convolutions, ...) is not what it computes: a search resumes
    across them; the data's noise is part of it."""
    c = _cfg(tmp_path)
    ident = search_run._identity(c)
    c.train = c.train.replace(execution=ExecutionConfig(conv_impl="slices", pool_s2d="off", driver="loop",
                                                        eval_batch_size=7))
    assert search_run._identity(c) == ident
    c.train = c.train.replace(noise_rate=0.3)
    assert search_run._identity(c) != ident


def test_best_schedule_is_reused_by_train(tmp_path, small_digits):
    from s2e_jax.train import train

    search_run.run(_cfg(tmp_path / "s", algo="random", iterations=1), small_digits)
    best = json.loads((tmp_path / "s" / "random" / "best_schedule.json").read_text())
    result = train(TrainConfig(dataset="digits", epochs=3, batch_size=64, decay_start=1, progress=False,
                               schedule=str(tmp_path / "s" / "random" / "best_schedule.json")), small_digits)
    np.testing.assert_allclose(result.metrics["r"], best["curve"], atol=1e-5)


@pytest.mark.slow
def test_kill_9_then_resume_gives_the_same_trials(tmp_path):
    args = [sys.executable, "-m", "s2e_jax", "search", "--dataset", "digits", "--noise", "pair",
            "--noise-rate", "0.45", "--algo", "newton", "--iterations", "3", "--samples", "2",
            "--epochs", "2", "--batch-size", "128", "--seed", "0", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    ref = tmp_path / "ref"
    subprocess.run(args + ["--out", str(ref)], check=True, env=env, capture_output=True)
    out = tmp_path / "killed"
    p = subprocess.Popen(args + ["--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trials = out / "newton" / "trials.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and p.poll() is None:
        if trials.exists() and trials.read_text().count("\n") >= 2:
            p.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    p.wait()
    # the kill came before the end: killed by the signal, 2 of the 6 trainings (maybe a third) recorded
    assert p.returncode == -signal.SIGKILL, p.returncode
    assert 2 <= len(_trials(out)) < 6 and not (out / "newton" / "result.json").exists()
    subprocess.run(args + ["--out", str(out)], check=True, env=env, capture_output=True)
    assert _trials(out) == _trials(ref)


def test_a_search_that_stopped_before_training_does_not_block_the_corrected_rerun(tmp_path, small_digits):
    """A search refused at its data (say) leaves only search_config.json and an empty folder: the
    rerun with the right settings takes the directory; one with trainings in it is still refused."""
    out = tmp_path / "s"
    bad = _cfg(out, algo="random", iterations=1)
    bad.train = bad.train.replace(dataset=str(tmp_path / "none.npz"))
    with pytest.raises(ConfigError, match="dataset: file not found"):
        search_run.run(bad)
    assert sorted(os.listdir(out)) == ["random", "search_config.json"]
    search_run.run(_cfg(out, algo="random", iterations=1), small_digits)
    assert len(_trials(out, algo="random")) == 2
    other = _cfg(out, algo="random")
    other.train = other.train.replace(noise_rate=0.2)
    with pytest.raises(ConfigError, match="holds a search with other settings"):
        search_run.run(other, small_digits)


def test_common_seed_shares_the_training_seed_within_an_iteration(tmp_path, small_digits, monkeypatch):
    """common_seed: the K trainings of an iteration get one training seed (distinct between iterations);
    without it each training its own. A search killed mid-iteration resumes to the same trainings."""
    seen = []
    original = search_run.train_lib.train_trials

    def spy(prep, scheds, seeds, **kw):
        seen.extend(int(s) for s in seeds)
        return original(prep, scheds, seeds, **kw)

    monkeypatch.setattr(search_run.train_lib, "train_trials", spy)

    def cfg(out, common):
        c = _cfg(out, algo="random", iterations=2)
        c.common_seed = common
        return c

    search_run.run(cfg(tmp_path / "own", False), small_digits)
    assert len(seen) == 4 and len(set(seen)) == 4
    seen.clear()
    search_run.run(cfg(tmp_path / "common", True), small_digits)
    assert len(seen) == 4 and seen[0] == seen[1] and seen[2] == seen[3] and seen[0] != seen[2]
    assert seen[0] == search_run.trial_seed(1, 0) and seen[2] == search_run.trial_seed(1, 2)
    ref = _trials(tmp_path / "common", algo="random")

    # killed after the first training of iteration 2: the resumed one trains the second with the shared seed
    crashed = tmp_path / "crash"
    _killed_after_trials(3, lambda: search_run.run(cfg(crashed, True), small_digits))
    seen.clear()
    search_run.run(cfg(crashed, True), small_digits)
    assert seen == [search_run.trial_seed(1, 2)]
    assert _trials(crashed, algo="random") == ref


def test_common_seed_joins_the_identity_only_when_on_and_refuses_hyperband(tmp_path, small_digits):
    c = _cfg(tmp_path / "s", algo="random", iterations=1)
    ident = search_run._identity(c)
    assert "common_seed" not in ident  # directories made before the option still resume
    search_run.run(c, small_digits)
    c.common_seed = True
    assert search_run._identity(c) != ident
    with pytest.raises(ConfigError, match="holds a search with other settings"):
        search_run.run(c, small_digits)
    hb = _cfg(tmp_path / "hb", algo="hyperband")
    hb.common_seed = True
    with pytest.raises(ConfigError, match="common_seed: hyperband"):
        hb.validate()
    c.common_seed = 1
    with pytest.raises(ConfigError, match="common_seed: expected"):
        c.validate()
