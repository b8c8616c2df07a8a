"""Training with sample selection (Algorithm 1): N networks side by side in one jitted program.

The N networks (2 for Co-teaching, 1 for Standard) are one parameter tree with a leading axis of N.
For each mini-batch every network computes a per-sample loss (cross-entropy; F-correction's
forward-corrected loss); a selection rule (:mod:`s2e_jax.selection`) turns the losses into
per-network weights (learning to reweight: a weights function of the parameters and a clean batch);
each network's loss is the weighted mean over its weights, divided once. Every method of
:data:`s2e_jax.selection.METHOD_RULES` runs this same loop. The training data, the per-epoch
permutation, batch gathering, selection and all metrics stay on the device: no host copy or sync
per step.

How the network axis is computed (``net_form``) and how an epoch is driven (``driver``) are choices
measured per backend (``experiments/bench_train.py``); every choice gives the same numbers (tests):

- ``vmap``: ``jax.vmap`` over the stacked parameters (the natural form for GPUs/TPUs),
- ``unroll``: a Python loop over the networks inside the same jit,
- ``fused``: ``unroll`` with both networks' first layer computed as one layer with N× the outputs;
- ``scan``: one epoch = one jitted ``lax.scan`` over batches,
- ``loop``: a Python loop of jitted steps (conv nets on XLA's CPU backend, jax-ml/jax#12868).

K independent trainings (trials: schedules, seeds) are one more leading axis (:func:`train_trials`),
sharded over every device and host by :mod:`s2e_jax.parallel`. ``precision="bfloat16"`` computes the
networks in bfloat16 on float32 master weights (losses and selection stay float32).
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import time
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2e_jax import checkpoint
from s2e_jax import data as data_lib
from s2e_jax import label_issues, parallel, plots, runs, schedules, selection
from s2e_jax import models as models_lib
from s2e_jax.config import ConfigError, TrainConfig


# ----------------------------------------------------------------------------------- device data
class DeviceData(NamedTuple):
    """Everything a training reads, on the device. Images stay uint8; normalized per batch."""

    x_train: jax.Array   # uint8 [N, H, W, C] (the model's input: Model 1's conv0 patches, models.model_input)
    y_train: jax.Array   # int32 [N] (noisy)
    clean: jax.Array     # float32 [N]: 1 where the training label is the clean one
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    mean: jax.Array      # float32 [C] per-channel mean of the training images (in [0, 1]; per patch feature)
    std: jax.Array       # float32 [C]
    transition: jax.Array  # float32 [K, K]: F-correction's T (identity otherwise); traced, not static


def device_data(ds, is_clean, transition=None, input_norm: str = "standardize", model=None) -> DeviceData:
    """Put a :class:`s2e_jax.data.Dataset` on the device once (``transition``: F-correction's T).

    ``input_norm``: ``"standardize"`` (per-channel mean and std of the training images) or
    ``"unit"`` (pixels / 255 only, as ``ToTensor()`` in Co-teaching's and S2E's released code).
    ``model``: the images of every split are stored as its input (:func:`s2e_jax.models.model_input`:
    Model 1 with ``stem_patches`` takes its first layer's patches, still uint8, with ``mean``/``std``
    repeated for each patch feature).
    """
    if input_norm == "unit":
        c = ds.x_train.shape[-1]
        mean, std = np.zeros(c, np.float32), np.ones(c, np.float32)
    elif input_norm == "standardize":
        mean, std = channel_stats(ds.x_train)
    else:
        raise ConfigError(f"input_norm: unknown value {input_norm!r} (expected one of standardize, unit)")
    put = jax.device_put
    xs = [put(x) for x in (ds.x_train, ds.x_val, ds.x_test)]
    if model is not None:
        xs = [models_lib.model_input(model, x) for x in xs]
        reps = xs[0].shape[-1] // ds.x_train.shape[-1]  # a patch feature's channel: its index mod C
        mean, std = np.tile(mean, reps), np.tile(std, reps)
    return DeviceData(xs[0], put(ds.y_train.astype(np.int32)), put(is_clean.astype(np.float32)),
                      xs[1], put(ds.y_val.astype(np.int32)), xs[2],
                      put(ds.y_test.astype(np.int32)), put(mean.astype(np.float32)),
                      put(std.astype(np.float32)),
                      put(np.asarray(np.eye(ds.num_classes) if transition is None else transition,
                                     np.float32)))


def channel_stats(x):
    """Per-channel mean and standard deviation (+1e-6) of images scaled to [0, 1], float32 [C].

    uint8 images: exact, from each channel's histogram of the 256 values (one pass of ``bincount``,
    no float copy of the data: CIFAR-10's 50,000 images ~1 s instead of ~6 s)."""
    x = np.asarray(x)
    c = x.shape[-1]
    if x.dtype != np.uint8:
        f = x.reshape(-1, c).astype(np.float64) / 255.0
        return f.mean(0).astype(np.float32), (f.std(0) + 1e-6).astype(np.float32)
    flat = x.reshape(-1, c)
    v = np.arange(256, dtype=np.float64) / 255.0
    mean, std = np.empty(c), np.empty(c)
    for i in range(c):
        counts = np.bincount(flat[:, i], minlength=256).astype(np.float64)
        mean[i] = counts @ v / counts.sum()
        std[i] = np.sqrt(counts @ (v - mean[i]) ** 2 / counts.sum())
    return mean.astype(np.float32), (std + 1e-6).astype(np.float32)


def normalize(x, mean, std):
    """uint8 images -> float32 in [0, 1], then ``(x - mean) / std`` per channel (per batch, on the
    device; mean 0 and std 1 for ``input_norm="unit"``)."""
    return (x.astype(jnp.float32) / 255.0 - mean) / std


PRECISIONS = ("float32", "bfloat16")


def _bf16_interceptor(next_fun, args, kwargs, context):
    """Flax method interceptor: a Dense or Conv layer gets its input in bfloat16 (a BatchNorm's
    float32 output included), so that every matmul/convolution of the network runs in bfloat16."""
    import flax.linen as nn

    if context.method_name == "__call__" and isinstance(context.module, (nn.Dense, nn.Conv, models_lib.ConvPool)) and args:
        args = (jnp.asarray(args[0]).astype(jnp.bfloat16),) + tuple(args[1:])
    return next_fun(*args, **kwargs)


def init_compiler_options() -> Optional[dict]:
    """XLA options of the programs that initialize networks (they run once per training).

    On the CPU, LLVM's optimization of the threefry code of a network's random init is most of its
    compile time (measured, 2-core CPU: MLP 2.6 -> 0.6 s, Model 1 7.8 -> 1.1 s, Model 2 ~15 s before)
    while the program then runs in milliseconds either way; so it is compiled at optimization level 0.
    Values differ from an optimized compile by float32 rounding (~4e-9 absolute); every path (one
    training, K trials in one program) uses these options, so all of them start from identical
    networks. Elsewhere (GPU/TPU) XLA's defaults."""
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None


# ----------------------------------------------------------------------------------- state
class Carry(NamedTuple):
    """The state of one training. Every leaf of ``params``/``batch_stats`` has a leading axis N."""

    params: Any
    batch_stats: Any
    opt_state: Any
    sched: jax.Array     # the schedule's parameter array (traced: changing it never recompiles)
    key: jax.Array
    epoch: jax.Array     # int32 scalar: epochs done
    selected: jax.Array  # float32 [N, n_train]: steps in which network n kept (selected) example i
    seen: jax.Array      # float32 [n_train]: steps in which example i was in a mini-batch


class Acc(NamedTuple):
    """Per-epoch sums over steps, per network."""

    loss: jax.Array
    kept: jax.Array
    kept_clean: jax.Array
    steps: jax.Array


def _zeros_acc(n):
    zeros = lambda shape=(n,): jnp.zeros(shape, jnp.float32)  # noqa: E731 (distinct buffers: donated)
    return Acc(zeros(), zeros(), zeros(), zeros(()))


def adam_plan(epoch, *, lr, epochs, decay_start, beta1, beta1_late):
    """Appendix A.2.1 ("initial learning rate is 0.001, and is linearly decayed to zero from the 80th
    epoch", Adam with momentum 0.9): lr decays linearly to 0 from ``decay_start``; beta1 moves from
    ``beta1`` to ``beta1_late`` at the same epoch, as Co-teaching's code does (``beta1_plan``, 0.1;
    the paper does not say)."""
    e = jnp.asarray(epoch, jnp.float32)
    late = e >= decay_start
    span = max(epochs - decay_start, 1)
    lr_e = jnp.where(late, lr * (epochs - e) / span, lr).astype(jnp.float32)
    return lr_e, jnp.where(late, jnp.float32(beta1_late), jnp.float32(beta1))


@dataclasses.dataclass(frozen=True, eq=False)
class Trainer:
    """The jitted pieces of Algorithm 1 for one model, method and data shape.

    ``rate(t, params, T)`` is the schedule R(t) (:mod:`s2e_jax.schedules`); ``rule`` the selection
    rule (:mod:`s2e_jax.selection`); ``sample_loss(logits, labels, transition)`` the per-sample loss;
    ``weights_fn`` (learning to reweight) replaces the rule by weights computed from the parameters and
    a clean validation batch. Use :meth:`init`, then :meth:`run_epoch` once per epoch.
    """

    model: Any
    num_nets: int
    rule: Callable
    rate: Callable
    epochs: int
    batch_size: int
    n_train: int
    lr: float = 1e-3
    decay_start: int = 80
    beta1: float = 0.9
    beta1_late: float = 0.1
    net_form: str = "vmap"
    driver: str = "scan"
    eval_batch_size: int = 1000
    sample_loss: Callable = selection.cross_entropy
    weights_fn: Optional[Callable] = None
    precision: str = "float32"

    def __post_init__(self):
        if (self.rule is None) == (self.weights_fn is None):
            raise ValueError("Trainer: give exactly one of rule and weights_fn")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision: unknown value {self.precision!r} (expected one of {', '.join(PRECISIONS)})")
        if self.batch_size > self.n_train:
            raise ConfigError(f"batch_size: {self.batch_size} is larger than the training set "
                              f"({self.n_train} examples)")
        tx = optax.inject_hyperparams(optax.adam)(learning_rate=self.lr, b1=self.beta1)
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731 (frozen dataclass)
        set_("tx", tx)
        set_("steps_per_epoch", self.n_train // self.batch_size)  # drop_last, as Co-teaching's loader
        set_("epoch_fn", jax.jit(self.epoch))
        set_("init_fn", jax.jit(self._init, static_argnums=3, compiler_options=init_compiler_options()))
        set_("begin_fn", jax.jit(self._begin))
        set_("step_fn", jax.jit(self._loop_step, donate_argnums=(0, 1)))
        set_("end_fn", jax.jit(self._end, static_argnames="evaluate"))
        set_("step_ids", [jnp.int32(i) for i in range(self.steps_per_epoch)])
        set_("eval_chunk_fn", jax.jit(self._eval_chunk))
        set_("proba_fn", jax.jit(self._proba))

    # ------------------------------------------------------------------ networks
    def _variables(self, p, bs):
        return {"params": p, "batch_stats": bs} if bs else {"params": p}

    def _apply_one(self, p, bs, x, key, train, skip_stem=False):
        kw = dict(train=train, skip_stem=skip_stem, rngs={"dropout": key})
        if train and bs:
            logits, upd = self.model.apply(self._variables(p, bs), x, mutable=["batch_stats"], **kw)
            return logits, upd["batch_stats"]
        return self.model.apply(self._variables(p, bs), x, **kw), bs

    def forward(self, params, batch_stats, x, key, train):
        """Logits [N, B, C] of the N networks on one batch, and their updated BatchNorm stats.

        With ``precision="bfloat16"`` the float32 master parameters and the inputs are cast to
        bfloat16 for the forward (and so the backward) pass, every Dense/Conv computes in bfloat16
        (:func:`_bf16_interceptor`), BatchNorm statistics stay float32, and the logits come back as
        float32: losses, softmax and the small-loss selection are float32.
        """
        if self.precision == "float32":
            return self._forward(params, batch_stats, x, key, train)
        import flax.linen as nn

        dt = jnp.bfloat16
        cast = lambda t: jax.tree_util.tree_map(  # noqa: E731
            lambda a: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, t)
        with nn.intercept_methods(_bf16_interceptor):
            logits, new_bs = self._forward(cast(params), batch_stats, x.astype(dt), key, train)
        new_bs = jax.tree_util.tree_map(lambda new, old: new.astype(old.dtype), new_bs, batch_stats)
        return logits.astype(jnp.float32), new_bs

    def _forward(self, params, batch_stats, x, key, train):
        n = self.num_nets
        keys = jnp.stack([jax.random.fold_in(key, i) for i in range(n)])  # own dropout key per net
        if self.net_form == "vmap":
            return jax.vmap(self._apply_one, in_axes=(0, 0, None, 0, None))(params, batch_stats, x, keys, train)
        take = lambda tree, i: jax.tree_util.tree_map(lambda a: a[i], tree)  # noqa: E731
        ps = [take(params, i) for i in range(n)]
        bss = [take(batch_stats, i) for i in range(n)]
        if self.net_form == "fused":
            xs = models_lib.fused_stem(self.model, [p[self.model.stem_name] for p in ps], x)
            outs = [self._apply_one(ps[i], bss[i], xs[i], keys[i], train, True) for i in range(n)]
        else:  # unroll
            outs = [self._apply_one(ps[i], bss[i], x, keys[i], train) for i in range(n)]
        stack = lambda *a: jnp.stack(a)  # noqa: E731
        return jnp.stack([o[0] for o in outs]), jax.tree_util.tree_map(stack, *[o[1] for o in outs])

    # ------------------------------------------------------------------ init
    def init(self, net_keys, data_key, sched, sample_x) -> Carry:
        """A fresh training: network i initialized from ``net_keys[i]``; ``data_key`` drives
        shuffling and dropout; ``sched`` is the schedule's parameter array."""
        return self.init_fn(jnp.asarray(net_keys), data_key, jnp.asarray(sched, jnp.float32),
                            jax.ShapeDtypeStruct((1,) + tuple(sample_x.shape[1:]), jnp.float32))

    def _init(self, net_keys, data_key, sched, x_shape):
        x = jnp.zeros(x_shape.shape, x_shape.dtype)
        variables = jax.vmap(lambda k: self.model.init({"params": k, "dropout": k}, x, train=False))(net_keys)
        params = variables["params"]
        bs = variables.get("batch_stats", {})
        opt_state = self.tx.init(params)
        lr, b1 = adam_plan(0, lr=self.lr, epochs=self.epochs, decay_start=self.decay_start,
                           beta1=self.beta1, beta1_late=self.beta1_late)  # strong dtypes: one trace
        opt_state = opt_state._replace(hyperparams=dict(opt_state.hyperparams, learning_rate=lr, b1=b1))
        return Carry(params, bs, opt_state, sched, data_key, jnp.zeros((), jnp.int32),
                     jnp.zeros((self.num_nets, self.n_train), jnp.float32), jnp.zeros((self.n_train,), jnp.float32))

    # ------------------------------------------------------------------ one step
    def loss(self, params, batch_stats, xb, yb, r, key, epoch=0, transition=None, given=None, batch=0):
        """Algorithm 1 steps 3-4 on one normalized batch: ``(sum of the networks' losses, aux)``.

        Every network computes its per-sample loss; the rule picks what each one learns from
        (gradient stopped) — or ``given = (weights, kept)`` does; network n's loss is the mean over
        its weights, divided once (0 when all its weights are 0). ``batch``: the mini-batch's index
        within the epoch (for Co-teaching+'s warm-up).
        """
        logits, new_bs = self.forward(params, batch_stats, xb, key, True)
        losses = self.sample_loss(logits, yb, transition)  # [N, B]
        if given is None:
            w, kept = selection.apply_rule(self.rule, jax.lax.stop_gradient(losses), jax.lax.stop_gradient(logits),
                                           yb, r, epoch, batch)
        else:
            w, kept = given
        per_net = (w * losses).sum(1) / jnp.maximum(w.sum(1), 1e-12)
        return per_net.sum(), (per_net, kept, new_bs)

    def meta_weights(self, carry: Carry, xb, yb, data: DeviceData, key):
        """Learning to reweight's weights (:func:`s2e_jax.selection.reweight_weights`) on the batch,
        against a clean batch of ``min(B, n_val)`` validation samples drawn with the step key; the
        inner step size is the current learning rate (Ren et al. 2018, Algorithm 1)."""
        n_val = data.y_val.shape[0]
        k_val, k_drop = jax.random.split(jax.random.fold_in(key, 0x5EED))
        vidx = jax.random.choice(k_val, n_val, (min(self.batch_size, n_val),), replace=False)
        xv, yv = normalize(data.x_val[vidx], data.mean, data.std), data.y_val[vidx]

        def forward(k):  # the training batch: the dropout key of :meth:`loss`; the clean one: k_drop
            return lambda p, x: self.forward(p, carry.batch_stats, x, k, True)[0]

        loss_fn = lambda logits, y: self.sample_loss(logits, y, data.transition)  # noqa: E731
        return self.weights_fn(forward(key), loss_fn, carry.params, xb, yb, xv, yv,
                               carry.opt_state.hyperparams["learning_rate"], forward_clean=forward(k_drop))

    def _train_step(self, carry: Carry, idx, r, data: DeviceData, key, i=0):
        xb = normalize(data.x_train[idx], data.mean, data.std)
        yb, cleanb = data.y_train[idx], data.clean[idx]
        given = None if self.weights_fn is None else self.meta_weights(carry, xb, yb, data, key)
        grads, (per_net, kept, new_bs) = jax.grad(self.loss, has_aux=True)(
            carry.params, carry.batch_stats, xb, yb, r, key, carry.epoch, data.transition, given, i)
        updates, opt_state = self.tx.update(grads, carry.opt_state, carry.params)
        params = optax.apply_updates(carry.params, updates)
        stats = (per_net, kept.sum(1), (kept * cleanb[None]).sum(1))
        # per-example selection counts (label_issues.csv): idx is a permutation's slice, no repeats
        selected = carry.selected.at[:, idx].add(kept.astype(jnp.float32))
        seen = carry.seen.at[idx].add(1.0)
        return carry._replace(params=params, batch_stats=new_bs, opt_state=opt_state, selected=selected,
                              seen=seen), stats

    # ------------------------------------------------------------------ epoch pieces
    def _begin(self, carry: Carry, data: DeviceData):
        """Set the epoch's lr/beta1 and R(t); draw the epoch's permutation (device side)."""
        t = carry.epoch
        lr, b1 = adam_plan(t, lr=self.lr, epochs=self.epochs, decay_start=self.decay_start,
                           beta1=self.beta1, beta1_late=self.beta1_late)
        hp = dict(carry.opt_state.hyperparams, learning_rate=lr, b1=b1)
        key, k_perm, k_steps = jax.random.split(carry.key, 3)
        n = self.steps_per_epoch * self.batch_size
        batches = jax.random.permutation(k_perm, self.n_train)[:n].reshape(self.steps_per_epoch, self.batch_size)
        r = self.rate(t.astype(jnp.float32), carry.sched, self.epochs)
        carry = carry._replace(opt_state=carry.opt_state._replace(hyperparams=hp), key=key)
        return carry, batches, k_steps, r, lr

    def _accumulate(self, acc: Acc, stats):
        loss, kept, clean = stats
        return Acc(acc.loss + loss, acc.kept + kept, acc.kept_clean + clean, acc.steps + 1)

    def _loop_step(self, carry, acc, batches, k_steps, r, i, data):
        carry, stats = self._train_step(carry, batches[i], r, data, jax.random.fold_in(k_steps, i), i)
        return carry, self._accumulate(acc, stats)

    def predict_proba(self, carry: Carry, data: DeviceData, x) -> np.ndarray:
        """Softmax of each network (eval mode) on uint8 model inputs ``x`` (``data.x_*``): [N, n, C]."""
        b = self.eval_batch_size
        return np.concatenate([np.asarray(self.proba_fn(carry.params, carry.batch_stats, x[i:i + b], data))
                               for i in range(0, x.shape[0], b)], axis=1)

    def _proba(self, params, bs, x, data: DeviceData):
        logits, _ = self.forward(params, bs, normalize(x, data.mean, data.std), jax.random.PRNGKey(0), False)
        return jax.nn.softmax(logits)

    def _eval_chunk(self, params, bs, x, y, valid, data: DeviceData):
        logits, _ = self.forward(params, bs, normalize(x, data.mean, data.std), jax.random.PRNGKey(0), False)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y[None])
        correct = (logits.argmax(-1) == y[None]).astype(jnp.float32)
        return (correct * valid).sum(1), (ce * valid).sum(1)

    def _chunks(self, x, y):
        b = min(self.eval_batch_size, x.shape[0])
        n = -(-x.shape[0] // b) * b
        pad = n - x.shape[0]
        valid = jnp.concatenate([jnp.ones(x.shape[0]), jnp.zeros(pad)]).reshape(-1, b)
        xp = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape((-1, b) + x.shape[1:])
        yp = jnp.pad(y, (0, pad)).reshape(-1, b)
        return xp, yp, valid

    def _evaluate(self, carry, x, y, data, in_jit):
        """Accuracy and mean cross-entropy of each network on a clean split."""
        xp, yp, valid = self._chunks(x, y)
        if in_jit:
            correct, ce = jax.lax.map(lambda a: self._eval_chunk(carry.params, carry.batch_stats, *a, data),
                                      (xp, yp, valid))
            correct, ce = correct.sum(0), ce.sum(0)
        else:  # Python loop of jitted chunks, accumulated on the device
            correct = ce = 0.0
            for j in range(xp.shape[0]):
                c, l = self.eval_chunk_fn(carry.params, carry.batch_stats, xp[j], yp[j], valid[j], data)
                correct, ce = correct + c, ce + l
        return correct / x.shape[0], ce / x.shape[0]

    def _end(self, carry, acc: Acc, r, lr, data, evaluate=True):
        metrics = dict(r=r, lr=lr, train_loss=acc.loss / acc.steps,
                       label_precision=acc.kept_clean / jnp.maximum(acc.kept, 1.0),
                       kept_fraction=acc.kept / (acc.steps * self.batch_size))
        if evaluate:
            metrics["val_acc"], metrics["val_loss"] = self._evaluate(carry, data.x_val, data.y_val, data, True)
            metrics["test_acc"], metrics["test_loss"] = self._evaluate(carry, data.x_test, data.y_test, data, True)
        return carry._replace(epoch=carry.epoch + 1), metrics

    def epoch(self, carry: Carry, data: DeviceData):
        """One epoch as one program (``lax.scan`` over the batches); returns (carry, metrics)."""
        carry, batches, k_steps, r, lr = self._begin(carry, data)

        def body(state, i):
            c, acc = state
            c, stats = self._train_step(c, batches[i], r, data, jax.random.fold_in(k_steps, i), i)
            return (c, self._accumulate(acc, stats)), None

        (carry, acc), _ = jax.lax.scan(body, (carry, _zeros_acc(self.num_nets)),
                                       jnp.arange(self.steps_per_epoch))
        return self._end(carry, acc, r, lr, data)

    def run_epoch(self, carry: Carry, data: DeviceData):
        """One epoch with this trainer's driver; returns (carry, metrics). No host sync inside."""
        if self.driver == "scan":
            return self.epoch_fn(carry, data)
        carry, batches, k_steps, r, lr = self.begin_fn(carry, data)
        acc = _zeros_acc(self.num_nets)
        for i in self.step_ids:  # device scalars made once: no host-to-device copy per step
            carry, acc = self.step_fn(carry, acc, batches, k_steps, r, i, data)
        carry, metrics = self.end_fn(carry, acc, r, lr, data, evaluate=False)
        for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
            metrics[f"{split}_acc"], metrics[f"{split}_loss"] = self._evaluate(carry, x, y, data, False)
        return carry, metrics


# ----------------------------------------------------------------------------------- one call
def default_execution(model_name: str, backend: Optional[str] = None):
    """``(net_form, driver)`` chosen by measurement (experiments/bench_train.py).

    On XLA's CPU backend conv nets run fastest unrolled with the first convolution fused and driven
    by a Python loop of jitted steps (a conv net inside ``lax.scan`` hits jax-ml/jax#12868); the MLP
    and every model on GPU/TPU run vmapped inside one ``lax.scan`` per epoch (H200, Model 1: vmap
    2,936, fused 2,832, unroll 2,354 steps/s; experiments/gpu_h200/log.txt).
    """
    backend = backend or jax.default_backend()
    if backend == "cpu" and model_name != "mlp":
        return "fused", "loop"
    return "vmap", "scan"


def default_conv_impl(backend: Optional[str] = None, driver: Optional[str] = None,
                      model_name: Optional[str] = None, net_form: Optional[str] = None) -> str:
    """How convolutions are computed by default (``models.CONV_IMPLS``; ``TrainConfig.conv_impl``
    "auto"), chosen by measurement (experiments/bench_trials.py ``--conv-impls``, bench_conv_parts.py):
    XLA's own convolution, except for Model 1 vmapped inside ``lax.scan`` (the ``vmap`` form with the
    ``scan`` driver: K trials in one program everywhere, and a single training on GPUs/TPUs), where
    ``slices`` (patches x kernel, no convolution) is used, with ``pool_s2d`` (:func:`resolve_pool_s2d`):
    - XLA's CPU backend: its convolutions inside ``lax.scan`` take a slow path (jax-ml/jax#12868);
      slices ran 1.5-1.7x (1 trial) and 3.8-4.0x (4 trials) faster, 7-13x with pool_s2d
      (experiments/cpu_model1/slices.md; fused/unroll inside scan not measured, so left as they were).
      With the CPU's ``loop`` driver slices was slower (1.21x PyTorch; XLA's convolution 1.57-1.59x).
    - an H100 (experiments/gpu_h100/trials/table.md, 2 epochs of 200 steps): trainings/s of the one
      program, xla / xla+s2d / slices+s2d / blockdiag / blockdiag+s2d: K = 1 6.67 / 8.59 / 9.35 / 8.80
      / 10.1, K = 8 13.3 / 16.9 / 23.8 / 21.1 / 17.9; slices+s2d is the best at K = 8 and within 8% of
      the best at K = 1. XLA's grouped convolutions (vmap over the networks' kernels) were what held
      Model 1's trials back on GPUs (README, "Benchmarks on a GPU").
    ``patches`` measured slower on an H200 and on the CPU; ``blockdiag`` slower on the CPU. Models 2
    and 3 keep XLA's convolution (slices not measured for them on a GPU)."""
    del backend  # the same rule on every backend measured (CPU, H100)
    if driver == "scan" and net_form == "vmap" and model_name == "model1":
        return "slices"
    return "xla"


def resolve_pool_s2d(setting: str, driver: str, backend: Optional[str] = None, conv_impl: str = "xla") -> bool:
    """``TrainConfig.pool_s2d`` -> Model 1's ``pool_s2d`` (each conv + pool as one space-to-depth
    convolution, :func:`s2e_jax.convs.conv_max_pool`): "on" / "off" as said; "auto" where measured
    faster, i.e. everywhere but inside ``lax.scan`` on XLA's CPU backend with XLA's convolutions
    (there it took the CPU's slow path, 1.4-3x slower than without):
    - with ``conv_impl`` "slices" (what "auto" picks for Model 1 vmapped inside ``lax.scan``): CPU
      3.5-4x faster than slices alone, 7-13x XLA's convolutions inside ``lax.scan``
      (experiments/cpu_model1/slices.md); H100 1.47x at K = 1, 2.1x at K = 8
      (experiments/gpu_h100/trials/table.md);
    - on XLA's CPU backend with the ``loop`` driver: 1.5x (experiments/cpu_model1/);
    - on a GPU with XLA's convolutions: H100 1.29x for one training (vmap/scan,
      experiments/gpu_h100/train/bench_train.md), 1.29x / 1.27x for 1 / 8 trials in one program.
    Off on a GPU with ``blockdiag`` (H100: 1.15x at K = 1 but 0.85x at K = 8) and ``patches`` (not
    measured with it)."""
    if setting != "auto":
        return setting == "on"
    return models_lib.auto_pool_s2d(conv_impl, driver, backend)


def resolve_conv_impl(setting: str, driver: str, model_name: str, net_form: str,
                      backend: Optional[str] = None) -> str:
    """``TrainConfig.conv_impl`` -> the model's: as said, or "auto" by :func:`default_conv_impl`."""
    return default_conv_impl(backend, driver, model_name, net_form) if setting == "auto" else setting


def one_program_trainer(prep: "Prepared") -> Trainer:
    """The trainer K trials in one program run (``vmap`` of the ``lax.scan`` epoch): ``prep.trainer``,
    or, where ``pool_s2d`` or ``conv_impl`` is "auto" and resolves otherwise for the scan driver, the
    same trainer with the model's so resolved (made once per ``prep``; same parameters, same results
    to float rounding)."""
    tr = prep.trainer
    conv = resolve_conv_impl(getattr(prep.config, "conv_impl", "auto"), "scan", prep.model_name, "vmap")
    want = dict(pool_s2d=resolve_pool_s2d(getattr(prep.config, "pool_s2d", "auto"), "scan", conv_impl=conv),
                conv_impl=conv)
    want = {k: v for k, v in want.items() if hasattr(tr.model, k) and getattr(tr.model, k) != v}
    if not want:
        return tr
    cached = prep.__dict__.get("_one_program_trainer")
    if cached is None:
        cached = dataclasses.replace(tr, model=tr.model.clone(**want))
        prep.__dict__["_one_program_trainer"] = cached
    return cached


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
    image_shape: tuple = ()  # (H, W, C) of the training images (data.x_train may hold Model 1's patches)


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


def prepare(config: TrainConfig, dataset=None, rate=None) -> Prepared:
    """Validate the config, load and corrupt the data, put it on the device, build the trainer.

    ``dataset`` replaces loading ``config.dataset``; ``rate`` replaces the run's schedule function
    (a search passes its space's R(t) and gives each trial its own parameters). F-correction without a
    ``transition_matrix`` file first trains a standard network to estimate T
    (:func:`s2e_jax.fcorrection.transition_for`).
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
    form, driver = default_execution(model_name)
    form = form if config.net_form == "auto" else config.net_form
    driver = driver if config.driver == "auto" else config.driver
    conv = resolve_conv_impl(config.conv_impl, driver, model_name, form)
    model = models_lib.get_model(model_name, ds.num_classes, conv,
                                 pool_s2d=resolve_pool_s2d(config.pool_s2d, driver, conv_impl=conv),
                                 stem_patches=config.stem_patches == "on")
    spec = selection.get_rule(config.method, init_epochs=config.resolved_init_epochs())
    tau_info = {}
    if rate is None and spec.uses_schedule and config.schedule is None and (
            config.tau == "auto" or (config.tau is None and (config.noise == "none" or config.label_file is not None))):
        # eq. (1)'s tau estimated from the noisy data: asked for, or no noise rate is known
        from s2e_jax import noise_rate

        tau_hat, tau_info = noise_rate.estimate_for(config, ds)
        config = config.replace(tau=tau_hat)
    elif config.tau == "auto":  # eq. (1) not used (a search's own schedules, a schedule file, no R(t))
        config = config.replace(tau=None)
    rate_, sched = schedule_of(config)
    rate = rate_ if rate is None else rate
    trainer = Trainer(model, spec.num_nets, spec.rule, rate, epochs=config.epochs,
                      batch_size=config.batch_size,
                      n_train=len(ds.y_train), lr=config.lr, decay_start=config.decay_start,
                      beta1=config.beta1, beta1_late=config.beta1_late,
                      net_form=form, driver=driver,
                      eval_batch_size=config.eval_batch_size, sample_loss=spec.sample_loss,
                      weights_fn=spec.weights_fn, precision=config.precision)
    noise_info = dict(actual_noise_rate=float(1.0 - is_clean.mean()), n_train=int(len(ds.y_train)),
                      n_val=int(len(ds.y_val)), n_test=int(len(ds.y_test)), num_classes=int(ds.num_classes))
    noise_info.update(tau_info)  # tau "auto": tau_estimated, tau_method, ... (s2e_jax/noise_rate.py)
    transition = None
    noise_info["method_version"] = selection.method_version(config.method)
    if config.method == "coteaching_plus":
        noise_info["init_epochs_resolved"] = config.resolved_init_epochs()
    if config.method == "fcorrection":
        from s2e_jax import fcorrection

        transition, info = fcorrection.transition_for(config, ds)
        noise_info.update(info)
    return Prepared(config, trainer, device_data(ds, is_clean, transition, config.input_norm, model), sched, model_name,
                    noise_info, transition, tuple(int(v) for v in ds.x_train.shape[1:]))


def seed_keys(seed: int, num_nets: int):
    """``(net_keys [N], data_key)`` of a seed; network i's key does not depend on N."""
    k_init, k_data = jax.random.split(jax.random.PRNGKey(seed))
    return jnp.stack([jax.random.fold_in(k_init, i) for i in range(num_nets)]), k_data


def init_carry(prep: Prepared, seed: int, sched=None) -> Carry:
    net_keys, data_key = seed_keys(seed, prep.trainer.num_nets)
    return prep.trainer.init(net_keys, data_key, prep.sched if sched is None else sched, prep.data.x_train)


def _host(metrics):
    return {k: np.asarray(v) for k, v in jax.device_get(metrics).items()}


def _stack_epochs(rows):
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
    """What must match for ``train`` to resume into a run directory: the config but where the run is
    written and how it reports progress or checkpoints; files by content (:mod:`s2e_jax.runs`)."""
    d = config.to_dict()
    for k in ("out", "progress", "checkpoint_every"):
        d.pop(k, None)
    return runs.files_by_content(d)


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


def model_description(prep: Prepared, image_shape) -> dict:
    """What :func:`s2e_jax.inference.load` needs to rebuild the networks (``model.json``)."""
    m, c = prep.trainer.model, int(image_shape[-1])
    return dict(model=prep.model_name, num_classes=int(prep.noise_info["num_classes"]),
                num_nets=int(prep.trainer.num_nets), image_shape=[int(v) for v in image_shape],
                mean=[float(v) for v in np.asarray(prep.data.mean)[:c]],  # per channel (patches: tiled)
                std=[float(v) for v in np.asarray(prep.data.std)[:c]],
                conv_impl=getattr(m, "conv_impl", None), pool_s2d=getattr(m, "pool_s2d", None),
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
                                           net_form=prep.trainer.net_form, driver=prep.trainer.driver,
                                           conv_impl_resolved=getattr(prep.trainer.model, "conv_impl", None),
                                           pool_s2d_resolved=getattr(prep.trainer.model, "pool_s2d", None),
                                           backend=jax.default_backend(), processes=jax.process_count(),
                                           identity=resume_identity(config), **prep.noise_info))
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
        rows.append(_host(metrics))  # one small device-to-host copy per epoch
        if run:
            run.append_metrics_row(len(rows) - 1, rows[-1])
            if ckpts and parallel.is_main_process() and policy.due(len(rows), config.epochs):
                saves.append(ckpts.save(len(rows), carry, rows))
                policy.saved(saves[-1])
        bar.update(1, test_acc=float(rows[-1]["test_acc"].mean()), R=float(rows[-1]["r"]))
    bar.close()
    metrics = _stack_epochs(rows)
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
    tr = prep.trainer
    epochs = tr.epochs if epochs is None else epochs
    scheds = np.asarray(scheds, np.float32)
    if one_program is None:
        # measured (experiments/bench_trials.py, 2-core CPU, YNNPACK): K vmapped MLP trainings ran at
        # ~0.6-0.9x of the same K one after another (XLA already uses both cores for one); vmapped
        # Model 1 at 0.07-0.19x (conv nets inside lax.scan, grouped-convolution kernel gradients),
        # 0.66-0.93x since it computes them as slices x kernel with pool_s2d there (default_conv_impl);
        # so one program is the default on GPU/TPU only, also with several processes
        one_program = jax.default_backend() != "cpu"
    if one_program:
        metrics, _ = parallel.run_trials(prep, scheds, seeds, epochs=epochs, mesh=mesh,
                                         memory_budget_mib=memory_budget_mib, checkpoint_dir=batch_checkpoint_dir)
        return metrics
    k, procs, me = len(scheds), jax.process_count(), jax.process_index()

    def one(i):
        carry, rows = init_carry(prep, int(seeds[i]), scheds[i]), []
        ckpts = None
        if checkpoint_dirs is not None and procs == 1 and prep.config.checkpoint_every != 0:
            ckpts, carry, rows = checkpoint.continue_from(checkpoint_dirs[i], carry, epochs)
        policy = checkpoint.Policy(prep.config.checkpoint_every)
        for _ in range(len(rows), epochs):
            carry, m = tr.run_epoch(carry, prep.data)
            rows.append(m)  # on the device: copied to the host at a checkpoint or at the end
            if ckpts and policy.due(len(rows), epochs):
                rows = [_host(r) for r in rows]
                policy.saved(ckpts.save(len(rows), carry, rows))
        if ckpts:
            ckpts.close()
        return _stack_epochs([_host(r) for r in rows])

    if procs == 1:
        out = [one(i) for i in range(k)]
        return {name: np.stack([o[name] for o in out]) for name in out[0]}
    # process p runs trials p, p + P, ...; every process runs ceil(K/P) (a short share repeats its
    # last trial, or trial 0, and drops it: the others are busy that long anyway), then all gather
    per = -(-k // procs)
    mine = [i for i in range(me, k, procs)]
    out = [one(i) for i in mine + [mine[-1] if mine else 0] * (per - len(mine))]
    from jax.experimental import multihost_utils

    local = {name: np.stack([o[name] for o in out]) for name in out[0]}
    every = jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(local))  # [P, per, ...]
    return {name: np.stack([v[i % procs, i // procs] for i in range(k)]) for name, v in every.items()}


def _vmapped_epoch(tr: Trainer):
    """The K-trial epoch on one device (``jax.vmap`` of :meth:`Trainer.epoch`); benchmarks use it."""
    fn = getattr(tr, "_vepoch", None)
    if fn is None:
        fn = jax.jit(jax.vmap(tr.epoch, in_axes=(0, None)))
        object.__setattr__(tr, "_vepoch", fn)
    return fn
