"""--distributed for real: two processes on this machine (jax.distributed over localhost, gloo
collectives), the trial axis sharded over both; the same search as one process, one writer."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from s2e_jax import parallel
from s2e_jax.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEARCH = [sys.executable, "-m", "s2e_jax", "search", "--dataset", "digits", "--noise", "pair",
          "--noise-rate", "0.45", "--algo", "random", "--iterations", "2", "--samples", "3",
          "--epochs", "2", "--batch-size", "128", "--seed", "0", "--no-progress"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _records(out):
    with open(os.path.join(out, "random", "trials.jsonl")) as f:
        return [json.loads(line) for line in f]


ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
TINY = ["--dataset", "digits", "--noise", "symmetric", "--noise-rate", "0.2", "--epochs", "2",
        "--batch-size", "128", "--seed", "0", "--no-progress"]


def _two_processes(cmd):
    """Run ``cmd`` as processes 0 and 1 of one jax.distributed job on localhost; their return codes and
    standard errors."""
    port = _free_port()
    procs = [subprocess.Popen(cmd + ["--distributed", "--coordinator", f"127.0.0.1:{port}",
                                     "--num-processes", "2", "--process-id", str(i)],
                              env=ENV, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        results = [p.communicate(timeout=600) for p in procs]
    finally:
        for p in procs:
            p.kill()
    return [p.returncode for p in procs], [err for _, err in results]


def _ok(codes, errs):
    for code, err in zip(codes, errs):
        assert code == 0, err[-3000:]


def _lines(path):
    with open(path) as f:
        return f.read().splitlines()


@pytest.fixture(scope="module")
def one_process_search(tmp_path_factory):
    """The search run by one process: the reference of both forms of the two-process run."""
    ref = tmp_path_factory.mktemp("one")
    subprocess.run(SEARCH + ["--out", str(ref / "run")], check=True, env=ENV, cwd=ROOT, capture_output=True,
                   timeout=600)
    return _records(ref / "run")


@pytest.mark.slow
@pytest.mark.parametrize("trials", ["auto", "one_program"])
def test_two_processes_run_the_search_of_one(tmp_path, trials, one_process_search):
    """auto on a CPU: each process trains its share of the trials one after another (trial i on process
    i mod 2: the same computation as one process, so equal values); one_program: the trial axis sharded
    over both processes' devices as one vmapped program (2 trials per device, one padded)."""
    out = tmp_path / "two"
    _ok(*_two_processes(SEARCH + ["--out", str(out), "--trials", trials]))
    one, two = one_process_search, _records(out)
    # 2 iterations x 3 trials, each written once (process 0 only), in the same order
    assert len(one) == len(two) == 6
    for a, b in zip(one, two):
        assert a["trial"] == b["trial"] and a["x"] == b["x"] and a["curve"] == b["curve"]
        # one program vs one after another: equal up to float32 rounding
        for k in ("f", "val_acc", "test_acc", "label_precision"):
            np.testing.assert_allclose(b[k], a[k], atol=1e-6 if trials == "one_program" else 0, err_msg=k)


@pytest.mark.slow
def test_two_processes_write_one_training_and_one_asng_run(tmp_path):
    """``train`` and ``asng`` under --distributed: both processes finish, each file is written once (by
    process 0; a second writer would double the metrics rows or collide on the directory check)."""
    cmd = [sys.executable, "-m", "s2e_jax"]
    run = tmp_path / "train"
    _ok(*_two_processes(cmd + ["train"] + TINY + ["--out", str(run)]))
    assert sorted(os.listdir(run)) == ["config.json", "curves.png", "execution.json", "label_issues.csv", "metrics.csv",
                                      "model", "model.json", "summary.json", "timing.json"]  # no checkpoints: 2 processes
    assert json.loads((run / "execution.json").read_text())["processes"] == 2
    assert len(_lines(run / "metrics.csv")) == 1 + 2          # header + 2 epochs
    asng = tmp_path / "asng"
    _ok(*_two_processes(cmd + ["asng"] + TINY + ["--out", str(asng)]))
    assert os.path.exists(asng / "result.json") and os.path.exists(asng / "retrain" / "summary.json")
    assert len(_lines(asng / "metrics.csv")) == 1 + 2 and len(_lines(asng / "theta.jsonl")) == 2
    assert len(_lines(asng / "retrain" / "metrics.csv")) == 1 + 2
    # a directory that is not theirs: both processes refuse it (neither waits on the other), it stays
    codes, errs = _two_processes(cmd + ["train"] + TINY + ["--out", str(asng)])
    assert codes == [2, 2] and all("already exists" in e for e in errs)
    assert os.path.exists(asng / "result.json")


def test_launch_args():
    assert parallel.launch_args() == {}
    assert parallel.launch_args("10.0.0.1:1234", 4, 3) == dict(coordinator_address="10.0.0.1:1234",
                                                               num_processes=4, process_id=3)
    for bad in [("h:1", None, 0), ("host", 2, 0), ("h:1", 2, 2), ("h:1", 0, 0), ("h:x", 2, 0)]:
        with pytest.raises(ConfigError):
            parallel.launch_args(*bad)


def test_coordinator_needs_distributed(capsys):
    from s2e_jax.cli import main

    assert main(["train", "--epochs", "1", "--no-progress", "--coordinator", "h:1"]) == 2
    assert "need --distributed" in capsys.readouterr().err
