"""The command line: parsing only, then one library call.

    python -m s2e_jax train --dataset digits --noise pair --noise-rate 0.45 --method coteaching \
        --epochs 200 --seed 0 --out runs/x
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Optional

from s2e_jax.config import (CONV_IMPLS, DRIVERS, FCORR_ESTIMATORS, METHODS, NET_FORMS, NOISES, POOL_S2D, PRECISIONS,
                             TAU_ESTIMATORS, ConfigError, ExecutionConfig, TrainConfig)


def _add_train_args(p: argparse.ArgumentParser):
    d = TrainConfig()
    p.add_argument("--dataset", default=d.dataset, help="digits | mnist | cifar10 | cifar100 | path to an .npz")
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir")
    p.add_argument("--label-file", default=None, help=".npy of noisy training labels (e.g. CIFAR-10N)")
    p.add_argument("--noise", default=d.noise, help=" | ".join(NOISES))
    p.add_argument("--noise-rate", type=float, default=d.noise_rate)
    p.add_argument("--noise-seed", type=int, default=None, help="seed of the label noise (default: --seed)")
    p.add_argument("--model", default=d.model, help="auto | mlp | model1 | model2 | model3 (Table 4)")
    p.add_argument("--input-norm", default=d.input_norm,
                   help="standardize (per-channel mean/std of the training images) | unit (pixels / 255, "
                        "as the released code of Co-teaching and S2E)")
    p.add_argument("--epochs", type=int, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--decay-start", type=int, default=d.decay_start)
    p.add_argument("--beta1", type=float, default=d.beta1)
    p.add_argument("--beta1-late", type=float, default=d.beta1_late)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--checkpoint-every", type=_int_or_auto, default=d.checkpoint_every,
                   help="epochs between checkpoints of the training state in the run directory (auto: whenever "
                        "saving costs <= 2%% of the training time; 0: none); the same command on the same --out "
                        "after a kill resumes from the newest one")
    e = ExecutionConfig()
    a = p.add_argument_group("advanced: how it runs (every choice computes the same, to float rounding; auto: "
                             "the execution plan, docs/performance.md)")
    a.add_argument("--net-form", default=e.net_form,
                   help=" | ".join(NET_FORMS) + ": the network axis (fused: a loop, first layers as one)")
    a.add_argument("--driver", default=e.driver,
                   help=" | ".join(DRIVERS) + ": an epoch as one lax.scan, or a loop of jitted steps")
    a.add_argument("--conv-impl", default=e.conv_impl,
                   help=" | ".join(CONV_IMPLS) + ": convolutions: XLA's, or slices x kernel (convs.py)")
    a.add_argument("--pool-s2d", default=e.pool_s2d,
                   help=" | ".join(POOL_S2D) + ": Model 1's conv + 2x2 max-pool as one space-to-depth convolution")
    a.add_argument("--eval-batch-size", type=int, default=e.eval_batch_size)
    a.add_argument("--precision", default=e.precision,
                   help=" | ".join(PRECISIONS) + ": bfloat16 is bf16 compute on float32 master weights")
    a.add_argument("--memory-budget-mib", type=float, default=e.memory_budget_mib,
                   help="per-device memory for K trials in one program; more are split into waves "
                        "(default: 90%% of a GPU/TPU's limit; on a CPU half the RAM)")
    a.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() first (TPU pod, multi-node GPU job): trials "
                        "are sharded over every process' devices, only process 0 writes files")
    a.add_argument("--coordinator", default=None,
                   help="with --distributed, where no cluster manager says: HOST:PORT of process 0")
    a.add_argument("--num-processes", type=int, default=None, help="with --coordinator: processes in all")
    a.add_argument("--process-id", type=int, default=None, help="with --coordinator: this process' index")


def _float_or_auto(text: str):
    """A number, or the text as given ("auto"; anything else is left to the config's message)."""
    try:
        return float(text)
    except ValueError:
        return text


def _int_or_auto(text: str):
    """An integer, or the text as given ("auto"; anything else is left to the config's message)."""
    try:
        return int(text)
    except ValueError:
        return text


def _config_from(args, cls=TrainConfig, **extra):
    """``cls`` (TrainConfig) from the parsed arguments; the advanced group is its ``execution``."""
    names = {f.name for f in dataclasses.fields(cls)} - {"execution"}
    kw = {k: v for k, v in vars(args).items() if k in names}
    ex = {f.name: getattr(args, f.name) for f in dataclasses.fields(ExecutionConfig) if hasattr(args, f.name)}
    return cls(progress=not args.no_progress, execution=ExecutionConfig(**ex), **kw, **extra)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m s2e_jax", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="one training (Algorithm 1)")
    _add_train_args(t)
    d = TrainConfig()
    t.add_argument("--method", default=d.method, help=" | ".join(METHODS))
    t.add_argument("--tau", type=_float_or_auto, default=d.tau,
                   help="eq. (1) tau, or auto: estimated from the noisy data (docs/noise_rate.md) (default: the "
                        "noise rate; auto with --noise none or --label-file)")
    t.add_argument("--tau-warmup-epochs", type=_int_or_auto, default=d.tau_warmup_epochs,
                   help="--tau auto: epochs of the standard network that estimates the noise rate (auto: by the "
                        "steps per epoch)")
    t.add_argument("--tau-estimator", default=d.tau_estimator,
                   help=" | ".join(TAU_ESTIMATORS) + ": --tau auto's estimator")
    t.add_argument("--t-k", type=float, default=d.t_k, help="eq. (1) t_k")
    t.add_argument("--c", type=float, default=d.c, help="eq. (1) c")
    t.add_argument("--schedule", default=d.schedule, help="best_schedule.json from a search")
    t.add_argument("--init-epochs", type=_int_or_auto, default=d.init_epochs,
                   help="coteaching_plus: epochs of plain Co-teaching first (auto: mnist/digits 0, "
                        "cifar10 20, cifar100 5, others 0)")
    t.add_argument("--transition-matrix", default=None,
                   help="fcorrection: .npy of the (C, C) noise transition matrix (default: estimate it)")
    t.add_argument("--fcorr-warmup-epochs", type=int, default=d.fcorr_warmup_epochs,
                   help="fcorrection: epochs of the standard network that estimates T (default: --epochs)")
    t.add_argument("--fcorr-estimator", default=d.fcorr_estimator,
                   help=" | ".join(FCORR_ESTIMATORS) + ": fcorrection's T")
    t.add_argument("--out", default=None, help="run directory (must not exist or be empty, or hold an unfinished "
                                                "training of the same config: it resumes)")
    t.add_argument("--report-issues", type=int, default=0, metavar="K",
                   help="print the K most suspect training labels (all of them are in label_issues.csv)")
    pr = sub.add_parser("predict", help="predictions of a trained run's networks on images")
    pr.add_argument("--run", required=True, help="run directory written by train")
    pr.add_argument("--data", required=True, help="an .npz with x_train, y_train, x_test, y_test, or a data set name "
                                                   "(digits, mnist, ...), as train reads it")
    pr.add_argument("--data-dir", default=None, help="tensorflow-datasets data_dir")
    pr.add_argument("--split", default="test", help="train | val | test (the halves train uses) | all_test")
    pr.add_argument("--net", type=int, default=None, help="one network (0-based) instead of their mean")
    pr.add_argument("--out", required=True, help="CSV to write: index, prediction, one probability per class")
    from s2e_jax import asng, search_run

    search_run.add_parser(sub, _add_train_args)
    asng.add_parser(sub, _add_train_args)
    return parser


def _predict(args):
    from s2e_jax import data as data_lib
    from s2e_jax import inference

    model = inference.load(args.run)
    x, _ = inference.split_images(data_lib.load_dataset(args.data, data_dir=args.data_dir), args.split)
    proba = model.predict_proba(x, net=args.net)
    inference.write_predictions(args.out, proba)
    print(f"{len(proba)} predictions of {args.split} written to {args.out}", file=sys.stderr)


def main(argv: Optional[list] = None) -> int:
    from s2e_jax import xla_cpu

    xla_cpu.configure()  # YNNPACK convolutions on XLA's CPU backend, before JAX starts (xla_cpu.py)
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "distributed", False):  # before any other JAX call
            from s2e_jax import parallel

            parallel.initialize_distributed(**parallel.launch_args(args.coordinator, args.num_processes,
                                                                   args.process_id))
        elif any(getattr(args, k, None) is not None for k in ("coordinator", "num_processes", "process_id")):
            raise ConfigError("coordinator: --coordinator, --num-processes and --process-id need --distributed")
        if args.command == "train":
            from s2e_jax.train import train

            if args.report_issues < 0:
                raise ConfigError(f"report_issues: must be >= 0, got {args.report_issues}")
            result = train(_config_from(args))
            print(json.dumps(result.summary, indent=2))
            if args.report_issues:
                from s2e_jax import label_issues

                print(f"the {args.report_issues} most suspect training labels:")
                print(label_issues.format_top(result.label_issues, args.report_issues))
            if result.run_dir:
                print(f"run directory: {result.run_dir}", file=sys.stderr)
        elif args.command == "predict":
            _predict(args)
        elif args.command == "asng":
            from s2e_jax import asng

            asng.run_from_args(args, _config_from)
        else:
            from s2e_jax import search_run

            search_run.run_from_args(args, _config_from)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
