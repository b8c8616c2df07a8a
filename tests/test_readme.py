"""The README's Python API examples run as written (with fewer epochs), so they cannot rot."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python_api_blocks():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("\n## Python API", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_python_api_examples_run(tmp_path, monkeypatch):
    blocks = _python_api_blocks()
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)  # the examples write run directories relative to the working directory
    for code in blocks:
        short = re.sub(r"epochs=\d+", "epochs=2", code).replace("range(50)", "range(2)")
        assert short != code  # the examples train for fewer epochs here
        exec(compile(short, "README.md", "exec"), {"__name__": "readme_example"})
    assert os.path.exists(tmp_path / "runs" / "sym50" / "summary.json")


def test_using_a_trained_run_example_runs(tmp_path, monkeypatch):
    """The README's "Using what a training leaves" snippet, on a short run of the quick start's setting."""
    from s2e_jax import TrainConfig
    from s2e_jax.train import train

    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("\n## Using what a training leaves", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1 and 'load("runs/digits-pair45")' in blocks[0]
    monkeypatch.chdir(tmp_path)
    train(TrainConfig(dataset="digits", noise="pair", noise_rate=0.45, epochs=2, progress=False,
                      out="runs/digits-pair45"))
    scope = {"__name__": "readme_example"}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    assert scope["proba"].shape == (360, 10) and len(scope["suspects"]["index"]) == 1078


def test_readme_is_a_short_front_door():
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    assert len(text.splitlines()) <= 200
    for doc in re.findall(r"`(docs/[a-z_]+\.md)`", text):
        assert os.path.exists(os.path.join(ROOT, doc)), doc
