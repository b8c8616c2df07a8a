"""One training as a run (Algorithm 1): prepare the data, noise and trainer, train with checkpoints and
resume, write the run directory; K trainings (trials) of one search. The jitted step and epoch are
:mod:`s2e_jax.trainer`'s.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Optional

import jax
import numpy as np

from s2e_jax import checkpoint
from s2e_jax import data as data_lib
from s2e_jax import execution, fcorrection, label_issues, noise_rate, parallel, plots, runs, schedules, selection
from s2e_jax import noise as noise_lib  # noqa: F401
from s2e_jax import models as models_lib
from s2e_jax.config import FLAT_EXECUTION_FIELDS, ConfigError, TrainConfig, identity_dict
from s2e_jax.trainer import (Acc, Carry, DeviceData, Trainer, adam_plan, channel_stats, device_data,  # noqa: F401
                             init_compiler_options, normalize, seed_keys, zero_stats)


@dataclasses.dataclass
class Prepared:
    """What a training needs, built once: the trainer, the device data and the schedule."""

    config: TrainConfig
    trainer: Trainer
    data: DeviceData
    sched: np.ndarray
    model_name: str
    noise_info: dict     # data, noise and method facts recorded in config.json and summary.json
    transition: Optional[np.ndarray] = None  # F-correction's T
    image_shape: tuple = ()  # (H, W, C) of the training images
    plan: Optional[execution.Plan] = None  # how the trainer runs (s2e_jax/execution.py)
    build: Any = None  # plan -> a Trainer of the same training (another plan: K trials in one program)
    trials: Optional[str] = None  # prepare's: None for one training, else how a search's K trainings run

    def trainer_for(self, one_program: bool) -> Trainer:
        """The trainer that K trials in one program (a vmap of its scan epoch) or in sequence run:
        ``trainer`` when the plan already says so, else one built once by the plan for it (same
        parameters, same results to float rounding)."""
        if self.plan is None or self.plan.one_program == one_program or self.build is None:
            return self.trainer
        other = self.__dict__.get("_other_trainer")
        if other is None:
            p = execution.plan(self.config.execution, self.model_name,
                               "one_program" if one_program else "sequential", self.plan.backend)
            other = self.__dict__["_other_trainer"] = (p, self.build(p))
        return other[1]


def schedule_of(config: TrainConfig):
    """``(rate, params)`` of the run: a searched schedule file, eq. (1), or R == 1."""
    uses_schedule = selection.get_rule(config.method).uses_schedule
    if config.schedule is not None:
        space, x = schedules.load_schedule_file(config.schedule, config.epochs)
        return space.rate, np.asarray(space.decode(np.asarray(x, np.float32), config.epochs))
    if not uses_schedule:
        return schedules.constant_rate, np.zeros((1,), np.float32)
    if config.tau == "auto":
        raise ConfigError("tau: \"auto\" is estimated from the data by prepare(); schedule_of needs it resolved "
                          "(config.replace(tau=...))")
    tau = config.noise_rate if config.tau is None else config.tau  # Co-teaching's default tau
    return schedules.coteaching_rate, np.asarray([tau, config.t_k, config.c], np.float32)


def prepare(config: TrainConfig, dataset=None, rate=None, trials: Optional[str] = None) -> Prepared:
    """Validate the config, load and corrupt the data, put it on the device, build the trainer.

    ``dataset`` replaces loading ``config.dataset``; ``rate`` replaces the run's schedule function
    (a search passes its space's R(t) and gives each trial its own parameters); ``trials``: None for
    one training, else how a search's K trainings run ("auto" | "one_program" | "sequential"), which
    the execution plan (:func:`s2e_jax.execution.plan`) resolves with every other execution setting.
    F-correction without a ``transition_matrix`` file first trains a standard network to estimate T
    (:func:`fcorrection_transition`).
    """
    config.validate()
    ds = dataset if dataset is not None else data_lib.load_dataset(config.dataset, data_dir=config.data_dir)
    if config.label_file is not None:
        ds = data_lib.apply_label_file(ds, config.label_file)
        is_clean = ds.y_train == ds.y_train_clean
    else:
        noise_seed = config.seed if config.noise_seed is None else config.noise_seed
        ds, is_clean = data_lib.apply_noise(ds, config.noise, config.noise_rate, seed=noise_seed)
    model_name = config.model if config.model != "auto" else models_lib.default_model(ds.name, ds.x_train.shape[-1])
    plan = execution.plan(config.execution, model_name, trials)
    spec = selection.get_rule(config.method, init_epochs=config.resolved_init_epochs())
    tau_info = {}
    if rate is None and spec.uses_schedule and config.schedule is None and (
            config.tau == "auto" or (config.tau is None and (config.noise == "none" or config.label_file is not None))):
        # eq. (1)'s tau estimated from the noisy data: asked for, or no noise rate is known
        tau_hat, tau_info = estimate_tau(config, ds)
        config = config.replace(tau=tau_hat)
    elif config.tau == "auto":  # eq. (1) not used (a search's own schedules, a schedule file, no R(t))
        config = config.replace(tau=None)
    rate_, sched = schedule_of(config)
    rate = rate_ if rate is None else rate
    n_train, num_classes = len(ds.y_train), ds.num_classes

    def build(p: execution.Plan) -> Trainer:
        model = models_lib.get_model(model_name, num_classes, p.conv_impl, materialize=p.materialize,
                                     pool_s2d=p.pool_s2d)
        return Trainer(model, spec.num_nets, spec.rule, rate, epochs=config.epochs, batch_size=config.batch_size,
                       n_train=n_train, lr=config.lr, decay_start=config.decay_start, beta1=config.beta1,
                       beta1_late=config.beta1_late, net_form=p.net_form, driver=p.driver,
                       eval_batch_size=p.eval_batch_size, sample_loss=spec.sample_loss,
                       weights_fn=spec.weights_fn, precision=p.precision)

    trainer = build(plan)
    noise_info = dict(actual_noise_rate=float(1.0 - is_clean.mean()), n_train=int(len(ds.y_train)),
                      n_val=int(len(ds.y_val)), n_test=int(len(ds.y_test)), num_classes=int(ds.num_classes))
    noise_info.update(tau_info)  # tau "auto": tau_estimated, tau_method, ... (s2e_jax/noise_rate.py)
    transition = None
    noise_info["method_version"] = selection.method_version(config.method)
    if config.method == "coteaching_plus":
        noise_info["init_epochs_resolved"] = config.resolved_init_epochs()
    if config.method == "fcorrection":
        transition, info = fcorrection_transition(config, ds)
        noise_info.update(info)
    return Prepared(config, trainer, device_data(ds, is_clean, transition, config.input_norm), sched, model_name,
                    noise_info, transition, tuple(int(v) for v in ds.x_train.shape[1:]), plan, build, trials)

# ----------------------------------------------------------------------------------- warm-up networks
def warmup(config: TrainConfig, ds, epochs: int, constant_lr: bool = False) -> "TrainResult":
    """A standard network trained ``epochs`` epochs on the (already noisy) labels of ``ds`` with the
    run's optimizer and seed (``constant_lr``: no decay), as F-correction's T and ``tau="auto"`` need."""
    warm = config.replace(method="standard", noise="none", label_file=None, schedule=None, out=None, epochs=epochs,
                          tau=None, transition_matrix=None, fcorr_warmup_epochs=None, progress=False,
                          **(dict(decay_start=epochs) if constant_lr else {}))
    return train(warm, dataset=ds)


def fcorrection_transition(config: TrainConfig, ds):
    """``(T, info)`` of an F-correction run on the (already noisy) data set ``ds``.

    ``config.transition_matrix`` given: T is read from it. Otherwise a standard network is trained on
    the same noisy labels for ``fcorr_warmup_epochs`` (default: ``epochs``) with the same optimizer
    and seed (:func:`warmup`), and T is estimated from its softmax on the training images
    (:func:`s2e_jax.fcorrection.estimate_transition`). ``info`` records the estimator and, for
    synthetic noise, the mean absolute error of T against the true matrix.
    """
    if config.transition_matrix is not None:
        return fcorrection.load_transition(config.transition_matrix, ds.num_classes), dict(fcorr_transition="file")
    epochs = config.epochs if config.fcorr_warmup_epochs is None else config.fcorr_warmup_epochs
    start = time.time()
    res = warmup(config, ds, epochs)
    prep = res.prepared
    probs = fcorrection.predict_proba(prep.trainer, res.carry, prep.data, prep.data.x_train)[0]
    if not np.isfinite(probs).all():  # a diverged warm-up network: its T would make every loss NaN
        raise ConfigError(f"fcorrection: the warm-up network ({epochs} epochs of standard training) diverged "
                          f"(non-finite softmax; final test accuracy {res.summary['final_test_acc']:.4f}), so T "
                          f"cannot be estimated from it; give transition_matrix (--transition-matrix), "
                          f"a smaller lr or other fcorr_warmup_epochs")
    t = fcorrection.estimate_transition(probs, config.fcorr_estimator)
    info = dict(fcorr_transition=f"estimated ({config.fcorr_estimator}, {epochs} warm-up epochs)",
                fcorr_warmup_seconds=float(time.time() - start),
                fcorr_warmup_test_acc=res.summary["final_test_acc"])
    if config.label_file is None:
        true_t = noise_lib.transition_matrix(config.noise, config.noise_rate, ds.num_classes)
        info["fcorr_transition_mae"] = float(np.abs(t - true_t).mean())
    return t, info


def estimate_tau(config: TrainConfig, ds):
    """``(tau_hat, info)`` for a run on the (already noisy) data set ``ds``: a standard network trained
    :func:`s2e_jax.noise_rate.warmup_epochs` epochs on the noisy labels with the run's optimizer (its
    lr, constant) and seed (:func:`warmup`), then :func:`s2e_jax.noise_rate.estimate_from_probs` on its
    softmax on the training images. ``info`` holds what goes into config.json and summary.json."""
    epochs = noise_rate.warmup_epochs(config, len(ds.y_train))
    start = time.time()
    res = warmup(config, ds, epochs, constant_lr=True)
    prep = res.prepared
    probs = fcorrection.predict_proba(prep.trainer, res.carry, prep.data, prep.data.x_train)[0]
    if not np.isfinite(probs).all():
        raise ConfigError(f"tau: the warm-up network ({epochs} epochs of standard training) that estimates the "
                          f"noise rate diverged (non-finite softmax); give tau (--tau), a smaller lr or other "
                          f"tau_warmup_epochs")
    tau = noise_rate.estimate_from_probs(probs, ds.y_train, ds.num_classes, config.tau_estimator)
    info = dict(tau_estimated=tau, tau_method=f"{config.tau_estimator} ({epochs} warm-up epochs)",
                tau_warmup_seconds=float(time.time() - start),
                tau_warmup_test_acc=float(res.summary["final_test_acc"]))
    return tau, info


def init_carry(prep: Prepared, seed: int, sched=None) -> Carry:
    net_keys, data_key = seed_keys(seed, prep.trainer.num_nets)
    return prep.trainer.init(net_keys, data_key, prep.sched if sched is None else sched, prep.data.x_train)


def to_host(metrics) -> dict:
    """Per-epoch metrics copied to the host as numpy arrays."""
    return {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}


def stack_epochs(rows):
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


@dataclasses.dataclass
class TrainResult:
    """Per-epoch metrics (arrays [epochs] or [epochs, N]), the summary and the final state."""

    config: TrainConfig
    metrics: dict
    summary: dict
    run_dir: Optional[str]
    carry: Any
    prepared: Optional[Prepared] = None
    label_issues: Optional[dict] = None  # :func:`label_report`: the training examples, most suspect first


def summarize(metrics: dict, noise_info: dict, seconds: float) -> dict:
    """Final, best and last-10-mean test accuracy (mean of the networks) and label precision."""
    test = metrics["test_acc"].mean(-1)
    val = metrics["val_acc"].mean(-1)
    prec = metrics["label_precision"].mean(-1)
    return dict(final_test_acc=float(test[-1]), best_test_acc=float(test.max()),
                last10_test_acc=float(test[-10:].mean()), final_val_acc=float(val[-1]),
                best_val_acc=float(val.max()), final_val_loss=float(metrics["val_loss"].mean(-1)[-1]),
                final_label_precision=float(prec[-1]), mean_label_precision=float(prec.mean()),
                final_test_acc_per_net=[float(v) for v in metrics["test_acc"][-1]],
                epochs=int(len(test)), seconds=float(seconds), **noise_info)


TIMING_KEYS = ("seconds", "fcorr_warmup_seconds", "tau_warmup_seconds")  # timing.json, not summary.json


def resume_identity(config: TrainConfig) -> dict:
    """What must match for ``train`` to resume into a run directory: what the config computes (not
    where the run is written, how it reports or checkpoints, nor how it runs but its ``precision``);
    files by content (:mod:`s2e_jax.runs`)."""
    return runs.files_by_content(dict(identity_dict(config), precision=config.execution.precision))


def _resumable(config: TrainConfig) -> bool:
    """Whether ``config.out`` holds an unfinished training of this same config (resume it), or is new
    (False); anything else is one ConfigError and nothing is touched."""
    root = config.out
    runs.RunDir.check_free(root)  # another process holds it: refused before the data is loaded
    if not os.path.isdir(root) or not os.path.exists(os.path.join(root, "config.json")):
        runs.RunDir.check_new(root)
        return False
    try:
        saved = runs.RunDir(root).read_json("config.json").get("identity")
    except (OSError, ValueError, AttributeError):
        raise ConfigError(f"out: {root}/config.json is damaged; choose another --out (nothing was changed)") from None
    mine = resume_identity(config)
    if isinstance(saved, dict):  # a field newer than the directory matches while it has its default
        defaults = TrainConfig().to_dict()
        mine = {k: v for k, v in mine.items() if k in saved or v != defaults.get(k)}
        # how it runs is not part of the identity (older directories hold it flat): not compared
        saved = {k: v for k, v in saved.items() if k == "precision" or k not in FLAT_EXECUTION_FIELDS}
    if runs.identity_files_by_content(dict(train=saved)) != dict(train=mine):
        raise ConfigError(f"out: {root} holds a training with another config; choose another --out "
                          "(nothing was changed)")
    if os.path.exists(os.path.join(root, "summary.json")):
        raise ConfigError(f"out: {root} holds a finished training of this config (summary.json); choose "
                          "another --out to train again (nothing was changed)")
    return True


def _rewrite_metrics(run, rows):
    """metrics.csv made again from the rows restored (rows written after the checkpoint are dropped)."""
    tmp = "metrics.csv.resume"
    if run.exists(tmp):
        os.remove(run.path(tmp))
    for i, row in enumerate(rows):
        run.append_metrics_row(i, row, name=tmp)
    if rows:
        os.replace(run.path(tmp), run.path("metrics.csv"))
    elif run.exists("metrics.csv"):
        os.remove(run.path("metrics.csv"))


def execution_record(prep: Prepared, one_program: Optional[bool] = None) -> dict:
    """``execution.json`` of a run: the resolved plan its trainings ran (``one_program``: of K trials,
    when it differs from ``prep.plan``'s)."""
    p = prep.plan
    if one_program is not None and one_program != p.one_program:
        p = execution.plan(prep.config.execution, prep.model_name, "one_program" if one_program else "sequential",
                           p.backend)
    return p.to_dict()


def model_description(prep: Prepared, image_shape) -> dict:
    """What :func:`s2e_jax.inference.load` needs to rebuild the networks (``model.json``)."""
    c = int(image_shape[-1])
    return dict(model=prep.model_name, num_classes=int(prep.noise_info["num_classes"]),
                num_nets=int(prep.trainer.num_nets), image_shape=[int(v) for v in image_shape],
                mean=[float(v) for v in np.asarray(prep.data.mean)[:c]],
                std=[float(v) for v in np.asarray(prep.data.std)[:c]],
                method=prep.config.method, input_norm=prep.config.input_norm)


def label_report(prep: Prepared, carry: Carry) -> dict:
    """The label report of a finished training (:func:`s2e_jax.label_issues.suspect_table`)."""
    probs = prep.trainer.predict_proba(carry, prep.data, prep.data.x_train)
    return label_issues.suspect_table(np.asarray(prep.data.y_train), probs, np.asarray(carry.selected),
                                      np.asarray(carry.seen))


def train(config: TrainConfig, dataset=None) -> TrainResult:
    """Run one training as the config says; write its run directory if ``config.out`` is set.

    The run directory gets config.json, metrics.csv (a row per epoch), summary.json (results),
    timing.json (wall-clock seconds), curves.png, label_issues.csv, the final networks (model/,
    model.json: :func:`s2e_jax.inference.load`) and checkpoints/ while it runs. The same call on the
    same ``out`` after a kill resumes from the newest checkpoint and ends with the same metrics.csv
    and summary.json as an uninterrupted run.

    >>> result = train(TrainConfig(dataset="digits", noise="pair", noise_rate=0.45, epochs=20))
    >>> result.summary["final_test_acc"]
    """
    resume = _resumable(config) if config.out else False  # refused before loading data, not after
    prep = prepare(config, dataset)
    # every process checks the directory (runs.RunDir.create); only process 0 writes into it
    run = (runs.RunDir.open(config.out) if resume else runs.RunDir.create(config.out)) if config.out else None
    if run and resume:
        try:
            _resumable(config)  # again, now that this process holds it: another may have finished it meanwhile
        except ConfigError:
            run.release()
            raise
    if run:
        run.write_json("config.json", dict(config.to_dict(), model_resolved=prep.model_name,
                                           identity=resume_identity(config), **prep.noise_info))
        run.write_json("execution.json", execution_record(prep))
    carry = init_carry(prep, config.seed)
    rows, start, resumed_from = [], time.time(), 0
    # one process: checkpoints (several processes run the same training; none is saved then)
    ckpts = (checkpoint.TrainingCheckpoints(run.root) if run and config.checkpoint_every != 0
             and jax.process_count() == 1 and parallel.is_main_process() else None)
    if run and resume:
        restored = ckpts.restore(carry) if ckpts else None
        if restored is not None:
            carry, rows = restored
            resumed_from = len(rows)
        if parallel.is_main_process():
            _rewrite_metrics(run, rows)
    policy, saves = checkpoint.Policy(config.checkpoint_every), []
    bar = runs.progress(config.epochs, "epochs", enabled=config.progress)
    bar.update(resumed_from) if resumed_from else None
    for _ in range(resumed_from, config.epochs):
        carry, metrics = prep.trainer.run_epoch(carry, prep.data)
        rows.append(to_host(metrics))  # one small device-to-host copy per epoch
        if run:
            run.append_metrics_row(len(rows) - 1, rows[-1])
            if ckpts and parallel.is_main_process() and policy.due(len(rows), config.epochs):
                saves.append(ckpts.save(len(rows), carry, rows))
                policy.saved(saves[-1])
        bar.update(1, test_acc=float(rows[-1]["test_acc"].mean()), R=float(rows[-1]["r"]))
    bar.close()
    metrics = stack_epochs(rows)
    summary = summarize(metrics, prep.noise_info, time.time() - start)
    report = label_report(prep, carry)
    if run and parallel.is_main_process():
        if prep.transition is not None:
            np.save(run.path("transition.npy"), prep.transition)
        label_issues.write_csv(run.path("label_issues.csv"), report)
        checkpoint.save_networks(run.root, carry.params, carry.batch_stats,
                                 model_description(prep, prep.image_shape))
        plots.plot_curves(metrics, run.path("curves.png"), title=f"{config.method} on {config.dataset} "
                          f"({config.noise} {config.noise_rate:g})")
        run.write_json("timing.json", dict({k: summary[k] for k in TIMING_KEYS if k in summary},
                                           resumed_from_epoch=resumed_from, checkpoints_saved=len(saves),
                                           checkpoint_seconds=float(sum(saves))))
        run.write_json("summary.json", {k: v for k, v in summary.items() if k not in TIMING_KEYS})  # last: done
    if ckpts:
        ckpts.close()
        if parallel.is_main_process():  # a finished run is not resumed: its final networks are in model/
            shutil.rmtree(ckpts.path, ignore_errors=True)
    return TrainResult(config, metrics, summary, run.root if run else None, carry, prep, report)


def train_trials(prep: Prepared, scheds, seeds, epochs: Optional[int] = None,
                 one_program: Optional[bool] = None, mesh=None, memory_budget_mib: Optional[float] = None,
                 checkpoint_dirs: Optional[list] = None, batch_checkpoint_dir: Optional[str] = None):
    """K trainings (schedules ``scheds`` [K, P], seeds [K]) sharing the device data.

    With ``one_program`` (the default on GPU/TPU) the K trainings are one program:
    :func:`s2e_jax.parallel.run_trials` shards the trial axis over every device of ``mesh`` (default:
    all devices of all processes), pads K to a multiple of the device count (padding dropped), and
    splits K into waves when it would not fit ``memory_budget_mib``. Otherwise (the CPU default, by
    measurement) one after another with the trainer's own driver; with several processes
    (``--distributed``) each runs its share so (trial i on process i mod P) and the metrics are
    gathered over JAX's collectives. ``checkpoint_dirs`` (one folder per trial; trials in sequence on
    one process) or ``batch_checkpoint_dir`` (the K trials in one program, one process): the trainings
    save their state there as ``train`` does (``config.checkpoint_every``) and resume from it, so a
    killed search loses at most the epochs since the last checkpoint.
    Returns per-epoch metrics with a leading trial axis:
    ``{name: array [K, epochs, ...]}``, the same on every process.
    """
    if one_program is None:  # the plan's (prepared for a search), else the default: one program on GPU/TPU
        one_program = (prep.plan.one_program if prep.plan is not None and prep.trials is not None
                       else execution.one_program_default(jax.default_backend()))
    tr = prep.trainer_for(one_program)
    epochs = tr.epochs if epochs is None else epochs
    scheds = np.asarray(scheds, np.float32)
    if one_program:
        metrics, _ = parallel.run_trials(prep, scheds, seeds, epochs=epochs, mesh=mesh,
                                         memory_budget_mib=memory_budget_mib, checkpoint_dir=batch_checkpoint_dir)
        return metrics
    alone = jax.process_count() == 1

    def one(i):
        carry, rows = init_carry(prep, int(seeds[i]), scheds[i]), []
        ckpts = None
        if checkpoint_dirs is not None and alone and prep.config.checkpoint_every != 0:
            ckpts, carry, rows = checkpoint.continue_from(checkpoint_dirs[i], carry, epochs)
        policy = checkpoint.Policy(prep.config.checkpoint_every)
        for _ in range(len(rows), epochs):
            carry, m = tr.run_epoch(carry, prep.data)
            rows.append(m)  # on the device: copied to the host at a checkpoint or at the end
            if ckpts and policy.due(len(rows), epochs):
                rows = [to_host(r) for r in rows]
                policy.saved(ckpts.save(len(rows), carry, rows))
        if ckpts:
            ckpts.close()
        return stack_epochs([to_host(r) for r in rows])

    return parallel.in_sequence(len(scheds), one)
