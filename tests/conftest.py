"""Set before any test starts JAX:

* XLA's CPU backend runs as the entry points run it (s2e_jax.xla_cpu: YNNPACK convolutions);
* one persistent compilation cache for the whole session, in a fresh temporary folder that is removed
  at the end (unless the caller set ``JAX_COMPILATION_CACHE_DIR``). Many tests, and the processes
  that the CLI tests start, compile the same programs; reusing them cut ``tests/test_train.py`` +
  ``tests/test_distributed.py`` from 332 s to 283 s on the 2-core CI machine. A cache entry is the
  executable XLA compiled for the same program and options, so results do not change.
"""
import atexit
import os
import shutil
import tempfile

import pytest

if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    _cache_dir = tempfile.mkdtemp(prefix="s2e_jax_tests_xla_cache_")
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
    # environment variables, so that the test's subprocesses (CLI, jax.distributed) share it too
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache_dir
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

from s2e_jax import xla_cpu  # noqa: E402

xla_cpu.configure()


@pytest.fixture(scope="module")
def small_digits():
    """The first 256 training and 128 validation/test images of digits: a search in seconds."""
    from s2e_jax import data as data_lib

    ds = data_lib.load_dataset("digits")
    return ds.__class__(ds.name, ds.x_train[:256], ds.y_train[:256], ds.y_train_clean[:256],
                        ds.x_val[:128], ds.y_val[:128], ds.x_test[:128], ds.y_test[:128], ds.num_classes)
