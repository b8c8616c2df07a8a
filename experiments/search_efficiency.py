"""Search efficiency on synthetic schedule-fitting objectives: best f against trainings spent (Figure 6's axes).

Every searcher of ``s2e_jax.search.ALGOS`` (the default S2E search ``newton``, the paper's estimator
``newton_paper``, GD, NG, random, TPE, Hyperband) searches the S2E space for the curve R_x(t) closest to
a hidden target R*(t):

    f(x) = mean_{t < T} (R_x(t) − R*(t))²,   T = 200,

(a "training" of b < T epochs — Hyperband's partial trainings — is the mean over t < b). Target shapes:

* ``coteaching``: eq. (1), R* = 1 − 0.45 min(t/10, 1) (eq. 1 expresses it);
* ``s2e_point``: the curve of a fixed point of the S2E space (eq. 4 expresses it exactly);
* ``dip_rise``: down to 0.4 at t = 15, then a linear rise to 0.7 at T (not monotone: eq. 1 cannot);
* ``late_sigmoid``: 1 − 0.5 σ((t − 80)/10), a late drop with an inflection (eq. 1 cannot).

Budgets: 60 trainings (M = 10 iterations of K = 6) and 240 (M = 30 of K = 8); Hyperband gets the same
number of full-training equivalents. ``--noise-sd s`` adds N(0, s²) to every evaluation; the reported
value is then the noise-free f of the point each searcher returns as its best.

Writes under ``--out`` (default results/search_efficiency): ``raw/<setting>.json`` (per algorithm and
seed the best-so-far curve; what it holds is reused, so a killed run resumes), ``synthetic.md`` (the table),
``<setting>.png`` (one plot per setting), ``overhead.md`` (searcher time per iteration).

    nice -n 10 python experiments/search_efficiency.py --seeds 10

``--real DATASET`` runs real trainings instead (``s2e_jax.search_run``, one search directory per search
seed under ``--out/<dataset>_<noise><rate>_b<budget>/seed<s>``): every algorithm of ``--algos`` with a
budget of ``--budget`` trainings (K = ``--samples``), then the best schedule of each search retrained on
the ``--retrain-seeds`` next to Co-teaching's eq. (1); table ``real_<...>.md``:

    nice -n 10 python experiments/search_efficiency.py --real digits --noise pair --noise-rate 0.45 \
        --budget 20 --samples 4 --search-seeds 0 1 2 --algos newton newton_paper random tpe

``--epochs E`` other than 200 shrinks the training as the paper scripts' scales do (lr decay from 40%,
eq. (1)'s t_k and the space's clock scaled: ``s2e@(200/E)``); ``--real ../shared/data/mnist.npz
--epochs 10`` is their ``cpu`` scale. ``--common-seed`` runs the searches with common random numbers
(the K trainings of an iteration share their training seed; use a ``--tag`` of its own).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import threading
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("JAX_PLATFORMS", "cpu")
from s2e_jax import xla_cpu  # noqa: E402

xla_cpu.configure()  # YNNPACK convolutions on XLA's CPU backend (MNIST's conv net), before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from s2e_jax import search  # noqa: E402
from s2e_jax.schedules import get_space  # noqa: E402

T = 200
SPACE = get_space("s2e")
BUDGETS = {60: (10, 6), 240: (30, 8)}   # budget: (M, K)
X_POINT = np.concatenate([[0.1, 0.6, 0.2, 0.1], np.random.default_rng(7).uniform(0.2, 0.8, 16)])


def targets() -> dict:
    t = np.arange(T, dtype=np.float64)
    return {
        "coteaching": 1.0 - 0.45 * np.minimum(t / 10.0, 1.0),
        "s2e_point": np.asarray(SPACE.curve(X_POINT, T), np.float64),
        "dip_rise": 1.0 - 0.6 * np.minimum(t / 15.0, 1.0) + 0.3 * np.maximum(0.0, (t - 15.0) / (T - 15.0)),
        "late_sigmoid": 1.0 - 0.5 / (1.0 + np.exp(-(t - 80.0) / 10.0)),
    }


_curves = jax.jit(lambda xs: SPACE.curves(xs, T))  # R_x(t), t = 0..T-1


class Objective:
    """f(x) (and its noisy, budgeted version) for one target curve."""

    def __init__(self, target, noise_sd=0.0, seed=0):
        self.target = np.asarray(target, np.float64)
        self.noise_sd = float(noise_sd)
        self.rng = np.random.default_rng(seed)

    def true(self, xs, epochs=T):
        c = np.asarray(_curves(jnp.asarray(np.asarray(xs), jnp.float32)), np.float64)
        return np.mean((c[:, :epochs] - self.target[:epochs]) ** 2, axis=1)

    def __call__(self, xs, budget=None):
        f = self.true(xs, T if budget is None else int(budget))
        if self.noise_sd > 0:
            f = f + self.noise_sd * self.rng.normal(size=f.shape)
        return f


def run_one(algo, target, budget, seed, noise_sd):
    """One search: the best-so-far noise-free f at each integer cost 1..budget, and timings."""
    M, K = BUDGETS[budget]
    opts = {"max_budget": T} if algo == "hyperband" else {"epochs": T} if algo == "newton" else {}
    s = search.make_searcher(algo, SPACE, samples=K, seed=seed, **opts)
    obj = Objective(target, noise_sd, seed=10_000 + seed)
    t_search = 0.0
    grid_best = []
    cost = 0.0
    n_iter = 0
    t_first = None
    while cost < budget - 1e-9:
        t0 = time.perf_counter()
        xs, b = s.ask()
        t1 = time.perf_counter()
        fs = obj(xs, b)
        t2 = time.perf_counter()
        s.tell(xs, fs)
        t3 = time.perf_counter()
        dt = (t1 - t0) + (t3 - t2)
        t_search += dt
        if t_first is None:
            t_first = dt
        n_iter += 1
        cost = s.cost
        x, _ = s.best()
        best_true = float(obj.true(x[None])[0]) if x is not None else float("nan")
        while len(grid_best) < min(int(np.floor(cost + 1e-9)), budget):
            grid_best.append(best_true)
    return {"algo": algo, "seed": seed, "budget": budget, "M": M, "K": K, "best": grid_best,
            "iterations": n_iter, "search_seconds": t_search, "first_iteration_seconds": t_first,
            "trainings": len(s.history)}


def fmt(v):
    return f"{v:.2e}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--algos", nargs="+", default=list(search.ALGOS))
    p.add_argument("--shapes", nargs="+", default=list(targets()))
    p.add_argument("--budgets", nargs="+", type=int, default=list(BUDGETS))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--noise-sd", type=float, default=0.0)
    p.add_argument("--out", default="results/search_efficiency")
    p.add_argument("--report-only", action="store_true", help="only rebuild the tables and plots")
    p.add_argument("--real", default=None, help="a data set: real trainings instead of synthetic objectives")
    p.add_argument("--noise", default="pair")
    p.add_argument("--noise-rate", type=float, default=0.45)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--budget", type=int, default=20)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--search-seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--retrain-seeds", nargs="+", type=int, default=[100, 101, 102])
    p.add_argument("--tag", default="", help="with --real: a suffix of the setting's folder and table")
    p.add_argument("--common-seed", action="store_true",
                   help="with --real: the K trainings of an iteration share their training seed "
                        "(SearchConfig.common_seed)")
    p.add_argument("--seed-noise", nargs="*", default=None, metavar="SCHEDULE_JSON",
                   help="with --real: train eq. (1) and these best_schedule.json files on one noisy data set "
                        "(noise seed 0) with --retrain-seeds as training seeds: f's seed noise")
    p.add_argument("--overhead", default=None, metavar="TRIALS_JSONL",
                   help="time the default searcher's ask + tell per iteration at --samples K over --budget "
                        "trainings (synthetic f, same code path) against the mean training time in this file")
    p.add_argument("--incumbent", action="store_true",
                   help="with --real and --tag: the default searcher's returned schedule chosen by the surrogate's "
                        "posterior mean over the evaluated points instead of the lowest noisy f, retrained as "
                        "--real does, from the search directories of that setting")
    a = p.parse_args(argv)
    if a.overhead:
        return overhead(a)
    if a.real and a.incumbent:
        return incumbent(a)
    if a.real and a.seed_noise is not None:
        return seed_noise(a)
    if a.real:
        return real(a)
    warnings.filterwarnings("ignore", category=UserWarning)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    tg = targets()
    tag = "" if a.noise_sd == 0 else f"_noise{a.noise_sd:g}"
    if not a.report_only:
        for budget in a.budgets:
            for shape in a.shapes:
                path = raw_path(a.out, shape, budget, tag)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                for seed in range(a.seeds):
                    for algo in a.algos:
                        done = read_raw(path)
                        if f"{algo}_seed{seed}" in done:
                            continue
                        r = run_one(algo, tg[shape], budget, seed, a.noise_sd)
                        done[f"{algo}_seed{seed}"] = r
                        with open(path + ".tmp", "w") as f:
                            json.dump(done, f, sort_keys=True)
                        os.replace(path + ".tmp", path)
                        print(f"{shape} {budget}{tag} seed {seed} {algo}: best {r['best'][-1]:.3g} "
                              f"({r['search_seconds']:.1f}s search)", flush=True)
    report(a, tg, tag)


def raw_path(out, shape, budget, tag):
    """One setting's results: ``raw/<shape>_<budget><tag>.json``, ``{"<algo>_seed<s>": result}``."""
    return os.path.join(out, "raw", f"{shape}_{budget}{tag}.json")


def read_raw(path) -> dict:
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f)


def load(out, shape, budget, tag, algo):
    done = read_raw(raw_path(out, shape, budget, tag))
    return [done[k] for k in sorted(done) if k.startswith(algo + "_seed") and k[len(algo) + 5:].isdigit()]


def report(a, tg, tag):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cmd = "python experiments/search_efficiency.py " + " ".join(sys.argv[1:])
    lines = [f"# Search efficiency, synthetic schedule fitting (S2E space, T = {T}){' noise sd ' + str(a.noise_sd) if tag else ''}\n",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `{cmd}`\n",
             "Best f found (noise-free f of the searcher's best point) after the budget, mean ± std over "
             "search seeds [min, max]; ratio = mean / random's mean and mean / TPE's mean. Lower is better.\n"]
    over = ["# Searcher time (ask + tell, objective excluded), seconds\n",
            f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `{cmd}`\n",
            "| setting | algo | iterations | mean s / iteration (excl. the first) | first iteration (compiles) |",
            "|---|---|---|---|---|"]
    for budget in a.budgets:
        M, K = BUDGETS[budget]
        for shape in a.shapes:
            setting = f"{shape}_{budget}{tag}"
            rows, curves = [], {}
            for algo in a.algos:
                rs = load(a.out, shape, budget, tag, algo)
                if not rs:
                    continue
                B = np.asarray([r["best"][:budget] for r in rs if len(r["best"]) >= budget])
                if len(B) == 0:
                    continue
                curves[algo] = B
                fin = B[:, -1]
                rows.append((algo, len(B), fin))
                its = [r["iterations"] for r in rs]
                per = [(r["search_seconds"] - r["first_iteration_seconds"]) / max(r["iterations"] - 1, 1) for r in rs]
                over.append(f"| {setting} | {algo} | {np.mean(its):.0f} | {np.mean(per):.3f} | "
                            f"{np.mean([r['first_iteration_seconds'] for r in rs]):.2f} |")
            if not rows:
                continue
            ref = {n: fin.mean() for n, _, fin in rows}
            lines.append(f"\n## {shape}, {budget} trainings (M = {M}, K = {K}){' noise sd ' + str(a.noise_sd) if tag else ''}\n")
            lines.append("| algo | seeds | best f mean ± std | [min, max] | / random | / TPE |")
            lines.append("|---|---|---|---|---|---|")
            for algo, n, fin in rows:
                rr = fin.mean() / ref["random"] if "random" in ref else float("nan")
                rt = fin.mean() / ref["tpe"] if "tpe" in ref else float("nan")
                lines.append(f"| {algo} | {n} | {fmt(fin.mean())} ± {fmt(fin.std())} | [{fmt(fin.min())}, "
                             f"{fmt(fin.max())}] | {rr:.2f} | {rt:.2f} |")
            fig, ax = plt.subplots(figsize=(6, 4))
            for algo, B in curves.items():
                x = np.arange(1, B.shape[1] + 1)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    m = np.nanmean(B, 0)
                    lo, hi = np.nanpercentile(B, 25, 0), np.nanpercentile(B, 75, 0)
                ax.plot(x, m, label=algo, lw=2.2 if algo == "newton" else 1.2)
                ax.fill_between(x, lo, hi, alpha=0.12)
            ax.set(yscale="log", xlabel="trainings (full-training equivalents)", ylabel="best f (mean; band: quartiles)",
                   title=f"{shape}, budget {budget} (M={M}, K={K}){tag}")
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(os.path.join(a.out, f"{setting}.png"), dpi=110)
            plt.close(fig)
    name = f"synthetic{tag}.md"
    with open(os.path.join(a.out, name), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(a.out, f"overhead{tag}.md"), "w") as f:
        f.write("\n".join(over) + "\n")
    print("\n".join(lines))


def overhead(a):
    """The default searcher's own time per iteration (after the process's one-off compilation) against
    the trainings of one iteration, as measured in a search's trials.jsonl."""
    recs = [json.loads(line) for line in open(a.overhead)]
    train_s = float(np.mean([r["seconds"] for r in recs]))
    obj = Objective(targets()["dip_rise"])
    parts = components()  # (first: it times the compilations)
    rows = []
    for seed in a.search_seeds:
        s = search.make_searcher("newton", SPACE, samples=a.samples, seed=seed, epochs=T)
        per = []
        t_first = None
        while s.cost < a.budget:
            t0 = time.perf_counter()
            xs, _ = s.ask()
            dt = time.perf_counter() - t0
            fs = obj(xs)
            t1 = time.perf_counter()
            s.tell(xs, fs)
            dt += time.perf_counter() - t1
            if t_first is None:
                t_first = dt
            else:
                per.append(dt)
        rows.append((seed, t_first, float(np.mean(per)), float(np.max(per)), t_first + float(np.sum(per)),
                     len(per) + 1))
    cmd = "python experiments/search_efficiency.py " + " ".join(sys.argv[1:])
    it_train = a.samples * train_s
    lines = [f"# Overhead of the default searcher (newton): K = {a.samples}, {a.budget} trainings\n",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `{cmd}`\n",
             f"Mean training time in {a.overhead}: {train_s:.2f} s, so {it_train:.1f} s of trainings per "
             "iteration. Searcher time per iteration = ask + tell (the objective here is a synthetic f of "
             "negligible cost); the searcher's programs were compiled before (the components below), as "
             "in a real search, where they compile on a worker thread while the first trainings are "
             "prepared. Whole search = every iteration's searcher time against the same plus the "
             "trainings at the mean time.\n",
             "| search seed | first iteration s | later iterations: mean s | max s | share of an iteration (mean) "
             "| whole search: searcher s | share of the search |",
             "|---|---|---|---|---|---|---|"]
    for seed, first, mean, mx, total, n_it in rows:
        lines.append(f"| {seed} | {first:.2f} | {mean:.3f} | {mx:.3f} | {100 * mean / (mean + it_train):.2f}% "
                     f"| {total:.2f} | {100 * total / (total + n_it * it_train):.2f}% |")
    lines += ["", *parts]
    with open(os.path.join(a.out, f"overhead_newton_K{a.samples}_b{a.budget}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def components(rows=5600, mc=2000, reps=10):
    """The default searcher's two execution choices against the plain computations, in this process:
    drawing an iteration's samples (``rows`` = 2 × mc_samples + candidates + K) by numpy on the host
    (``relaxation.sample_host``) or by JAX's keyed sampler (``relaxation.sample``), and Proposition 1
    on ``mc`` samples summed by linearity (the default's program) or per sample (``search.estimate``'s
    plain program). First call (compiles) and the median of ``reps`` later calls, ms."""
    from s2e_jax import relaxation, surrogate

    theta = np.random.default_rng(0).uniform(1.0, 4.0, relaxation.n_params(SPACE))

    def timed(fn):
        t0 = time.perf_counter()
        fn()
        first = time.perf_counter() - t0
        later = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            later.append(time.perf_counter() - t0)
        return 1e3 * first, 1e3 * float(np.median(later))

    xs = relaxation.sample_host(np.random.default_rng(1), theta, SPACE, mc)
    fs = np.random.default_rng(2).normal(size=mc)
    summed = search._summed_estimate_program(*relaxation.sizes(SPACE), mc)  # compile on the worker
    curves = surrogate.curve_program(SPACE, T, 20)
    t0 = time.perf_counter()
    summed, curves = summed.result(), curves.result()
    compiled = 1e3 * (time.perf_counter() - t0)
    chunk = np.asarray(xs[:1], np.float32).repeat(surrogate.CHUNK, 0)
    out = [
        ("curves", f"{surrogate.CHUNK} rows (one call of the compiled program)",
         (compiled, timed(lambda: np.asarray(curves(chunk)))[1])),
        ("sampling", f"{rows} rows, numpy on the host (default)",
         timed(lambda: relaxation.sample_host(np.random.default_rng(3), theta, SPACE, rows))),
        ("sampling", f"{rows} rows, JAX's keyed sampler",
         timed(lambda: np.asarray(relaxation.sample(jax.random.PRNGKey(3), theta, SPACE, rows)))),
        ("Proposition 1", f"{mc} samples, summed (default)",
         (compiled, timed(lambda: search.estimate(theta, xs, fs, SPACE, program=summed))[1])),
        ("Proposition 1", f"{mc} samples, per-sample Hessians",
         timed(lambda: search.estimate(theta, xs, fs, SPACE))),
    ]
    lines = ["Components, this process (ms; the first call of the default's two programs is the wait for "
             "their compilation on the worker thread, both together):\n",
             "| part | form | first call (compiles) | later calls, median |", "|---|---|---|---|"]
    lines += [f"| {part} | {form} | {first:.1f} | {later:.2f} |" for part, form, (first, later) in out]
    return lines


def real_setup(a):
    """(data set tag, base TrainConfig, space) of the real benchmark. At ``--epochs`` other than 200 the
    training is shrunk as the paper scripts' scales do (``experiments/paper.py``): lr decay from 40% of
    the epochs, eq. (1)'s t_k = 10 · epochs / 200 and the space on the same clock, ``s2e@(200/epochs)``
    (``--real ../shared/data/mnist.npz --epochs 10`` is the ``cpu`` scale)."""
    from s2e_jax.config import TrainConfig

    name = os.path.basename(a.real)
    name = name[:-4] if name.lower().endswith(".npz") else name
    base = TrainConfig(dataset=a.real, noise=a.noise, noise_rate=a.noise_rate, epochs=a.epochs,
                       decay_start=int(round(0.4 * a.epochs)), t_k=10.0 * a.epochs / 200.0, progress=False,
                       checkpoint_every=0)
    return name, base, "s2e" if a.epochs == 200 else f"s2e@{200.0 / a.epochs:g}"


def incumbent(a):
    """The default searcher's best schedule picked by the surrogate's posterior mean at the evaluated
    points (a GP fitted to all of a finished search's trainings, as the searcher fits it) against the
    lowest noisy f (what ``best_schedule.json`` holds), both retrained on ``--retrain-seeds``."""
    from s2e_jax import schedules, surrogate
    from s2e_jax.train import train

    name, base, space_name = real_setup(a)
    space = get_space(space_name)
    setting = f"{name}_{a.noise}{int(round(100 * a.noise_rate))}_b{a.budget}{a.tag}"
    cmd = "python experiments/search_efficiency.py " + " ".join(sys.argv[1:])
    rows = []
    for seed in a.search_seeds:
        d = os.path.join(a.out, setting, f"seed{seed}", "newton")
        recs = [json.loads(line) for line in open(os.path.join(d, "trials.jsonl"))]
        recs = [r for r in recs if r["f"] is not None]
        xs = np.asarray([r["x"] for r in recs], np.float64)
        fs = np.asarray([r["f"] for r in recs], np.float64)
        z = surrogate.curve_features(space, xs, a.epochs)
        mean = surrogate.predict(surrogate.fit(z, surrogate.transform(fs)), z, return_sd=False)
        i_obs, i_mean = int(np.argmin(fs)), int(np.argmin(mean))
        res = {}
        for tag, i in (("observed", i_obs), ("mean", i_mean)):
            if tag == "mean" and i == i_obs:
                res[tag] = res["observed"]
                continue
            path = os.path.join(d, "best_schedule.json" if tag == "observed" else "incumbent_mean.json")
            if tag == "mean":
                schedules.save_schedule_file(path, space, xs[i], a.epochs, trial=int(recs[i]["trial"]))
            accs = []
            for rs in a.retrain_seeds:
                out = os.path.join(d, f"retrain_seed{rs}") if tag == "observed" else os.path.join(
                    d, f"incumbent_mean_seed{rs}")
                if os.path.exists(os.path.join(out, "summary.json")):
                    r = json.load(open(os.path.join(out, "summary.json")))
                else:
                    r = train(base.replace(seed=rs, schedule=path, out=out)).summary
                accs.append((r["final_test_acc"], r["last10_test_acc"]))
            res[tag] = (i, recs[i]["val_acc"], np.mean([v for v, _ in accs]), np.mean([v for _, v in accs]))
        rows.append((seed, res))
    cot = []
    for rs in a.retrain_seeds:
        out = os.path.join(a.out, setting, f"eq1_seed{rs}")
        r = json.load(open(os.path.join(out, "summary.json")))
        cot.append((r["final_test_acc"], r["last10_test_acc"]))
    c, c10 = np.mean([v for v, _ in cot]), np.mean([v for _, v in cot])
    lines = [f"# The default searcher's returned schedule: lowest noisy f or lowest surrogate mean ({setting})\n",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `{cmd}`\n",
             "Per search seed: the evaluated schedule of lowest f (`best_schedule.json`) and the one of lowest "
             "posterior mean of a GP fitted to all the search's trainings (the default searcher's surrogate), "
             f"each retrained on seeds {a.retrain_seeds}; test accuracy in %, mean over the retrain seeds.\n",
             "| search seed | lowest f: trial, its val acc, retrained test / last-10 | lowest mean: trial, its val acc, "
             "retrained test / last-10 |", "|---|---|---|"]
    for seed, res in rows:
        o, m = res["observed"], res["mean"]
        lines.append(f"| {seed} | {o[0]}, {100 * o[1]:.2f}, {100 * o[2]:.2f} / {100 * o[3]:.2f} | {m[0]}, "
                     f"{100 * m[1]:.2f}, {100 * m[2]:.2f} / {100 * m[3]:.2f} |")
    mo = [np.mean([r[t][k] for _, r in rows]) for t in ("observed", "mean") for k in (2, 3)]
    lines.append(f"| mean (vs eq. (1) {100 * c:.2f} / {100 * c10:.2f}) | {100 * mo[0]:.2f} ({100 * (mo[0] - c):+.2f}) / "
                 f"{100 * mo[1]:.2f} ({100 * (mo[1] - c10):+.2f}) | {100 * mo[2]:.2f} ({100 * (mo[2] - c):+.2f}) / "
                 f"{100 * mo[3]:.2f} ({100 * (mo[3] - c10):+.2f}) |")
    with open(os.path.join(a.out, f"incumbent_{setting}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def seed_noise(a):
    """The spread of the validation/test accuracy of fixed schedules over training seeds, data fixed."""
    from s2e_jax.train import train

    name, base, _ = real_setup(a)
    base = base.replace(noise_seed=0)
    setting = f"{name}_{a.noise}{int(round(100 * a.noise_rate))}"
    cmd = "python experiments/search_efficiency.py " + " ".join(sys.argv[1:])
    lines = [f"# Seed noise of f: {a.real}, {a.noise} {a.noise_rate:.0%}, {a.epochs} epochs, label noise seed 0, "
             f"training seeds {a.retrain_seeds}\n",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `{cmd}`\n",
             "| schedule | val acc mean ± std | [min, max] | test acc mean ± std |", "|---|---|---|---|"]
    for sched in [None] + list(a.seed_noise):
        vals, tests = [], []
        for rs in a.retrain_seeds:
            cfg = base.replace(seed=rs) if sched is None else base.replace(seed=rs, schedule=sched)
            res = train(cfg).summary
            vals.append(res["final_val_acc"])
            tests.append(res["final_test_acc"])
        v, t = 100 * np.asarray(vals), 100 * np.asarray(tests)
        name = "eq. (1)" if sched is None else sched
        lines.append(f"| {name} | {v.mean():.2f} ± {v.std():.2f} | [{v.min():.2f}, {v.max():.2f}] | "
                     f"{t.mean():.2f} ± {t.std():.2f} |")
        print(lines[-1], flush=True)
    with open(os.path.join(a.out, f"seed_noise_{setting}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


def real(a):
    """Searches with real trainings, then the best schedules retrained on fresh seeds against eq. (1)."""
    from s2e_jax import search_run
    from s2e_jax.train import train

    if a.budget % a.samples:
        raise SystemExit(f"--budget ({a.budget}) must be a multiple of --samples ({a.samples})")
    name, base, space = real_setup(a)
    setting = f"{name}_{a.noise}{int(round(100 * a.noise_rate))}_b{a.budget}{a.tag}"
    rows, t_all = {}, {}
    clock = {"s": 0.0, "calls": []}  # the searchers' own time (ask + tell), timed around the base methods

    def timed(fn):
        def wrapper(*args, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                clock["calls"].append(time.perf_counter() - t0)
        return wrapper

    search.Searcher.ask = timed(search.Searcher.ask)
    search.Searcher.tell = timed(search.Searcher.tell)
    worker = []  # compilations on the default searcher's worker thread (overlapping the trainings' start)

    def on_compile(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration" and \
                threading.current_thread().name.startswith("s2e-compile"):
            worker.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_compile)
    for seed in a.search_seeds:
        d = os.path.join(a.out, setting, f"seed{seed}")
        for algo in a.algos:
            hb = algo == "hyperband"
            cfg = search_run.SearchConfig(base.replace(seed=seed), algo=algo, space=space,
                                          iterations=10_000 if hb else a.budget // a.samples, samples=a.samples,
                                          out=d, max_cost=a.budget if hb else None,
                                          **(dict(common_seed=True) if a.common_seed else {}))
            trials = os.path.join(d, algo, "trials.jsonl")
            before = sum(1 for _ in open(trials)) if os.path.exists(trials) else 0
            t0 = time.time()
            clock["calls"], worker[:] = [], []
            summ = search_run.run(cfg)
            t_all.setdefault(algo, []).append(time.time() - t0)
            overhead = float(np.sum(clock["calls"]))
            recs = [json.loads(line) for line in open(trials)]
            train_s = sum(r["seconds"] for r in recs)
            retrain, last10 = [], []
            for rs in a.retrain_seeds:
                out = os.path.join(d, algo, f"retrain_seed{rs}")
                if os.path.exists(os.path.join(out, "summary.json")):
                    res = json.load(open(os.path.join(out, "summary.json")))
                else:
                    res = train(base.replace(seed=rs, schedule=os.path.join(d, algo, "best_schedule.json"), out=out)).summary
                retrain.append(res["final_test_acc"])
                last10.append(res["last10_test_acc"])
            rows.setdefault(algo, []).append(dict(best_val=summ["best_val_acc"], retrain=retrain, last10=last10,
                                                  train_s=train_s, trainings=summ["trainings"],
                                                  overhead=overhead, wall=t_all[algo][-1],
                                                  worker=float(np.sum(worker)), resumed=len(recs) == before))
            print(f"{setting} seed {seed} {algo}: best val {summ['best_val_acc']:.4f}, retrained test "
                  f"{np.mean(retrain):.4f}", flush=True)
    cot, cot10 = [], []
    for rs in a.retrain_seeds:
        out = os.path.join(a.out, setting, f"eq1_seed{rs}")
        if os.path.exists(os.path.join(out, "summary.json")):
            res = json.load(open(os.path.join(out, "summary.json")))
        else:
            res = train(base.replace(seed=rs, method="coteaching", out=out)).summary
        cot.append(res["final_test_acc"])
        cot10.append(res["last10_test_acc"])
    cmd = "python experiments/search_efficiency.py " + " ".join(sys.argv[1:])
    lines = [f"# Search with real trainings: {a.real}, {a.noise} {a.noise_rate:.0%}, {a.epochs} epochs, "
             f"budget {a.budget} trainings (K = {a.samples})\n",
             f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, `{cmd}`\n",
             f"Search seeds {a.search_seeds}; the best schedule of each search retrained on seeds "
             f"{a.retrain_seeds} (test accuracy at the last epoch, mean over retrain seeds, then over "
             "search seeds; last-10: the mean test accuracy of the last 10 epochs). Eq. (1): Co-teaching's "
             "fixed schedule on the same seeds.\n",
             "Searcher time: ask + tell (sampling, estimates, surrogate, and any compilation they wait "
             "for), summed over each search (search seeds in order: the first of the process first), and its "
             "share of that search's wall time (not given for searches "
             "read back whole from their directories: their trainings were not rerun). Worker "
             "compile: the default newton's programs compiled on its worker thread while the first "
             "trainings are prepared (once per process: the first search seed pays it).\n",
             "| algo | best val acc (mean ± std over search seeds) | retrained test acc | vs eq. (1) | "
             "retrained last-10 | vs eq. (1) | wall s per search | trainings' s | searcher s (share), per search | "
             "worker compile s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    c, c10 = float(np.mean(cot)), float(np.mean(cot10))
    for algo, rs in rows.items():
        run = [r for r in rs if not r["resumed"]]  # the times of searches that ran here
        bv = np.asarray([r["best_val"] for r in rs])
        rt = np.asarray([np.mean(r["retrain"]) for r in rs])
        r10 = np.asarray([np.mean(r["last10"]) for r in rs])
        lines.append(f"| {algo} | {100 * bv.mean():.2f} ± {100 * bv.std():.2f} | {100 * rt.mean():.2f} ± "
                     f"{100 * rt.std():.2f} | {100 * (rt.mean() - c):+.2f} | {100 * r10.mean():.2f} ± "
                     f"{100 * r10.std():.2f} | {100 * (r10.mean() - c10):+.2f} | " + (
                         f"{np.mean([r['wall'] for r in run]):.0f} | {np.mean([r['train_s'] for r in run]):.0f} | "
                         + ", ".join(f"{r['overhead']:.2f} ({100 * r['overhead'] / r['wall']:.2f}%)" for r in run)
                         + " | "
                         f"{' / '.join(format(r['worker'], '.2f') for r in run)} |" if run else
                         "read back | – | – | – |"))
    lines.append(f"| eq. (1) fixed | – | {100 * c:.2f} ± {100 * np.std(cot):.2f} | 0 | {100 * c10:.2f} ± "
                 f"{100 * np.std(cot10):.2f} | 0 | – | – | – | – |")
    with open(os.path.join(a.out, f"real_{setting}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
