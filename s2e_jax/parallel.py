"""K trainings as one program, the trial axis sharded over every device and host.

A schedule search runs K independent trainings per iteration (:func:`s2e_jax.train.train_trials`).
Here they are one program: the K carries are stacked on a leading *trial* axis, that axis is sharded
over a 1-D device mesh whose only axis is named ``"trials"`` (:func:`trial_mesh`,
``NamedSharding(mesh, P("trials"))``), and every device runs ``jax.vmap`` of the trainer's epoch over
its own trials inside ``jax.shard_map`` — no collective anywhere: trials never talk to each other.

* **Padding.** K is padded to ``devices x trials-per-device`` with trials-per-device a power of two
  (a search asking for varying K compiles a handful of programs); the padding repeats the last trial
  and is dropped before anything is returned.
* **Data.** The training data (uint8 images, labels, masks) is replicated: one copy per device, shared
  by all of that device's trials (``vmap`` with ``in_axes=None``), never one per trial; device 0's
  copy is the buffer ``prepare`` already made (:func:`replicate`).
* **Memory and waves.** Before running, the epoch program is compiled ahead of time and its per-device
  footprint read from XLA (``Compiled.memory_analysis()``: arguments + outputs + scratch − aliased).
  If it exceeds the memory budget (:func:`memory_budget`: an explicit value, ``ExecutionConfig.
  memory_budget_mib``, ``$S2E_MEMORY_BUDGET_MIB``, else 90% of the device's ``bytes_limit`` on GPU/TPU
  or half the host's RAM shared by its CPU devices), the trials are split into *waves* of fewer trials
  per device, with a message on stderr, instead of failing with an out-of-memory error. Waves run the
  same per-trial computation, so they give the same results.
* **Hosts.** :func:`initialize_distributed` calls ``jax.distributed.initialize()`` (CLI
  ``--distributed``); the mesh then spans every process' devices, each process puts only its own
  trials' inputs on its devices (``jax.make_array_from_callback``), metrics are gathered to every
  process (``multihost_utils.process_allgather``) and only process 0 writes files
  (:func:`is_main_process`, used by :mod:`s2e_jax.runs`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from s2e_jax import checkpoint
from s2e_jax.trainer import init_compiler_options, seed_keys
from s2e_jax.config import ConfigError

TRIALS = "trials"
MEMORY_ENV = "S2E_MEMORY_BUDGET_MIB"
_MIB = 2**20


# ----------------------------------------------------------------------------------- hosts
_distributed = [False]


def launch_args(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
                process_id: Optional[int] = None) -> dict:
    """Keyword arguments of ``jax.distributed.initialize`` for a launch without a cluster manager
    (``--coordinator HOST:PORT --num-processes N --process-id I``); ``{}`` lets JAX detect the
    cluster (TPU pod, Slurm, Open MPI, ...). All three or none."""
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if not any(given):
        return {}
    if not all(given):
        raise ConfigError("coordinator: give --coordinator, --num-processes and --process-id together")
    host, _, port = str(coordinator).rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(f"coordinator: expected HOST:PORT, got {coordinator!r}")
    if num_processes < 1:
        raise ConfigError(f"num_processes: must be >= 1, got {num_processes}")
    if not 0 <= process_id < num_processes:
        raise ConfigError(f"process_id: must be in 0..{num_processes - 1}, got {process_id}")
    return dict(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)


def initialize_distributed(**kwargs) -> None:
    """``jax.distributed.initialize(**kwargs)`` once per process (a TPU pod, a multi-node GPU job:
    the cluster is detected from its environment; ``kwargs`` e.g. ``coordinator_address``,
    ``num_processes``, ``process_id`` elsewhere, see :func:`launch_args`). Call it before any other
    JAX call. CPU processes gather results over gloo (JAX's CPU collectives) unless
    ``jax_cpu_collectives_implementation`` is already set."""
    if _distributed[0]:
        return
    try:
        if not jax.config.jax_cpu_collectives_implementation:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
    except AttributeError:  # a jax without the option
        pass
    jax.distributed.initialize(**kwargs)
    _distributed[0] = True


def is_main_process() -> bool:
    """True on process 0 (the only one that writes files); True when not distributed."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing to do in a single process): a run directory is
    checked by every process before process 0 writes into it, so all of them agree on its state."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def gather(tree):
    """A tree of (possibly multi-host, sharded) arrays as numpy arrays holding the global values."""
    if jax.process_count() > 1:
        return jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(tree, tiled=True))
    return jax.tree_util.tree_map(np.asarray, jax.device_get(tree))


# ----------------------------------------------------------------------------------- mesh
def in_sequence(k: int, one) -> dict:
    """``one(i) -> {name: array}`` for the K trials ``i < k`` one after another, stacked
    ``{name: [K, ...]}`` on every process. With several processes, process p runs trials p, p + P, ...;
    each runs ceil(K/P) (a short share repeats its last trial, or trial 0, and drops it: the others are
    busy that long anyway), then all gather over JAX's collectives."""
    procs, me = jax.process_count(), jax.process_index()
    if procs == 1:
        out = [one(i) for i in range(k)]
        return {name: np.stack([o[name] for o in out]) for name in out[0]}
    per = -(-k // procs)
    mine = [i for i in range(me, k, procs)]
    out = [one(i) for i in mine + [mine[-1] if mine else 0] * (per - len(mine))]
    local = {name: np.stack([o[name] for o in out]) for name in out[0]}
    every = jax.tree_util.tree_map(np.asarray, multihost_utils.process_allgather(local))  # [P, per, ...]
    return {name: np.stack([v[i % procs, i // procs] for i in range(k)]) for name, v in every.items()}


def trial_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"trials"`` over ``devices`` (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    if not devices:
        raise ConfigError("devices: need at least one device")
    return Mesh(np.asarray(devices), (TRIALS,))


def trial_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(TRIALS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def replicate(tree, mesh: Mesh):
    """``tree``'s arrays replicated on every device of ``mesh`` (one copy per device, dtype kept:
    uint8 images stay uint8); a buffer already on a device of the mesh is reused there, not copied."""
    sharding = replicated(mesh)
    local = [d for d in mesh.devices.flat if d.process_index == jax.process_index()]

    def put(x):
        x = jnp.asarray(x) if not isinstance(x, jax.Array) else x
        have = {d: x for d in x.devices()} if len(x.devices()) == 1 else {}
        shards = [have.get(d) if d in have else jax.device_put(x, d) for d in local]
        return jax.make_array_from_single_device_arrays(x.shape, sharding, shards)

    return jax.tree_util.tree_map(put, tree)


def _global(host: np.ndarray, sharding: NamedSharding):
    """A global array from a host array every process holds in full; each process puts only its
    addressable shards (its own trials)."""
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


# ----------------------------------------------------------------------------------- memory
def footprint_bytes(compiled) -> Optional[int]:
    """Per-device bytes of a compiled program from XLA: arguments + outputs + scratch - aliased
    (donated) buffers; None if the backend does not say."""
    try:
        m = compiled.memory_analysis()
    except Exception:  # noqa: BLE001 (a backend without memory analysis)
        return None
    if m is None:
        return None
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)


def tree_bytes(tree) -> int:
    return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree_util.tree_leaves(tree)))


def device_peak_bytes() -> Optional[int]:
    """Largest ``peak_bytes_in_use`` over this process' devices (GPU/TPU); None on the CPU."""
    peaks = []
    for d in jax.local_devices():
        try:
            stats = d.memory_stats() or {}
        except Exception:  # noqa: BLE001
            stats = {}
        if "peak_bytes_in_use" in stats:
            peaks.append(int(stats["peak_bytes_in_use"]))
    return max(peaks) if peaks else None


def memory_budget(explicit_mib: Optional[float] = None, device=None) -> int:
    """Bytes one device may use for a wave of trials.

    In order: ``explicit_mib``; ``$S2E_MEMORY_BUDGET_MIB``; 90% of the device's ``bytes_limit``
    (GPU/TPU ``memory_stats``); on the CPU half the host's physical memory, shared by its devices.
    """
    if explicit_mib is None and os.environ.get(MEMORY_ENV):
        try:
            explicit_mib = float(os.environ[MEMORY_ENV])
        except ValueError:
            raise ConfigError(f"memory_budget_mib: ${MEMORY_ENV} must be a number of MiB, "
                              f"got {os.environ[MEMORY_ENV]!r}") from None
    if explicit_mib is not None:
        if not (isinstance(explicit_mib, (int, float)) and math.isfinite(explicit_mib) and explicit_mib > 0):
            raise ConfigError(f"memory_budget_mib: must be a positive number of MiB, got {explicit_mib!r}")
        return int(explicit_mib * _MIB)
    device = device or jax.local_devices()[0]
    try:
        stats = device.memory_stats() or {}
    except Exception:  # noqa: BLE001
        stats = {}
    if "bytes_limit" in stats:
        return int(0.9 * stats["bytes_limit"])
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        ram = 8 * 2**30
    return int(ram // 2 // max(1, jax.local_device_count()))


# ----------------------------------------------------------------------------------- programs
def _programs(tr, mesh: Mesh):
    """The trainer's sharded programs on ``mesh``: ``(init, epoch, compiled)`` (cached on it)."""
    cache = tr.__dict__.setdefault("_sharded", {})
    key = (tuple(d.id for d in mesh.devices.flat),)
    if key not in cache:
        spec = P(TRIALS)
        epoch = jax.shard_map(jax.vmap(tr.epoch, in_axes=(0, None)), mesh=mesh,
                              in_specs=(spec, P()), out_specs=(spec, spec), check_vma=False)
        cache[key] = dict(epoch=jax.jit(epoch, donate_argnums=0), compiled={}, footprint={}, init={})
    return cache[key]


def _init_program(tr, mesh, progs, x_shape):
    key = tuple(x_shape.shape)
    if key not in progs["init"]:
        local = jax.vmap(lambda nk, dk, s: tr.initial_carry(nk, dk, s, x_shape))
        progs["init"][key] = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(TRIALS),) * 3,
                                                   out_specs=P(TRIALS), check_vma=False),
                                     compiler_options=init_compiler_options())
    return progs["init"][key]


def _next_pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


@dataclasses.dataclass
class TrialsReport:
    """How :func:`run_trials` ran: devices, padding, waves and memory (bytes are per device)."""

    trials: int                # K asked for
    devices: int               # devices of the mesh (all processes)
    processes: int
    per_device: int            # trials per device in one wave
    waves: int
    padded: int                # trainings run in all (waves x devices x per_device); padding dropped
    budget_bytes: int
    program_bytes: Optional[int]   # compiled footprint of one wave's epoch program on one device
    data_bytes: int            # the shared data on one device (stored once, uint8 images)
    bytes_per_trial: Optional[float]  # (program_bytes - data_bytes) / per_device
    peak_bytes: Optional[int]  # measured device peak (GPU/TPU memory_stats; None on the CPU)
    compile_s: float
    seconds: float

    def to_dict(self):
        return dataclasses.asdict(self)


def _plan(tr, mesh, progs, data, k, budget, x_shape, num_sched, verbose):
    """Trials per device and its compiled epoch program: as many as fit the budget (halving)."""
    d = mesh.devices.size
    c = _next_pow2(-(-k // d))
    first = c
    compile_s = 0.0
    while True:
        ck = (c, x_shape.shape, num_sched)
        if ck not in progs["compiled"]:
            t0 = time.perf_counter()
            carry = _abstract_carry(tr, mesh, progs, c * d, x_shape, num_sched)
            progs["compiled"][ck] = progs["epoch"].lower(carry, data).compile()
            compile_s += time.perf_counter() - t0
        compiled = progs["compiled"][ck]
        # XLA's memory analysis: once per program (its cost: docs/performance.md, "Execution defaults")
        if ck not in progs["footprint"]:
            progs["footprint"][ck] = footprint_bytes(compiled)
        fp = progs["footprint"][ck]
        if fp is None or fp <= budget:
            break
        if c == 1:
            raise ConfigError(
                f"memory_budget_mib: one trial per device needs {fp / _MIB:.1f} MiB, over the budget of "
                f"{budget / _MIB:.1f} MiB, the shared data {tree_bytes(data) / _MIB:.1f} MiB of it (raise the budget, "
                f"use fewer/smaller trials or a smaller model)")
        shared = tree_bytes(data)
        per_trial = max((fp - shared) / c, 1.0)
        fit = int((budget - shared) // per_trial)
        c = max(1, min(c // 2, 1 << max(fit, 1).bit_length() - 1))
    if c < first and verbose:
        waves = -(-k // (c * d))
        print(f"train_trials: {k} trials at {first} per device need {_fmt_mib(_first_fp(progs, first, x_shape, num_sched))} "
              f"per device, over the memory budget of {budget / _MIB:.0f} MiB; running them in {waves} waves of "
              f"{c * d} ({c} per device on {d} device(s))", file=sys.stderr, flush=True)
    return c, compiled, fp, compile_s


def _first_fp(progs, c, x_shape, num_sched):
    return progs["footprint"].get((c, x_shape.shape, num_sched))


def _fmt_mib(b):
    return "?" if b is None else f"{b / _MIB:.0f} MiB"


def _abstract_carry(tr, mesh, progs, n, x_shape, num_sched):
    sh = trial_sharding(mesh)
    init = _init_program(tr, mesh, progs, x_shape)
    key_shape = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    args = (jax.ShapeDtypeStruct((n, tr.num_nets) + key_shape.shape, key_shape.dtype, sharding=sh),
            jax.ShapeDtypeStruct((n,) + key_shape.shape, key_shape.dtype, sharding=sh),
            jax.ShapeDtypeStruct((n, num_sched), jnp.float32, sharding=sh))
    out = jax.eval_shape(init, *args)
    return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), out)


def _keys(seeds, num_nets):
    """``(net_keys [K, N, 2], data_keys [K, 2])`` of the seeds, as ``train.seed_keys`` gives them;
    one jitted call for all K (seeds < 2**32), not a few small dispatches per seed."""
    if all(0 <= int(s) < 2**32 for s in seeds):
        nk, dk = _many_keys(np.asarray([int(s) for s in seeds], np.uint32), num_nets)
        return np.asarray(nk), np.asarray(dk)
    pairs = [seed_keys(int(s), num_nets) for s in seeds]
    return (np.stack([np.asarray(p[0]) for p in pairs]), np.stack([np.asarray(p[1]) for p in pairs]))


@functools.partial(jax.jit, static_argnums=1)
def _many_keys(seeds, num_nets):
    return jax.vmap(lambda s: seed_keys(s, num_nets))(seeds)


def shared_data(prep, mesh: Mesh):
    """``prep.data`` replicated on ``mesh`` (made once per mesh and kept on ``prep``)."""
    cache = prep.__dict__.setdefault("_replicated", {})
    key = tuple(d.id for d in mesh.devices.flat)
    if key not in cache:
        cache[key] = replicate(prep.data, mesh)
    return cache[key]


def run_trials(prep, scheds, seeds, epochs: Optional[int] = None, mesh: Optional[Mesh] = None,
               memory_budget_mib: Optional[float] = None, verbose: bool = True,
               checkpoint_dir: Optional[str] = None):
    """K trainings (schedules ``scheds`` [K, P], seeds [K]) as one sharded program per wave.

    ``checkpoint_dir`` (one process): each wave saves its state under ``wave_<w>`` as ``train`` does
    (``config.checkpoint_every``) and resumes from it.

    Returns ``(metrics, report)``: ``metrics`` = ``{name: array [K, epochs, ...]}`` (padding dropped),
    ``report`` a :class:`TrialsReport`. ``mesh`` defaults to :func:`trial_mesh` over every device;
    ``memory_budget_mib`` to ``prep.config.execution.memory_budget_mib`` then :func:`memory_budget`'s
    defaults.
    """
    t_start = time.perf_counter()
    tr = prep.trainer_for(True)  # the plan for K trials in one program (s2e_jax/execution.py)
    epochs = tr.epochs if epochs is None else int(epochs)
    if epochs < 1:
        raise ConfigError(f"epochs: must be >= 1, got {epochs}")
    scheds = np.asarray(scheds, np.float32)
    seeds = [int(s) for s in seeds]
    k = len(seeds)
    if k < 1 or scheds.ndim != 2 or scheds.shape[0] != k:
        raise ConfigError(f"scheds: expected one schedule row per seed ({k}), got shape {scheds.shape}")
    mesh = trial_mesh() if mesh is None else mesh
    d = mesh.devices.size
    if memory_budget_mib is None:
        memory_budget_mib = prep.config.execution.memory_budget_mib
    budget = memory_budget(memory_budget_mib)
    progs = _programs(tr, mesh)
    data = shared_data(prep, mesh)
    x_shape = jax.ShapeDtypeStruct((1,) + tuple(prep.data.x_train.shape[1:]), jnp.float32)
    c, compiled, fp, compile_s = _plan(tr, mesh, progs, data, k, budget, x_shape, scheds.shape[1], verbose)
    wave = c * d
    waves = -(-k // wave)
    net_keys, data_keys = _keys(seeds, tr.num_nets)
    init = _init_program(tr, mesh, progs, x_shape)
    sh = trial_sharding(mesh)
    out = []
    for w in range(waves):
        idx = np.arange(w * wave, (w + 1) * wave)
        idx = np.minimum(idx, k - 1)  # padding repeats the last trial; dropped below
        carry = init(_global(net_keys[idx], sh), _global(data_keys[idx], sh), _global(scheds[idx], sh))
        rows, ckpts = [], None
        if checkpoint_dir and jax.process_count() == 1 and getattr(prep.config, "checkpoint_every", 0) != 0:
            ckpts, carry, rows = checkpoint.continue_from(os.path.join(checkpoint_dir, f"wave_{w}"), carry, epochs)
        policy = checkpoint.Policy(getattr(prep.config, "checkpoint_every", 0))
        for _ in range(len(rows), epochs):
            carry, m = compiled(carry, data)
            rows.append(m)
            if ckpts and policy.due(len(rows), epochs):
                rows = [gather(r) for r in rows]
                policy.saved(ckpts.save(len(rows), carry, rows))
        if ckpts:
            ckpts.close()
        host = gather(rows)  # [epochs] of {name: [wave, ...]}
        n_real = min(wave, k - w * wave)
        out.append({name: np.moveaxis(np.stack([r[name] for r in host]), 0, 1)[:n_real] for name in host[0]})
    metrics = {name: np.concatenate([o[name] for o in out]) for name in out[0]}
    data_b = tree_bytes(prep.data)
    report = TrialsReport(trials=k, devices=d, processes=jax.process_count(), per_device=c, waves=waves,
                          padded=waves * wave, budget_bytes=budget, program_bytes=fp, data_bytes=data_b,
                          bytes_per_trial=None if fp is None else (fp - data_b) / c,
                          peak_bytes=device_peak_bytes(), compile_s=compile_s,
                          seconds=time.perf_counter() - t_start)
    return metrics, report
