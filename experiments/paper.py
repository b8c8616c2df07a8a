"""What the paper's experiment scripts share: scales, settings (Appendix A), cached runs, tables, plots.

Every entry point (``table2.py``, ``fig3.py`` ... ``table5.py``) takes ``--dataset``, ``--scale`` and
``--out`` and writes into ``<out>/<scale>/<dataset>/`` (default ``results/``). Trainings and searches
are cached there by their settings: a second script that needs the same runs (Figures 3, 4 and 5 all
need the S2E search and the method runs) reuses them, and an interrupted script resumes. A run
directory left unfinished by a kill is moved aside (``*.incomplete-<time>``), never deleted.

Scales:
  paper  Appendix A: 200 epochs, lr decayed linearly to 0 from epoch 80, Adam, batch 128, 5 seeds;
         searches of 50 trainings (M=10, K=5; the paper does not state M and K, Table 2's random
         search uses 50 samples). For a GPU.
  cpu    The same study shrunk to finish within about an hour per script on a 2-core CPU on full MNIST:
         10 epochs (decay from epoch 4, the paper's 40%; eq. (1)'s t_k and the search spaces' clock
         scaled alike: ``s2e@20``, see ``Study.space``), 3 seeds, S2E
         search of 9 trainings (M=3, K=3), Table 2's random search with 2 samples per space, Figure 6
         on pair 45% with 6 trainings per algorithm (M=2, K=3) and one search seed, ASNG with seed 0.
  smoke  A few epochs on ``digits``, one noise setting: checks that a script runs end to end and
         writes every file it promises (the test suite runs it).
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import os
import sys
import time
from typing import Optional

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from s2e_jax import xla_cpu  # noqa: E402

xla_cpu.configure()  # YNNPACK convolutions on XLA's CPU backend, before JAX starts

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from s2e_jax import search_run  # noqa: E402
from s2e_jax import schedules  # noqa: E402
from s2e_jax import selection  # noqa: E402
from s2e_jax.config import ConfigError, TrainConfig  # noqa: E402
from s2e_jax.train import train  # noqa: E402

SCALES = ("paper", "cpu", "smoke")
NOISES = (("symmetric", 0.2), ("symmetric", 0.5), ("pair", 0.45))
METHODS = ("standard", "decoupling", "fcorrection", "mentornet", "coteaching", "coteaching_plus", "reweight")
LABELS = dict(standard="Standard", decoupling="Decoupling", fcorrection="F-correction", mentornet="MentorNet",
              coteaching="Co-teaching", coteaching_plus="Co-teaching+", reweight="Reweight", s2e="S2E")
TABLE2_SPACES = ("coteaching", "single1", "single2", "single3", "single4", "rbf", "mlp", "s2e")

# The paper's numbers, for the tables (Table 2: best test accuracy; Table 5: CIFAR-10 test accuracy).
PAPER_TABLE2 = {
    "mnist": {"symmetric 20%": dict(coteaching=97.83, single=97.67, rbf=96.94, mlp=97.69, s2e=97.87),
              "symmetric 50%": dict(coteaching=96.54, single=96.56, rbf=95.53, mlp=96.16, s2e=96.90),
              "pair 45%": dict(coteaching=93.27, single=94.99, rbf=89.37, mlp=93.25, s2e=95.47)},
    "cifar10": {"symmetric 20%": dict(coteaching=57.24, single=57.83, rbf=56.58, mlp=56.82, s2e=58.73),
                "symmetric 50%": dict(coteaching=47.14, single=47.81, rbf=45.15, mlp=46.18, s2e=50.82),
                "pair 45%": dict(coteaching=44.87, single=45.19, rbf=42.61, mlp=44.26, s2e=47.58)},
    "cifar100": {"symmetric 20%": dict(coteaching=44.89, single=44.93, rbf=44.24, mlp=44.57, s2e=45.32),
                 "symmetric 50%": dict(coteaching=36.53, single=36.71, rbf=30.99, mlp=35.88, s2e=38.74),
                 "pair 45%": dict(coteaching=27.30, single=31.25, rbf=27.96, mlp=28.06, s2e=32.44)},
}
PAPER_TABLE5 = {"cifar10": {"symmetric 20%": dict(asng=57.82, s2e=58.73),
                            "symmetric 50%": dict(asng=47.34, s2e=50.82),
                            "pair 45%": dict(asng=41.46, s2e=47.58)}}


@dataclasses.dataclass(frozen=True)
class Scale:
    """The settings of one scale (see the module docstring)."""

    name: str
    epochs: int
    decay_start: int
    seeds: tuple
    noises: tuple
    s2e_iterations: int      # M of the S2E (Newton) search
    s2e_samples: int         # K
    space_samples: int       # Table 2: random-search trainings per space
    algo_iterations: int     # Figure 6: M for every algorithm (Hyperband gets M*K full trainings)
    algo_samples: int
    algo_seeds: tuple
    algo_noises: tuple       # Figure 6's noise settings (the paper: CIFAR-10's three)
    asng_seeds: tuple        # Table 5: seeds of ASNG's runs
    note: str

    @property
    def time_scale(self) -> float:
        """Paper epochs per epoch of this scale: the schedules' clock (see ``Study.space``)."""
        return 200.0 / self.epochs

    @property
    def describe(self) -> str:
        return (f"scale `{self.name}`: {self.epochs} epochs (lr decay from {self.decay_start}), "
                f"seeds {list(self.seeds)}; {self.note}")


def get_scale(name: str) -> Scale:
    if name == "paper":
        return Scale("paper", 200, 80, (0, 1, 2, 3, 4), NOISES, 10, 5, 50, 10, 5, (0, 1, 2), NOISES,
                     (0, 1, 2, 3, 4), "Appendix A; searches of 50 trainings (M=10, K=5)")
    if name == "cpu":
        return Scale("cpu", 10, 4, (0, 1, 2), NOISES, 3, 3, 2, 2, 3, (0,), (("pair", 0.45),), (0,),
                     "shrunk for a 2-core CPU: 10 of the paper's 200 epochs (lr schedule, eq. (1)'s t_k and "
                     "the search spaces' clock scaled: s2e@20), S2E search of 9 trainings (M=3, K=3), 2 random samples per space in Table 2, "
                     "Figure 6 on pair 45% only with 6 trainings per algorithm (M=2, K=3) and one search "
                     "seed, ASNG with seed 0 only")
    if name == "smoke":
        return Scale("smoke", 4, 2, (0,), (("symmetric", 0.5),), 1, 2, 2, 1, 2, (0,), (("symmetric", 0.5),), (0,),
                     "smoke test: checks the pipeline, not the numbers")
    raise ConfigError(f"scale: unknown scale {name!r} (expected one of {', '.join(SCALES)})")


def noise_label(kind: str, rate: float) -> str:
    return f"{kind} {rate:.0%}"


def noise_key(kind: str, rate: float) -> str:
    return f"{kind}{rate:g}"


def parse_noises(specs) -> tuple:
    out = []
    for s in specs:
        try:
            kind, rate = s.split(":")
            out.append((kind, float(rate)))
        except ValueError:
            raise ConfigError(f"noises: expected KIND:RATE such as pair:0.45, got {s!r}") from None
    return tuple(out)


def dataset_tag(dataset: str) -> str:
    """``mnist`` for ``mnist`` or ``.../mnist.npz``; the file stem for other paths."""
    base = os.path.basename(os.fspath(dataset))
    return base[:-4] if base.lower().endswith(".npz") else base


def family(dataset: str) -> str:
    """The paper's data set a user's data stands in for (mnist, cifar10, cifar100) or its own tag."""
    return dataset_tag(dataset).lower()


@dataclasses.dataclass
class Study:
    """One script's context: the data, the scale, the output folder."""

    dataset: str
    scale: Scale
    root: str
    progress: bool = False
    input_norm: str = "standardize"   # TrainConfig.input_norm ("unit": the released code's pixels / 255)

    def config(self, kind: str, rate: float, **kw) -> TrainConfig:
        """Appendix A's training for this data set and scale (model: Table 4's for the data set).

        Co-teaching's t_k = 10 of 200 epochs is scaled with the epochs, like the lr schedule, so that
        eq. (1) keeps its shape at every scale.
        """
        base = dict(dataset=self.dataset, noise=kind, noise_rate=rate, epochs=self.scale.epochs,
                    decay_start=self.scale.decay_start, t_k=10.0 * self.scale.epochs / 200.0,
                    progress=self.progress, input_norm=self.input_norm)
        base.update(kw)
        return TrainConfig(**base).validate()

    def space(self, name: str) -> str:
        """Search space ``name`` on this scale's clock: Table 1's decay terms act on the epoch itself with
        ranges made for 200 epochs, so a shrunk training searches ``name@(200/epochs)`` (the same
        scaling as the learning-rate schedule and eq. (1)'s t_k)."""
        return name if self.scale.epochs == 200 else f"{name}@{self.scale.time_scale:g}"

    def path(self, *parts) -> str:
        p = os.path.join(self.root, *parts)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def header(self, what: str) -> str:
        return (f"{what} — {self.dataset}, {self.scale.describe}. Generated {datetime.date.today()} by "
                f"`python experiments/{os.path.basename(sys.argv[0])}`.\n\n")

    def write(self, name: str, text: str):
        with open(self.path(name), "w") as f:
            f.write(text)
        print(text)
        print(f"wrote {self.path(name)}", file=sys.stderr)

    # ------------------------------------------------------------------------- cached runs
    def run(self, cfg: TrainConfig, run_dir: str, expect_r=None) -> dict:
        """One training into ``run_dir`` (reused when finished): summary plus per-epoch metrics.

        ``expect_r``: the R(t) the run must have used (a searched schedule); a finished run with
        another R(t) (the search was redone) is moved aside and trained again.
        """
        run_dir = os.path.normpath(run_dir)
        done = os.path.join(run_dir, "summary.json")
        if os.path.exists(done) and not current_method(done, cfg.method):
            os.replace(run_dir, f"{run_dir}.stale-{int(time.time())}")  # an older rule: kept, run again
        if os.path.exists(done) and expect_r is not None:
            used = read_metrics(os.path.join(run_dir, "metrics.csv"))["r"]
            if used.shape != np.shape(expect_r) or not np.allclose(used, expect_r, atol=1e-4):
                os.replace(run_dir, f"{run_dir}.stale-{int(time.time())}")
        if not os.path.exists(done):
            if os.path.isdir(run_dir) and os.listdir(run_dir):  # killed earlier: keep it, run again
                os.replace(run_dir, f"{run_dir}.incomplete-{int(time.time())}")
            t0 = time.time()
            train(cfg.replace(out=run_dir))
            print(f"  trained {os.path.relpath(run_dir, self.root)} in {time.time() - t0:.0f} s",
                  file=sys.stderr)
        with open(done) as f:
            summary = json.load(f)
        return dict(summary=summary, metrics=read_metrics(os.path.join(run_dir, "metrics.csv")))

    def method_runs(self, method: str, kind: str, rate: float, seeds=None) -> list:
        """``method`` (or ``s2e``: Co-teaching with the searched schedule) over the scale's seeds."""
        out, expect = [], None
        extra = dict(method=method)
        if method == "s2e":
            extra = dict(method="coteaching", schedule=self.s2e_schedule(kind, rate))
            with open(extra["schedule"]) as f:
                expect = json.load(f)["curve"]
        for seed in (self.scale.seeds if seeds is None else seeds):
            cfg = self.config(kind, rate, seed=seed, **extra)
            out.append(self.run(cfg, self.path("methods", f"{noise_key(kind, rate)}-{method}-seed{seed}", ""),
                                expect_r=expect))
        return out

    def search(self, kind: str, rate: float, algo: str, space: str, iterations: int, samples: int,
               folder: str, seed: int = 0, max_cost: Optional[float] = None) -> dict:
        """A schedule search (resumed if its directory holds it); returns its result.json."""
        cfg = search_run.SearchConfig(self.config(kind, rate, seed=seed), algo=algo, space=space,
                                      iterations=iterations, samples=samples, out=self.path(folder, ""),
                                      max_cost=max_cost)
        t0 = time.time()
        res = search_run.run(cfg)
        print(f"  search {folder}/{algo}: {res['trainings']} trainings, best val "
              f"{res['best_val_acc']}, {time.time() - t0:.0f} s", file=sys.stderr)
        return res

    def s2e_search_dir(self, kind, rate) -> str:
        return self.path("search_s2e", noise_key(kind, rate), "")

    def s2e_schedule(self, kind: str, rate: float) -> str:
        """S2E (Algorithm 2: Newton on the S2E space): the searched best_schedule.json."""
        sc = self.scale
        self.search(kind, rate, "newton", self.space("s2e"), sc.s2e_iterations, sc.s2e_samples,
                    os.path.join("search_s2e", noise_key(kind, rate)))
        return os.path.join(self.s2e_search_dir(kind, rate), "newton", "best_schedule.json")


def current_method(summary_path: str, method: str) -> bool:
    """Whether a finished run (its ``summary.json``) ran ``method``'s current rule
    (:data:`s2e_jax.selection.METHOD_VERSIONS`; runs from before versions were recorded are 1)."""
    with open(summary_path) as f:
        return json.load(f).get("method_version", 1) == selection.method_version(method)


def read_metrics(path: str) -> dict:
    """metrics.csv as ``{column: array [epochs]}`` (columns are means over the networks)."""
    with open(path) as f:
        rows = list(csv.DictReader(f))
    return {k: np.asarray([float(r[k]) for r in rows]) for k in rows[0]}


def mean_std(values) -> tuple:
    """Mean and std in percent over the finite values (NaN: undefined, e.g. precision of nothing kept)."""
    v = 100 * np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    return (float(v.mean()), float(v.std()), len(v)) if len(v) else (np.nan, np.nan, 0)


def fmt(ms, n: Optional[int] = None) -> str:
    """``mean ± std``; ``n/a`` when undefined; the count when some seeds had no value."""
    if not np.isfinite(ms[0]):
        return "n/a"
    return f"{ms[0]:.2f} ± {ms[1]:.2f}" + (f" ({ms[2]} of {n})" if n is not None and len(ms) > 2 and ms[2] < n else "")


def mean_precision(metrics: dict) -> float:
    """Label precision averaged over the epochs in which the method kept samples."""
    kept = metrics["kept_fraction"] > 0
    return float(metrics["label_precision"][kept].mean()) if kept.any() else float("nan")


def final_precision(metrics: dict) -> float:
    """Label precision at the last epoch; NaN when the method kept no sample in that epoch."""
    return float(metrics["label_precision"][-1]) if metrics["kept_fraction"][-1] > 0 else float("nan")


def curves(runs: list, key: str) -> np.ndarray:
    """[seeds, epochs] of one metric."""
    return np.stack([r["metrics"][key] for r in runs])


def plot_bands(ax, x, ys, label, **kw):
    """Mean ± std over the first axis of ``ys`` (percent)."""
    ys = 100 * np.asarray(ys)
    m, s = ys.mean(0), ys.std(0)
    (line,) = ax.plot(x, m, label=label, **kw)
    ax.fill_between(x, m - s, m + s, color=line.get_color(), alpha=0.15)


def panels(n: int, width: float = 4.6, height: float = 3.6):
    fig, axes = plt.subplots(1, n, figsize=(width * n, height), squeeze=False)
    return fig, list(axes[0])


def save(fig, study: Study, name: str, title: str):
    """Grid on every panel, the legend on the last, the title; write ``<root>/<name>``."""
    for ax in fig.axes:
        ax.grid(alpha=0.3)
    fig.axes[-1].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(study.path(name), dpi=110)
    plt.close(fig)
    print(f"wrote {study.path(name)}", file=sys.stderr)


def coteaching_curve(study: Study, kind: str, rate: float) -> np.ndarray:
    """R(t) of eq. (1) as MentorNet, Co-teaching and Co-teaching+ train with it (tau = noise rate)."""
    cfg = study.config(kind, rate)
    t = np.arange(cfg.epochs, dtype=np.float64)
    return np.clip(1.0 - rate * np.minimum((t / cfg.t_k) ** cfg.c, 1.0), schedules.R_MIN, 1.0)  # eq. (1)


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=doc)
    p.add_argument("--dataset", default="mnist",
                   help="mnist | cifar10 | cifar100 | digits | path to an .npz (e.g. ../shared/data/mnist.npz)")
    p.add_argument("--scale", default="cpu", help=" | ".join(SCALES))
    p.add_argument("--out", default="results", help="results folder (the script writes <out>/<scale>/<dataset>)")
    p.add_argument("--noises", nargs="+", default=None, help="override the scale's noise settings: KIND:RATE ...")
    p.add_argument("--seeds", nargs="+", type=int, default=None, help="override the scale's seeds")
    p.add_argument("--progress", action="store_true", help="per-epoch progress bars")
    p.add_argument("--input-norm", default="standardize",
                   help="standardize | unit (pixels / 255 as the released code; results go to "
                        "<out>/<scale>/<dataset>-unit)")
    return p


def study_from_args(args) -> Study:
    sc = get_scale(args.scale)
    if args.noises:
        sc = dataclasses.replace(sc, noises=parse_noises(args.noises), algo_noises=parse_noises(args.noises))
    if args.seeds:
        sc = dataclasses.replace(sc, seeds=tuple(args.seeds))
    tag = dataset_tag(args.dataset) + ("" if args.input_norm == "standardize" else f"-{args.input_norm}")
    root = os.path.join(args.out, sc.name, tag)
    study = Study(args.dataset, sc, root, progress=args.progress, input_norm=args.input_norm)
    study.config("symmetric", 0.5)  # validates the options (one clear message) before anything is written
    os.makedirs(root, exist_ok=True)
    return study


def main_guard(fn):
    """Run ``fn`` turning a ConfigError into one clear message and exit code 2."""
    try:
        fn()
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)
