"""ASNG (weight sharing, Appendix B.2): natural gradient, utilities, adaptive step size, the run, the CLI."""
import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2e_jax import asng, relaxation, schedules
from s2e_jax.cli import main
from s2e_jax.config import ConfigError, ExecutionConfig, TrainConfig

S2E = schedules.get_space("s2e")
COT = schedules.get_space("coteaching")


def _random_theta(space, seed):
    return jnp.asarray(np.random.default_rng(seed).uniform(0.7, 5.0, relaxation.n_params(space)), jnp.float32)


# ---------------------------------------------------------------- natural gradient = F⁻¹ g
@pytest.mark.slow
@pytest.mark.parametrize("space", [COT, S2E], ids=["coteaching", "s2e"])
def test_natural_gradient_is_inverse_exact_fisher_times_gradient(space):
    S, B = relaxation.sizes(space)
    theta = _random_theta(space, 1)
    xs = relaxation.sample(jax.random.PRNGKey(3), theta, space, 5)
    u = jnp.asarray([1.0, -0.5, 0.25, 0.0, -0.75], jnp.float32)
    ng, sl = jax.jit(asng.natural_gradient, static_argnums=(3, 4))(theta, xs, u, S, B)
    scores = np.asarray(relaxation.score_batch(theta, xs, space), np.float64)
    g = (np.asarray(u, np.float64)[:, None] * scores).mean(0)
    F = np.asarray(relaxation.fisher(theta, space), np.float64)
    expected = np.linalg.solve(F, g)
    np.testing.assert_allclose(np.asarray(ng), expected, rtol=2e-3, atol=1e-5 * np.abs(expected).max())
    assert not np.allclose(expected, g, rtol=0.1)  # F is not the identity here: the check can fail
    # ‖F^{1/2} G̃‖ is the Fisher norm sqrt(G̃ᵀ F G̃) = sqrt(gᵀ F⁻¹ g)
    np.testing.assert_allclose(np.sum(np.asarray(sl, np.float64) ** 2), g @ expected, rtol=2e-3)


# ---------------------------------------------------------------- ranking-based utilities
def _reference_utilities(f):
    """ASNG's utility from its definition: ±1/μ for the μ = ⌈λ/4⌉ best/worst, ties share the mean."""
    f = np.where(np.isnan(f), np.inf, np.asarray(f, np.float64))
    lam = len(f)
    mu = math.ceil(lam / 4)
    base = np.zeros(lam)
    base[:mu] += 1.0 / mu
    base[lam - mu:] -= 1.0 / mu
    order = np.sort(f)
    return np.array([base[(order < v).sum():(order <= v).sum()].mean() for v in f])


def test_utilities_plus_minus_one_for_two_samples_ties_and_nan():
    np.testing.assert_array_equal(np.asarray(asng.utilities(jnp.array([0.3, 0.1]))), [-1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(asng.utilities(jnp.array([0.1, 0.3]))), [1.0, -1.0])
    np.testing.assert_array_equal(np.asarray(asng.utilities(jnp.array([0.2, 0.2]))), [0.0, 0.0])
    np.testing.assert_array_equal(np.asarray(asng.utilities(jnp.array([jnp.nan, 5.0]))), [-1.0, 1.0])
    np.testing.assert_array_equal(np.asarray(asng.utilities(jnp.array([4.0, 1.0, 3.0, 2.0]))), [-1, 1, 0, 0])
    np.testing.assert_allclose(np.asarray(asng.utilities(jnp.array([1.0, 1.0, 2.0, 3.0]))), [0.5, 0.5, 0, -1])
    rng = np.random.default_rng(0)
    util = jax.jit(asng.utilities)
    for lam in (2, 3, 5, 8, 9):
        for _ in range(20):
            f = rng.integers(0, 4, lam).astype(np.float32)  # many ties
            u = np.asarray(util(jnp.asarray(f)))
            np.testing.assert_allclose(u, _reference_utilities(f), atol=1e-6, err_msg=str(f))
            assert abs(float(u.sum())) < 1e-5


# ---------------------------------------------------------------- one update, by the formulas
def test_one_update_follows_asngs_formulas():
    space = S2E
    S, B = relaxation.sizes(space)
    D = relaxation.n_params(space)
    theta = _random_theta(space, 2) + 1.0
    rng = np.random.default_rng(4)
    s0 = rng.normal(size=D) * 0.3
    st = asng.AsngTheta(theta, jnp.asarray(s0, jnp.float32), jnp.float32(0.4), jnp.float32(0.8),
                        jnp.int32(5), jnp.int32(1))
    xs = relaxation.sample(jax.random.PRNGKey(9), theta, space, 2)
    fs = jnp.asarray([0.7, 0.2])                               # sample 1 is the better one
    alpha, delta0 = 1.5, 1.0
    new = asng.asng_update(st, xs, fs, S, B, alpha, delta0, None, 1.0)

    th = np.asarray(theta, np.float64)
    sc = np.asarray(relaxation.score_batch(theta, xs, space), np.float64)
    g = 0.5 * (-1.0 * sc[0] + 1.0 * sc[1])
    F = np.asarray(relaxation.fisher(theta, space), np.float64)
    G = np.linalg.solve(F, g)
    lam_, V = np.linalg.eigh(F)
    FG = V @ (np.sqrt(lam_) * (V.T @ G))                       # F^{1/2} G̃
    norm = np.sqrt(G @ F @ G)
    delta = delta0 / 0.8
    beta = delta / np.sqrt(D)
    theta_ref = np.maximum(th + delta / norm * G, 1.0)
    s_ref = (1 - beta) * s0 + np.sqrt(beta * (2 - beta)) * FG / norm
    gamma_ref = (1 - beta) ** 2 * 0.4 + beta * (2 - beta)
    Delta_ref = 0.8 * np.exp(beta * (gamma_ref - s_ref @ s_ref / alpha))
    np.testing.assert_allclose(np.asarray(new.theta), theta_ref, rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(np.asarray(new.s), s_ref, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(float(new.gamma), gamma_ref, rtol=1e-5)
    np.testing.assert_allclose(float(new.Delta), Delta_ref, rtol=1e-3)
    assert int(new.updates) == 6 and int(new.skipped) == 1
    # the step has Fisher length δ and moves toward the better sample: log p rises there
    step = np.asarray(new.theta, np.float64) - th
    assert float(relaxation.log_prob(new.theta, xs[1], space)) > float(relaxation.log_prob(theta, xs[1], space))
    assert np.sqrt(step @ F @ step) <= delta * 1.05

    # all values tied: no information, nothing changes but the skip counter
    tied = asng.asng_update(st, xs, jnp.asarray([0.5, 0.5]), S, B, alpha, delta0, None, 1.0)
    for a, b in zip(tied[:4], st[:4]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert int(tied.skipped) == 2 and int(tied.updates) == 5
    # Δ_max bounds Δ (hence δ from below)
    capped = asng.asng_update(st._replace(Delta=jnp.float32(3.0), gamma=jnp.float32(0.0)), xs, fs, S, B,
                              alpha, delta0, 3.0, 1.0)
    assert float(capped.Delta) <= 3.0 + 1e-6


# ---------------------------------------------------------------- adaptive step size on a synthetic objective
X_STAR = jnp.asarray(np.concatenate([[0.7, 0.1, 0.1, 0.1], np.linspace(0.85, 0.15, 16)]), jnp.float32)


def _synthetic_run(kind, steps=400):
    S, B = relaxation.sizes(S2E)

    @jax.jit
    def go(key):
        def body(th, i):
            k = jax.random.fold_in(key, i)
            xs = asng.sample_xs(k, th.theta, 2, S, B)
            if kind == "quadratic":          # the better region is known: around X_STAR
                fs = jnp.sum((xs - X_STAR) ** 2, axis=1)
            else:                            # f independent of x: pure noise
                fs = jax.random.uniform(jax.random.fold_in(k, 7), (2,))
            th = asng.asng_update(th, xs, fs, S, B, 1.5, 1.0, None, 1.0)
            return th, (jnp.sum((relaxation.mean(th.theta, S2E) - X_STAR) ** 2), 1.0 / th.Delta)

        return jax.lax.scan(body, asng.init_theta_state(S2E), jnp.arange(steps))

    th, (dist, delta) = go(jax.random.PRNGKey(0))
    return th, np.asarray(dist), np.asarray(delta)


@pytest.mark.slow
def test_adaptive_step_size_moves_theta_toward_the_better_region_and_shrinks_under_noise():
    d0 = float(jnp.sum((relaxation.mean(asng.init_theta_state(S2E).theta, S2E) - X_STAR) ** 2))
    th_q, dist_q, delta_q = _synthetic_run("quadratic")
    th_n, dist_n, delta_n = _synthetic_run("noise")
    assert dist_q[-1] < 0.05 * d0                         # θ's mean reached the better region
    assert dist_n[-1] > 0.5 * d0                          # noise does not pull θ anywhere in particular
    # δ shrinks steadily when the normalized gradients look like noise (‖s‖² < αγ) ...
    assert delta_n[-1] < 0.1 and delta_n[-1] < 0.3 * delta_n[50] and np.mean(np.diff(delta_n) < 0) > 0.8
    # ... and stays several times larger under a consistent signal
    assert delta_q[-100:].mean() > 2 * delta_n[-100:].mean()
    assert int(th_q.updates) == 400 and int(th_q.skipped) == 0


# ---------------------------------------------------------------- config validation
@pytest.mark.parametrize("field,value", [
    ("lam", 1), ("lam", 2.5), ("alpha", 0.0), ("alpha", float("nan")), ("delta_init", -1.0),
    ("Delta_max", 0.5), ("theta_min", 0.0), ("val_batch_size", 0), ("objective", "acc"),
    ("retrain", "yes"), ("space", "nope"), ("out", ""),
])
def test_bad_config_values_raise_config_error_naming_the_field(field, value):
    cfg = asng.AsngConfig(TrainConfig(epochs=2), **{field: value})
    with pytest.raises(ConfigError, match=f"^{field}:"):
        cfg.validate()


def test_bad_training_config_is_refused():
    with pytest.raises(ConfigError, match="^method:"):
        asng.AsngConfig(TrainConfig(method="standard")).validate()
    with pytest.raises(ConfigError, match="^epochs:"):
        asng.AsngConfig(TrainConfig(epochs=0)).validate()
    with pytest.raises(ConfigError, match="^train:"):
        asng.AsngConfig({"epochs": 2}).validate()


# ---------------------------------------------------------------- end to end (CLI, digits)
@pytest.mark.slow
def test_cli_asng_end_to_end_and_train_reuses_its_schedule(tmp_path, capsys):
    out = tmp_path / "asng"
    args = ["asng", "--dataset", "digits", "--noise", "pair", "--noise-rate", "0.45", "--epochs", "3",
            "--batch-size", "64", "--decay-start", "1", "--seed", "0", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    for name in ("asng_config.json", "execution.json", "metrics.csv", "theta.jsonl", "best_schedule.json",
                 "schedule.png", "result.json", "retrain/summary.json", "retrain/metrics.csv", "retrain/execution.json"):
        assert (out / name).stat().st_size > 0, name
    assert json.loads((out / "result.json").read_text()) == result
    rows = (out / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 4 and "delta" in rows[0] and "r_theta_mean" in rows[0] and "test_acc_net2" in rows[0]
    thetas = [json.loads(line) for line in (out / "theta.jsonl").read_text().splitlines()]
    assert [t["epoch"] for t in thetas] == [0, 1, 2]
    steps = 3 * (1078 // 64)
    assert result["theta_updates"] + result["theta_skipped"] == steps and result["theta_updates"] > 0
    assert thetas[-1]["theta"] == result["theta"] and not np.allclose(result["theta"], 1.0)
    np.testing.assert_allclose(result["x"], relaxation.mean(np.asarray(result["theta"]), S2E), atol=1e-6)
    assert len(result["curve"]) == 3 and result["curve"][0] == pytest.approx(1.0, abs=1e-6)
    for part in ("shared", "retrain"):
        assert 0.0 < result[part]["final_test_acc"] <= 1.0 and result[part]["epochs"] == 3
    assert result["test_acc"] == result["retrain"]["final_test_acc"]
    sched = json.loads((out / "best_schedule.json").read_text())
    assert sched["space"] == "s2e" and sched["x"] == pytest.approx(result["x"]) and sched["algo"] == "asng"

    # the final schedule trains through `train --schedule`, and is the retrain's schedule
    run2 = tmp_path / "train"
    assert main(["train", "--dataset", "digits", "--noise", "pair", "--noise-rate", "0.45", "--epochs", "3",
                 "--batch-size", "64", "--decay-start", "1", "--seed", "0", "--no-progress",
                 "--schedule", str(out / "best_schedule.json"), "--out", str(run2)]) == 0
    capsys.readouterr()
    r_train = [float(line.split(",")[header_index(run2, "r")]) for line in
               (run2 / "metrics.csv").read_text().strip().splitlines()[1:]]
    np.testing.assert_allclose(r_train, result["curve"], atol=1e-6)
    summary = json.loads((run2 / "summary.json").read_text())
    assert summary["final_test_acc"] == pytest.approx(result["retrain"]["final_test_acc"])

    # the same command again returns the finished run (nothing rerun, nothing rewritten) ...
    before = (out / "result.json").stat().st_mtime_ns
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out) == result and (out / "result.json").stat().st_mtime_ns == before
    # ... another run into the same directory, or a user's directory, is refused
    assert main(args[:-1] + [str(out)] + ["--lam", "3"]) == 2
    assert "out:" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(args[:-1] + [str(mine)]) == 2
    assert "out:" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep"
    assert sorted(os.listdir(mine)) == ["notes.txt"]
    # a bad value: one clear message, status 2
    assert main(args[:-1] + [str(tmp_path / "x"), "--lam", "1"]) == 2
    assert capsys.readouterr().err.startswith("error: lam:")


def header_index(run_dir, name):
    return (run_dir / "metrics.csv").read_text().splitlines()[0].split(",").index(name)


@pytest.mark.slow
def test_loop_driver_equals_scan_driver():
    from s2e_jax import data as data_lib

    ds = data_lib.load_dataset("digits")
    small = ds.__class__(ds.name, ds.x_train[:256], ds.y_train[:256], ds.y_train_clean[:256], ds.x_val[:128],
                         ds.y_val[:128], ds.x_test[:128], ds.y_test[:128], ds.num_classes)
    res = {}
    for driver in ("scan", "loop"):
        t = TrainConfig(dataset="digits", noise="pair", noise_rate=0.45, epochs=2, batch_size=64, decay_start=1,
                        progress=False, seed=3,
                        execution=ExecutionConfig(driver=driver, net_form="vmap"))
        res[driver] = asng.run(asng.AsngConfig(t, retrain=False), small)
    a, b = res["scan"], res["loop"]
    assert a["theta_updates"] == b["theta_updates"] > 0 and a["retrain"] is None
    np.testing.assert_allclose(a["theta"], b["theta"], rtol=1e-5)
    assert a["shared"]["final_test_acc"] == pytest.approx(b["shared"]["final_test_acc"], abs=1e-6)


def test_an_asng_run_that_stopped_before_training_does_not_block_the_corrected_rerun(tmp_path):
    out = tmp_path / "a"
    out.mkdir()
    (out / "asng_config.json").write_text(json.dumps(dict(identity={"other": 1}, config={})))
    cfg = asng.AsngConfig(TrainConfig(dataset="digits", epochs=2, progress=False), out=str(out))
    root, done = asng._open_out(cfg)
    assert done is None and os.listdir(out) == []  # only its own config, removed; rewritten by run()
    (out / "asng_config.json").write_text(json.dumps(dict(identity={"other": 1}, config={})))
    (out / "metrics.csv").write_text("epoch\n0\n")
    with pytest.raises(ConfigError, match="does not hold this ASNG run"):
        asng._open_out(cfg)
    assert (out / "metrics.csv").read_text() == "epoch\n0\n"
