"""Run directories: atomic writes, CSV/JSONL logs, progress output. Nothing a user made is overwritten."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import sys
from typing import Optional

import numpy as np

from s2e_jax.config import ConfigError, save_json, write_atomically


def is_writer() -> bool:
    """Only process 0 writes files (``--distributed``: every process runs, one writes)."""
    from s2e_jax import parallel

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


class RunDir:
    """A run directory. :meth:`create` refuses a directory that already holds files;
    :meth:`open` (resume) reuses one. Every process may read it; only process 0 creates or writes."""

    def __init__(self, root: str):
        self.root = root

    @classmethod
    def create(cls, root: str) -> "RunDir":
        """A new run directory. Every process checks it (all refuse the same one; several processes
        need a shared file system, as resuming does) before process 0 creates it."""
        from s2e_jax import parallel

        cls.check_new(root)
        parallel.barrier(f"s2e_jax.runs.create:{root}")
        if is_writer():
            parent = os.path.dirname(os.path.abspath(root))
            try:
                os.makedirs(parent, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"out: cannot create {root}: {parent} is not a directory"
                                  if os.path.exists(parent) else f"out: cannot create {root}: {err.strerror}") from None
            if not os.path.exists(root):
                try:
                    os.mkdir(root)  # atomic: of two runs started at once, one gets it
                except FileExistsError:
                    raise ConfigError(f"out: run directory {root} was created by another run just now "
                                      "(choose another --out; nothing was overwritten)") from None
                except OSError as err:
                    raise ConfigError(f"out: cannot create {root}: {err.strerror}") from None
        return cls(root)

    @staticmethod
    def check_new(root: str):
        """Raise :class:`ConfigError` where :meth:`create` would refuse ``root``; create nothing."""
        _refuse_a_file(root)
        if os.path.exists(root) and os.listdir(root):
            raise ConfigError(f"out: run directory already exists and is not empty: {root} "
                              "(choose another --out; nothing was overwritten)")

    @classmethod
    def open(cls, root: str) -> "RunDir":
        _refuse_a_file(root)
        if is_writer():
            try:
                os.makedirs(root, exist_ok=True)
            except OSError as err:
                raise ConfigError(f"out: cannot create {root}: {err.strerror}") from None
        return cls(root)

    def path(self, name: str) -> str:
        return os.path.join(self.root, name)

    def exists(self, name: str) -> bool:
        return os.path.exists(self.path(name))

    def write_json(self, name: str, obj):
        if is_writer():
            save_json(obj, self.path(name))

    def read_json(self, name: str):
        with open(self.path(name)) as f:
            return json.load(f)

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
