"""How many threads onnxruntime and NumPy's BLAS use, so that they share the cores without oversubscribing them.

The calibration alternates onnxruntime's forward passes with NumPy's products (``X^T X``,
the solvers); they never run at once.  onnxruntime's sessions get one intra-op thread per
usable core and do not spin-wait between runs (a spinning pool takes cores from the
NumPy work that follows each run); BLAS keeps its own setting, which it reads from the
environment at start-up (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``, else every core).
"""

from __future__ import annotations

import os

__all__ = ["thread_counts", "usable_cores"]

#: The environment variables BLAS libraries read their thread count from, first match wins.
_BLAS_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity; the count of all cores where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def thread_counts() -> dict[str, object]:
    """For the report: usable cores, onnxruntime's intra-op threads, BLAS's threads and where that came from."""
    cores = usable_cores()
    blas, source = cores, "every usable core (BLAS's default)"
    for name in _BLAS_VARIABLES:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            blas, source = int(value), name
            break
    return {"cores": cores, "onnxruntime": cores, "numpy": blas, "numpy_source": source}
