#!/usr/bin/env bash
# The project's test command (README and .ci/run): `bash scripts/test.sh [--all] [pytest arguments]`.
# By default the tests marked slow (subprocesses, a venv install, large models) are left out; --all runs
# every test (CI). Exit code 5 ("no tests collected") is not a failure.
cd "$(dirname "$0")/.."
export JAX_PLATFORMS=cpu PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "${1:-}" = "--all" ]; then
  shift
  python -m pytest -q "$@"
else
  python -m pytest -q -m "not slow" "$@"
fi
rc=$?
if [ "$rc" -eq 5 ]; then echo "no tests collected"; exit 0; fi
exit "$rc"
