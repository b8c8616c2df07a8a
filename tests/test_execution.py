"""The execution plan: one function resolves every execution setting (s2e_jax/execution.py); the
configs keep how a run executes apart from what it computes."""
import dataclasses
import json

import pytest

from s2e_jax import execution
from s2e_jax.config import ConfigError, ExecutionConfig, TrainConfig, identity_dict

AUTO = ExecutionConfig()


def _plan(model, trials=None, backend="cpu", **kw):
    return execution.plan(ExecutionConfig(**kw), model, trials, backend)


def test_every_setting_is_resolved():
    for backend in ("cpu", "gpu", "tpu"):
        for model in ("mlp", "model1", "model2", "model3"):
            for trials in (None, "auto", "one_program", "sequential"):
                p = execution.plan(AUTO, model, trials, backend)
                assert "auto" not in p.to_dict().values(), (backend, model, trials)
                assert json.loads(json.dumps(p.to_dict())) == p.to_dict()


@pytest.mark.parametrize("backend, model, want", [
    ("cpu", "mlp", ("vmap", "scan", "xla", False, False)),
    ("cpu", "model1", ("fused", "loop", "xla", True, False)),     # jax-ml/jax#12868: no conv net in a scan
    ("cpu", "model2", ("fused", "loop", "xla", False, True)),     # materialize: XLA's CPU fusion
    ("gpu", "model1", ("vmap", "scan", "slices", True, False)),   # H100: slices + s2d
    ("gpu", "model3", ("vmap", "scan", "xla", False, False)),
])
def test_one_training_defaults(backend, model, want):
    p = _plan(model, backend=backend)
    assert (p.net_form, p.driver, p.conv_impl, p.pool_s2d, p.materialize) == want
    assert p.one_program is False and p.precision == "float32"


def test_k_trials_run_as_one_program_on_accelerators_and_in_sequence_on_a_cpu():
    assert not _plan("mlp", "auto").one_program and _plan("mlp", "auto", "gpu").one_program
    assert _plan("mlp", "one_program").one_program and not _plan("mlp", "sequential", "gpu").one_program
    one = _plan("model1", "one_program")  # a vmap of the scan epoch: slices and s2d on every backend
    assert (one.net_form, one.driver, one.conv_impl, one.pool_s2d) == ("vmap", "scan", "slices", True)
    seq = _plan("model1", "sequential")
    assert (seq.net_form, seq.driver, seq.conv_impl) == ("fused", "loop", "xla")


def test_named_settings_win_and_auto_follows_them():
    assert _plan("model1", conv_impl="slices").conv_impl == "slices"
    assert _plan("model1", driver="scan", net_form="vmap").conv_impl == "slices"  # Model 1 vmapped in a scan
    assert _plan("model1", driver="scan", net_form="fused").conv_impl == "xla"
    assert _plan("model1", driver="scan", net_form="fused").pool_s2d is False    # CPU scan with XLA's convs
    assert _plan("model1", pool_s2d="off").pool_s2d is False and _plan("mlp", pool_s2d="on").pool_s2d is False
    assert _plan("model1", "one_program", driver="loop").driver == "scan"  # one program: the scan epoch
    p = _plan("mlp", precision="bfloat16", eval_batch_size=7, memory_budget_mib=12.5)
    assert (p.precision, p.eval_batch_size, p.memory_budget_mib) == ("bfloat16", 7, 12.5)
    with pytest.raises(ConfigError, match=r"trials: unknown value 'many'"):
        execution.plan(AUTO, "mlp", "many")
    with pytest.raises(ConfigError, match=r"net_form: unknown value 'unroll' \(expected one of auto, vmap, fused\)"):
        execution.plan(ExecutionConfig(net_form="unroll"), "mlp")


def test_execution_is_one_optional_group_of_the_config():
    cfg = TrainConfig(execution=ExecutionConfig(driver="loop"))
    d = cfg.to_dict()
    assert d["execution"]["driver"] == "loop" and "driver" not in d
    assert TrainConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert TrainConfig.from_dict({k: v for k, v in d.items() if k != "execution"}).execution == AUTO
    # a config.json with the settings flat (older run directories) still loads
    flat = dict({k: v for k, v in d.items() if k != "execution"}, driver="loop", precision="bfloat16",
                stem_patches="off")
    assert TrainConfig.from_dict(flat).execution == ExecutionConfig(driver="loop", precision="bfloat16")
    with pytest.raises(ConfigError, match="stem_patches: unknown setting 'on'"):
        TrainConfig.from_dict(dict(flat, stem_patches="on"))
    with pytest.raises(ConfigError, match=r"config: unknown field\(s\) drivr"):
        TrainConfig.from_dict(dict(d, execution=dict(d["execution"], drivr="x")))
    with pytest.raises(ConfigError, match="execution: must be an ExecutionConfig"):
        TrainConfig(execution={"driver": "loop"}).validate()
    with pytest.raises(ConfigError, match="eval_batch_size: must be >= 1"):
        TrainConfig(execution=ExecutionConfig(eval_batch_size=0)).validate()


def test_identity_is_what_is_computed():
    """How a run executes is not part of a resume identity, but bfloat16 is (it changes the numbers)."""
    base = TrainConfig()
    other = base.replace(execution=ExecutionConfig(net_form="vmap", driver="loop", conv_impl="slices",
                                                   pool_s2d="off", eval_batch_size=3, memory_budget_mib=1.0),
                         out="x", progress=False, checkpoint_every=0)
    assert identity_dict(other) == identity_dict(base) and "execution" not in identity_dict(base)
    bf16 = base.replace(execution=ExecutionConfig(precision="bfloat16"))
    assert identity_dict(bf16)["precision"] == "bfloat16" and "precision" not in identity_dict(base)
    assert set(identity_dict(base)) == {f.name for f in dataclasses.fields(TrainConfig)} - {
        "execution", "out", "progress", "checkpoint_every", "input_norm", "tau_warmup_epochs", "tau_estimator"}
