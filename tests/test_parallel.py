"""Trials sharded over devices (s2e_jax.parallel): sharded == one device, padding, waves, data stored
once, bf16 compute, process-0-only writing, the CLI flags."""
import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2e_jax import data as data_lib
from s2e_jax import parallel, runs
from s2e_jax import train as T
from s2e_jax import trainer as trainer_lib
from s2e_jax.cli import main
from s2e_jax.config import ConfigError, ExecutionConfig, TrainConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCHEDS = np.asarray([[0.5, 10.0, 1.0], [0.3, 2.0, 2.0], [0.1, 1.0, 1.0], [0.6, 3.0, 0.5],
                     [0.2, 5.0, 1.0], [0.4, 1.0, 3.0]], np.float32)
SEEDS = [3, 4, 5, 6, 7, 8]
EXACT = ("r", "lr", "kept_fraction", "label_precision", "val_acc", "test_acc")  # equal
CLOSE = ("train_loss", "val_loss", "test_loss")  # equal up to float32 summation order


def small_digits():
    ds = data_lib.load_dataset("digits")
    n, e = 512, 128
    return ds.__class__(ds.name, ds.x_train[:n], ds.y_train[:n], ds.y_train_clean[:n], ds.x_val[:e],
                        ds.y_val[:e], ds.x_test[:e], ds.y_test[:e], ds.num_classes)


def _cfg(eval_batch_size=128, precision="float32", memory_budget_mib=None, **kw):
    base = dict(dataset="digits", noise="symmetric", noise_rate=0.5, epochs=2, batch_size=64,
                decay_start=1, progress=False)
    base.update(kw)
    return TrainConfig(execution=ExecutionConfig(eval_batch_size=eval_batch_size, precision=precision,
                                                 memory_budget_mib=memory_budget_mib), **base)


@pytest.fixture(scope="module")
def prep():
    return T.prepare(_cfg(), small_digits())


def _agree(a, b, exact=EXACT, rtol=1e-5):
    assert set(a) == set(b)
    for k in exact:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    for k in CLOSE:
        np.testing.assert_allclose(a[k], b[k], rtol=rtol, atol=1e-6, err_msg=k)


WORKER = textwrap.dedent("""
    import json, sys
    import numpy as np, jax
    sys.path.insert(0, {root!r})
    from tests.test_parallel import SCHEDS, SEEDS, _cfg, small_digits
    from s2e_jax import parallel, train as T
    assert jax.device_count() == 4, jax.devices()
    prep = T.prepare(_cfg(), small_digits())
    m, rep = parallel.run_trials(prep, SCHEDS, SEEDS)  # K = 6 on 4 devices: 2 per device, 2 padded
    data = parallel.shared_data(prep, parallel.trial_mesh())
    np.savez({out!r}, **m)
    print(json.dumps(dict(rep.to_dict(), data_devices=len(data.x_train.sharding.device_set),
                          x_dtype=str(data.x_train.dtype))))
""")


@pytest.mark.slow
def test_sharded_over_4_host_devices_equals_one_device(tmp_path, prep):
    out = str(tmp_path / "sharded.npz")
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=(os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4").strip())
    proc = subprocess.run([sys.executable, "-c", WORKER.format(root=ROOT, out=out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rep["devices"] == 4 and rep["per_device"] == 2 and rep["padded"] == 8 and rep["waves"] == 1
    assert rep["data_devices"] == 4 and rep["x_dtype"] == "uint8"
    sharded = dict(np.load(out))
    assert jax.device_count() == 1
    one, rep1 = parallel.run_trials(prep, SCHEDS, SEEDS)  # the same 6 trials, one device (8 per device)
    assert rep1.devices == 1 and rep1.per_device == 8
    assert sharded["test_acc"].shape == (6, 2, 2)  # [K, epochs, networks]: no padded trial
    _agree(sharded, one)


def test_padding_never_reaches_results(prep):
    k = len(SEEDS)  # 6, padded to 8 by repeating the last trial
    many, rep = parallel.run_trials(prep, SCHEDS, SEEDS)
    assert rep.padded == 8 and rep.trials == 6
    assert all(v.shape[0] == k for v in many.values())
    seq = T.train_trials(prep, SCHEDS, SEEDS, one_program=False)  # one after another
    _agree(many, seq, exact=("r", "lr", "kept_fraction"), rtol=2e-4)
    for key in ("test_acc", "label_precision"):
        np.testing.assert_allclose(many[key], seq[key], atol=1e-5)
    # trial i is trial i: permuting the trials permutes their results
    perm = [5, 0, 3, 1, 4, 2]
    permuted, _ = parallel.run_trials(prep, SCHEDS[perm], [SEEDS[i] for i in perm])
    np.testing.assert_allclose(permuted["train_loss"], many["train_loss"][perm], rtol=1e-5)


def test_train_trials_routes_one_program_through_the_mesh(prep):
    got = T.train_trials(prep, SCHEDS, SEEDS, one_program=True)
    ref, _ = parallel.run_trials(prep, SCHEDS, SEEDS)
    _agree(got, ref, rtol=0)


def test_waves_give_the_same_results_as_one_wave(prep, capsys):
    one, rep = parallel.run_trials(prep, SCHEDS, SEEDS)
    assert rep.waves == 1 and rep.per_device == 8 and rep.program_bytes > 0
    budget = 0.6 * rep.program_bytes / 2**20  # the 8-trial program does not fit, a 4-trial one does
    capsys.readouterr()
    waved, rep_w = parallel.run_trials(prep, SCHEDS, SEEDS, memory_budget_mib=budget)
    err = capsys.readouterr().err
    assert rep_w.waves == 2 and rep_w.per_device == 4 and rep_w.program_bytes <= rep_w.budget_bytes
    assert "waves" in err and "memory budget" in err
    _agree(waved, one)
    # the config's budget is used when none is given
    prep_b = dataclasses.replace(prep, config=prep.config.replace(
        execution=prep.config.execution.replace(memory_budget_mib=budget)))
    _, rep_c = parallel.run_trials(prep_b, SCHEDS, SEEDS)
    assert rep_c.waves == 2


def test_a_budget_too_small_for_one_trial_is_a_clear_error(prep):
    with pytest.raises(ConfigError, match=r"memory_budget_mib: one trial per device needs .*, the shared data "
                                           r"[\d.]+ MiB of it \(raise the budget, .* smaller model\)"):
        parallel.run_trials(prep, SCHEDS[:1], SEEDS[:1], memory_budget_mib=0.01)
    with pytest.raises(ConfigError, match="memory_budget_mib"):
        parallel.run_trials(prep, SCHEDS[:1], SEEDS[:1], memory_budget_mib=-1)
    with pytest.raises(ConfigError, match="memory_budget_mib"):
        _cfg(memory_budget_mib=0).validate()


def test_data_is_stored_once_not_per_trial(prep):
    """Growing the trials per device grows the program's inputs by the carries only: the shared data
    (uint8 images) is one argument, whatever the number of trials; device 0 reuses prepare's buffer."""
    mesh = parallel.trial_mesh()
    data = parallel.shared_data(prep, mesh)
    assert data.x_train.dtype == jnp.uint8
    assert data.x_train.addressable_data(0).unsafe_buffer_pointer() == prep.data.x_train.unsafe_buffer_pointer()
    progs = parallel._programs(prep.trainer, mesh)
    x_shape = jax.ShapeDtypeStruct((1,) + prep.data.x_train.shape[1:], jnp.float32)
    args = {}
    for c in (1, 2):
        carry = parallel._abstract_carry(prep.trainer, mesh, progs, c, x_shape, SCHEDS.shape[1])
        mem = progs["epoch"].lower(carry, data).compile().memory_analysis()
        args[c] = (mem.argument_size_in_bytes, parallel.tree_bytes(carry))
    one_carry = args[2][1] - args[1][1]
    grown = args[2][0] - args[1][0]
    # one more carry (plus buffer alignment), not one more copy of the data (>= 32 KiB of uint8 here)
    assert abs(grown - one_carry) <= 2048 and parallel.tree_bytes(prep.data.x_train) >= 32768
    assert args[1][0] >= parallel.tree_bytes(prep.data.x_train) + one_carry  # unused inputs are pruned


def test_bfloat16_compute_float32_masters_accuracy_within_tolerance():
    """bf16 compute on the MLP: params stay float32, the forward runs in bf16 (logits differ a
    little), and the final test accuracy after 8 epochs is within 3 points of float32 (same seeds)."""
    ds = data_lib.load_dataset("digits")
    accs = {}
    for p in ("float32", "bfloat16"):
        cfg = _cfg(epochs=8, decay_start=4, precision=p, eval_batch_size=1000)
        prep = T.prepare(cfg, ds)
        carry = T.init_carry(prep, 0)
        x = T.normalize(prep.data.x_train[:64], prep.data.mean, prep.data.std)
        logits = prep.trainer.forward(carry.params, carry.batch_stats, x, jax.random.PRNGKey(0), False)[0]
        assert logits.dtype == jnp.float32
        jaxpr = str(jax.make_jaxpr(lambda p_: prep.trainer.forward(p_, {}, x, jax.random.PRNGKey(0), False))(
            carry.params))
        assert ("dot_general" in jaxpr) and (("preferred_element_type=bfloat16" in jaxpr
                                              or "bf16[" in jaxpr) == (p == "bfloat16"))
        accs[p] = (logits, T.train(cfg, ds))
        params = accs[p][1].carry.params
        assert all(a.dtype == jnp.float32 for a in jax.tree_util.tree_leaves(params))
    l32, l16 = accs["float32"][0], accs["bfloat16"][0]
    rel = float(jnp.abs(l16 - l32).max() / jnp.abs(l32).max())
    assert 0 < rel < 0.05
    a32 = accs["float32"][1].summary["final_test_acc"]
    a16 = accs["bfloat16"][1].summary["final_test_acc"]
    assert a32 > 0.5 and abs(a16 - a32) <= 0.03, (a32, a16)


def test_only_process_0_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(jax, "process_index", lambda *a: 1)
    assert not parallel.is_main_process() and not runs.is_writer()
    out = tmp_path / "run"
    res = T.train(_cfg(epochs=1, out=str(out)), small_digits())
    assert res.summary["epochs"] == 1 and not out.exists()
    runs.append_line(str(tmp_path / "x.jsonl"), "{}")
    runs.atomic_write_text(str(tmp_path / "y.txt"), "y")
    assert os.listdir(tmp_path) == []
    monkeypatch.setattr(jax, "process_index", lambda *a: 0)
    runs.append_line(str(tmp_path / "x.jsonl"), "{}")
    assert os.listdir(tmp_path) == ["x.jsonl"]


def test_cli_flags(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(parallel, "initialize_distributed", lambda **kw: calls.append(kw))
    assert main(["train", "--epochs", "1", "--no-progress", "--precision", "fp8", "--distributed"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "precision" in err and calls == [{}]
    assert main(["train", "--epochs", "1", "--no-progress", "--memory-budget-mib", "0"]) == 2
    assert "memory_budget_mib" in capsys.readouterr().err
    out = tmp_path / "r"
    assert main(["train", "--epochs", "1", "--no-progress", "--precision", "bfloat16", "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["execution"]["precision"] == "bfloat16"
    assert json.loads((out / "execution.json").read_text())["precision"] == "bfloat16"


def test_keys_of_all_trials_at_once_equal_seed_keys():
    seeds = [0, 7, 2**31 - 2, 2**32 - 1, 2**32 + 5]  # the last one: the per-seed path
    for chosen in (seeds[:4], seeds):
        net, data = parallel._keys(chosen, 2)
        assert net.shape[:2] == (len(chosen), 2) and data.shape[0] == len(chosen)
        for i, s in enumerate(chosen):
            n_ref, d_ref = T.seed_keys(s, 2)
            np.testing.assert_array_equal(net[i], np.asarray(n_ref), err_msg=str(s))
            np.testing.assert_array_equal(data[i], np.asarray(d_ref), err_msg=str(s))


@pytest.mark.parametrize("pool_s2d", [False, True])
def test_bfloat16_reaches_every_convolution_of_model1(pool_s2d):
    """The bf16 interceptor casts the input of every Conv/Dense layer, ConvPool included: with the
    parameters in bf16 (as Trainer.forward casts them), no convolution of Model 1 sees float32."""
    import flax.linen as nn
    from s2e_jax import models

    model = models.get_model("model1", 10, pool_s2d=pool_s2d)
    x = jnp.ones((2, 32, 32, 3), jnp.float32)
    v = model.init(jax.random.PRNGKey(0), x)
    v16 = jax.tree_util.tree_map(lambda a: a.astype(jnp.bfloat16), v)

    def fwd(v_, x_):
        with nn.intercept_methods(trainer_lib._bf16_interceptor):
            return model.apply(v_, x_)

    convs_ = [ln for ln in str(jax.make_jaxpr(fwd)(v16, x)).splitlines() if "conv_general_dilated[" in ln]
    assert len(convs_) == 2 and all("f32[" not in ln and "bf16[" in ln for ln in convs_), convs_
    assert fwd(v16, x).dtype == jnp.bfloat16


def test_run_trials_refuses_zero_epochs(prep):
    with pytest.raises(ConfigError, match="epochs: must be >= 1, got 0"):
        parallel.run_trials(prep, SCHEDS[:1], SEEDS[:1], epochs=0)


def test_run_dir_on_a_file_or_under_one_is_one_clear_message(tmp_path):
    f = tmp_path / "f"
    f.write_text("mine")
    for make in (runs.RunDir.create, runs.RunDir.open):
        with pytest.raises(ConfigError, match="out: .*f is a file, not a directory .*nothing was overwritten"):
            make(str(f))
        with pytest.raises(ConfigError, match="out: cannot create .*f/sub: .*[Nn]ot a directory"):
            make(str(f / "sub"))
    assert f.read_text() == "mine"
    runs.RunDir.create(str(tmp_path / "a" / "b"))  # parents are made
    assert (tmp_path / "a" / "b").is_dir()
    (tmp_path / "a" / "b" / "x").write_text("")
    with pytest.raises(ConfigError, match="already exists and is not empty"):
        runs.RunDir.create(str(tmp_path / "a" / "b"))
