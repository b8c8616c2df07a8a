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
