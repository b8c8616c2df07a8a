"""Typed, validated configs: the one place where defaults live.

Defaults follow the paper's Appendix A and Co-teaching's released code: Adam, lr 0.001, batch 128,
200 epochs, lr decayed linearly to 0 from epoch 80 where Adam's beta1 moves from 0.9 to 0.1.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Optional


class ConfigError(ValueError):
    """A user-facing configuration or input error; the message names the field and the problem."""


NOISES = ("none", "symmetric", "pair")
METHODS = ("standard", "coteaching", "coteaching_plus", "mentornet", "decoupling", "fcorrection", "reweight")
# Co-teaching+'s epochs of plain Co-teaching first (Yu et al. 2019's released code: init_epoch)
INIT_EPOCHS = {"mnist": 0, "digits": 0, "cifar10": 20, "cifar100": 5}
FCORR_ESTIMATORS = ("percentile97", "argmax")
TAU_ESTIMATORS = ("anchor", "gmm_loss")  # tau="auto": s2e_jax/noise_rate.py
MODELS = ("auto", "mlp", "model1", "model2", "model3")
# how a training runs (ExecutionConfig; resolved by s2e_jax/execution.py): equal results to float rounding
NET_FORMS = ("auto", "vmap", "fused")
DRIVERS = ("auto", "scan", "loop")
CONV_IMPLS = ("auto", "xla", "slices")
POOL_S2D = ("auto", "on", "off")
PRECISIONS = ("float32", "bfloat16")
INPUT_NORMS = ("standardize", "unit")
# TrainConfig fields that say where and how a run is written, not what it computes
RUN_FIELDS = ("out", "progress", "checkpoint_every")
# ExecutionConfig's fields, once flat fields of TrainConfig: a config.json holding them still loads
FLAT_EXECUTION_FIELDS = ("net_form", "driver", "conv_impl", "pool_s2d", "stem_patches", "eval_batch_size",
                         "precision", "memory_budget_mib")
# TrainConfig fields newer than some saved run directories: an identity (search, ASNG, train resume)
# leaves a field out while it holds its default, so those directories still match
LATER_FIELDS = ("precision", "input_norm", "tau_warmup_epochs", "tau_estimator")


def _fail(field: str, problem: str):
    raise ConfigError(f"{field}: {problem}")


def _check_choice(field, value, choices):
    if value not in choices:
        _fail(field, f"unknown value {value!r} (expected one of {', '.join(choices)})")


def _check_int(field, value, lo=None):
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(field, f"must be an integer, got {value!r}")
    if lo is not None and value < lo:
        _fail(field, f"must be >= {lo}, got {value}")


def _check_float(field, value, lo=None, hi=None, hi_open=False, lo_open=False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(field, f"must be a finite number, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        _fail(field, f"must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and (value > hi or (hi_open and value == hi)):
        _fail(field, f"must be {'<' if hi_open else '<='} {hi}, got {value}")


@dataclasses.dataclass
class ExecutionConfig:
    """How a training runs, not what it computes: every setting gives the same numbers to float rounding
    (bfloat16: to its rounding). "auto" is resolved per model, backend and number of trials by
    :func:`s2e_jax.execution.plan`; the measured reason for each default is in docs/performance.md."""

    net_form: str = "auto"             # the network axis: vmap | fused (a Python loop, first layers as one)
    driver: str = "auto"               # an epoch: scan (one jitted lax.scan) | loop (jitted steps)
    conv_impl: str = "auto"            # convolutions: xla | slices (patches x kernel, s2e_jax/convs.py)
    pool_s2d: str = "auto"             # Model 1's conv + pool as one space-to-depth conv: on | off
    precision: str = "float32"         # float32 | bfloat16 (bf16 compute, float32 master weights)
    eval_batch_size: int = 1000
    memory_budget_mib: Optional[float] = None  # per-device budget of K trials in one program; None: auto

    def validate(self) -> "ExecutionConfig":
        """Raise :class:`ConfigError` naming the first bad field; return self."""
        _check_choice("net_form", self.net_form, NET_FORMS)
        _check_choice("driver", self.driver, DRIVERS)
        _check_choice("conv_impl", self.conv_impl, CONV_IMPLS)
        _check_choice("pool_s2d", self.pool_s2d, POOL_S2D)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_int("eval_batch_size", self.eval_batch_size, 1)
        if self.memory_budget_mib is not None:
            _check_float("memory_budget_mib", self.memory_budget_mib, 0.0, lo_open=True)
        return self

    def replace(self, **changes) -> "ExecutionConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ExecutionConfig":
        return _from_dict(cls, d)


@dataclasses.dataclass
class TrainConfig:
    """One training (Algorithm 1). Every field is validated by :meth:`validate`."""

    # data
    dataset: str = "digits"            # digits | mnist | cifar10 | cifar100 | path to an .npz
    data_dir: Optional[str] = None     # tensorflow-datasets data_dir
    label_file: Optional[str] = None   # .npy of training labels replacing y_train (real-world noise)
    noise: str = "symmetric"           # none | symmetric | pair
    noise_rate: float = 0.5
    noise_seed: Optional[int] = None   # seed of the label noise; None -> seed
    # method and schedule
    method: str = "coteaching"
    model: str = "auto"                # auto picks Table 4's model for the data set
    tau: Any = None                    # eq. (1); None -> the noise rate ("auto" with noise none / label_file);
                                       # "auto": estimated from the data (s2e_jax/noise_rate.py)
    tau_warmup_epochs: Any = "auto"    # tau "auto": epochs of the standard network that estimates the noise rate;
                                       # auto: by the steps per epoch (s2e_jax/noise_rate.py)
    tau_estimator: str = "anchor"      # tau "auto": anchor (Patrini et al. 2017) | gmm_loss (DivideMix)
    t_k: float = 10.0                  # eq. (1)
    c: float = 1.0                     # eq. (1)
    schedule: Optional[str] = None     # best_schedule.json from a search; replaces eq. (1)
    # baselines (section 4.1)
    init_epochs: Any = "auto"          # coteaching_plus: epochs of plain Co-teaching first; auto: by data set
    transition_matrix: Optional[str] = None   # fcorrection: .npy of T (C, C); None: estimate T
    fcorr_warmup_epochs: Optional[int] = None  # fcorrection: epochs of the net estimating T; None: epochs
    fcorr_estimator: str = "percentile97"      # fcorrection: percentile97 | argmax (Patrini et al. 2017)
    # input: "standardize" (per-channel mean/std of the training images) or "unit" (pixels / 255 only:
    # the ToTensor() of Co-teaching's and S2E's released code)
    input_norm: str = "standardize"
    # optimizer (Appendix A)
    epochs: int = 200
    batch_size: int = 128
    lr: float = 0.001
    decay_start: int = 80              # lr -> 0 linearly and beta1 -> beta1_late from this epoch
    beta1: float = 0.9
    beta1_late: float = 0.1
    seed: int = 0
    # how it runs (optional; every choice computes the same to float rounding)
    execution: ExecutionConfig = dataclasses.field(default_factory=ExecutionConfig)
    out: Optional[str] = None          # run directory; None writes nothing
    progress: bool = True
    checkpoint_every: Any = "auto"     # epochs between checkpoints of a run directory; auto: <= 2% of the time; 0: none

    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` naming the first bad field; return self."""
        if not isinstance(self.dataset, str) or not self.dataset:
            _fail("dataset", f"must be a non-empty string, got {self.dataset!r}")
        _check_choice("noise", self.noise, NOISES)
        _check_float("noise_rate", self.noise_rate)
        if not 0.0 <= self.noise_rate < 1.0:
            _fail("noise_rate", f"must be in [0, 1), got {self.noise_rate}")
        _check_choice("method", self.method, METHODS)
        _check_choice("model", self.model, MODELS)
        if self.tau is not None and self.tau != "auto":
            if isinstance(self.tau, str):
                _fail("tau", f"must be a number in [0, 1) or \"auto\", got {self.tau!r}")
            _check_float("tau", self.tau, 0.0, 1.0, hi_open=True)
        if self.tau_warmup_epochs != "auto":
            _check_int("tau_warmup_epochs", self.tau_warmup_epochs, 1)
        _check_choice("tau_estimator", self.tau_estimator, TAU_ESTIMATORS)
        _check_float("t_k", self.t_k, 0.0, lo_open=True)
        _check_float("c", self.c, 0.0, lo_open=True)
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_float("lr", self.lr, 0.0, lo_open=True)
        _check_int("decay_start", self.decay_start, 0)
        _check_float("beta1", self.beta1, 0.0, 1.0, hi_open=True)
        _check_float("beta1_late", self.beta1_late, 0.0, 1.0, hi_open=True)
        _check_int("seed", self.seed, 0)
        if self.noise_seed is not None:
            _check_int("noise_seed", self.noise_seed, 0)
        if not isinstance(self.execution, ExecutionConfig):
            _fail("execution", f"must be an ExecutionConfig, got {type(self.execution).__name__}")
        self.execution.validate()
        _check_choice("input_norm", self.input_norm, INPUT_NORMS)
        if self.checkpoint_every != "auto":
            _check_int("checkpoint_every", self.checkpoint_every, 0)
        if self.init_epochs != "auto":
            _check_int("init_epochs", self.init_epochs, 0)
        if self.fcorr_warmup_epochs is not None:
            _check_int("fcorr_warmup_epochs", self.fcorr_warmup_epochs, 1)
        _check_choice("fcorr_estimator", self.fcorr_estimator, FCORR_ESTIMATORS)
        if self.transition_matrix is not None and self.method != "fcorrection":
            _fail("transition_matrix", f"only used with method fcorrection, got method {self.method!r}")
        for field in ("label_file", "schedule", "transition_matrix"):
            path = getattr(self, field)
            if path is not None and not os.path.isfile(path):
                _fail(field, f"file not found: {path}")
        return self

    def resolved_init_epochs(self) -> int:
        """Co-teaching+'s ``init_epochs``; ``auto``: MNIST/digits 0, CIFAR-10 20, CIFAR-100 5, others 0."""
        if self.init_epochs == "auto":
            return INIT_EPOCHS.get(str(self.dataset).strip().lower(), 0)
        return int(self.init_epochs)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """A config from its JSON form; ``execution`` may be absent, or flat fields as older
        config.json files hold them."""
        if not isinstance(d, dict):
            raise ConfigError(f"config: expected a JSON object, got {type(d).__name__}")
        d = dict(d)
        ex = d.pop("execution", {})
        if not isinstance(ex, dict):
            raise ConfigError(f"execution: expected a JSON object, got {type(ex).__name__}")
        ex = dict(ex)
        for k in FLAT_EXECUTION_FIELDS:
            if k in d:
                v = d.pop(k)
                if k == "stem_patches":  # not an execution form: Model 1's first layer reads the images
                    if v not in ("off", None):
                        _fail("stem_patches", f"unknown setting {v!r}: Model 1's first layer reads the images")
                    continue
                ex.setdefault(k, v)
        return _from_dict(cls, dict(d, execution=ExecutionConfig.from_dict(ex)))


def _from_dict(cls, d: dict):
    if not isinstance(d, dict):
        raise ConfigError(f"config: expected a JSON object, got {type(d).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"config: unknown field(s) {', '.join(unknown)}")
    return cls(**d).validate()


def write_atomically(path: str, text: str):
    """Write ``text`` to ``path`` atomically (temp file, fsync, rename); a failed write leaves the old
    file as it was and no temp file behind."""
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def save_json(obj: Any, path: str):
    """Write JSON atomically (:func:`write_atomically`); an object json cannot write changes nothing."""
    write_atomically(path, json.dumps(obj, indent=2, sort_keys=True))


def identity_dict(config: "TrainConfig") -> dict:
    """``config`` as a resume identity: what it computes (no :data:`RUN_FIELDS`, no execution group but
    its ``precision``, flat), a :data:`LATER_FIELDS` field left out while it holds its default."""
    d = config.to_dict()
    d["precision"] = d.pop("execution")["precision"]
    defaults = dict(TrainConfig().to_dict(), precision=ExecutionConfig().precision)
    for k in RUN_FIELDS:
        d.pop(k, None)
    for k in LATER_FIELDS:
        if d.get(k) == defaults[k]:
            d.pop(k)
    return d
