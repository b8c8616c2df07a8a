"""The two places that name the dependencies (pip's requirements.txt, the package's pyproject.toml)
name the same ones with the same floors (README "Quick start": the tested floors)."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _requirements():
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        lines = [ln.split("#")[0].strip() for ln in f]
    return {ln for ln in lines if ln and not ln.startswith("pytest")}  # pytest: the tests' extra


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml")) as f:
        text = f.read()
    deps = re.search(r"^dependencies = \[(.*?)\]", text, re.S | re.M).group(1)
    return set(re.findall(r'"([^"]+)"', deps)), re.search(r'^requires-python = "([^"]+)"', text, re.M).group(1)


def test_requirements_and_pyproject_name_the_same_floors():
    deps, python = _pyproject()
    assert _requirements() == deps
    assert python == ">=3.11"  # jax >= 0.7.0 needs it
    assert "jax>=0.7.0" in deps  # jax.shard_map; 1 vs 4 host devices bit-identical (tests/test_parallel.py)
