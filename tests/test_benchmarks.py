"""The speed benchmarks (benchmarks/): every script starts and parses its options, one runs a tiny
training end to end, none reaches into s2e_jax's private names (public API only), and the pieces of
their bookkeeping that can be checked without a device are."""
import ast
import inspect
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCH)

import bench_trials  # noqa: E402
import profile_trials  # noqa: E402

SCRIPTS = sorted(f for f in os.listdir(BENCH) if f.endswith(".py"))


HELP_ALL = """
import contextlib, io, json, runpy, sys
out = {}
for path in sys.argv[1:]:
    buf = io.StringIO()
    sys.argv = [path, "--help"]
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(path, run_name="__main__")
        code = "no exit"
    except SystemExit as e:
        code = e.code or 0
    except Exception as e:  # noqa: BLE001
        code = f"{type(e).__name__}: {e}"
    out[path] = [code, buf.getvalue()]
print(json.dumps(out))
"""


def test_every_benchmark_script_parses_its_help():
    """Each script imports (the public API it uses exists) and prints its --help: all in one fresh
    process, which imports JAX once."""
    import json

    assert len(SCRIPTS) >= 8, SCRIPTS
    paths = [os.path.join(BENCH, f) for f in SCRIPTS]
    r = subprocess.run([sys.executable, "-c", HELP_ALL] + paths, cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    for path in paths:
        code, text = res[path]
        assert code == 0 and "usage:" in text, f"{os.path.basename(path)} --help: {code}\n{text[-2000:]}"


def test_bench_full_runs_a_tiny_training(tmp_path):
    """bench_full.py end to end on the public API: prepare, init_carry, run_epoch, the plan."""
    out = tmp_path / "full.md"
    r = subprocess.run([sys.executable, os.path.join(BENCH, "bench_full.py"), "--models", "mlp", "--epochs", "2",
                        "--n-train", "256", "--n-test", "64", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [ln for ln in out.read_text().splitlines() if ln.startswith("| mlp ")]
    assert len(rows) == 1 and "| vmap | scan |" in rows[0], out.read_text()


# --------------------------------------------------------------------------- public API only
def _private_names_of_the_package() -> set:
    """Every ``_name`` the package defines: module-level, in classes, or as ``self._name``."""
    names = set()
    pkg = os.path.join(ROOT, "s2e_jax")
    for f in os.listdir(pkg):
        if not f.endswith(".py"):
            continue
        for node in ast.walk(ast.parse(open(os.path.join(pkg, f)).read())):
            name = None
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = node.name
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                name = node.id
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                name = node.attr
            if name and re.match(r"_[A-Za-z]", name):  # not "_" (a throwaway) nor a dunder
                names.add(name)
    return names


def _root(node):
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def private_uses(source: str, package_private: set) -> list:
    """Where ``source`` uses a private name of s2e_jax: imported (``from s2e_jax.x import _y``),
    reached as an attribute of anything imported from s2e_jax (``train_lib._host``,
    ``train_lib.prepare(c).trainer._begin``), or a ``._name`` / ``"_name"`` the package defines and the
    script does not (``prep.trainer._chunks``, ``getattr(tr, "_vepoch")``)."""
    tree = ast.parse(source)
    bound, own, found = set(), set(), []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "s2e_jax":
            for a in node.names:
                if a.name.startswith("_"):
                    found.append(f"line {node.lineno}: from {node.module} import {a.name}")
                bound.add(a.asname or a.name)
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "s2e_jax":
                    bound.add(a.asname or a.name.split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and re.match(r"_[A-Za-z]", node.attr):
            if _root(node) in bound or (node.attr in package_private and node.attr not in own):
                found.append(f"line {node.lineno}: .{node.attr}")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in package_private
              and node.value not in own):
            found.append(f"line {node.lineno}: {node.value!r}")
    # the plain pattern too, whatever the parse missed
    found += [f"import of {m}" for m in re.findall(r"from s2e_jax[\w.]* import \(?\s*(_\w+)", source)]
    return found


def test_the_private_name_check_can_fail():
    pkg = _private_names_of_the_package()
    assert pkg, "the package defines private names"
    bad = {
        "from s2e_jax.train import _host": "_host",
        "from s2e_jax import train as T\nT._vmapped_epoch(x)": "_vmapped_epoch",
        "from s2e_jax import train\ntrain.prepare(c).trainer._begin(c, d)": "_begin",
        "import s2e_jax.convs\ns2e_jax.convs._side(x)": "_side",
    }
    for src, name in bad.items():
        assert any(name in f for f in private_uses(src, pkg | {name})), src
    one = sorted(pkg)[0]
    assert private_uses(f"x = prep.trainer.{one}", pkg), one           # a package private, reached anyhow
    assert private_uses(f"getattr(tr, {one!r})", pkg), one
    ok = "class R:\n    def __init__(self):\n        self._loss = 0\n    def f(self):\n        return self._loss\n"
    assert private_uses(ok, pkg | {"_loss"}) == []                       # the script's own private name


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmarks_use_the_public_api_only(script):
    found = private_uses(open(os.path.join(BENCH, script)).read(), _private_names_of_the_package())
    assert not found, f"benchmarks/{script} uses private s2e_jax names: {found}"


# --------------------------------------------------------------------------- bookkeeping
def test_bench_trials_tokens_name_the_convolutions():
    """bench_trials.py: a --conv-impls token is IMPL, IMPL+s2d or IMPL-s2d; a --sequential token
    'default' or FORM/DRIVER."""
    B = bench_trials
    assert B.conv_spec("auto") == ("auto", "auto")
    assert B.conv_spec("slices+s2d") == ("slices", "on")
    assert B.conv_spec("xla-s2d") == ("xla", "off")
    assert B.conv_spec("-") == ("auto", "auto")
    assert B.parse_execution("default") == ("auto", "auto")
    assert B.parse_execution("vmap/scan") == ("vmap", "scan")
    for bad in ("vmap/fast", "unroll/loop"):
        with pytest.raises(ValueError):
            B.parse_execution(bad)
    with pytest.raises(SystemExit):
        B.parse_args(["--conv-impls", "patches"])


def test_profile_trials_sums_kernel_time_of_the_stream_by_kind():
    """profile_trials.py: kernel time is read off the device's kernel stream (not the XLA Ops line
    that overlaps it), classified by name, and its fraction of the wall is the busy fraction."""
    P = profile_trials

    assert P.kind_of("void cutlass::Kernel2<cutlass_80_tensorop_s1688gemm_64x128>") == "matmul"
    assert P.kind_of("sm90_xmma_gemm_f32f32_tf32f32_f32_tn_n") == "matmul"
    assert P.kind_of("gemm_fusion_dot_27") == "matmul"
    assert P.kind_of("cudnn::conv2d_grouped_direct_kernel") == "convolution"
    assert P.kind_of("sort_14_1") == "sort / top-k"
    assert P.kind_of("memcpy32_post") == P.kind_of("loop_transpose_fusion") == "copy / transpose"
    assert P.kind_of("input_reduce_fusion_1") == "reduction"
    assert P.kind_of("loop_concatenate_fusion") == P.kind_of("loop_convert_fusion") == "other fusion"
    assert P.kind_of("sm90_xmma_fprop_implicit_gemm_f32f32_tf32f32") == "convolution"
    lines = {"/device:GPU:0 Stream #14(Memset,Compute)": [("gemm_fusion_dot", 3000), ("loop_concatenate_fusion", 5000),
                                                          ("sort_1", 1000), ("gemm_fusion_dot", 1000)],
             "/device:GPU:0 XLA Ops": [("fusion.1", 50000)]}
    text = P.report("t", 2e-5, lines, top=2)
    assert "'/device:GPU:0 Stream #14(Memset,Compute)': 4 kernels, 0.0 ms = 50% of wall" in text
    assert "matmul                  0.00 ms   40.0%" in text and "other fusion            0.01 ms   50.0%" in text
    assert "sort / top-k            0.00 ms   10.0%" in text
    costly = text.split("(total ms, calls, mean us):")[1].strip().splitlines()
    assert len(costly) == 2 and costly[0].endswith("loop_concatenate_fusion") and costly[1].endswith("gemm_fusion_dot")
    assert costly[1].split()[:3] == ["0.00", "2", "2.0"]  # the two gemm calls: one name, mean 2 us


def test_profile_trials_reads_a_real_trace():
    P = profile_trials

    f = jax.jit(lambda x: jnp.tanh(x @ x))
    x = jnp.ones((128, 128))
    f(x).block_until_ready()
    wall, lines = P.traced(lambda: f(x))
    assert wall > 0 and lines and all(ev and all(d >= 0 for _, d in ev) for ev in lines.values())


def test_profile_trials_says_what_a_fusion_computes_and_where_from():
    """profile_trials.py: a kernel (an XLA fusion) is described from the optimized HLO: its output,
    the ops fused into it and the source lines they come from."""
    P = profile_trials

    def f(x, idx):
        xb = x[idx].astype(jnp.float32) / 255.0
        return jnp.concatenate([xb[:, i: i + 4] for i in range(3)], -1).sum()

    text = jax.jit(f).lower(jnp.zeros((10, 6, 5), jnp.uint8), jnp.arange(4)).compile().as_text()
    fusions = P.hlo_fusions(text)
    assert fusions, text
    desc = " | ".join(fusions.values())
    line = inspect.getsourcelines(f)[1] + 1  # the gather's line
    assert "gather x1" in desc and "f32[]" in desc and f"test_benchmarks.py:{line} (" in desc, desc
    # as a GPU's HLO prints them: numbered names (the profile's kernel is gemm_fusion_dot_27), a tuple
    # output of 6+ elements with /*index=5*/ in its type
    gpu = """%fused_add (p: f32[8]) -> (f32[8], f32[8]) {
  %p = f32[8]{0} parameter(0)
  ROOT %add.1 = f32[8]{0} add(%p, %p)
}

%gemm_fusion_dot.27_computation (p: f32[8,4], q: f32[4,2]) -> f32[8,2] {
  %p = f32[8,4]{1,0} parameter(0)
  %q = f32[4,2]{1,0} parameter(1)
  ROOT %dot.3 = f32[8,2]{1,0} dot(%p, %q), lhs_contracting_dims={1}, rhs_contracting_dims={0}
}

ENTRY %main (a: f32[8]) -> f32[8] {
  %gemm_fusion_dot.27 = f32[8,2]{1,0} fusion(%a, %b), kind=kCustom, calls=%gemm_fusion_dot.27_computation
  %loop_add_fusion.5 = (f32[8]{0}, f32[8]{0}, f32[8]{0}, f32[8]{0}, f32[8]{0}, /*index=5*/f32[8]{0}) fusion(%a), kind=kLoop, calls=%fused_add
}
"""
    got = P.hlo_fusions(gpu)
    assert got["gemm_fusion_dot_27"] == "f32[8,2] = dot x1", got
    assert got["loop_add_fusion_5"].startswith("(f32[8], f32[8], f32[8], f32[8], f32[8], f32[8]) = add x1"), got
