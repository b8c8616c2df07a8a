"""A trained run, used: load its networks, predict on new images, read its label report.

    >>> import s2e_jax
    >>> model = s2e_jax.load("runs/x")            # a directory written by ``train``
    >>> proba = model.predict_proba(images)       # uint8 (n, H, W[, C]) -> [n, classes]
    >>> labels = model.predict(images)
    >>> issues = model.label_issues()             # label_issues.csv as a dict of columns

Predictions average the networks' softmax (both networks of a Co-teaching pair) unless ``net=i``
picks one (0-based). The networks run in eval mode (BatchNorm's running statistics, no dropout) on
images normalized as in the training.
"""
from __future__ import annotations

import csv
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from s2e_jax import checkpoint, execution
from s2e_jax import data as data_lib
from s2e_jax import models as models_lib
from s2e_jax.config import ConfigError

SPLITS = ("train", "val", "test", "all_test")
LABEL_ISSUES_CSV = "label_issues.csv"


class TrainedModel:
    """The final networks of a ``train`` run (:func:`load`)."""

    def __init__(self, run_dir: str, meta: dict, model, variables: dict):
        self.run_dir, self.meta, self.model = run_dir, meta, model
        self.params, self.batch_stats = variables["params"], variables.get("batch_stats") or {}
        self.num_nets = int(meta["num_nets"])
        self.num_classes = int(meta["num_classes"])
        self.image_shape = tuple(meta["image_shape"])
        self.mean = jnp.asarray(meta["mean"], jnp.float32)
        self.std = jnp.asarray(meta["std"], jnp.float32)
        self._proba = jax.jit(self._all_proba)

    def _all_proba(self, params, batch_stats, x):
        xn = (x.astype(jnp.float32) / 255.0 - self.mean) / self.std  # as train.normalize

        def one(p, bs):
            v = {"params": p, "batch_stats": bs} if bs else {"params": p}
            return jax.nn.softmax(self.model.apply(v, xn, train=False))

        return jax.vmap(one)(params, batch_stats)  # [N, b, C]

    def check_images(self, images, field: str = "images") -> np.ndarray:
        """uint8 (n, H, W, C) of ``images`` as ``train`` reads them; one ConfigError otherwise."""
        x = data_lib._npz_images(np.asarray(images), field)
        if x.shape[1:] != self.image_shape:
            what = ("channels" if x.shape[1:3] == self.image_shape[:2] else "image shape")
            raise ConfigError(f"{field}: {what} do not match the trained networks: got images of shape "
                              f"{x.shape[1:]}, the run {self.run_dir} was trained on {self.image_shape}")
        return x

    def predict_proba(self, images, net: Optional[int] = None, batch_size: int = 1000) -> np.ndarray:
        """Class probabilities [n, classes]: the networks' mean softmax, or network ``net``'s."""
        if net is not None and (isinstance(net, bool) or not isinstance(net, (int, np.integer))
                                or not 0 <= net < self.num_nets):
            raise ConfigError(f"net: must be an integer in [0, {self.num_nets - 1}] (this run has "
                              f"{self.num_nets} network{'s' if self.num_nets > 1 else ''}), got {net!r}")
        x = self.check_images(images)
        out = []
        for i in range(0, len(x), batch_size):
            p = self._proba(self.params, self.batch_stats, jnp.asarray(x[i:i + batch_size]))
            out.append(np.asarray(p.mean(0) if net is None else p[net]))
        return np.concatenate(out) if out else np.zeros((0, self.num_classes), np.float32)

    def predict(self, images, net: Optional[int] = None) -> np.ndarray:
        """Predicted classes [n] (int32)."""
        return self.predict_proba(images, net).argmax(-1).astype(np.int32)

    def label_issues(self) -> dict:
        """The run's ``label_issues.csv`` as ``{column: array}``, most suspect first."""
        return read_label_issues(self.run_dir)


def load(run_dir: str) -> TrainedModel:
    """The final networks saved by ``train`` in ``run_dir`` (orbax-checkpoint, ``model.json``)."""
    meta = checkpoint.read_model_json(run_dir)
    p = execution.plan(None, meta["model"])  # how this machine computes it (any form: the same numbers)
    model = models_lib.get_model(meta["model"], int(meta["num_classes"]), p.conv_impl, materialize=p.materialize,
                                 pool_s2d=p.pool_s2d)
    x = jnp.zeros((1,) + tuple(meta["image_shape"]), jnp.float32)
    one = jax.eval_shape(lambda k: model.init({"params": k, "dropout": k}, x, train=False), jax.random.PRNGKey(0))
    n = int(meta["num_nets"])
    stacked = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((n,) + a.shape, a.dtype), dict(one))
    like = dict(params=stacked["params"], batch_stats=stacked.get("batch_stats", {}))
    return TrainedModel(run_dir, meta, model, checkpoint.load_networks(run_dir, like))


def split_images(dataset, split: str):
    """``(images, labels)`` of one split of a :class:`s2e_jax.data.Dataset` as ``train`` uses it:
    ``train``, ``val`` (first half of the test split), ``test`` (second half), ``all_test`` (both)."""
    if split not in SPLITS:
        raise ConfigError(f"split: unknown value {split!r} (expected one of {', '.join(SPLITS)})")
    if split == "all_test":
        return np.concatenate([dataset.x_val, dataset.x_test]), np.concatenate([dataset.y_val, dataset.y_test])
    return getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")


def write_predictions(path: str, proba: np.ndarray):
    """``preds.csv``: index, prediction, one probability column per class. Refuses an existing file."""
    if os.path.exists(path):
        raise ConfigError(f"out: {path} already exists (choose another --out; nothing was overwritten)")
    pred = proba.argmax(-1)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "prediction"] + [f"p{c}" for c in range(proba.shape[1])])
        for i, (p, row) in enumerate(zip(pred, proba)):
            w.writerow([i, int(p)] + [f"{v:.6g}" for v in row])
    os.replace(tmp, path)


def read_label_issues(run_dir: str) -> dict:
    path = os.path.join(run_dir, LABEL_ISSUES_CSV)
    if not os.path.exists(path):
        raise ConfigError(f"run: {run_dir} has no {LABEL_ISSUES_CSV} (a training that has not finished?)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return {}
    out = {}
    for k in rows[0]:
        vals = [r[k] for r in rows]
        out[k] = np.asarray(vals, np.int64 if k in ("index", "given_label", "predicted_label", "is_issue")
                            else np.float64)
    return out
