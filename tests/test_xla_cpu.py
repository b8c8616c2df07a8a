"""s2e_jax.xla_cpu: the entry points set the YNNPACK flag unless the user decided, and it changes
speed, not results (gradients of the MLP and Models 1-2 (every layer type of Table 4 but dropout) equal to float32 rounding)."""
import os
import subprocess
import sys

import numpy as np
import pytest

from s2e_jax import xla_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_configure_appends_the_flag_to_existing_flags():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert xla_cpu.configure(env, supported=True)
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {xla_cpu.FLAG}"
    env = {}
    assert xla_cpu.configure(env, supported=True) and env["XLA_FLAGS"] == xla_cpu.FLAG


@pytest.mark.parametrize("env", [
    {"XLA_FLAGS": f"--{xla_cpu.FLAG_NAME}="},              # the user switched YNN off
    {"XLA_FLAGS": f"--{xla_cpu.FLAG_NAME}=dot,reduce"},    # the user chose other types
    {xla_cpu.OPT_OUT: "0"},                                 # opt out
    {xla_cpu.OPT_OUT: "false", "XLA_FLAGS": "--a=1"},
])
def test_configure_leaves_the_users_choice_alone(env):
    before = dict(env)
    assert not xla_cpu.configure(env, supported=True)
    assert env == before


def test_configure_skips_a_jaxlib_without_the_flag():
    env = {}
    assert not xla_cpu.configure(env, supported=False)  # XLA would abort on an unknown flag
    assert env == {}


def test_the_installed_jaxlib_is_looked_up():
    import jaxlib

    assert isinstance(xla_cpu.flag_supported(), bool)
    if xla_cpu.flag_supported():  # then tests/conftest.py set it in this process, or the user did
        assert xla_cpu.FLAG_NAME in os.environ.get("XLA_FLAGS", "") or os.environ.get(xla_cpu.OPT_OUT) == "0"
    assert jaxlib.__version__


GRADS = r"""
import sys, numpy as np
from s2e_jax import xla_cpu
xla_cpu.configure()  # as python -m s2e_jax does
import jax, jax.numpy as jnp
from s2e_jax import models
out = {"active": np.asarray(xla_cpu.active())}
key = jax.random.PRNGKey(0)
for name, shape, nc in [("mlp", (16, 28, 28, 1), 10), ("model1", (16, 32, 32, 3), 10),
                        ("model2", (2, 32, 32, 3), 100)]:
    m = models.get_model(name, nc)
    rs = np.random.RandomState(1)
    x, y = rs.randn(*shape).astype(np.float32), rs.randint(0, nc, shape[0])
    shapes = jax.eval_shape(m.init, {"params": key, "dropout": key}, x)  # no init program to compile
    v = jax.tree_util.tree_map(lambda s: (rs.rand(*s.shape) * 0.2 - 0.1).astype(s.dtype), shapes)
    def loss(p):
        lg, _ = m.apply({**v, "params": p}, x, train=True, mutable=["batch_stats"], rngs={"dropout": key})
        return -jnp.take_along_axis(jax.nn.log_softmax(lg), y[:, None], 1).mean()
    l, g = jax.jit(jax.value_and_grad(loss))(v["params"])
    out[name + "/loss"] = np.asarray(l)
    for path, leaf in jax.tree_util.tree_flatten_with_path(g)[0]:
        out[name + "/" + jax.tree_util.keystr(path)] = np.asarray(leaf)
np.savez(sys.argv[1], **out)
"""


def _grads(tmp_path, tag, **env):
    out = str(tmp_path / f"{tag}.npz")
    e = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT, **env)
    e.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", GRADS, out], env=e, cwd=ROOT, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(np.load(out))


@pytest.mark.skipif(not xla_cpu.flag_supported(), reason="this jaxlib has no YNNPACK flag")
def test_cli_sets_the_flag_before_jax_starts():
    code = ("import os\nfrom s2e_jax import cli, xla_cpu\n"
            "try:\n    cli.main(['train', '--bogus'])  # configures, then argparse exits\nexcept SystemExit:\n    pass\n"
            "import jax\njax.numpy.zeros(1).block_until_ready()\nprint(xla_cpu.active(), os.environ['XLA_FLAGS'])")
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["True", xla_cpu.FLAG]


@pytest.mark.slow
@pytest.mark.skipif(not xla_cpu.flag_supported(), reason="this jaxlib has no YNNPACK flag")
def test_ynnpack_gives_the_gradients_of_xlas_default(tmp_path):
    fast = _grads(tmp_path, "ynn")
    plain = _grads(tmp_path, "default", **{xla_cpu.OPT_OUT: "0"})
    assert bool(fast.pop("active")) and not bool(plain.pop("active"))
    assert fast.keys() == plain.keys()
    for model in ("mlp", "model1", "model2"):
        keys = [k for k in fast if k.startswith(model + "/")]
        scale = max(np.abs(plain[k]).max() for k in keys)  # conv biases before BatchNorm: grad ~ 0
        for k in keys:
            np.testing.assert_allclose(fast[k], plain[k], rtol=0, atol=2e-5 * scale, err_msg=k)
