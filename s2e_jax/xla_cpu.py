"""XLA's CPU backend: the one setting that makes conv nets fast here, for the entry points.

XLA's default CPU convolutions (Eigen) run nearly single-threaded, and their kernel gradient is
slow. With YNNPACK enabled for XLA's CPU backend (``--xla_cpu_experimental_ynn_fusion_type=reduce``)
convolutions and their gradients go through YNNPACK: the conv nets train several times faster, the
MLP unchanged; gradients equal to float32 rounding (``tests/test_xla_cpu.py``; the measurements:
docs/performance.md, "Execution defaults", row ``xla_cpu.configure()``).

Any YNN fusion type turns YNNPACK's convolutions on; they differ elsewhere: ``dot`` slows chained
matmuls down, ``eltwise`` the MLP's step, ``reduce`` speeds plain reductions up but slows a matmul
chain ending in a sum and a reduction of a slice (openxla/xla#46351; the same row). Hence
``reduce``, and hence the flag is a process-wide choice of the entry points, not a side effect of
importing the library: ``python -m s2e_jax`` and the scripts under ``experiments/`` and
``benchmarks/`` call :func:`configure` first; your own program may call it before its first JAX
computation.

:func:`configure` appends the flag to ``XLA_FLAGS``, unless

* ``XLA_FLAGS`` already names ``xla_cpu_experimental_ynn_fusion_type`` (the user's choice wins),
* ``S2E_JAX_XLA_CPU_DEFAULTS=0`` is set (opt out), or
* the installed jaxlib does not know the flag (XLA aborts on unknown flags, so it is looked up in
  jaxlib's shared libraries first).

Not set here: glibc's allocator. Blocks above 32 MiB (a Model 2 step's temporaries) are ``mmap``-ed
and faulted in again at every execution; ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``, set before the
process starts, makes a Model 2 step faster, and PyTorch's too (docs/performance.md, "The allocator").
``mallopt`` at run time (no ``mmap``, no trimming) let the heap grow with every call.

XLA reads ``XLA_FLAGS`` once, when JAX starts its backends: call :func:`configure` before the first
JAX computation (:func:`active` tells whether it took effect). The flag only concerns the CPU
backend; GPU and TPU compilation is unchanged.
"""
from __future__ import annotations

import glob
import mmap
import os
from typing import MutableMapping, Optional

__all__ = ["FLAG", "FLAG_NAME", "OPT_OUT", "flag_supported", "configure", "active"]

FLAG_NAME = "xla_cpu_experimental_ynn_fusion_type"
FLAG = f"--{FLAG_NAME}=reduce"
OPT_OUT = "S2E_JAX_XLA_CPU_DEFAULTS"

_supported: Optional[bool] = None
_appended_late = False  # configure() appended the flag after JAX had started its backends


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # private API moved: assume not started (import order is documented)
        return False


def flag_supported() -> bool:
    """Whether the installed jaxlib knows :data:`FLAG_NAME` (its name is in jaxlib's libraries)."""
    global _supported
    if _supported is None:
        _supported = False
        try:
            import jaxlib

            root = os.path.dirname(jaxlib.__file__)
        except Exception:  # no jaxlib: nothing to configure
            return False
        needle = FLAG_NAME.encode()
        for path in sorted(glob.glob(os.path.join(root, "**", "*.so"), recursive=True)):
            try:
                with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                    if m.find(needle) >= 0:
                        _supported = True
                        break
            except (OSError, ValueError):  # unreadable or empty file
                continue
    return _supported


def configure(environ: Optional[MutableMapping[str, str]] = None, supported: Optional[bool] = None) -> bool:
    """Append :data:`FLAG` to ``environ['XLA_FLAGS']`` unless the user set it, opted out
    (``S2E_JAX_XLA_CPU_DEFAULTS=0``) or jaxlib lacks it. Returns whether it appended."""
    env = os.environ if environ is None else environ
    if env.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    flags = env.get("XLA_FLAGS", "")
    if FLAG_NAME in flags:
        return False
    if not (flag_supported() if supported is None else supported):
        return False
    env["XLA_FLAGS"] = f"{flags} {FLAG}".strip()
    if environ is None and _backends_started():
        global _appended_late
        _appended_late = True
    return True


def active() -> bool:
    """Whether YNNPACK is enabled for this process's CPU backend: the flag is in ``XLA_FLAGS``
    with a non-empty value, and it was not appended after JAX had started its backends."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    values = [f.split("=", 1)[1] if "=" in f else "" for f in flags if f.lstrip("-").startswith(FLAG_NAME)]
    return bool(values) and values[-1].strip("'\"") != "" and not _appended_late
