"""tau "auto": the noise-rate estimators (s2e_jax/noise_rate.py) and their use by prepare/train/CLI."""
import json

import numpy as np
import pytest

from s2e_jax import cli
from s2e_jax import data as data_lib
from s2e_jax import noise as noise_lib
from s2e_jax import noise_rate as NR
from s2e_jax import train as T
from s2e_jax.config import ConfigError, TrainConfig


@pytest.fixture(scope="module")
def digits():
    return data_lib.load_dataset("digits")


def _cfg(**kw):
    base = dict(dataset="digits", noise="symmetric", noise_rate=0.3, epochs=2, batch_size=64, decay_start=1,
                progress=False, tau_warmup_epochs=2)
    base.update(kw)
    return TrainConfig(**base)


# ------------------------------------------------------------------ pure estimators
def test_gmm_recovers_a_known_two_component_mixture():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.2, 0.05, 7000), rng.normal(1.5, 0.2, 3000)])
    rng.shuffle(x)
    w, mu, var = NR.fit_gmm_1d(x)
    np.testing.assert_allclose(w, [0.7, 0.3], atol=0.01)
    np.testing.assert_allclose(mu, [0.2, 1.5], atol=0.02)
    np.testing.assert_allclose(np.sqrt(var), [0.05, 0.2], atol=0.02)
    # tau-hat: the high-loss component's mass after DivideMix's min-max normalization
    assert NR.gmm_noise_rate(x) == pytest.approx(0.3, abs=0.01)
    assert NR.gmm_noise_rate(x * 7.0 + 3.0) == pytest.approx(NR.gmm_noise_rate(x), abs=1e-9)  # scale-free
    post = NR.gmm_posterior_noisy(np.array([0.0, 0.2, 1.5, 2.0]), w, mu, var)
    assert post[0] < 0.01 and post[1] < 0.01 and post[2] > 0.99 and post[3] > 0.99


def test_gmm_of_equal_losses_is_zero_and_bad_losses_are_refused():
    assert NR.gmm_noise_rate(np.full(50, 0.7)) == 0.0
    with pytest.raises(ConfigError, match="tau: cannot fit"):
        NR.fit_gmm_1d(np.array([0.1, np.nan, 0.3]))


@pytest.mark.parametrize("kind,rate", [("symmetric", 0.3), ("pair", 0.45), ("symmetric", 0.0)])
def test_anchor_estimate_of_a_calibrated_posterior_is_the_noise_rate(kind, rate):
    """Posteriors p(noisy | x) = T[clean class] (calibrated) for confident examples, flatter ones for the
    rest: 1 - sum_i pi_i T_ii is the noise rate."""
    c, per = 10, 200
    t = noise_lib.transition_matrix(kind, rate, c) if rate > 0 else np.eye(c)
    rng = np.random.default_rng(1)
    clean = np.repeat(np.arange(c), per)
    flat = np.full(c, 1.0 / c)
    mix = rng.uniform(0.0, 0.1, len(clean))[:, None]
    probs = mix * flat + (1 - mix) * t[clean]  # the most confident of class i: T[i] (mix ~ 0)
    probs[::per] = t[clean[::per]]
    noisy = np.array([rng.choice(c, p=t[i]) for i in clean])
    tau = NR.anchor_noise_rate(probs, noisy, c, estimator="argmax")
    prior = np.bincount(noisy, minlength=c) / len(noisy)
    assert tau == pytest.approx(1.0 - (prior * np.diag(t)).sum(), abs=1e-9)
    assert tau == pytest.approx(rate, abs=0.02)
    assert NR.estimate_from_probs(probs, noisy, c, "anchor") == pytest.approx(rate, abs=0.05)  # percentile97


def test_estimate_is_clipped_and_estimator_names_are_checked():
    probs = np.full((20, 2), 0.5)
    labels = np.arange(20) % 2
    assert 0.0 <= NR.estimate_from_probs(probs, labels, 2, "anchor") <= 0.99
    with pytest.raises(ConfigError, match="tau_estimator: unknown value 'mode'"):
        NR.estimate_from_probs(probs, labels, 2, "mode")


def test_per_example_losses_are_the_cross_entropy_of_the_noisy_label():
    probs = np.array([[0.9, 0.1], [0.25, 0.75]])
    np.testing.assert_allclose(NR.per_example_losses(probs, [0, 0]), [-np.log(0.9), -np.log(0.25)])


def test_warmup_epochs_auto_follows_the_steps_per_epoch():
    cfg = TrainConfig(tau_warmup_epochs="auto", batch_size=128)
    steps = 1078 // 128
    assert NR.warmup_epochs(cfg, 1078) == -(-NR.TAU_WARMUP_STEPS // steps)
    assert NR.warmup_epochs(cfg, 60000) == 1
    assert NR.warmup_epochs(cfg, 10) == NR.TAU_WARMUP_STEPS  # fewer examples than a batch: 1 step an epoch
    assert NR.warmup_epochs(cfg.replace(tau_warmup_epochs=7), 60000) == 7


# ------------------------------------------------------------------ config and CLI
def test_config_accepts_auto_and_checks_the_new_fields():
    TrainConfig(tau="auto").validate()
    TrainConfig(tau=0.2, tau_warmup_epochs=3, tau_estimator="gmm_loss").validate()
    for kw, msg in [(dict(tau="automatic"), 'tau: must be a number in \\[0, 1\\) or "auto"'),
                    (dict(tau=1.0), "tau: must be < 1.0"),
                    (dict(tau_warmup_epochs=0), "tau_warmup_epochs: must be >= 1"),
                    (dict(tau_warmup_epochs="many"), "tau_warmup_epochs: must be an integer"),
                    (dict(tau_warmup_epochs=2.5), "tau_warmup_epochs: must be an integer"),
                    (dict(tau_estimator="median"), "tau_estimator: unknown value 'median'")]:
        with pytest.raises(ConfigError, match=msg):
            TrainConfig(**kw).validate()


def test_cli_parses_tau_auto_and_numbers():
    parser = cli.build_parser()
    cfg = cli._config_from(parser.parse_args(["train", "--tau", "auto", "--tau-warmup-epochs", "4",
                                              "--tau-estimator", "gmm_loss"]))
    assert (cfg.tau, cfg.tau_warmup_epochs, cfg.tau_estimator) == ("auto", 4, "gmm_loss")
    cfg = cli._config_from(parser.parse_args(["train", "--tau", "0.25"]))
    assert cfg.tau == 0.25 and cfg.tau_warmup_epochs == "auto" and cfg.tau_estimator == "anchor"
    with pytest.raises(ConfigError, match="tau: must be a number"):
        cli._config_from(parser.parse_args(["train", "--tau", "half"])).validate()


def test_schedule_of_refuses_an_unresolved_auto():
    with pytest.raises(ConfigError, match='tau: "auto" is estimated from the data'):
        T.schedule_of(TrainConfig(tau="auto"))


# ------------------------------------------------------------------ on data
def test_estimate_on_symmetric_noise_of_known_rate_is_close_and_deterministic(digits):
    cfg = _cfg(noise="symmetric", noise_rate=0.3, tau_warmup_epochs="auto", batch_size=128, seed=0)
    noisy, is_clean = data_lib.apply_noise(digits, "symmetric", 0.3, seed=0)
    tau, info = T.estimate_tau(cfg, noisy)
    assert abs(tau - (1.0 - is_clean.mean())) <= 0.05
    assert info["tau_estimated"] == tau and info["tau_method"] == "anchor (15 warm-up epochs)"
    assert T.estimate_tau(cfg, noisy)[0] == tau  # deterministic given the seed


def test_coteaching_with_tau_auto_records_the_estimate(digits, tmp_path):
    out = tmp_path / "run"
    res = T.train(_cfg(tau="auto", out=str(out)), dataset=digits)
    s = res.summary
    assert 0.0 <= s["tau_estimated"] < 1.0 and s["tau_method"] == "anchor (2 warm-up epochs)"
    assert float(res.prepared.sched[0]) == pytest.approx(s["tau_estimated"])  # eq. (1) runs with tau-hat
    saved_cfg = json.loads((out / "config.json").read_text())
    saved = json.loads((out / "summary.json").read_text())
    assert saved_cfg["tau"] == "auto" and saved_cfg["tau_estimated"] == s["tau_estimated"]
    assert saved["tau_estimated"] == s["tau_estimated"] and saved["tau_method"] == s["tau_method"]


def test_no_noise_rate_known_means_estimate_instead_of_error(digits, tmp_path):
    prep = T.prepare(_cfg(noise="none", tau_warmup_epochs="auto", batch_size=128), digits)
    assert prep.noise_info["tau_estimated"] <= 0.05  # clean labels
    assert float(prep.sched[0]) == pytest.approx(prep.noise_info["tau_estimated"])
    labels = tmp_path / "labels.npy"
    noisy, _ = data_lib.apply_noise(digits, "pair", 0.3, seed=3)
    np.save(labels, noisy.y_train)
    prep = T.prepare(_cfg(label_file=str(labels)), digits)
    assert "tau_estimated" in prep.noise_info
    assert prep.noise_info["actual_noise_rate"] == pytest.approx(1.0 - (noisy.y_train == digits.y_train).mean())


@pytest.mark.parametrize("method", ["coteaching_plus", "mentornet"])
def test_every_eq1_method_estimates_tau_even_with_a_given_noise_rate(digits, method):
    prep = T.prepare(_cfg(method=method, tau="auto", noise_rate=0.45), digits)
    assert float(prep.sched[0]) == pytest.approx(prep.noise_info["tau_estimated"])
    assert float(prep.sched[0]) != pytest.approx(0.45)


def test_auto_is_not_estimated_where_eq1_is_not_used(digits):
    from s2e_jax import schedules

    for cfg, rate in [(_cfg(method="standard", tau="auto"), None), (_cfg(tau="auto"), schedules.constant_rate)]:
        prep = T.prepare(cfg, digits, rate=rate)
        assert "tau_estimated" not in prep.noise_info
