"""The paper's experiment scripts (experiments/): each runs end to end at the smoke scale on digits and
writes the tables and plots it promises; their bookkeeping (caching, Single = best of four, Figure 6's
cost axis) is checked on constructed inputs."""
import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments"))

import fig3  # noqa: E402
import fig4  # noqa: E402
import fig5  # noqa: E402
import fig6  # noqa: E402
import paper  # noqa: E402
import table2  # noqa: E402
import table5  # noqa: E402

SMOKE = ["--dataset", "digits", "--scale", "smoke"]


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    return str(tmp_path_factory.mktemp("results"))


def _root(out):
    return os.path.join(out, "smoke", "digits")


def _table_rows(path):
    with open(path) as f:
        return [line for line in f if line.startswith("| ") and not line.startswith("| noise")]


@pytest.mark.slow
def test_fig3_trains_methods_and_s2e_with_its_searched_schedule(out):
    fig3.main(SMOKE + ["--out", out, "--methods", "standard", "coteaching", "s2e"])
    root = _root(out)
    for name in ("fig3.md", "fig3.png"):
        assert os.path.getsize(os.path.join(root, name)) > 0
    rows = _table_rows(os.path.join(root, "fig3.md"))
    assert [r.split("|")[2].strip() for r in rows] == ["Standard", "Co-teaching", "S2E"]
    with open(os.path.join(root, "methods", "symmetric0.5-s2e-seed0", "config.json")) as f:
        cfg = json.load(f)
    best = os.path.join(root, "search_s2e", "symmetric0.5", "newton", "best_schedule.json")
    assert os.path.samefile(cfg["schedule"], best) and cfg["method"] == "coteaching"
    with open(best) as f:
        curve = json.load(f)["curve"]
    r = paper.read_metrics(os.path.join(root, "methods", "symmetric0.5-s2e-seed0", "metrics.csv"))["r"]
    np.testing.assert_allclose(r, curve, atol=1e-5)  # the S2E run trained with the searched R(t)
    # the scale's t_k is scaled with the epochs: eq. (1) reaches 1 - tau as it does at 200 epochs
    r_co = paper.read_metrics(os.path.join(root, "methods", "symmetric0.5-coteaching-seed0", "metrics.csv"))["r"]
    np.testing.assert_allclose(r_co, [1.0, 0.5, 0.5, 0.5], atol=1e-6)


def test_fig4_and_fig5_reuse_the_cached_search_and_runs(out):
    root = _root(out)
    search_trials = os.path.join(root, "search_s2e", "symmetric0.5", "newton", "trials.jsonl")
    fig4.main(SMOKE + ["--out", out])  # searches unless an earlier test did
    before = os.path.getmtime(search_trials)
    fig4.main(SMOKE + ["--out", out])
    assert os.path.getmtime(search_trials) == before  # not searched again
    fig5.main(SMOKE + ["--out", out])
    assert os.path.getmtime(search_trials) == before
    for name in ("fig4.md", "fig4.png", "fig5.md", "fig5.png"):
        assert os.path.getsize(os.path.join(root, name)) > 0
    rows = _table_rows(os.path.join(root, "fig5.md"))
    assert [r.split("|")[2].strip() for r in rows] == ["MentorNet", "Co-teaching", "Co-teaching+", "S2E"]
    for r in rows:  # label precision in percent
        assert 0.0 <= float(r.split("|")[3].split("±")[0]) <= 100.0


@pytest.mark.slow
def test_table2_reports_every_space_and_single_is_the_best_of_four(out):
    table2.main(SMOKE + ["--out", out])
    root = _root(out)
    assert os.path.getsize(os.path.join(root, "table2.png")) > 0
    with open(os.path.join(root, "table2.json")) as f:
        res = json.load(f)["symmetric 50%"]
    assert set(res) == set(table2.COLUMNS)
    singles = [table2.best_trial(os.path.join(root, "table2", "symmetric0.5", f"single{i}"))
               for i in range(1, 5)]
    assert res["single"]["best_test_acc"] == max(s["best_test_acc"] for s in singles)
    for c in ("coteaching", "rbf", "mlp", "s2e"):
        trials = [json.loads(line) for line in open(os.path.join(root, "table2", "symmetric0.5", c,
                                                                    "random", "trials.jsonl"))]
        assert len(trials) == 2 and res[c]["val_acc"] == max(t["val_acc"] for t in trials)
    row = _table_rows(os.path.join(root, "table2.md"))[0]
    assert row.count("**") == 2  # the best space is marked


def test_table2_best_trial_ignores_failed_trainings(tmp_path):
    os.makedirs(tmp_path / "random")
    with open(tmp_path / "random" / "trials.jsonl", "w") as f:
        for t, (acc, failed) in enumerate([(0.5, False), (0.9, True), (0.7, False)]):
            f.write(json.dumps(dict(trial=t, val_acc=acc, failed=failed)) + "\n")
    assert table2.best_trial(str(tmp_path))["trial"] == 2


def test_fig6_efficiency_counts_partial_trainings_by_their_epochs():
    T = 10
    trials = [dict(trial=0, epochs=5, val_acc=0.99, test_acc=0.9, failed=False),   # partial: cost 0.5, not a result
              dict(trial=1, epochs=5, val_acc=0.5, test_acc=0.4, failed=False),    # cost 1.0
              dict(trial=2, epochs=10, val_acc=0.6, test_acc=0.55, failed=False),  # cost 2.0
              dict(trial=3, epochs=10, val_acc=0.8, test_acc=0.7, failed=True),    # diverged: ignored
              dict(trial=4, epochs=10, val_acc=0.7, test_acc=0.65, failed=False)]  # cost 4.0
    grid, best, test = fig6.efficiency(trials, T, budget=4)
    np.testing.assert_array_equal(grid, [1, 2, 3, 4])
    np.testing.assert_allclose(best, [np.nan, 0.6, 0.6, 0.7])
    np.testing.assert_allclose(test, [np.nan, 0.55, 0.55, 0.65])


def test_fig6_runs_every_algorithm_with_the_same_budget(out):
    fig6.main(SMOKE + ["--out", out, "--algos", "newton", "random", "hyperband"])
    root = _root(out)
    assert os.path.getsize(os.path.join(root, "fig6.png")) > 0
    rows = _table_rows(os.path.join(root, "fig6.md"))
    assert len(rows) == 3
    sc = paper.get_scale("smoke")
    for algo in ("newton", "random", "hyperband"):
        with open(os.path.join(root, "fig6", "symmetric0.5", "seed0", algo, "result.json")) as f:
            res = json.load(f)
        budget = sc.algo_iterations * sc.algo_samples
        assert res["cost"] >= budget - 1e-9 and (algo == "hyperband" or res["trainings"] == budget)


@pytest.mark.slow
def test_table5_compares_s2e_with_asng(out):
    table5.main(SMOKE + ["--out", out])
    root = _root(out)
    for name in ("table5.md", "table5.png"):
        assert os.path.getsize(os.path.join(root, name)) > 0
    with open(os.path.join(root, "asng", "symmetric0.5-seed0", "result.json")) as f:
        res = json.load(f)
    assert res["retrain"] is not None
    row = _table_rows(os.path.join(root, "table5.md"))[0]
    assert f"{100 * res['retrain']['final_test_acc']:.2f} ± 0.00" in row


def test_an_interrupted_run_directory_is_moved_aside_not_lost(tmp_path):
    study = paper.Study("digits", paper.get_scale("smoke"), str(tmp_path))
    run_dir = study.path("methods", "x", "")
    with open(os.path.join(run_dir, "config.json"), "w") as f:
        f.write("{}")  # what a killed training leaves: no summary.json
    res = study.run(study.config("symmetric", 0.5, method="standard", epochs=1, decay_start=0), run_dir)
    assert res["summary"]["epochs"] == 1
    aside = [d for d in os.listdir(os.path.join(str(tmp_path), "methods")) if d.startswith("x.incomplete-")]
    assert len(aside) == 1 and os.path.exists(os.path.join(str(tmp_path), "methods", aside[0], "config.json"))


def test_input_norm_unit_gets_its_own_results_folder(tmp_path):
    args = paper.parser("x").parse_args(["--dataset", "digits", "--scale", "smoke", "--out", str(tmp_path),
                                         "--input-norm", "unit"])
    study = paper.study_from_args(args)
    assert study.root == os.path.join(str(tmp_path), "smoke", "digits-unit")
    assert study.config("pair", 0.45).input_norm == "unit"
    args.input_norm = "zscore"
    with pytest.raises(paper.ConfigError, match="input_norm"):
        paper.study_from_args(args)


def test_a_run_of_an_older_rule_is_moved_aside_and_run_again(tmp_path):
    """A finished Co-teaching+ run without ``method_version`` (made before its rule changed) is not
    reused: it is kept beside as ``.stale-*`` and trained again; a current one is reused."""
    study = paper.Study("digits", paper.get_scale("smoke"), str(tmp_path))
    cfg = study.config("symmetric", 0.5, method="coteaching_plus", epochs=1, decay_start=0)
    run_dir = study.path("methods", "cp", "")
    first = study.run(cfg, run_dir)["summary"]
    assert first["method_version"] == 2
    assert study.run(cfg, run_dir)["summary"] == first                      # current: reused
    old = dict(first, final_test_acc=-1.0)
    del old["method_version"]
    with open(os.path.join(run_dir, "summary.json"), "w") as f:
        json.dump(old, f)
    again = study.run(cfg, run_dir)["summary"]
    assert again["final_test_acc"] == first["final_test_acc"] and again["method_version"] == 2
    aside = [d for d in os.listdir(os.path.join(str(tmp_path), "methods")) if d.startswith("cp.stale-")]
    assert len(aside) == 1


@pytest.mark.parametrize("argv, field", [(["--scale", "huge"], "scale"), (["--noises", "pair"], "noises")])
def test_bad_arguments_give_one_clear_message(tmp_path, capsys, argv, field):
    with pytest.raises(SystemExit) as e:
        paper.main_guard(lambda: fig3.main(["--dataset", "digits", "--out", str(tmp_path)] + argv))
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {field}:")
