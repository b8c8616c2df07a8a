"""Checkpoints of a training (orbax-checkpoint): the state to resume from, and the final networks.

A run directory of ``train`` holds::

    checkpoints/<epoch>/    the whole training state after <epoch> epochs (both networks, optimizer
                            states, the data-order key, the epoch counter, per-example selection
                            counts) and the metrics so far; orbax writes each one atomically and
                            keeps the last :data:`KEEP`
    model/                  the final networks (parameters and batch statistics, leading axis N)
    model.json              what rebuilds them: model name, classes, image shape, input normalization

When to save (:class:`Policy`): every N epochs, or ``"auto"``: whenever the epochs since the last
save took at least :data:`AUTO_COST_RATIO` times as long as that save (saving then costs at most
1/AUTO_COST_RATIO of the training's time) and at least :data:`AUTO_MIN_SECONDS`; docs/performance.md
has the measured costs.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from typing import Optional

import jax
import numpy as np
import orbax.checkpoint as ocp

from s2e_jax.config import ConfigError, save_json

KEEP = 3                  # checkpoints kept (the newest ones)
AUTO_COST_RATIO = 50.0    # "auto": train >= 50x the last save's duration between saves (<= 2% cost)
AUTO_MIN_SECONDS = 30.0   # "auto": and at least this long
CHECKPOINT_DIR, MODEL_DIR, MODEL_JSON = "checkpoints", "model", "model.json"
MODEL_FORMAT = 1


def _this_process_only():
    """orbax options for a save or restore by this process alone (under ``jax.distributed`` only process
    0 writes a run directory; the other processes do not take part)."""
    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


def _abstract(tree):
    return jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, tree)


class Policy:
    """When to save: ``every`` = N epochs, ``"auto"`` (cost-bounded, see the module doc), or 0 (never)."""

    def __init__(self, every, clock=time.monotonic):
        self.every, self.clock = every, clock
        self.last_save_s: Optional[float] = None
        self.since = clock()

    def due(self, epochs_done: int, total: int) -> bool:
        if self.every == 0 or epochs_done >= total:  # the end of a training is saved as the final model
            return False
        if self.every != "auto":
            return epochs_done % int(self.every) == 0
        waited = self.clock() - self.since
        return waited >= max(AUTO_MIN_SECONDS, AUTO_COST_RATIO * (self.last_save_s or 0.0))

    def saved(self, seconds: float):
        self.last_save_s, self.since = seconds, self.clock()


class TrainingCheckpoints:
    """The ``checkpoints/`` folder of a run: save the state after an epoch, restore the newest one."""

    def __init__(self, run_root: str, keep: int = KEEP):
        self.path = os.path.abspath(os.path.join(run_root, CHECKPOINT_DIR))
        opts = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=False, create=False,
                                            multiprocessing_options=_this_process_only())
        try:
            os.makedirs(self.path, exist_ok=True)
            self.manager = ocp.CheckpointManager(self.path, options=opts)
        except Exception as err:  # noqa: BLE001 (orbax reads the folder's metadata)
            raise ConfigError(f"checkpoint: cannot open {self.path} ({type(err).__name__}: {str(err)[:300]}); "
                              f"delete the damaged checkpoint or choose another --out") from None

    def latest_epoch(self) -> Optional[int]:
        return self.manager.latest_step()

    def save(self, epochs_done: int, carry, rows: list) -> float:
        """Save the state after ``epochs_done`` epochs and the metric rows so far; returns the seconds taken."""
        t0 = time.perf_counter()
        metrics = [{k: dict(dtype=str(np.asarray(v).dtype), value=np.asarray(v).tolist()) for k, v in r.items()}
                   for r in rows]
        self.manager.save(epochs_done, args=ocp.args.Composite(state=ocp.args.StandardSave(carry),
                                                               metrics=ocp.args.JsonSave(metrics)))
        self.manager.wait_until_finished()
        return time.perf_counter() - t0

    def restore(self, like):
        """``(carry, rows)`` of the newest checkpoint, ``carry`` shaped like ``like`` (a fresh state of the
        same config); ``None`` where there is none. A checkpoint that does not fit or cannot be read is
        one ConfigError naming it."""
        try:
            epoch = self.latest_epoch()
        except Exception as err:  # noqa: BLE001 (orbax reads each checkpoint's metadata here)
            raise ConfigError(f"checkpoint: cannot read the checkpoints in {self.path} ({type(err).__name__}: "
                              f"{str(err)[:300]}); delete the damaged one or choose another --out") from None
        if epoch is None:
            return None
        where = os.path.join(self.path, str(epoch))
        try:
            out = self.manager.restore(epoch, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(like)),
                                                                      metrics=ocp.args.JsonRestore()))
            carry = type(like)(*out.state) if isinstance(like, tuple) and not isinstance(out.state, type(like)) \
                else out.state
            rows = [{k: np.asarray(v["value"], dtype=v["dtype"]) for k, v in r.items()} for r in out.metrics]
        except Exception as err:  # orbax raises several types for damaged or mismatched files
            raise ConfigError(f"checkpoint: cannot restore {where} ({type(err).__name__}: {str(err)[:300]}); "
                              f"it is damaged or from another config: delete that folder to resume from an "
                              f"older checkpoint, or choose another --out") from None
        if len(rows) != epoch or not np.all(np.asarray(carry.epoch) == epoch):  # (K trials: one per trial)
            raise ConfigError(f"checkpoint: {where} is inconsistent ({len(rows)} metric rows, epoch counter "
                              f"{np.asarray(carry.epoch).tolist()}); delete that folder or choose another --out")
        return carry, rows

    def close(self):
        self.manager.close()


def continue_from(path: str, carry, epochs: int):
    """``(checkpoints, carry, rows)`` of a training (or K in one program) to run for ``epochs``: the
    newest checkpoint under ``path`` when it is of the same schedules and not longer, else ``carry``
    as given and no rows."""
    ckpts = TrainingCheckpoints(path)
    restored = ckpts.restore(carry)
    if restored is not None and len(restored[1]) <= epochs and np.array_equal(
            np.asarray(restored[0].sched), np.asarray(carry.sched)):
        return ckpts, restored[0], restored[1]
    return ckpts, carry, []


# ----------------------------------------------------------------------------------- final networks
def save_networks(run_root: str, params, batch_stats, meta: dict):
    """The final networks (``params``/``batch_stats`` with a leading axis N) under ``model/`` and what
    rebuilds them in ``model.json`` (written last: a run directory with ``model.json`` has its networks)."""
    path = os.path.abspath(os.path.join(run_root, MODEL_DIR))
    if os.path.exists(path):
        shutil.rmtree(path)  # a previous attempt of this same run killed while saving
    with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()) as ckpt:
        # host copies: under jax.distributed orbax would take device arrays for one global array
        ckpt.save(path, jax.device_get(dict(params=params, batch_stats=batch_stats)))
        ckpt.wait_until_finished()
    save_json(dict(meta, format=MODEL_FORMAT), os.path.join(run_root, MODEL_JSON))


def load_networks(run_root: str, like: dict) -> dict:
    """``{"params", "batch_stats"}`` saved by :func:`save_networks`, shaped like ``like``."""
    path = os.path.abspath(os.path.join(run_root, MODEL_DIR))
    try:
        with ocp.StandardCheckpointer(multiprocessing_options=_this_process_only()) as ckpt:
            return ckpt.restore(path, _abstract(like))
    except Exception as err:
        raise ConfigError(f"run: cannot read the saved networks in {path} ({type(err).__name__}: "
                          f"{str(err)[:300]}); the folder is damaged or from another model") from None


def read_model_json(run_root: str) -> dict:
    path = os.path.join(run_root, MODEL_JSON)
    if not os.path.isdir(run_root):
        raise ConfigError(f"run: {run_root} is not a run directory")
    if not os.path.exists(path):
        raise ConfigError(f"run: {run_root} holds no saved networks ({MODEL_JSON} is missing: a training "
                          f"that has not finished, or not a train run directory)")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"run: cannot read {path}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        raise ConfigError(f"run: {path} is not a model description of this version (format {MODEL_FORMAT})")
    return meta
