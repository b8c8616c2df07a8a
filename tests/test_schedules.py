import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from s2e_jax import schedules
from s2e_jax.config import ConfigError


@pytest.mark.parametrize("name", ["s2e", "s2e_paper", "coteaching", "single1", "single2", "single3", "single4", "rbf", "mlp"])
def test_every_space_stays_in_range_with_R0_equal_1(name):
    space = schedules.get_space(name)
    rng = np.random.default_rng(0)
    T = 200
    for _ in range(50):
        simplex = rng.dirichlet(np.ones(space.n_simplex)) if space.n_simplex else np.zeros(0)
        x = np.concatenate([simplex, rng.uniform(size=space.n_box)]).astype(np.float32)
        curve = space.curve(x, T)
        assert curve.shape == (T,)
        assert np.all(np.isfinite(curve))
        assert curve.min() >= schedules.R_MIN - 1e-7 and curve.max() <= 1.0 + 1e-7
        assert curve[0] == pytest.approx(1.0)



@pytest.mark.parametrize("name", ["s2e", "coteaching", "rbf"])
def test_curves_of_a_batch_are_each_points_curve_at_the_given_epochs(name):
    space = schedules.get_space(name)
    rng = np.random.default_rng(1)
    xs = rng.uniform(size=(5, space.dim)).astype(np.float32)
    if space.n_simplex:
        xs[:, :space.n_simplex] = rng.dirichlet(np.ones(space.n_simplex), 5)
    T = 40
    whole = np.asarray(jax.jit(lambda v: space.curves(v, T))(jnp.asarray(xs)))
    assert whole.shape == (5, T)
    np.testing.assert_allclose(whole, np.stack([space.curve(x, T) for x in xs]), rtol=1e-6, atol=1e-7)
    ts = jnp.array([0.0, 3.0, 39.0])
    np.testing.assert_allclose(space.curves(jnp.asarray(xs), T, ts), whole[:, [0, 3, 39]], rtol=1e-6, atol=1e-7)

def test_eq1_coteaching():
    t = jnp.arange(20.0)
    r = jax.vmap(lambda s: schedules.coteaching_rate(s, jnp.array([0.5, 10.0, 1.0])))(t)
    np.testing.assert_allclose(r, 1 - 0.5 * np.minimum(np.arange(20) / 10, 1), rtol=1e-6)


def test_table1_basis_functions():
    t, T = 7.0, 50.0
    a1, a2, a3, a4 = 0.7, 0.3, 0.2, 1.5
    a = jnp.array([a1, a2, a3, a4])
    expect = [np.exp(-a2 * t ** a1) + a3 * (t / T) ** a4,
              np.exp(-a2 * t ** a1) + a3 * np.log(1 + t ** a4) / np.log(1 + T ** a4),
              (1 + a2 * t) ** -a1 + a3 * (t / T) ** a4,
              (1 + a2 * t) ** -a1 + a3 * np.log(1 + t ** a4) / np.log(1 + T ** a4)]
    for i in range(4):
        assert float(schedules.basis(i, t, a, T)) == pytest.approx(expect[i], rel=1e-5)


def test_eq4_is_the_convex_mix():
    space = schedules.get_space("s2e")
    x = np.concatenate([[0.1, 0.2, 0.3, 0.4], np.full(16, 0.5)]).astype(np.float32)
    params = space.decode(jnp.asarray(x), 100)
    a = np.asarray(params[4:]).reshape(4, 4)
    t = 30.0
    mix = sum(x[i] * float(schedules.basis(i, t, a[i], 100)) for i in range(4))
    assert float(space.rate(t, params, 100)) == pytest.approx(np.clip(mix, 0.01, 1), rel=1e-5)
    # beta in [0, 1] maps onto the default ranges of a1..a4
    np.testing.assert_allclose(a[0], [0.5, 0.25, 0.25, 1.0], rtol=1e-6)


def test_schedule_file_round_trip(tmp_path):
    space = schedules.get_space("s2e")
    x = np.concatenate([[0.25] * 4, np.linspace(0, 1, 16)])
    schedules.save_schedule_file(str(tmp_path / "s.json"), space, x, 30)
    sp, x2 = schedules.load_schedule_file(str(tmp_path / "s.json"))
    assert sp.name == "s2e"
    np.testing.assert_allclose(x2, x, rtol=1e-6)


def test_bad_schedule_file(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{"space": "s2e", "x": [1, 2]}')
    with pytest.raises(ConfigError, match="schedule"):
        schedules.load_schedule_file(str(p))
    with pytest.raises(ConfigError, match="space"):
        schedules.get_space("nope")


@pytest.mark.parametrize("x, match", [([0.5, 0.5, 0.5, -0.5] + [0.5] * 16, "weights α"),   # sums to 1
                                      ([0.4, 0.2, 0.2, 0.1] + [0.5] * 16, "weights α"),    # sums to 0.9
                                      ([0.25] * 4 + [0.5] * 15 + [1.5], r"\[0, 1\]")])
def test_schedule_file_outside_the_domain_is_refused(tmp_path, x, match):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"space": "s2e", "x": x, "epochs": 10}))
    with pytest.raises(ConfigError, match=match):
        schedules.load_schedule_file(str(p))


def test_schedule_file_with_a_bad_epochs_field_is_refused(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps({"space": "s2e", "x": [0.25] * 4 + [0.5] * 16, "epochs": "ten"}))
    with pytest.raises(ConfigError, match="'epochs' must be a positive integer"):
        schedules.load_schedule_file(str(p), 10)


def test_schedule_file_for_other_epochs_warns(tmp_path):
    space = schedules.get_space("s2e")
    x = np.concatenate([[0.25] * 4, np.full(16, 0.5)])
    schedules.save_schedule_file(str(tmp_path / "s.json"), space, x, 30)
    with pytest.warns(UserWarning, match="searched for 30 epochs and is used for 200"):
        schedules.load_schedule_file(str(tmp_path / "s.json"), 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        schedules.load_schedule_file(str(tmp_path / "s.json"), 30)


def test_time_scaled_space_is_the_same_schedule_on_a_faster_clock():
    base, fast = schedules.get_space("s2e"), schedules.get_space("s2e@20")
    x = np.linspace(0.05, 0.95, base.dim).astype(np.float32)
    x[:4] = x[:4] / x[:4].sum()
    np.testing.assert_allclose(fast.curve(x, 10), base.curve(x, 200)[::20], rtol=1e-5, atol=1e-6)
    assert fast.name == "s2e@20" and fast.dim == base.dim
    co, co_fast = schedules.get_space("coteaching"), schedules.get_space("coteaching@4")
    y = np.array([0.5, 0.3, 0.2], np.float32)
    np.testing.assert_allclose(co_fast.curve(y, 50), co.curve(y, 200)[::4], rtol=1e-5, atol=1e-6)
    for bad in ("s2e@0", "s2e@x", "s2e@-2", "nope@2"):
        with pytest.raises(ConfigError, match="space"):
            schedules.get_space(bad)


def test_a_time_scaled_schedule_file_round_trips(tmp_path):
    space = schedules.get_space("s2e@20")
    x = np.full(space.dim, 0.5, np.float32)
    x[:4] = 0.25
    schedules.save_schedule_file(str(tmp_path / "s.json"), space, x, 10)
    back, xb = schedules.load_schedule_file(str(tmp_path / "s.json"))
    assert back.name == "s2e@20"
    np.testing.assert_allclose(back.curve(xb, 10), space.curve(x, 10))


def test_s2e_paper_scales_every_beta_to_0_1_and_the_default_keeps_its_ranges(tmp_path):
    """Section 3.3.2: "we set all beta_i's to be in the range [0, 1]" (s2e_paper); s2e keeps a2, a3
    in [0, 0.5] and a4 in [0, 2]. The name travels through a schedule file and a time scale."""
    x = np.concatenate([[0.1, 0.2, 0.3, 0.4], np.linspace(0.05, 0.95, 16)]).astype(np.float32)
    box = x[4:].reshape(4, 4)
    paper = np.asarray(schedules.get_space("s2e_paper").decode(jnp.asarray(x)))
    np.testing.assert_allclose(paper[:4], x[:4])
    np.testing.assert_allclose(paper[4:].reshape(4, 4), box, rtol=1e-6)
    default = np.asarray(schedules.get_space("s2e").decode(jnp.asarray(x)))[4:].reshape(4, 4)
    np.testing.assert_allclose(default, box * np.asarray([1.0, 0.5, 0.5, 2.0]), rtol=1e-6)
    assert not np.allclose(schedules.get_space("s2e_paper").curve(x, 200), schedules.get_space("s2e").curve(x, 200))
    for name in ("s2e_paper", "s2e_paper@20"):
        schedules.save_schedule_file(str(tmp_path / "p.json"), schedules.get_space(name), x, 10)
        sp, x2 = schedules.load_schedule_file(str(tmp_path / "p.json"))
        assert sp.name == name
        np.testing.assert_allclose(sp.curve(x2, 10), schedules.get_space(name).curve(x, 10), rtol=1e-6)
