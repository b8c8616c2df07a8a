"""Run directories: atomic JSON/text writes and the metrics CSV."""
import csv
import json
import os

import numpy as np
import pytest

from s2e_jax import runs
from s2e_jax.config import ConfigError, save_json


def test_failed_json_and_text_writes_leave_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "summary.json"
    save_json({"a": 1}, str(path))
    with pytest.raises(TypeError):
        save_json({"a": object()}, str(path))  # json cannot write it
    assert sorted(os.listdir(tmp_path)) == ["summary.json"]
    assert path.read_text().strip().startswith("{") and '"a": 1' in path.read_text()

    runs.atomic_write_text(str(tmp_path / "t.txt"), "old")
    with pytest.raises(TypeError):
        runs.atomic_write_text(str(tmp_path / "t.txt"), b"not text")
    assert sorted(os.listdir(tmp_path)) == ["summary.json", "t.txt"]
    assert (tmp_path / "t.txt").read_text() == "old"


def test_metrics_rows_keep_the_header_s_columns(tmp_path):
    run = runs.RunDir.create(str(tmp_path / "run"))
    run.append_metrics_row(0, dict(loss=1.0, acc=np.array([0.5, 0.7])))
    run.append_metrics_row(1, dict(acc=np.array([0.6, 0.8]), loss=0.5))  # other order
    run.append_metrics_row(2, dict(loss=0.25))  # a column missing: left empty
    with open(run.path("metrics.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["epoch", "loss", "acc", "acc_net1", "acc_net2"]
    assert [r["loss"] for r in rows] == ["1", "0.5", "0.25"]
    assert [r["acc_net2"] for r in rows] == ["0.7", "0.8", ""]
    with pytest.raises(ValueError, match=r"metrics.csv: this row has column\(s\) lr that the file's header lacks"):
        run.append_metrics_row(3, dict(loss=0.1, lr=1e-3))
    assert len(open(run.path("metrics.csv")).read().splitlines()) == 4  # nothing written


# ------------------------------------------------------------------ damaged files of a run directory
def test_read_json_names_a_damaged_file(tmp_path):
    path = tmp_path / "state.json"
    for content, why in ((b'{"a": [1, 2', "not valid JSON"), (b"\xff\xfe\x00", "not text"),
                         (b"[1, 2]", "holds a JSON list, not an object")):
        path.write_bytes(content)
        with pytest.raises(runs.DamagedFile, match=rf"{path} is damaged \({why}") as err:
            runs.read_json_file(str(path), dict)
        assert isinstance(err.value, ConfigError) and err.value.path == str(path)
    path.write_text('{"a": 1}')
    assert runs.RunDir(str(tmp_path)).read_json("state.json", kind=dict) == {"a": 1}


def _search_cfg(out, algo="newton", iterations=2):
    from s2e_jax import search_run
    from s2e_jax.config import TrainConfig

    t = TrainConfig(dataset="digits", noise="pair", noise_rate=0.45, epochs=2, batch_size=64,
                    decay_start=1, progress=False, seed=1)
    return search_run.SearchConfig(t, algo=algo, space="s2e", iterations=iterations, samples=2, out=str(out))


def _files(root):
    return {str(p): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_damaged_search_state_is_rebuilt_from_its_trials(tmp_path, small_digits, capsys, algo="newton"):
    from s2e_jax import search_run

    out = tmp_path / "s"
    search_run.run(_search_cfg(out, algo, iterations=1), small_digits)
    full = search_run.run(_search_cfg(tmp_path / "ref", algo), small_digits)
    state = out / algo / "state.json"
    text = state.read_text()
    state.write_text(text[: len(text) // 2])  # cut short
    capsys.readouterr()
    resumed = search_run.run(_search_cfg(out, algo), small_digits)
    assert f"note: {state} was damaged (not valid JSON" in capsys.readouterr().err
    assert resumed == full  # the second iteration proposed (and trained) what an unbroken search did
    ref_state = json.loads((tmp_path / "ref" / algo / "state.json").read_text())
    assert json.loads(state.read_text()) == ref_state

    # fields missing (a valid JSON object that is not a state) are rebuilt the same way
    state.write_text('{"algo": "%s"}' % algo)
    assert search_run.run(_search_cfg(out, algo), small_digits) == full
    assert f"note: {state} was damaged (fields missing: dim, " in capsys.readouterr().err
    assert json.loads(state.read_text()) == ref_state


def test_a_damaged_search_file_that_cannot_be_rebuilt_is_refused_naming_it(tmp_path, small_digits):
    from s2e_jax import search_run

    out = tmp_path / "s"
    search_run.run(_search_cfg(out, "random", iterations=1), small_digits)
    state, trials = out / "random" / "state.json", out / "random" / "trials.jsonl"
    state.write_text("{")
    recs = [json.loads(line) for line in trials.read_text().splitlines()]
    recs[1]["x"] = [v + 0.01 for v in recs[1]["x"]]  # not the searcher's proposal
    trials.write_text("".join(json.dumps(r) + "\n" for r in recs))
    before = _files(out)
    with pytest.raises(ConfigError, match=rf"out: {state} is damaged \(not valid JSON.*\) and cannot be rebuilt "
                                          r"from trials.jsonl \(trial 1 of trials.jsonl is not"):
        search_run.run(_search_cfg(out, "random"), small_digits)
    assert _files(out) == before

    config = out / "search_config.json"
    config.write_text('{"identity": ')
    before = _files(out)
    with pytest.raises(ConfigError, match=rf"out: {config} is damaged \(not valid JSON.*\) and it names the search"):
        search_run.run(_search_cfg(out, "random"), small_digits)
    assert _files(out) == before


def test_a_sound_search_state_of_other_options_is_refused_naming_it(tmp_path, small_digits):
    from s2e_jax import search_run

    out = tmp_path / "s"
    search_run.run(_search_cfg(out, "random", iterations=1), small_digits)
    state = out / "random" / "state.json"
    d = json.loads(state.read_text())
    d["samples"] = 3
    state.write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=rf"out: {state}: state: saved with samples=3"):
        search_run.run(_search_cfg(out, "random"), small_digits)
    assert json.loads(state.read_text())["samples"] == 3


def test_damaged_asng_files_are_refused_naming_them(tmp_path):
    from s2e_jax import asng
    from s2e_jax.config import TrainConfig

    out = tmp_path / "a"
    out.mkdir()
    cfg = asng.AsngConfig(TrainConfig(dataset="digits", epochs=2, progress=False), out=str(out))
    (out / "asng_config.json").write_text('{"identity": {"tra')
    (out / "metrics.csv").write_text("epoch\n0\n")
    before = _files(out)
    with pytest.raises(ConfigError, match=rf"out: {out / 'asng_config.json'} is damaged \(not valid JSON"):
        asng.run(cfg)
    assert _files(out) == before and not (out / runs.LOCK_NAME).exists()

    (out / "asng_config.json").write_text(json.dumps(dict(identity=asng._identity(cfg), config=cfg.to_dict())))
    (out / "result.json").write_text('{"algo": "asng", ')
    before = _files(out)
    with pytest.raises(ConfigError, match=rf"out: {out / 'result.json'} is damaged \(not valid JSON.*\); delete it"):
        asng.run(cfg)
    assert _files(out) == before
