"""The jitted step and epoch of Algorithm 1 (training with sample selection): N networks side by side in
one program, and how it runs (network forms, drivers, convolution forms chosen per backend).

The N networks (2 for Co-teaching, 1 for Standard) are one parameter tree with a leading axis of N.
For each mini-batch every network computes a per-sample loss (cross-entropy; F-correction's
forward-corrected loss); a selection rule (:mod:`s2e_jax.selection`) turns the losses into
per-network weights (learning to reweight: a weights function of the parameters and a clean batch);
each network's loss is the weighted mean over its weights, divided once. Every method of
:data:`s2e_jax.selection.METHOD_RULES` runs this same loop. The training data, the per-epoch
permutation, batch gathering, selection and all metrics stay on the device: no host copy or sync
per step.

How the network axis is computed (``net_form``) and how an epoch is driven (``driver``,
:mod:`s2e_jax.drivers`) are the execution plan's (:mod:`s2e_jax.execution`); every choice gives the
same numbers (tests):

- ``vmap``: ``jax.vmap`` over the stacked parameters (the natural form for GPUs/TPUs),
- ``fused``: a Python loop over the networks inside the same jit, their first layer computed as one
  layer with N× the outputs;
- ``scan``: one epoch = one jitted ``lax.scan`` over batches; ``loop``: a Python loop of jitted steps.

K independent trainings (trials: schedules, seeds) are one more leading axis (:func:`s2e_jax.train.train_trials`),
sharded over every device and host by :mod:`s2e_jax.parallel`. ``precision="bfloat16"`` computes the
networks in bfloat16 on float32 master weights (losses and selection stay float32).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from s2e_jax import drivers, selection
from s2e_jax import models as models_lib
from s2e_jax.config import PRECISIONS, ConfigError


# ----------------------------------------------------------------------------------- device data
class DeviceData(NamedTuple):
    """Everything a training reads, on the device. Images stay uint8; normalized per batch."""

    x_train: jax.Array   # uint8 [N, H, W, C]
    y_train: jax.Array   # int32 [N] (noisy)
    clean: jax.Array     # float32 [N]: 1 where the training label is the clean one
    x_val: jax.Array
    y_val: jax.Array
    x_test: jax.Array
    y_test: jax.Array
    mean: jax.Array      # float32 [C] per-channel mean of the training images (in [0, 1])
    std: jax.Array       # float32 [C]
    transition: jax.Array  # float32 [K, K]: F-correction's T (identity otherwise); traced, not static


def device_data(ds, is_clean, transition=None, input_norm: str = "standardize") -> DeviceData:
    """Put a :class:`s2e_jax.data.Dataset` on the device once (``transition``: F-correction's T).

    ``input_norm``: ``"standardize"`` (per-channel mean and std of the training images) or
    ``"unit"`` (pixels / 255 only, as ``ToTensor()`` in Co-teaching's and S2E's released code).
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
    return DeviceData(xs[0], put(ds.y_train.astype(np.int32)), put(is_clean.astype(np.float32)),
                      xs[1], put(ds.y_val.astype(np.int32)), xs[2],
                      put(ds.y_test.astype(np.int32)), put(mean.astype(np.float32)),
                      put(std.astype(np.float32)),
                      put(np.asarray(np.eye(ds.num_classes) if transition is None else transition,
                                     np.float32)))


def channel_stats(x):
    """Per-channel mean and standard deviation (+1e-6) of images scaled to [0, 1], float32 [C].

    uint8 images: exact, from each channel's histogram of the 256 values (one pass of ``bincount``,
    no float copy of the data; its time: docs/performance.md, "4. A whole training")."""
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


def _bf16_interceptor(next_fun, args, kwargs, context):
    """Flax method interceptor: a Dense or Conv layer gets its input in bfloat16 (a BatchNorm's
    float32 output included), so that every matmul/convolution of the network runs in bfloat16."""
    if context.method_name == "__call__" and isinstance(context.module, (nn.Dense, nn.Conv, models_lib.ConvPool)) and args:
        args = (jnp.asarray(args[0]).astype(jnp.bfloat16),) + tuple(args[1:])
    return next_fun(*args, **kwargs)


def init_compiler_options() -> Optional[dict]:
    """XLA options of the programs that initialize networks (they run once per training): on the
    CPU optimization level 0, where LLVM's optimization of the random init's threefry code is most of
    the compile time and the program runs in milliseconds either way (docs/performance.md, "Execution
    defaults"). Values differ from an optimized compile by float32 rounding; every path (one training,
    K trials in one program) uses these options, so all start from identical networks. Elsewhere
    (GPU/TPU) XLA's defaults."""
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


def zero_stats(n):
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
    a clean validation batch. Use :meth:`init`, then :meth:`run_epoch` once per epoch. The epoch is
    four pure pieces (:meth:`begin_epoch`, :meth:`step`, :meth:`end_epoch`, :meth:`evaluate`) that
    :mod:`s2e_jax.drivers` runs; :meth:`epoch` is the whole epoch as one pure function.
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
        pieces = (self.begin_epoch, self.step, self.end_epoch, self.evaluate, self.steps_per_epoch)
        set_("scan_epoch", drivers.scan_epoch(*pieces))  # pure: (carry, data) -> (carry, metrics)
        set_("runner", drivers.epoch_runner(self.driver, *pieces))
        set_("init_fn", jax.jit(self.initial_carry, static_argnums=3, compiler_options=init_compiler_options()))
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
        if self.net_form != "fused":
            raise ConfigError(f"net_form: unknown value {self.net_form!r} (expected vmap or fused)")
        xs = models_lib.fused_stem(self.model, [p[self.model.stem_name] for p in ps], x)
        outs = [self._apply_one(ps[i], bss[i], xs[i], keys[i], train, True) for i in range(n)]
        stack = lambda *a: jnp.stack(a)  # noqa: E731
        return jnp.stack([o[0] for o in outs]), jax.tree_util.tree_map(stack, *[o[1] for o in outs])

    # ------------------------------------------------------------------ init
    def init(self, net_keys, data_key, sched, sample_x) -> Carry:
        """A fresh training: network i initialized from ``net_keys[i]``; ``data_key`` drives
        shuffling and dropout; ``sched`` is the schedule's parameter array."""
        return self.init_fn(jnp.asarray(net_keys), data_key, jnp.asarray(sched, jnp.float32),
                            jax.ShapeDtypeStruct((1,) + tuple(sample_x.shape[1:]), jnp.float32))

    def initial_carry(self, net_keys, data_key, sched, x_shape) -> Carry:
        """:meth:`init` as a pure function (``x_shape``: a ShapeDtypeStruct of one input batch)."""
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
            w, kept = self.rule(jax.lax.stop_gradient(losses), jax.lax.stop_gradient(logits), yb, r, epoch, batch)
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

    # ------------------------------------------------------------------ an epoch
    def epoch(self, carry: Carry, data: DeviceData):
        """One epoch as one pure function (a ``lax.scan`` over the batches): ``(carry, metrics)``.
        K trials in one program are a ``vmap`` of it (:mod:`s2e_jax.parallel`)."""
        return self.scan_epoch(carry, data)

    def run_epoch(self, carry: Carry, data: DeviceData):
        """One epoch run by this trainer's driver (:mod:`s2e_jax.drivers`): ``(carry, metrics)``; no
        host sync inside."""
        return self.runner(carry, data)

    # ------------------------------------------------------------------ epoch pieces (s2e_jax.drivers)
    def begin_epoch(self, carry: Carry, data: DeviceData):
        """Set the epoch's lr/beta1 and R(t); draw the epoch's permutation (device side).
        Returns ``((carry, zero stats), (batches, step key, r, lr))``."""
        t = carry.epoch
        lr, b1 = adam_plan(t, lr=self.lr, epochs=self.epochs, decay_start=self.decay_start,
                           beta1=self.beta1, beta1_late=self.beta1_late)
        hp = dict(carry.opt_state.hyperparams, learning_rate=lr, b1=b1)
        key, k_perm, k_steps = jax.random.split(carry.key, 3)
        n = self.steps_per_epoch * self.batch_size
        batches = jax.random.permutation(k_perm, self.n_train)[:n].reshape(self.steps_per_epoch, self.batch_size)
        r = self.rate(t.astype(jnp.float32), carry.sched, self.epochs)
        carry = carry._replace(opt_state=carry.opt_state._replace(hyperparams=hp), key=key)
        return (carry, zero_stats(self.num_nets)), (batches, k_steps, r, lr)

    def accumulate(self, acc: Acc, stats):
        """The epoch's running sums of one step's ``(per-network loss, kept, kept and clean)``."""
        loss, kept, clean = stats
        return Acc(acc.loss + loss, acc.kept + kept, acc.kept_clean + clean, acc.steps + 1)

    def step(self, state, ctx, i, data: DeviceData):
        """Mini-batch ``i`` of the epoch: ``(carry, acc) -> (carry, acc)``."""
        carry, acc = state
        batches, k_steps, r, _ = ctx
        carry, stats = self._train_step(carry, batches[i], r, data, jax.random.fold_in(k_steps, i), i)
        return carry, self.accumulate(acc, stats)

    def end_epoch(self, state, ctx, data: DeviceData):
        """The epoch's training metrics (R, lr, loss, label precision, kept fraction); epoch + 1."""
        carry, acc = state
        _, _, r, lr = ctx
        metrics = dict(r=r, lr=lr, train_loss=acc.loss / acc.steps,
                       label_precision=acc.kept_clean / jnp.maximum(acc.kept, 1.0),
                       kept_fraction=acc.kept / (acc.steps * self.batch_size))
        return carry._replace(epoch=carry.epoch + 1), metrics

    def evaluate(self, carry: Carry, data: DeviceData, in_jit: bool = True) -> dict:
        """Accuracy and mean cross-entropy of each network on the validation and test halves."""
        out = {}
        for split, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
            out[f"{split}_acc"], out[f"{split}_loss"] = self._evaluate(carry, x, y, data, in_jit)
        return out

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

def seed_keys(seed: int, num_nets: int):
    """``(net_keys [N], data_key)`` of a seed; network i's key does not depend on N."""
    k_init, k_data = jax.random.split(jax.random.PRNGKey(seed))
    return jnp.stack([jax.random.fold_in(k_init, i) for i in range(num_nets)]), k_data
