"""A schedule search as a run: the training objective, the run directory, resume, figures.

The searchers (:mod:`s2e_jax.search`) know nothing of training: they see ``objective(xs) -> f``.
This module builds that objective from the trainer — K sampled schedules are K trainings on one trial
axis (:func:`s2e_jax.train.train_trials`) — and records every training in ``trials.jsonl``.

Run directory (one per search; several algorithms may share it, each in its own folder)::

    search_config.json            the resolved config (data, noise, epochs, space, seed)
    <algo>/trials.jsonl           one line per training: x, R(t), f, val/test accuracy, label precision, seconds
    <algo>/state.json             the searcher's state after each iteration (theta included)
    <algo>/theta.jsonl            theta after each iteration (relaxation searchers)
    <algo>/best_schedule.json     the best schedule, reusable by ``train --schedule``
    schedule.png                  the learned R(t) of every algorithm against Co-teaching's (Figure 4)
    search_efficiency.png         best validation accuracy against the number of trainings (Figure 6)

A search killed at any moment resumes from its directory: the searcher state is written atomically
after each iteration, trainings are appended (fsync'd) as they finish and are never run again, and
every random draw is a function of (seed, iteration, trial), so the resumed search equals an
uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import time
from typing import Optional

import jax
import numpy as np

from s2e_jax import execution, parallel, plots, runs, schedules, search
from s2e_jax import train as train_lib
from s2e_jax.config import ConfigError, TrainConfig, _check_choice, _check_int, identity_dict

OBJECTIVES = ("error", "loss")
TRIALS = execution.TRIALS


@dataclasses.dataclass
class SearchConfig:
    """A schedule search (Algorithm 2 or a rival) on top of a training config."""

    train: TrainConfig
    algo: str = "newton"
    space: str = "s2e"
    iterations: int = 10        # M
    samples: int = 8            # K
    objective: str = "error"    # error: validation error at the last epoch (mean of the networks); loss: L_val
    out: Optional[str] = None
    max_cost: Optional[float] = None  # stop once this many full-training equivalents are spent (Hyperband)
    # how the K trainings of an iteration run (train.train_trials): auto = one program on GPU/TPU, one
    # after another on a CPU (each process its share under --distributed); how, not what: same results
    trials: str = "auto"
    # common random numbers: the K trainings of an iteration share one training seed (data order,
    # initialization), so that their differences are the schedules' and not seed noise
    common_seed: bool = False

    def validate(self) -> "SearchConfig":
        self.train.validate()
        _check_choice("algo", self.algo, search.ALGOS)
        schedules.get_space(self.space)
        _check_int("iterations", self.iterations, 1)
        _check_int("samples", self.samples, 1)
        _check_choice("objective", self.objective, OBJECTIVES)
        _check_choice("trials", self.trials, TRIALS)
        if self.train.method != "coteaching":
            raise ConfigError(f"method: the search tunes R(t) of coteaching, got {self.train.method!r}")
        if not isinstance(self.common_seed, bool):
            raise ConfigError(f"common_seed: expected true or false, got {self.common_seed!r}")
        if self.common_seed and self.algo == "hyperband":
            raise ConfigError("common_seed: hyperband has no fixed iteration of K trainings to share a seed (a "
                              "rung of varying size and epochs is asked in parts); use it with another --algo")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d


def _identity(cfg: SearchConfig) -> dict:
    """What must match to resume into a directory (the data, the noise, the training, the seed)."""
    t = identity_dict(cfg.train)  # a field newer than the directory matches while at its default
    extra = dict(common_seed=True) if cfg.common_seed else {}  # off: the identity of older directories
    return runs.identity_files_by_content(dict(train=t, space=cfg.space, objective=cfg.objective, **extra))


def trial_seed(seed: int, trial: int) -> int:
    """The training seed of trial number ``trial``: independent of K and of interruptions."""
    return (seed * 1_000_003 + trial) % (2**31 - 1)


def training_seeds(seed: int, trials, common: bool = False) -> list:
    """The training seeds of the trials of one iteration (``trials``: their numbers, in order): each
    its own :func:`trial_seed`, or with ``common`` (common random numbers) all the seed of the
    iteration's first trial, a function of the search seed and the iteration alone."""
    trials = list(trials)
    return [trial_seed(seed, trials[0] if common else t) for t in trials]


class TrainingObjective:
    """``objective(xs [K, dim], budget=None) -> f [K]``: K trainings with the schedules ``xs``.

    Finished trainings are cached by their trial number (``on_result`` persists them), so a resumed
    search never runs one again.
    """

    def __init__(self, cfg: SearchConfig, prep: train_lib.Prepared, space, first_trial=0, cache=None,
                 on_result=None, checkpoint_root: Optional[str] = None):
        self.cfg, self.prep, self.space = cfg, prep, space
        self.next_trial = first_trial
        self.cache = dict(cache or {})
        self.on_result = on_result
        # trials in sequence save checkpoints under checkpoint_root/trial_<n> (removed once recorded)
        self.checkpoint_root = checkpoint_root

    def __call__(self, xs, budget=None):
        T = self.cfg.train.epochs
        epochs = T if budget is None else int(budget)
        ids = list(range(self.next_trial, self.next_trial + len(xs)))
        for i, t in enumerate(ids):
            rec = self.cache.get(t)
            # (x is sampled in float32: another backend or JAX version may move its last bits)
            if rec is not None and (not np.allclose(np.asarray(rec["x"], np.float64), np.asarray(xs[i], np.float64),
                                                    rtol=0, atol=1e-6) or rec["epochs"] != epochs):
                raise ConfigError(
                    f"trial {t}: the search directory holds a training of another schedule or budget than "
                    f"the search asks now (x={rec['x']}, {rec['epochs']} epochs; asked x={list(map(float, xs[i]))}, "
                    f"{epochs} epochs): the searcher's code, options or sampling (JAX version) changed since "
                    "it was written; choose another --out (nothing was changed)")
        todo = [i for i, t in enumerate(ids) if t not in self.cache]
        one_program = self.prep.plan.one_program  # the search's execution plan (prepare(trials=...))
        in_sequence = jax.process_count() == 1 and not one_program
        # in sequence, each training is recorded (and its checkpoints removed) as soon as it ends
        for group in ([[i] for i in todo] if in_sequence else [todo] if todo else []):
            t0 = time.time()
            scheds = np.stack([np.asarray(self.space.decode(np.asarray(xs[i], np.float32), T)) for i in group])
            seeds = [training_seeds(self.cfg.train.seed, ids, self.cfg.common_seed)[i] for i in group]
            dirs = ([os.path.join(self.checkpoint_root, f"trial_{ids[i]}") for i in group]
                    if self.checkpoint_root and in_sequence else None)
            batch_dir = (os.path.join(self.checkpoint_root, f"trials_{ids[group[0]]}-{ids[group[-1]]}")
                         if self.checkpoint_root and not in_sequence and jax.process_count() == 1 else None)
            m = train_lib.train_trials(self.prep, scheds, seeds, epochs=epochs, one_program=one_program,
                                       checkpoint_dirs=dirs, batch_checkpoint_dir=batch_dir)
            secs = (time.time() - t0) / len(group)
            for j, i in enumerate(group):
                rec = self._record(ids[i], xs[i], {k: v[j] for k, v in m.items()}, epochs, secs)
                self.cache[ids[i]] = rec
                if self.on_result:
                    self.on_result(rec)
                if dirs and runs.is_writer():
                    shutil.rmtree(dirs[j], ignore_errors=True)
            if batch_dir and runs.is_writer():
                shutil.rmtree(batch_dir, ignore_errors=True)
        self.next_trial += len(xs)
        return np.asarray([np.nan if self.cache[t]["f"] is None else self.cache[t]["f"] for t in ids])

    def _record(self, trial, x, m, epochs, secs):
        val_acc, test_acc = m["val_acc"].mean(-1), m["test_acc"].mean(-1)
        diverged = not np.all(np.isfinite(m["train_loss"]))
        f = (1.0 - val_acc[-1]) if self.cfg.objective == "error" else float(m["val_loss"].mean(-1)[-1])
        return dict(trial=trial, x=[float(v) for v in x], epochs=epochs, f=None if diverged else float(f),
                    failed=diverged, val_acc=float(val_acc[-1]), best_val_acc=float(val_acc.max()),
                    test_acc=float(test_acc[-1]), best_test_acc=float(test_acc.max()),
                    last10_test_acc=float(test_acc[-10:].mean()),
                    label_precision=float(m["label_precision"].mean(-1)[-1]),
                    curve=[round(float(v), 5) for v in m["r"]], seconds=float(secs))


def _searcher(cfg: SearchConfig, space):
    opts = dict(worst=1.0) if cfg.objective == "error" else {}
    if cfg.algo == "hyperband":
        opts["max_budget"] = cfg.train.epochs
    elif cfg.algo == "newton":  # the default's surrogate reads R_x(t) over the training's epochs
        opts["epochs"] = cfg.train.epochs
    return search.make_searcher(cfg.algo, space, samples=cfg.samples, seed=cfg.train.seed, **opts)


def _no_work_in(root: str) -> bool:
    """Whether a search directory holds nothing but its ``search_config.json`` and empty folders."""
    for here, _dirs, files in os.walk(root):
        if any(f != runs.LOCK_NAME and (here != root or f != "search_config.json") for f in files):
            return False
    return True


def _damaged(path: str, why: str, what: str) -> ConfigError:
    return ConfigError(f"out: {path} is damaged ({why}) {what}; move the directory aside or choose another "
                       "--out (nothing was changed)")


def _replay(cfg: SearchConfig, space, records: list):
    """A fresh searcher told the recorded trainings iteration by iteration, as the search told them
    (every proposal is a function of the seed and the state; an iteration not recorded in full ends
    it): the state that a damaged ``state.json`` held. ``ValueError`` where a proposal is not the
    recorded one."""
    searcher = _searcher(cfg, space)
    by_trial = {r.get("trial"): r for r in records if isinstance(r, dict)}
    while True:
        xs, budget = searcher.ask()
        first = len(searcher.history)
        recs = [by_trial.get(first + i) for i in range(len(xs))]
        if any(r is None for r in recs):
            return searcher
        epochs = cfg.train.epochs if budget is None else int(budget)
        for i, r in enumerate(recs):
            try:
                same = (r["epochs"] == epochs and np.allclose(np.asarray(r["x"], np.float64), xs[i], rtol=0, atol=1e-6))
            except (KeyError, TypeError, ValueError):
                same = False
            if not same:
                raise ValueError(f"trial {first + i} of trials.jsonl is not the training the searcher proposes "
                                 "now: its code, options or sampling (JAX version) changed")
        searcher.tell(xs, [np.nan if r.get("f") is None else float(r["f"]) for r in recs])


def _restore(cfg: SearchConfig, space, algo_dir, records: list):
    """The searcher of ``<algo>/state.json``; where that file is damaged, the one rebuilt from
    ``trials.jsonl`` (written back at once), or one ConfigError naming the file."""
    searcher = _searcher(cfg, space)
    if not algo_dir.exists("state.json"):
        return searcher
    path = algo_dir.path("state.json")
    try:
        state = algo_dir.read_json("state.json", kind=dict)
    except runs.DamagedFile as err:
        why = err.why
    else:
        missing = sorted(set(searcher.state_dict()) - set(state))
        if missing:
            why = f"fields missing: {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}"
        else:
            try:
                return searcher.load_state_dict(state)
            except ConfigError as err:  # a sound state of other options (samples, say)
                raise ConfigError(f"out: {path}: {err}; resume with the options it was made with or choose "
                                  "another --out (nothing was changed)") from None
            except (KeyError, TypeError, ValueError, AttributeError, IndexError):
                why = "fields of the wrong type"
            searcher = _searcher(cfg, space)  # the failed load may have changed some of it
    try:
        searcher = _replay(cfg, space, records)
    except (ValueError, TypeError) as err:
        raise _damaged(path, why, f"and cannot be rebuilt from trials.jsonl ({err})") from None
    algo_dir.write_json("state.json", searcher.state_dict())
    print(f"note: {path} was damaged ({why}); rebuilt from trials.jsonl ({searcher.iteration} iterations)",
          file=sys.stderr)
    return searcher


def run(cfg: SearchConfig, dataset=None) -> dict:
    """Run (or resume) a search; returns the summary written to ``<algo>/result.json``.

    ``cfg.out`` is claimed for the whole call (:class:`s2e_jax.runs.RunDir`): a second search into it
    while this one runs is refused, naming this one."""
    cfg.validate()
    root = runs.RunDir.open(cfg.out) if cfg.out else None
    try:
        return _run(cfg, dataset, root)
    finally:
        if root is not None:
            root.release()


def _run(cfg: SearchConfig, dataset, root) -> dict:
    space = schedules.get_space(cfg.space)
    # --distributed: every process reads and checks the directory (resume needs it on a shared file
    # system), so all refuse the same one; then process 0 alone writes (s2e_jax.runs)
    if root is not None:
        ident = _identity(cfg)
        fresh = not root.exists("search_config.json")
        if not fresh:
            try:
                old = root.read_json("search_config.json", kind=dict)
            except runs.DamagedFile as err:
                raise _damaged(err.path, err.why, "and it names the search this directory holds") from None
            if runs.identity_files_by_content(old.get("identity")) != ident:
                if not _no_work_in(root.root):
                    raise ConfigError(f"out: {cfg.out} holds a search with other settings (data, noise, "
                                      "training, space or seed); choose another --out")
                fresh = True  # a search that stopped before its first training (bad data, say): no work lost
        elif os.path.isdir(root.root) and runs.contents(root.root):
            raise ConfigError(f"out: {cfg.out} exists and is not a search directory; nothing was overwritten")
        parallel.barrier(f"s2e_jax.search_run:{cfg.out}")
        if fresh:
            root.write_json("search_config.json", dict(identity=ident, config=cfg.to_dict()))
    algo_dir = runs.RunDir.open(os.path.join(cfg.out, cfg.algo), claim=False) if root else None

    searcher = _searcher(cfg, space)
    cache = {}
    if algo_dir is not None:
        records = runs.read_jsonl(algo_dir.path("trials.jsonl"))
        searcher = _restore(cfg, space, algo_dir, records)
        cache = {r["trial"]: r for r in records}
        _truncate_torn_line(algo_dir.path("trials.jsonl"))
        _complete_theta_log(algo_dir, searcher)
    done_trials = len(searcher.history)
    def more():
        return searcher.iteration < cfg.iterations and (cfg.max_cost is None or searcher.cost < cfg.max_cost)

    if not more():
        return _finish(cfg, searcher, space, algo_dir, root, cache)

    prep = train_lib.prepare(cfg.train, dataset, rate=space.rate, trials=cfg.trials)
    if algo_dir is not None:  # the resolved execution plan of this search's trainings
        algo_dir.write_json("execution.json", train_lib.execution_record(prep))

    def on_result(rec):
        rec = dict(rec, iteration=searcher.iteration, algo=cfg.algo)
        cache[rec["trial"]] = rec
        if algo_dir is not None:
            runs.append_line(algo_dir.path("trials.jsonl"), json.dumps(rec))

    objective = TrainingObjective(cfg, prep, space, done_trials, cache, on_result,
                                  checkpoint_root=algo_dir.path("checkpoints") if algo_dir is not None else None)
    bar = runs.progress(cfg.iterations * cfg.samples, "trainings", enabled=cfg.train.progress,
                        desc=f"{cfg.algo} search")
    bar.update(done_trials) if done_trials else None

    def after_tell(record):
        bar.update(1, best_val_acc=1.0 - searcher.best()[1] if cfg.objective == "error" else -1)

    while more():
        search.run_search(searcher, objective, iterations=searcher.iteration + 1, on_trial=after_tell)
        if algo_dir is not None:
            algo_dir.write_json("state.json", searcher.state_dict())
            _complete_theta_log(algo_dir, searcher)
    bar.close()
    return _finish(cfg, searcher, space, algo_dir, root, cache)


def _complete_theta_log(algo_dir, searcher):
    """Append θ after the iteration just saved in ``state.json`` to ``theta.jsonl`` unless it is there:
    the state is written first, so a kill between the two is mended on resume."""
    if not hasattr(searcher, "theta") or searcher.iteration == 0:
        return
    path = algo_dir.path("theta.jsonl")
    _truncate_torn_line(path)
    if not any(r.get("iteration") == searcher.iteration for r in runs.read_jsonl(path)):
        runs.append_line(path, json.dumps(dict(iteration=searcher.iteration,
                                               theta=[float(v) for v in searcher.theta])))


def _truncate_torn_line(path):
    """Drop a partial last line left by a kill, so later appends stay valid JSONL."""
    if not os.path.exists(path):
        return
    with open(path, "rb") as f:
        content = f.read()
    if content and not content.endswith(b"\n"):
        runs.atomic_write_text(path, content[: content.rfind(b"\n") + 1].decode())


def _finish(cfg, searcher, space, algo_dir, root, cache):
    x, f = searcher.best()
    best_trial = None
    if x is not None:
        recs = [r for r in searcher.history if not r["failed"] and r["cost"] >= 1.0]
        best_trial = cache.get(min(recs, key=lambda r: r["f"])["trial"])
    summary = dict(algo=cfg.algo, space=cfg.space, iterations=searcher.iteration, samples=cfg.samples,
                   trainings=len(searcher.history), cost=searcher.cost, best_f=float(f),
                   best_x=None if x is None else [float(v) for v in x],
                   best_val_acc=None if best_trial is None else best_trial["val_acc"],
                   best_test_acc=None if best_trial is None else best_trial["test_acc"],
                   best_label_precision=None if best_trial is None else best_trial["label_precision"])
    if hasattr(searcher, "theta"):
        summary["theta"] = [float(v) for v in searcher.theta]
    if algo_dir is not None and runs.is_writer():
        algo_dir.write_json("result.json", summary)
        if x is not None:
            schedules.save_schedule_file(algo_dir.path("best_schedule.json"), space, x, cfg.train.epochs,
                                         algo=cfg.algo, f=float(f))
        plots.plot_search_dir(root.root, cfg.train.epochs, cfg.train.noise_rate)
    return summary


# ----------------------------------------------------------------------------------- CLI
def add_parser(sub, add_train_args):
    p = sub.add_parser("search", help="search R(t) (Algorithm 2 or a rival)")
    add_train_args(p)
    p.add_argument("--algo", default="newton", help=" | ".join(search.ALGOS))
    p.add_argument("--space", default="s2e", help=" | ".join(schedules.SPACES))
    p.add_argument("--iterations", type=int, default=10, help="M: iterations of the search")
    p.add_argument("--samples", type=int, default=8, help="K: schedules (trainings) per iteration")
    p.add_argument("--objective", default="error", help="error (validation error) | loss (validation CE)")
    p.add_argument("--trials", default="auto",
                   help="how each iteration's K trainings run: auto (one program on GPU/TPU, one after "
                        "another on a CPU) | one_program (sharded over every device) | sequential")
    p.add_argument("--common-seed", action="store_true",
                   help="common random numbers: the K trainings of an iteration share their training seed "
                        "(data order, initialization); not with hyperband")
    p.add_argument("--out", default=None, help="search directory (resumed if it holds this search)")
    return p


def run_from_args(args, config_from):
    tcfg = config_from(args, method="coteaching").replace(out=None)
    cfg = SearchConfig(tcfg, algo=args.algo, space=args.space, iterations=args.iterations,
                       samples=args.samples, objective=args.objective, out=args.out, trials=args.trials,
                       common_seed=args.common_seed)
    summary = run(cfg)
    print(json.dumps(summary, indent=2))
