"""Where a device's time goes in one Co-teaching epoch: one training (the default execution) against
K trainings in one program (``parallel.run_trials``), from JAX's own profiler (``jax.profiler.trace``,
read back with ``jax.profiler.ProfileData``; no TensorBoard needed).

    python benchmarks/profile_trials.py --model model1 --k 8 --n-train 25600

Prints, for each of the two programs: the traced wall time, the summed kernel time on the device's
busiest line (GPU: the stream of kernels; busy = kernel time / wall: well under 1 means launch- or
host-bound, near 1 compute- or memory-bound), the kernel time by kind (matmul, convolution, sort /
top-k, reduction / other fusions, copies) and the costliest kernels, each with what it computes where
the optimized HLO names it (output, fused ops, the source lines they come from: :func:`hlo_fusions`;
of the scan driver's epoch, and of the K-trial epoch compiled again on one device as
``jax.jit(jax.vmap(prep.trainer_for(True).epoch))``: the same fusions as ``run_trials``' program on
one device). On a CPU the host's XLA threads
stand in for the device (a smoke test, not a measurement). ``--out`` writes the printout to a file.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402

from s2e_jax import xla_cpu  # noqa: E402

xla_cpu.configure()  # YNNPACK convolutions on XLA's CPU backend, before JAX starts

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import bench_trials  # noqa: E402
from s2e_jax import execution as execution_lib  # noqa: E402
from s2e_jax import parallel  # noqa: E402
from s2e_jax import train as train_lib  # noqa: E402
from s2e_jax.config import CONV_IMPLS, POOL_S2D, ExecutionConfig, TrainConfig  # noqa: E402

KINDS = (("convolution", ("convolution", "conv2d", "cudnn", "fprop", "implicit_gemm", "wgrad", "dgrad")),
         ("matmul", ("gemm", "xmma", "cublas", "cutlass", "dot", "matmul")),
         ("sort / top-k", ("sort", "topk", "top_k", "radix")),
         ("copy / transpose", ("copy", "transpose", "memcpy", "memset")),
         ("reduction", ("reduce", "reduction")))


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other fusion"


def traced(fn):
    """(wall seconds, {line name: [(event name, ns)]}) of one call of ``fn`` on the device planes
    (the host's XLA lines on a CPU)."""
    d = tempfile.mkdtemp(prefix="s2e_profile_")
    with jax.profiler.trace(d):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        wall = time.perf_counter() - t
    path = sorted(glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True))[-1]
    planes = list(jax.profiler.ProfileData.from_file(path).planes)
    dev = [p for p in planes if p.name.startswith("/device:")]
    lines = {}
    for p in dev or [p for p in planes if p.name == "/host:CPU"]:
        for ln in p.lines:
            if not dev and ln.name == "python":
                continue
            ev = [(e.name, e.duration_ns) for e in ln.events]
            if ev:
                lines[f"{p.name} {ln.name}"] = ev
    return wall, lines


def _sections(text):
    """The source tables of an HLO module's text: {stack frame id: (file, line)}."""
    tables, name = collections.defaultdict(dict), None
    for ln in text.splitlines():
        if ln in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            name = ln
        elif not ln.strip():
            name = None
        elif name:
            i, _, rest = ln.partition(" ")
            tables[name][int(i)] = rest
    files = {i: v.strip('"') for i, v in tables["FileNames"].items()}
    locs = {}
    for i, v in tables["FileLocations"].items():
        m = re.search(r"file_name_id=(\d+) .*?line=(\d+)", v)
        if m:
            locs[i] = (files.get(int(m.group(1)), "?"), int(m.group(2)))
    frames = {}
    for i, v in tables["StackFrames"].items():
        m = re.search(r"file_location_id=(\d+)", v)
        if m and int(m.group(1)) in locs:
            frames[i] = locs[int(m.group(1))]
    return frames


def _source(frames, fid):
    """``file:line`` of a stack frame (JAX records the innermost frame outside its own code; flax's and
    optax's are left out too, so this is the line of this project that made the op)."""
    if fid not in frames:
        return None
    path, line = frames[fid]
    return f"{os.path.basename(path)}:{line}"


_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(\([^=]*?\)|\S+)\s+([\w\-]+)\((.*)$")


def kernel_key(name: str) -> str:
    """A kernel's name as a GPU profile writes an HLO instruction's (``gemm_fusion_dot.27`` ->
    ``gemm_fusion_dot_27``)."""
    return re.sub(r"[^\w]", "_", name)


def hlo_fusions(text):
    """{kernel name (:func:`kernel_key` of the fusion's name): what it computes} from ONE optimized HLO
    module's text (``compiled.as_text()``): its output type, the ops fused into it (by count) and the
    source lines they come from (the kernels of a GPU profile are these fusions)."""
    frames = _sections(text)
    comps, cur = {}, None
    fusions = {}
    for ln in text.splitlines():
        ln = re.sub(r"/\*.*?\*/", "", ln)  # e.g. /*index=5*/ inside a tuple type of 6+ elements
        m = re.match(r"^%?([\w.\-]+) \(.*\{\s*$", ln)
        if m and not ln.startswith(" "):
            cur = comps.setdefault(m.group(1), [])
            continue
        if ln.startswith("}"):
            cur = None
            continue
        mi = _INSTR.match(ln)
        if not mi:
            continue
        name, typ, op, rest = mi.groups()
        sf = re.search(r"stack_frame_id=(\d+)", rest)
        if cur is not None:
            cur.append((op, int(sf.group(1)) if sf else None))
        if op == "fusion":
            calls = re.search(r"calls=%?([\w.\-]+)", rest)
            fusions[name] = (re.sub(r"\{[^}]*\}", "", typ), calls.group(1) if calls else None)
    out = {}
    for name, (typ, calls) in fusions.items():
        body = comps.get(calls, [])
        ops = collections.Counter(op for op, _ in body if op not in ("parameter", "constant", "bitcast", "broadcast"))
        srcs = collections.Counter(_source(frames, f) for _, f in body if f is not None)
        srcs.pop(None, None)
        out[kernel_key(name)] = (f"{typ} = " + ", ".join(f"{op} x{n}" for op, n in ops.most_common(6))
                     + ("; from " + ", ".join(f"{w} ({n})" for w, n in srcs.most_common(4)) if srcs else ""))
    return out


def report(title, wall, lines, top, fusions=None):
    out = [f"## {title}: wall {wall * 1e3:.1f} ms"]
    for name, ev in sorted(lines.items(), key=lambda kv: -sum(d for _, d in kv[1])):
        out.append(f"  line {name}: {len(ev)} events, {sum(d for _, d in ev) / 1e6:.1f} ms")
    kernel_lines = [n for n in lines if "stream" in n.lower()] or list(lines)
    busiest = max(kernel_lines, key=lambda n: sum(d for _, d in lines[n]))
    ev = lines[busiest]
    total = sum(d for _, d in ev)
    out.append(f"  busiest line {busiest!r}: {len(ev)} kernels, {total / 1e6:.1f} ms "
               f"= {total / 1e9 / wall:.0%} of wall, mean {total / max(len(ev), 1) / 1e3:.1f} us per kernel")
    by_kind, by_name, count = collections.Counter(), collections.Counter(), collections.Counter()
    for n, d in ev:
        by_kind[kind_of(n)] += d
        by_name[n] += d
        count[n] += 1
    for k, d in by_kind.most_common():
        out.append(f"    {k:<18} {d / 1e6:9.2f} ms  {d / total:6.1%}")
    out.append(f"  costliest {top} kernels (total ms, calls, mean us):")
    for n, d in by_name.most_common(top):
        out.append(f"    {d / 1e6:8.2f}  {count[n]:6d}  {d / count[n] / 1e3:8.1f}  {n[:110]}")
    known = [n for n, _ in by_name.most_common(top) if kernel_key(n) in (fusions or {})]
    if known:
        out.append("  what they compute (XLA's optimized HLO: output, fused ops, source lines):")
        out.extend(f"    {n}: {fusions[kernel_key(n)][:400]}" for n in known)
    return "\n".join(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="model1", choices=("mlp", "model1"))
    p.add_argument("--k", type=int, default=8, help="trainings in the one program (default 8)")
    p.add_argument("--n-train", type=int, default=25600, help="training images (default 25,600: 200 steps)")
    p.add_argument("--n-eval", type=int, default=512, help="validation and test images each (default 512)")
    p.add_argument("--conv-impl", default="auto", choices=CONV_IMPLS, help="ExecutionConfig.conv_impl (default auto)")
    p.add_argument("--pool-s2d", default="auto", choices=POOL_S2D, help="ExecutionConfig.pool_s2d (default auto)")
    p.add_argument("--top", type=int, default=15, help="kernels listed per program (default 15)")
    p.add_argument("--out", default=None, help="also write the printout to this file")
    args = p.parse_args(argv)
    if args.k < 1 or args.n_train < bench_trials.BATCH:
        p.error(f"--k must be >= 1 and --n-train >= {bench_trials.BATCH}")
    ds, source = bench_trials.make_dataset(args.model, args.n_train, args.n_eval, None)
    ex = ExecutionConfig(conv_impl=args.conv_impl, pool_s2d=args.pool_s2d, eval_batch_size=args.n_eval)
    cfg = TrainConfig(dataset=ds.name, model=args.model, method="coteaching", noise="symmetric", noise_rate=0.5,
                      batch_size=bench_trials.BATCH, epochs=1, seed=0, progress=False, execution=ex)
    prep = train_lib.prepare(cfg, dataset=ds)
    sched = np.asarray(prep.sched, np.float32)
    scheds, seeds = np.repeat(sched[None], args.k, 0), np.arange(args.k)
    one, many = prep.plan, execution_lib.plan(ex, args.model, trials="one_program")
    conv = lambda pl: "-" if args.model == "mlp" else pl.conv_impl + ("+s2d" if pl.pool_s2d else "")  # noqa: E731
    head = (f"# {args.model} on {source}: {args.n_train} train ({args.n_train // bench_trials.BATCH} steps), "
            f"{args.n_eval} val + test; jax {jax.__version__} on {jax.devices()[0].device_kind}; "
            f"one training: {one.net_form}/{one.driver}, conv {conv(one)}; "
            f"one program: {many.net_form}/{many.driver}, conv {conv(many)}")
    print(head, flush=True)

    carry = train_lib.init_carry(prep, 0, sched)

    def one_epoch():
        return prep.trainer.run_epoch(carry, prep.data)[1]

    def program():
        return parallel.run_trials(prep, scheds, seeds, epochs=1)[0]

    def one_hlo():  # the scan driver's epoch program (the loop driver's steps are not looked into)
        if one.driver != "scan":
            return []
        return [jax.jit(prep.trainer.epoch).lower(carry, prep.data).compile().as_text()]

    def program_hlo():  # the K-trial epoch on one device, compiled again (see the module docstring)
        carries = [train_lib.init_carry(prep, int(s), sched) for s in seeds]
        stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *carries)
        fn = jax.jit(jax.vmap(prep.trainer_for(True).epoch, in_axes=(0, None)))
        return [fn.lower(stacked, prep.data).compile().as_text()]

    parts = [head]
    for title, fn, hlo in (("one training, one epoch", one_epoch, one_hlo),
                           (f"{args.k} trainings in one program, one epoch (with their init)", program, program_hlo)):
        jax.block_until_ready(fn())  # compile
        jax.block_until_ready(fn())
        wall, lines = traced(fn)
        try:  # each module parsed alone (their ids and names overlap); the first module's wins
            fusions = {}
            for module in reversed(hlo()):
                fusions.update(hlo_fusions(module))
        except Exception as err:  # the description is a help, never the reason a profile is lost
            print(f"(no HLO description: {type(err).__name__}: {err})", flush=True)
            fusions = None
        text = report(title, wall, lines, args.top, fusions)
        print(text, flush=True)
        parts.append(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(parts) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
