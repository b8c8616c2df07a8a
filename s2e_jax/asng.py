"""ASNG for R(t): the weight-sharing rival of S2E (Appendix B.2, Table 5).

Akimoto et al. (2019), "Adaptive Stochastic Natural Gradient Method for One-Shot Neural Architecture
Search" (ASNG), adapted to the schedule search as the S2E paper describes it (Appendix B.2):

    min_{θ, w} G(θ, w) = ∫ L_val(f(w; R(x)), D_val) p_θ(x) dx,

ONE pair of Co-teaching networks w shared by every θ; w and θ updated alternately, all within one
training (S2E's eq. 6 instead gives every x its own w*). p_θ is S2E's Dirichlet × Beta
(:mod:`s2e_jax.relaxation`), initialized as S2E's Newton searcher (θ = 1, uniform; θ ≥ θ_min).

Per mini-batch step (ASNG alternates per iteration; with T·⌊N/B⌋ updates, not T, its step-size
adaptation has the many iterations it needs, and R(t) is still evaluated at the epoch t):

1. draw x_1..x_λ ~ p_θ (λ = 2 by default, as ASNG) and R_i = R(t; x_i);
2. the λ Co-teaching gradients g_i = ∇_w L_train(w; R_i) on the step's mini-batch (``Trainer.loss``,
   vmapped over R; one dropout key: common random numbers);
3. f(x_i) = L_val(w ⊕ step(g_i)) — the shared networks after ONE optimizer step with R_i, scored on a
   clean validation batch (the same batch for all i). R only acts on w through which samples are
   kept, so f(w, x) of ASNG (in NAS: the loss of architecture c with shared weights) needs this
   one-step lookahead to depend on x at all. The lookahead is myopic by construction: it sees R at
   the current t and one step — the weakness of weight sharing here that the paper points out;
4. θ ← ASNG's update (:func:`asng_update`): ranking-based utilities (:func:`utilities`), natural
   gradient with the exact Fisher matrix of p_θ (:func:`natural_gradient`), step ε = δ / ‖G̃‖_F and
   the adaptive δ (accumulated normalized gradient s, γ, α);
5. w ← one optimizer (Adam) step with G_w = (1/λ) Σ_i g_i, ASNG's weight gradient E_θ[∇_w f] estimate.

ASNG evaluates the θ-ranking at the updated w on a fresh batch; here it is at w_t plus each sample's
own step (the same gradients, no extra backward pass). After training, the final schedule is the
mean of p_θ (:func:`s2e_jax.relaxation.mean`); optionally (``retrain``, default) a fresh Co-teaching
training from scratch with it, so that the comparison with S2E's searched schedule is like for like.

Run directory (``out``)::

    asng_config.json      the resolved config (and its identity)
    metrics.csv           per epoch: the shared networks' metrics (as ``train``), R(t) used, δ, ...
    theta.jsonl           per epoch: θ, δ, Δ, γ, ‖s‖², E_θ[x]
    best_schedule.json    the final schedule (mean of p_θ), reusable by ``train --schedule``
    schedule.png          its R(t) against Co-teaching's eq. (1) and the mean R(t) used in training
    result.json           summary (keys: see :func:`run`)
    retrain/              the fresh training with the final schedule (``train``'s run directory)
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import time
from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2e_jax import drivers, parallel, plots, relaxation, runs, schedules
from s2e_jax import train as train_lib
from s2e_jax.config import ConfigError, TrainConfig, _check_choice, _check_float, _check_int, identity_dict

ALGO = "asng"
OBJECTIVES = ("loss", "error")


# ====================================================================== config
@dataclasses.dataclass
class AsngConfig:
    """ASNG's schedule search on top of a Co-teaching training config.

    ``lam``: λ, samples per θ update (ASNG's default 2). ``alpha``, ``delta_init``: ASNG's step-size
    adaptation threshold α (1.5) and initial trust-region radius δ₀ (1); ``Delta_max``: ASNG's upper
    bound of Δ (δ = δ₀/Δ ≥ δ₀/Δ_max; None = ∞). ``theta_min``: lower bound of θ after every update
    (1, as S2E's Newton searcher). ``val_batch_size``: clean validation samples scoring each
    lookahead (None: the training batch size, capped at the validation set). ``objective``: ``loss``
    (validation cross-entropy, mean of the networks) or ``error``. ``retrain``: also train a fresh
    Co-teaching run with the final schedule. Seeds (networks, data order, θ's samples) come from
    ``train.seed``.
    """

    train: TrainConfig
    space: str = "s2e"
    lam: int = 2
    alpha: float = 1.5
    delta_init: float = 1.0
    Delta_max: Optional[float] = None
    theta_min: float = 1.0
    val_batch_size: Optional[int] = None
    objective: str = "loss"
    retrain: bool = True
    out: Optional[str] = None

    def validate(self) -> "AsngConfig":
        if not isinstance(self.train, TrainConfig):
            raise ConfigError(f"train: expected a TrainConfig, got {type(self.train).__name__}")
        self.train.validate()
        if self.train.method != "coteaching":
            raise ConfigError(f"method: ASNG tunes R(t) of coteaching, got {self.train.method!r}")
        if self.train.schedule is not None:
            raise ConfigError("schedule: ASNG searches R(t); a given schedule file would be ignored")
        if not isinstance(self.space, str):
            raise ConfigError(f"space: expected a name, got {self.space!r}")
        relaxation.sizes(schedules.get_space(self.space))
        _check_int("lam", self.lam, 2)   # a ranking needs at least two samples
        _check_float("alpha", self.alpha, 0.0, lo_open=True)
        _check_float("delta_init", self.delta_init, 0.0, lo_open=True)
        if self.Delta_max is not None:
            _check_float("Delta_max", self.Delta_max, 1.0)   # Δ starts at 1
        _check_float("theta_min", self.theta_min, 0.0, lo_open=True)
        if self.val_batch_size is not None:
            _check_int("val_batch_size", self.val_batch_size, 1)
        _check_choice("objective", self.objective, OBJECTIVES)
        if not isinstance(self.retrain, bool):
            raise ConfigError(f"retrain: must be true or false, got {self.retrain!r}")
        if self.out is not None and (not isinstance(self.out, str) or not self.out):
            raise ConfigError(f"out: must be a non-empty path, got {self.out!r}")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d


# ====================================================================== θ update (pure jnp, jittable)
class AsngTheta(NamedTuple):
    """ASNG's state: θ, the accumulated normalized natural gradient s, its normalizer γ, Δ (δ = δ₀/Δ),
    and counters of applied and skipped (all-tie) updates."""

    theta: jax.Array
    s: jax.Array
    gamma: jax.Array
    Delta: jax.Array
    updates: jax.Array
    skipped: jax.Array


def init_theta_state(space, theta_min: float = 1.0) -> AsngTheta:
    """θ¹ of S2E's Newton searcher (θ = 1: uniform, projected onto θ ≥ θ_min); s = 0, γ = 0, Δ = 1."""
    theta = jnp.maximum(relaxation.theta_init(space), theta_min)
    f = theta.dtype
    return AsngTheta(theta, jnp.zeros_like(theta), jnp.zeros((), f), jnp.ones((), f),
                     jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))


def utilities(fs):
    """ASNG's ranking-based utility (Akimoto et al. 2019, Sec. 3; their code's ``utility``), f minimized:
    u = +1/μ for the μ = ⌈λ/4⌉ best, −1/μ for the μ worst, 0 otherwise (λ = 2: +1 / −1); tied values
    share the mean utility of the ranks they occupy (exact ties: identical lookaheads). NaN counts as
    the worst value."""
    fs = jnp.asarray(fs)
    fs = jnp.where(jnp.isnan(fs), jnp.inf, fs)
    lam = fs.shape[0]
    mu = -(-lam // 4)
    base = jnp.zeros(lam, jnp.result_type(float)).at[:mu].set(1.0 / mu).at[lam - mu:].add(-1.0 / mu)
    cum = jnp.concatenate([jnp.zeros(1, base.dtype), jnp.cumsum(base)])
    lo = jnp.sum(fs[None, :] < fs[:, None], axis=1)        # ranks before i's tie group
    cnt = jnp.sum(fs[None, :] == fs[:, None], axis=1)      # size of i's tie group (≥ 1)
    return (cum[lo + cnt] - cum[lo]) / cnt


def natural_gradient(theta, xs, u, S: int, B: int):
    """``(G̃, F^{1/2} G̃)`` for the utility-weighted samples: g = (1/λ) Σ u_i ∇_θ log p_θ(x_i) (scores
    by autodiff), G̃ = F(θ)⁻¹ g with the exact Fisher matrix F of :func:`s2e_jax.relaxation.fisher`
    (ASNG's natural gradient, here in the concentration coordinates of p_θ; for the expectation
    parameters of ASNG's categoricals F⁻¹∇log p = T(c) − θ, their code's ``c_one − theta``).
    ‖F^{1/2} G̃‖ = ‖G̃‖_F = sqrt(gᵀF⁻¹g); one eigen-decomposition of F gives both."""
    scores = jax.vmap(jax.grad(relaxation._log_prob), in_axes=(None, 0, None, None))(theta, xs, S, B)
    g = jnp.mean(u[:, None] * scores, axis=0)
    lam_, V = jnp.linalg.eigh(relaxation._fisher(theta, S, B))
    c = V.T @ g
    return V @ (c / lam_), V @ (c / jnp.sqrt(lam_))


def asng_update(st: AsngTheta, xs, fs, S: int, B: int, alpha, delta_init, Delta_max, theta_min) -> AsngTheta:
    """One θ update of ASNG (Akimoto et al. 2019, Algorithm 1; their ``AdaptiveSNG.update``):

        δ = δ₀/Δ,  β = δ/√D  (D = dim θ),  u = utilities(f),  G̃ = F⁻¹ (1/λ) Σ u_i ∇log p_θ(x_i)
        ε = δ / ‖G̃‖_F,  θ ← max(θ + ε G̃, θ_min)
        s ← (1−β) s + √(β(2−β)) F^{1/2} G̃ / ‖G̃‖_F,   γ ← (1−β)² γ + β(2−β)
        Δ ← min(Δ_max, Δ exp(β (γ − ‖s‖²/α)))

    (θ moves toward the better samples with a step of Fisher length δ; δ grows while successive
    normalized gradients agree, ‖s‖² > αγ, and shrinks when they look like noise.) As ASNG's code, a
    round whose utilities are all 0 (every f tied) changes nothing. θ ≥ θ_min replaces ASNG's range
    restriction of categorical probabilities. Guard not in ASNG (whose θ is bounded): Δ ≥ δ₀/√D, i.e.
    β ≤ 1, so that √(β(2−β)) stays real once δ has grown to √D.
    """
    theta = st.theta
    D = theta.shape[0]
    delta = delta_init / st.Delta
    beta = delta / math.sqrt(D)
    u = utilities(fs).astype(theta.dtype)
    ng, sl = natural_gradient(theta, xs, u, S, B)
    pnorm = jnp.sqrt(jnp.sum(sl * sl))
    skip = jnp.all(u == 0) | ~(pnorm > 0) | ~jnp.isfinite(pnorm) | ~jnp.all(jnp.isfinite(ng))
    safe = jnp.where(skip, 1.0, pnorm)
    eps = delta / safe
    new_theta = jnp.maximum(theta + eps * ng, theta_min)
    s = (1.0 - beta) * st.s + jnp.sqrt(beta * (2.0 - beta)) * sl / safe
    gamma = (1.0 - beta) ** 2 * st.gamma + beta * (2.0 - beta)
    Delta = st.Delta * jnp.exp(beta * (gamma - jnp.sum(s * s) / alpha))
    Delta = jnp.clip(Delta, delta_init / math.sqrt(D), jnp.inf if Delta_max is None else Delta_max)
    new = AsngTheta(new_theta, s, gamma.astype(theta.dtype), Delta.astype(theta.dtype),
                    st.updates + 1, st.skipped)
    old = st._replace(skipped=st.skipped + 1)
    return jax.tree_util.tree_map(lambda a, b: jnp.where(skip, a, b), old, new)


def sample_xs(key, theta, lam: int, S: int, B: int):
    """λ schedules from p_θ, row i with ``fold_in(key, i)`` (as :func:`s2e_jax.relaxation.sample`)."""
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(lam))
    return jax.vmap(relaxation._sample_one, in_axes=(0, None, None, None))(keys, theta, S, B)


# ====================================================================== the shared training
class Extra(NamedTuple):
    """Per-epoch sums of ASNG quantities (over steps)."""

    r: jax.Array       # mean R_i used by the w steps
    f: jax.Array       # mean lookahead objective
    steps: jax.Array


class AsngTrainer:
    """ASNG's alternating w/θ epoch on top of a Co-teaching :class:`s2e_jax.trainer.Trainer`.

    Uses the trainer's public pieces (:meth:`~s2e_jax.trainer.Trainer.begin_epoch` for lr/β₁/permutation,
    ``loss`` for Algorithm 1's step, ``tx`` (Adam), ``forward``, ``accumulate``, ``end_epoch`` and
    ``evaluate`` for the per-epoch metrics); the epoch is run by the trainer's driver
    (:mod:`s2e_jax.drivers`: one ``lax.scan``, or a Python loop of jitted steps).
    """

    def __init__(self, trainer: train_lib.Trainer, space, cfg: AsngConfig, n_val: int):
        self.tr, self.space, self.cfg = trainer, space, cfg
        self.S, self.B = relaxation.sizes(space)
        vb = cfg.val_batch_size if cfg.val_batch_size is not None else trainer.batch_size
        self.val_batch = int(min(vb, n_val))
        self.runner = drivers.epoch_runner(trainer.driver, self.begin, self.step, self.end, self.evaluate,
                                           trainer.steps_per_epoch)

    # ------------------------------------------------------------------ the epoch's pieces (s2e_jax.drivers)
    def begin(self, state, data):
        carry, th = state
        (carry, acc), ctx = self.tr.begin_epoch(carry, data)
        z = jnp.zeros((), jnp.float32)
        return (carry, th, acc, Extra(z, z, z)), ctx

    def step(self, state, ctx, i, data):
        """Steps 1-5 above on mini-batch ``i``."""
        carry, th, acc, ex = state
        batches, k_steps, _, _ = ctx
        tr, cfg, space = self.tr, self.cfg, self.space
        T = tr.epochs
        key = jax.random.fold_in(k_steps, i)                     # the step's key (dropout), as Trainer
        k_x, k_val = jax.random.split(jax.random.fold_in(key, 0xA5A6))
        # 1. λ schedules and their R(t) at this epoch
        xs = sample_xs(k_x, th.theta, cfg.lam, self.S, self.B)
        t = carry.epoch.astype(jnp.float32)
        rs = jax.vmap(lambda x: space.rate(t, space.decode(x.astype(jnp.float32), T), T))(xs)
        # 2. the λ Co-teaching gradients on one mini-batch
        idx = batches[i]
        xb = train_lib.normalize(data.x_train[idx], data.mean, data.std)
        yb, cleanb = data.y_train[idx], data.clean[idx]
        grad = jax.grad(tr.loss, has_aux=True)
        grads, (per_net, kept, new_bs) = jax.vmap(
            lambda r: grad(carry.params, carry.batch_stats, xb, yb, r, key, carry.epoch, data.transition,
                           batch=i))(rs)
        bs = jax.tree_util.tree_map(lambda a: a[0], new_bs)     # the forward (hence BN stats) ignores R
        # 3. f(x_i): the validation objective after one optimizer step with R_i (same clean batch for all)
        vidx = jax.random.choice(k_val, data.y_val.shape[0], (self.val_batch,), replace=False)
        xv, yv = train_lib.normalize(data.x_val[vidx], data.mean, data.std), data.y_val[vidx]

        def lookahead(g):
            upd, _ = tr.tx.update(g, carry.opt_state, carry.params)
            logits, _ = tr.forward(optax.apply_updates(carry.params, upd), bs, xv, key, False)
            if cfg.objective == "loss":
                return optax.softmax_cross_entropy_with_integer_labels(logits, yv[None]).mean()
            return (logits.argmax(-1) != yv[None]).astype(jnp.float32).mean()

        fs = jax.vmap(lookahead)(grads)
        # 4. θ: ASNG's natural-gradient update with adaptive step size
        th = asng_update(th, xs, fs, self.S, self.B, cfg.alpha, cfg.delta_init, cfg.Delta_max, cfg.theta_min)
        # 5. w: one Adam step with G_w = mean_i ∇_w L_train(w; R_i)
        g_mean = jax.tree_util.tree_map(lambda a: a.mean(0), grads)
        upd, opt_state = tr.tx.update(g_mean, carry.opt_state, carry.params)
        carry = carry._replace(params=optax.apply_updates(carry.params, upd), batch_stats=bs,
                               opt_state=opt_state)
        stats = (per_net.mean(0), kept.sum(-1).mean(0), (kept * cleanb[None, None]).sum(-1).mean(0))
        acc = tr.accumulate(acc, stats)
        ex = Extra(ex.r + rs.mean(), ex.f + jnp.nanmean(fs), ex.steps + 1)
        return carry, th, acc, ex

    def end(self, state, ctx, data):
        carry_before, th, acc, ex = state
        batches, k_steps, _, lr = ctx
        r_used = ex.r / ex.steps
        carry, metrics = self.tr.end_epoch((carry_before, acc), (batches, k_steps, r_used, lr), data)
        T = self.tr.epochs
        x_mean = relaxation.mean(th.theta, self.space)
        metrics["r_theta_mean"] = self.space.rate(carry_before.epoch.astype(jnp.float32),
                                                  self.space.decode(x_mean.astype(jnp.float32), T), T)
        metrics["asng_f"] = ex.f / ex.steps
        metrics["delta"] = self.cfg.delta_init / th.Delta
        metrics["theta_updates"] = th.updates
        metrics["theta_skipped"] = th.skipped
        return (carry, th), metrics

    def evaluate(self, state, data, in_jit=True):
        return self.tr.evaluate(state[0], data, in_jit)

    def run_epoch(self, carry, th, data):
        """One epoch (all its w and θ updates); returns ``(carry, theta_state, metrics)``."""
        (carry, th), metrics = self.runner((carry, th), data)
        return carry, th, metrics


# ====================================================================== the run
_OWN_FILES = ("asng_config.json", "execution.json", "metrics.csv", "theta.jsonl", "best_schedule.json", "schedule.png",
              "result.json")
_RETRAIN_FILES = ("config.json", "metrics.csv", "summary.json", "curves.png")


def _identity(cfg: AsngConfig) -> dict:
    d = cfg.to_dict()
    d.pop("out")
    # what it computes, not how it runs; a field newer than the directory matches while at its default
    # (precision: always part of an ASNG run's identity)
    d["train"] = dict(identity_dict(cfg.train), precision=cfg.train.execution.precision)
    return runs.identity_files_by_content(d)


def _open_out(cfg: AsngConfig):
    """The run directory: a new or empty one, or this very run's (finished: its result is returned;
    unfinished: its own files are removed and it starts over). Anything else is refused, and so is a
    damaged config or result file (named). Every process checks it, so all agree, before process 0
    alone changes it (``--distributed``). The caller has claimed the directory (:func:`run`)."""
    out = cfg.out
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"out: {out} exists and is not a directory; nothing was overwritten")
    names = set(runs.contents(out)) if os.path.isdir(out) else set()
    root = runs.RunDir(out)
    if names:
        ident = _identity(cfg)
        try:
            same = (root.exists("asng_config.json") and runs.identity_files_by_content(
                root.read_json("asng_config.json", kind=dict).get("identity")) == ident)
        except runs.DamagedFile as err:
            if names != {"asng_config.json"}:
                raise ConfigError(f"out: {err.path} is damaged ({err.why}) and it names the ASNG run this "
                                  "directory holds; move the directory aside or choose another --out "
                                  "(nothing was changed)") from None
            same = False
        except OSError:
            same = False
        if not same and names != {"asng_config.json"}:  # only a config: a run that stopped before training
            raise ConfigError(f"out: {out} exists, is not empty and does not hold this ASNG run; "
                              "choose another --out (nothing was overwritten)")
        if root.exists("result.json"):
            try:
                return root, root.read_json("result.json", kind=dict)
            except runs.DamagedFile as err:
                raise ConfigError(f"out: {err.path} is damaged ({err.why}); delete it to run this ASNG search "
                                  "again (its other files are then replaced) or choose another --out "
                                  "(nothing was changed)") from None
        retrain = os.path.join(out, "retrain")
        own_retrain = set(os.listdir(retrain)) if os.path.isdir(retrain) else set()
        foreign = sorted((names - set(_OWN_FILES) - {"retrain"})
                         | {"retrain/" + n for n in own_retrain - set(_RETRAIN_FILES) - {runs.LOCK_NAME}})
        if foreign:
            raise ConfigError(f"out: {out} holds an unfinished ASNG run and other files "
                              f"({', '.join(foreign)}); choose another --out (nothing was overwritten)")
    parallel.barrier(f"s2e_jax.asng:{out}")
    if runs.is_writer():
        for n in names - {"retrain"}:           # only this module's own files (checked above)
            os.remove(os.path.join(out, n))
        if "retrain" in names:
            for n in own_retrain:
                os.remove(os.path.join(retrain, n))
            os.rmdir(retrain)
    return runs.RunDir.open(out, claim=False), None


def _plot_schedule(path, curve, used, epochs, noise_rate):
    plt = plots.plt
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    ax.plot(plots._coteaching_curve(epochs, noise_rate), "k--", label="Co-teaching (eq. 1)")
    ax.plot(curve, label="ASNG: mean of p_θ")
    ax.plot(used, ":", label="ASNG: mean R used in training")
    ax.set(xlabel="epoch t", ylabel="R(t)", ylim=(0, 1.05), title="ASNG schedule (weight sharing)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(cfg: AsngConfig, dataset=None) -> dict:
    """Run ASNG; returns the summary written to ``result.json``:

    ``algo`` ("asng"), ``space``, ``epochs``, ``lam``, ``objective``, ``theta`` (final θ), ``x`` (the
    final schedule: E_θ[x]), ``curve`` (its R(t), t = 0..T−1), ``theta_updates``, ``theta_skipped``
    (all-tie rounds), ``delta`` (final δ), ``seconds`` (the ASNG training), ``shared`` (the shared
    networks' ``final/best/last10_test_acc``, ``final/best_val_acc``, label precision..., as
    ``train``'s summary.json), ``retrain`` (the fresh training's summary with the final schedule, or
    None) and ``val_acc``/``test_acc`` (the retrained networks' final accuracies when ``retrain``,
    else the shared networks').
    """
    cfg.validate()
    claim = runs.RunDir.open(cfg.out) if cfg.out else None   # for the whole run: one process at a time
    try:
        return _run(cfg, dataset)
    finally:
        if claim is not None:
            claim.release()


def _run(cfg: AsngConfig, dataset) -> dict:
    space = schedules.get_space(cfg.space)
    T = cfg.train.epochs
    root = None
    if cfg.out:
        root, done = _open_out(cfg)
        if done is not None:
            return done
        root.write_json("asng_config.json", dict(identity=_identity(cfg), config=cfg.to_dict()))

    prep = train_lib.prepare(cfg.train.replace(out=None), dataset, rate=space.rate)
    if root is not None:
        root.write_json("execution.json", train_lib.execution_record(prep))
    at = AsngTrainer(prep.trainer, space, cfg, int(prep.data.y_val.shape[0]))
    th = init_theta_state(space, cfg.theta_min)
    x0 = np.asarray(relaxation.mean(th.theta, space), np.float32)
    carry = train_lib.init_carry(prep, cfg.train.seed, np.asarray(space.decode(x0, T), np.float32))
    # the networks' init and the data order are those of a plain training with the same seed; θ's
    # samples and the validation batches come from each step's key (fold_in), hence also from the seed
    rows, start = [], time.time()
    bar = runs.progress(T, "epochs", enabled=cfg.train.progress, desc="asng")
    for epoch in range(T):
        carry, th, m = at.run_epoch(carry, th, prep.data)
        row = train_lib.to_host(m)
        rows.append(row)
        th_host = jax.device_get(th)
        if root:
            root.append_metrics_row(epoch, row)
            runs.append_line(root.path("theta.jsonl"), json.dumps(dict(
                epoch=epoch, theta=[float(v) for v in th_host.theta], delta=float(cfg.delta_init / th_host.Delta),
                Delta=float(th_host.Delta), gamma=float(th_host.gamma), s_norm2=float(np.sum(th_host.s ** 2)),
                updates=int(th_host.updates), skipped=int(th_host.skipped),
                x_mean=[float(v) for v in np.asarray(relaxation.mean(th_host.theta, space))])))
        bar.update(1, test_acc=float(row["test_acc"].mean()), R=float(row["r"]),
                   delta=float(row["delta"]))
    bar.close()
    seconds = time.time() - start
    metrics = train_lib.stack_epochs(rows)
    shared = train_lib.summarize(metrics, prep.noise_info, seconds)
    theta = np.asarray(jax.device_get(th.theta), np.float64)
    x = np.asarray(relaxation.mean(theta, space), np.float64)
    curve = space.curve(x, T)
    summary = dict(algo=ALGO, space=cfg.space, epochs=T, lam=cfg.lam, objective=cfg.objective,
                   theta=theta.tolist(), x=x.tolist(), curve=[float(v) for v in curve],
                   theta_updates=int(th.updates), theta_skipped=int(th.skipped),
                   delta=float(cfg.delta_init / float(th.Delta)), seconds=float(seconds), shared=shared,
                   retrain=None)
    with tempfile.TemporaryDirectory() as tmp:
        # process 0 writes the run directory's copy; any other process (--distributed) its own
        writes = root is not None and runs.is_writer()
        sched_path = root.path("best_schedule.json") if writes else os.path.join(tmp, "best_schedule.json")
        schedules.save_schedule_file(sched_path, space, x, T, algo=ALGO,
                                     f=float(1.0 - shared["final_val_acc"]))
        if writes:
            _plot_schedule(root.path("schedule.png"), curve, metrics["r"], T, cfg.train.noise_rate)
        if cfg.retrain:
            rcfg = cfg.train.replace(schedule=sched_path, out=root.path("retrain") if root else None)
            summary["retrain"] = train_lib.train(rcfg, dataset).summary
    src = summary["retrain"] if summary["retrain"] is not None else shared
    summary["val_acc"], summary["test_acc"] = src["final_val_acc"], src["final_test_acc"]
    if root:
        root.write_json("result.json", summary)
    return summary


# ====================================================================== CLI
def add_parser(sub, add_train_args):
    p = sub.add_parser("asng", help="search R(t) with ASNG (weight sharing, Appendix B.2)")
    add_train_args(p)
    d = AsngConfig(TrainConfig())
    p.add_argument("--space", default=d.space, help=" | ".join(schedules.SPACES))
    p.add_argument("--lam", type=int, default=d.lam, help="λ: schedules per θ update (ASNG: 2)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="ASNG's step-size adaptation threshold α")
    p.add_argument("--delta-init", type=float, default=d.delta_init, help="ASNG's initial δ")
    p.add_argument("--Delta-max", type=float, default=None, help="ASNG's upper bound of Δ (default ∞)")
    p.add_argument("--theta-min", type=float, default=d.theta_min, help="lower bound of θ (as newton)")
    p.add_argument("--val-batch-size", type=int, default=None,
                   help="validation samples scoring each lookahead (default: --batch-size)")
    p.add_argument("--objective", default=d.objective, help="loss (validation CE) | error")
    p.add_argument("--no-retrain", action="store_true",
                   help="skip the fresh Co-teaching training with the final schedule")
    p.add_argument("--out", default=None, help="run directory (must not exist or be empty)")
    return p


def run_from_args(args, config_from):
    tcfg = config_from(args, method="coteaching").replace(out=None)
    cfg = AsngConfig(tcfg, space=args.space, lam=args.lam, alpha=args.alpha, delta_init=args.delta_init,
                     Delta_max=args.Delta_max, theta_min=args.theta_min, val_batch_size=args.val_batch_size,
                     objective=args.objective, retrain=not args.no_retrain, out=args.out)
    summary = run(cfg)
    print(json.dumps(summary, indent=2))
