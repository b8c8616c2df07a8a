"""Run directories: atomic writes, CSV/JSONL logs, progress output. Nothing a user made is overwritten.

A run directory is claimed by one process at a time: :meth:`RunDir.create` and :meth:`RunDir.open`
take an exclusive ``flock`` on ``<root>/.lock`` (the holder's pid, host, start time and command line
are written into it). The operating system drops the lock when the process ends, however it ends, so
a killed run never leaves its directory locked; another process gets a :class:`ConfigError` naming
the holder. The process that holds a directory may claim it again: each claim ends with
:meth:`RunDir.release` or the deletion of its :class:`RunDir`, the lock with the last one (or at exit).
"""
from __future__ import annotations

import atexit
import csv
import errno
import fcntl
import hashlib
import json
import os
import shlex
import socket
import sys
import time
import weakref
from typing import Optional

import numpy as np

from s2e_jax import parallel
from s2e_jax.config import ConfigError, save_json, write_atomically


def is_writer() -> bool:
    """Only process 0 writes files (``--distributed``: every process runs, one writes)."""
    return parallel.is_main_process()


def atomic_write_text(path: str, text: str):
    """Write ``text`` to ``path`` atomically (:func:`s2e_jax.config.write_atomically`); process 0 only."""
    if is_writer():
        write_atomically(path, text)


def append_line(path: str, line: str):
    """Append one line and fsync it: a killed process leaves at most a partial last line.
    Process 0 only."""
    if not is_writer():
        return
    with open(path, "a") as f:
        f.write(line.rstrip("\n") + "\n")
        f.flush()
        os.fsync(f.fileno())


class DamagedFile(ConfigError):
    """A file of a run directory that is not what it must be (say, a JSON file cut short);
    ``path`` and ``why`` for the message of whoever decides what to do."""

    def __init__(self, path: str, why: str):
        super().__init__(f"{path} is damaged ({why})")
        self.path, self.why = path, why


def read_json_file(path: str, kind: type = object):
    """The JSON object in ``path``; :class:`DamagedFile` where it is not valid JSON or not a ``kind``."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise DamagedFile(path, "not text") from None
    except json.JSONDecodeError as err:
        raise DamagedFile(path, f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None
    if not isinstance(obj, kind):
        raise DamagedFile(path, f"holds a JSON {type(obj).__name__}, not an object")
    return obj


def read_jsonl(path: str) -> list:
    """Every complete JSON line of ``path`` (a torn last line from a kill is ignored)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            if not line.endswith("\n"):
                break
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return out


def _scalar_columns(row: dict) -> dict:
    """Flatten per-network arrays: ``test_acc`` (mean) plus ``test_acc_net1``, ``test_acc_net2``."""
    out = {}
    for k, v in row.items():
        v = np.asarray(v)
        if v.ndim == 0:
            out[k] = float(v)
        else:
            out[k] = float(v.mean())
            if v.size > 1:
                out.update({f"{k}_net{i + 1}": float(x) for i, x in enumerate(v.reshape(-1))})
    return out


def _refuse_a_file(root: str):
    if os.path.exists(root) and not os.path.isdir(root):
        raise ConfigError(f"out: {root} is a file, not a directory (choose another --out; nothing was overwritten)")


# ------------------------------------------------------------------ the lock of a run directory
LOCK_NAME = ".lock"


class _Claim:
    """An exclusive ``flock`` on one directory's lock file, held by this process; ``count`` claims."""

    def __init__(self, path: str, fd: int):
        self.path, self.fd, self.count = path, fd, 1


_HELD: dict = {}   # realpath of a run directory -> its _Claim


def _same_file(fd: int, path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    fs = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (fs.st_dev, fs.st_ino)


def _held(root: str) -> Optional[_Claim]:
    """This process' claim of ``root``, unless the lock file was removed since (the directory
    deleted, say): then the claim is dropped."""
    key = os.path.realpath(root)
    c = _HELD.get(key)
    if c is not None and not _same_file(c.fd, c.path):
        del _HELD[key]
        c.count = 0  # its RunDir objects have nothing left to release
        os.close(c.fd)
        c = None
    return c


def _command() -> str:
    argv = [a for a in sys.argv if a is not None]
    if argv and argv[0].endswith(os.path.join("s2e_jax", "__main__.py")):
        argv = ["python", "-m", "s2e_jax"] + argv[1:]
    cmd = shlex.join(argv) if argv and argv[0] else "python"
    return cmd if len(cmd) <= 300 else cmd[:297] + "..."


def _holder(path: str) -> str:
    """``pid N on host H, started T: command`` from a lock file (written just after it was locked,
    hence the short wait for it)."""
    deadline = time.monotonic() + 1.0
    while True:
        try:
            with open(path) as f:
                info = json.loads(f.read())
            return (f"pid {int(info['pid'])} on host {info['host']}, started {info['started']}: "
                    f"{info['command']}")
        except (OSError, ValueError, KeyError, TypeError):
            if time.monotonic() > deadline:
                return "its pid and command are not recorded"
            time.sleep(0.05)


def _in_use(root: str) -> ConfigError:
    return ConfigError(f"out: {root} is in use by another run ({_holder(os.path.join(root, LOCK_NAME))}); "
                       "wait for it to finish or choose another --out (nothing was changed)")


def _lock_or_refuse(fd: int, how: int, root: str, wait_s: float):
    """flock ``fd`` without blocking; a holder is retried for ``wait_s`` (a probe of
    :func:`_locked_by_another` holds a lock for microseconds), then refused."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, how | fcntl.LOCK_NB)
            return
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            if time.monotonic() > deadline:
                raise _in_use(root) from None
            time.sleep(0.05)


def _claim(root: str) -> Optional[_Claim]:
    """Claim the existing directory ``root`` for this process (see the module docstring)."""
    c = _held(root)
    if c is not None:
        c.count += 1
        return c
    path = os.path.join(root, LOCK_NAME)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as err:
            raise ConfigError(f"out: cannot create {path}: {err.strerror}") from None
        try:
            _lock_or_refuse(fd, fcntl.LOCK_EX, root, 0.3)
        except ConfigError:
            os.close(fd)
            raise
        except OSError as err:  # a file system without locks: run unlocked
            os.close(fd)
            print(f"warning: cannot lock {path} ({err.strerror}); nothing keeps another run out of {root}",
                  file=sys.stderr)
            return None
        if _same_file(fd, path):
            break
        os.close(fd)  # its last holder removed it before we locked it: lock the new one
    info = dict(pid=os.getpid(), host=socket.gethostname(),
                started=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), command=_command())
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
    c = _Claim(path, fd)
    _HELD[os.path.realpath(root)] = c
    return c


def _release(c: _Claim, all_claims: bool = False):
    if c.count <= 0:  # released already (or dropped: its lock file was removed)
        return
    c.count = 0 if all_claims else c.count - 1
    if c.count > 0:
        return
    for key, held in list(_HELD.items()):
        if held is c:
            del _HELD[key]
    try:
        if _same_file(c.fd, c.path):
            os.remove(c.path)  # while still locked: a process that opened it re-checks after locking
    except OSError:
        pass
    os.close(c.fd)


@atexit.register
def _release_all():
    for c in list(_HELD.values()):
        _release(c, all_claims=True)


def _forget_in_child():
    """A forked child does not hold its parent's directories: it closes its copies of their lock files
    (the lock stays with the parent) and will not remove them at its exit."""
    for c in list(_HELD.values()):
        c.count = 0
        try:
            os.close(c.fd)
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


def _locked_by_another(root: str) -> bool:
    """Whether another process holds ``root`` (a shared lock taken and dropped at once)."""
    if _held(root) is not None:
        return False
    try:
        fd = os.open(os.path.join(root, LOCK_NAME), os.O_RDONLY)
    except OSError:
        return False
    try:
        _lock_or_refuse(fd, fcntl.LOCK_SH, root, 0.3)
        return False
    except ConfigError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # drops the shared lock


def contents(root: str) -> list:
    """The names in directory ``root`` but its lock file."""
    return [n for n in os.listdir(root) if n != LOCK_NAME]


class RunDir:
    """A run directory. :meth:`create` refuses a directory that already holds files;
    :meth:`open` (resume) reuses one. Both claim it for this process (module docstring) until
    :meth:`release`, the object's deletion or the process' end. Every process may read it; only
    process 0 creates, claims or writes it (``--distributed``)."""

    def __init__(self, root: str, claim: Optional[_Claim] = None):
        self.root = root
        self._release = weakref.finalize(self, _release, claim) if claim is not None else None

    @classmethod
    def create(cls, root: str) -> "RunDir":
        """A new run directory. Every process checks it (all refuse the same one; several processes
        need a shared file system, as resuming does) before process 0 creates and claims it."""
        cls.check_new(root)
        parallel.barrier(f"s2e_jax.runs.create:{root}")
        claim = None
        if is_writer():
            parent = os.path.dirname(os.path.abspath(root))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"out: cannot create {root}: {parent} is not a directory"
                                  if os.path.exists(parent) else f"out: cannot create {root}: {err.strerror}") from None
            try:
                os.mkdir(root)
            except FileExistsError:
                _refuse_a_file(root)
            except OSError as err:
                raise ConfigError(f"out: cannot create {root}: {err.strerror}") from None
            claim = _claim(root)
            if contents(root):  # filled since check_new by a run that has finished by now
                if claim is not None:
                    _release(claim)
                raise ConfigError(f"out: run directory already exists and is not empty: {root} "
                                  "(choose another --out; nothing was overwritten)")
        return cls(root, claim)

    @staticmethod
    def check_new(root: str):
        """Raise :class:`ConfigError` where :meth:`create` would refuse ``root``; create nothing."""
        RunDir.check_free(root)
        if os.path.isdir(root) and contents(root):
            raise ConfigError(f"out: run directory already exists and is not empty: {root} "
                              "(choose another --out; nothing was overwritten)")

    @staticmethod
    def check_free(root: str):
        """Raise :class:`ConfigError` naming the holder where another process has claimed ``root``
        (or where ``root`` is a file); claim and create nothing (a check before loading data)."""
        _refuse_a_file(root)
        if os.path.isdir(root) and is_writer() and _locked_by_another(root):
            raise _in_use(root)

    @classmethod
    def open(cls, root: str, claim: bool = True) -> "RunDir":
        """An existing or new run directory (created if missing), claimed unless ``claim`` is false
        (a folder of a directory claimed already)."""
        _refuse_a_file(root)
        held = None
        if is_writer():
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"out: cannot create {root}: {err.strerror}") from None
            if claim:
                held = _claim(root)
        return cls(root, held)

    def release(self):
        """Give up this object's claim of the directory (the lock goes with the process' last claim)."""
        if self._release is not None:
            self._release()  # once; also when the object is deleted

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def write_json(self, name: str, obj):
        if is_writer():
            save_json(obj, self.path(name))

    def read_json(self, name: str, kind: type = object):
        """The JSON file ``name``; :class:`DamagedFile` where it is not valid JSON (a torn write) or
        not a ``kind``."""
        return read_json_file(self.path(name), kind)

    def append_metrics_row(self, epoch: int, row: dict, name: str = "metrics.csv"):
        """Append one epoch's metrics to a CSV (header written with the first row; a later row's
        columns are written under that header, a column it lacks left empty, one it does not have
        refused: it would shift every value after it)."""
        if not is_writer():
            return
        cols = dict(epoch=epoch, **_scalar_columns(row))
        path = self.path(name)
        new = not os.path.exists(path) or os.path.getsize(path) == 0
        fields = list(cols)
        if not new:
            with open(path, newline="") as f:
                fields = next(csv.reader(f), None) or fields
            extra = [k for k in cols if k not in fields]
            if extra:
                raise ValueError(f"{path}: this row has column(s) {', '.join(extra)} that the file's header "
                                 f"lacks (header: {', '.join(fields)})")
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in cols.items()})
            f.flush()
            os.fsync(f.fileno())


class progress:
    """A minimal progress bar on stderr (tqdm when available)."""

    def __init__(self, total: int, unit: str, enabled: bool = True, desc: Optional[str] = None):
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, dynamic_ncols=True)
            except ImportError:  # pragma: no cover
                self.bar = None
        self.n, self.total, self.unit, self.enabled = 0, total, unit, enabled

    def update(self, n=1, **postfix):
        self.n += n
        if self.bar is not None:
            if postfix:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
            self.bar.update(n)
        elif self.enabled:
            extra = " ".join(f"{k}={v:.4g}" for k, v in postfix.items())
            print(f"\r{self.n}/{self.total} {self.unit} {extra}", end="", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            print(file=sys.stderr)


# ------------------------------------------------------------------ resume identities
FILE_FIELDS = ("dataset", "data_dir", "label_file", "transition_matrix", "schedule")


def _file_key(path: str) -> str:
    """A file by its content (``sha256:…``), so that the same file resumes the same run from any
    path; a folder or a missing file by its absolute path."""
    if os.path.isfile(path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return "sha256:" + h.hexdigest()
    return os.path.abspath(path)


def files_by_content(train: dict) -> dict:
    """A training config dict (``TrainConfig.to_dict()``) with its file paths (an ``.npz`` data
    set, ``data_dir``, label, transition-matrix and schedule files) replaced by :func:`_file_key`:
    the resume identity of a search or ASNG run. Old identities (plain paths) compare equal after
    the same mapping while their files are where they were."""
    t = dict(train)
    for k in FILE_FIELDS:
        v = t.get(k)
        if isinstance(v, str) and not v.startswith("sha256:") and (k != "dataset" or v.lower().endswith(".npz")):
            t[k] = _file_key(v)
    return t


def identity_files_by_content(ident):
    """A saved or new resume identity ``{"train": {...}, ...}`` with :func:`files_by_content` applied
    to its training config (anything else is returned as it is, and compares unequal)."""
    if not isinstance(ident, dict) or not isinstance(ident.get("train"), dict):
        return ident
    return dict(ident, train=files_by_content(ident["train"]))
