"""One process per run directory: the lock of :class:`s2e_jax.runs.RunDir`, with real processes."""
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from s2e_jax import runs
from s2e_jax.config import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
CLI = [sys.executable, "-m", "s2e_jax"]
HOLD = ("import sys, time; from s2e_jax import runs; run = runs.RunDir.open(sys.argv[1]); "
        "print('held', flush=True); time.sleep(600)")


@contextlib.contextmanager
def holder(path):
    """Another process that claims ``path`` and keeps it until killed."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, env=ENV, text=True)
    try:
        assert p.stdout.readline() == "held\n"
        yield p
    finally:
        if p.poll() is None:
            p.kill()
        p.wait()
        p.stdout.close()


def locked(path) -> bool:
    """Whether some open file description holds ``path/.lock`` (a new one cannot lock it)."""
    try:
        fd = os.open(os.path.join(path, runs.LOCK_NAME), os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def snapshot(path):
    return {n: (path / n).read_bytes() for n in sorted(os.listdir(path))}


def test_a_directory_held_by_another_process_is_refused_untouched_until_the_holder_is_killed(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    (d / "metrics.csv").write_text("epoch\n0\n")
    with holder(d) as p:
        before = snapshot(d)
        info = json.loads((d / runs.LOCK_NAME).read_text())
        assert info["pid"] == p.pid and "-c" in info["command"]
        msg = rf"out: {d} is in use by another run \(pid {p.pid} on host .+, started .+\); wait for it"
        for claim in (runs.RunDir.open, runs.RunDir.create, runs.RunDir.check_new, runs.RunDir.check_free):
            with pytest.raises(ConfigError, match=msg):
                claim(str(d))
        assert snapshot(d) == before
        (d / "metrics.csv").unlink()  # only the lock file: still in use, not a new directory
        with pytest.raises(ConfigError, match=msg):
            runs.RunDir.check_new(str(d))
        (d / "metrics.csv").write_text("epoch\n0\n")
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (d / runs.LOCK_NAME).exists()  # left by the killed process, but no longer locked
    run = runs.RunDir.open(str(d))
    try:
        assert json.loads((d / runs.LOCK_NAME).read_text())["pid"] == os.getpid() and locked(d)
    finally:
        run.release()
    assert sorted(os.listdir(d)) == ["metrics.csv"] and not locked(d)


def test_the_holder_may_claim_again_and_its_last_release_frees_the_directory(tmp_path):
    d = str(tmp_path / "search")
    a = runs.RunDir.open(d)
    b = runs.RunDir.open(d)  # e.g. a search's directory claimed again by the same process
    try:
        assert locked(d)
        a.release()
        a.release()  # a second release of the same object changes nothing
        assert locked(d)
    finally:
        b.release()
    assert not locked(d) and os.listdir(d) == []
    with runs.RunDir.open(d) as c:
        assert locked(d) and c.root == d
    assert not locked(d)
    c = runs.RunDir.open(d)
    assert locked(d)
    del c  # a claim nobody can release any more (a finished train() call's) ends with its object
    assert not locked(d) and os.listdir(d) == []


def test_a_stale_lock_file_is_ignored_and_create_checks_again_once_it_holds_the_lock(tmp_path, monkeypatch):
    d = tmp_path / "new"
    d.mkdir()
    (d / runs.LOCK_NAME).write_text("left by a killed run")
    runs.RunDir.check_new(str(d))
    run = runs.RunDir.create(str(d))
    try:
        assert locked(d) and json.loads((d / runs.LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        run.release()
    # another run filled the directory between its check_new and create (both started at once)
    monkeypatch.setattr(runs.RunDir, "check_new", staticmethod(lambda root: None))
    (d / "metrics.csv").write_text("epoch\n")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        runs.RunDir.create(str(d))
    assert os.listdir(d) == ["metrics.csv"] and not locked(d)


def test_a_directory_removed_and_made_again_is_claimed_anew(tmp_path):
    d = tmp_path / "run"
    first = runs.RunDir.open(str(d))
    shutil.rmtree(d)
    d.mkdir()
    assert not locked(d)
    second = runs.RunDir.open(str(d))
    try:
        assert locked(d)
    finally:
        second.release()
        first.release()
    assert not locked(d) and os.listdir(d) == []


def _wait_for_lock(d, p, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        try:
            if json.loads((d / runs.LOCK_NAME).read_text())["pid"] == p.pid:
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"the first run did not claim {d} (exit code {p.poll()})")


def _second_is_refused(cmd, d, first):
    """The second run of ``cmd`` while the first holds ``d``: the first is stopped (SIGSTOP) for the
    time, so that it still holds the directory however slowly the second starts."""
    first.send_signal(signal.SIGSTOP)
    try:
        before = {p: p.read_bytes() for p in d.rglob("*") if p.is_file()}
        second = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
        assert {p: p.read_bytes() for p in d.rglob("*") if p.is_file()} == before  # nothing of the first touched
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2, second.stderr
    assert f"is in use by another run (pid {first.pid} on host" in second.stderr
    assert "Traceback" not in second.stderr and second.stderr.strip().splitlines()[-1].startswith("error: out:")


def _first_runs_second_is_refused(cmd, d):
    """Start ``cmd``; once it holds ``d``, the same command again is refused; the first then ends well."""
    first = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock(d, first)
        _second_is_refused(cmd, d, first)
        _, err = first.communicate(timeout=300)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, err


@pytest.mark.slow
def test_the_same_train_started_twice_at_once_trains_once(tmp_path):
    d = tmp_path / "train"
    cmd = CLI + ["train", "--dataset", "digits", "--epochs", "30", "--no-progress", "--out", str(d)]
    _first_runs_second_is_refused(cmd, d)
    lines = (d / "metrics.csv").read_text().splitlines()
    assert len(lines) == 1 + 30 and [ln.split(",")[0] for ln in lines[1:]] == [str(i) for i in range(30)]
    assert not (d / runs.LOCK_NAME).exists()  # removed at the normal end of the process


@pytest.mark.slow
def test_the_same_search_started_twice_at_once_runs_each_trial_once(tmp_path):
    d = tmp_path / "search"
    cmd = CLI + ["search", "--dataset", "digits", "--noise", "pair", "--noise-rate", "0.45", "--algo", "random",
                 "--iterations", "2", "--samples", "2", "--epochs", "2", "--batch-size", "128", "--seed", "0",
                 "--no-progress", "--out", str(d)]
    _first_runs_second_is_refused(cmd, d)
    trials = [json.loads(line)["trial"] for line in (d / "random" / "trials.jsonl").read_text().splitlines()]
    assert trials == list(range(4))
    assert not (d / runs.LOCK_NAME).exists()


@pytest.mark.filterwarnings("ignore:os.fork")  # the child runs no JAX
def test_a_forked_child_neither_keeps_nor_removes_its_parent_s_lock(tmp_path):
    d = tmp_path / "run"
    run = runs.RunDir.open(str(d))
    try:
        pid = os.fork()
        if pid == 0:  # the child: forgets the claim, and what its exit runs leaves the lock file alone
            ok = False
            try:
                ok = not runs._HELD
                runs._release_all()
            finally:
                os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert (d / runs.LOCK_NAME).exists() and locked(d)
    finally:
        run.release()
    assert not locked(d)
