"""Thread settings for the compute backend, from the CPUs this process may actually use.

Left alone, TensorFlow sizes its thread pools from the machine's core count, OpenMP and OpenCV
from theirs, and the input pipeline adds its own worker threads: on a 2-core laptop, or in a
container, a ``taskset`` slice or a Ray task granted 1 CPU, that is several busy threads per core,
and the CPU time goes to waking and switching them (the issue that prompted this measured system
time at 60 % of user time on 2 cores). So, once, before the backend starts:

* the usable CPU count is the smallest of the affinity mask (``os.sched_getaffinity``: ``taskset``,
  ``cpuset``), the cgroup CPU quota (``cpu.max``, or ``cpu.cfs_quota_us`` under cgroup v1) and, in a
  Ray task, the CPUs Ray assigned to it;
* TensorFlow (only when it is the Keras backend) gets that many intra-op threads and **one**
  inter-op thread (``TF_NUM_INTRAOP_THREADS``, ``TF_NUM_INTEROP_THREADS``): a convolutional network's
  ops run one after the other, and a second inter-op pool only competes with the first;
* OpenMP (``OMP_NUM_THREADS``) gets that many too, and OpenCV (``OPENCV_FOR_THREADS_NUM``) one:
  augmentation already runs in the input pipeline's worker threads, one image at a time each;
* JAX/XLA on the CPU is given one thread only when one CPU is usable
  (``--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1`` in ``XLA_FLAGS``); otherwise
  XLA sizes its pool itself.

A variable the user already set is never changed. ``MEDXCEPT_THREADS`` overrides the count:
``N`` (intra-op and OpenMP threads; one inter-op thread), ``N:M`` (M inter-op threads), or ``off``
(leave every library at its default). The figures behind these choices are in
``benchmarks/train_throughput.py --compare-threads`` and the README.

:func:`configure_threads` runs when :mod:`medxcept` is imported, which is before anything in
medxcept imports Keras; it only sets environment variables, which the backends read when they
start. It is idempotent and cheap (no library is imported).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

__all__ = ["ENV", "available_cpus", "configure_threads"]

#: The user's override: ``N``, ``N:M`` (intra:inter) or ``off``.
ENV = "MEDXCEPT_THREADS"

_applied: dict | None = None


def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup CPU quota in CPUs (``None``: no limit or no cgroup file)."""
    try:
        text = (root / "cpu.max").read_text().split()  # cgroup v2: "max 100000" or "200000 100000"
        if text and text[0] != "max":
            return int(text[0]) / int(text[1])
        return None
    except (OSError, ValueError, IndexError):
        pass
    try:  # cgroup v1
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def _ray_cpus() -> float | None:
    """CPUs Ray assigned to the task this process runs (``None`` outside a Ray worker)."""
    ray = sys.modules.get("ray")  # never imported here: a Ray worker has it loaded already
    if ray is None:
        return None
    try:
        if not ray.is_initialized():
            return None
        ctx = ray.get_runtime_context()
        if ctx.worker.mode != ray.WORKER_MODE:
            return None
        cpus = ctx.get_assigned_resources().get("CPU")
        return float(cpus) if cpus else None
    except Exception:  # noqa: BLE001 - an older or newer Ray without these calls: no limit known
        return None


def available_cpus() -> int:
    """CPUs this process may use: the affinity mask, the cgroup quota and Ray's grant, whichever is smallest."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for limit in (_cgroup_cpus(), _ray_cpus()):
        if limit is not None:
            n = min(n, max(1, math.floor(limit)))  # a quota of 1.5 CPUs cannot keep 2 threads busy
    return max(1, n)


def _parse(value: str) -> tuple[int, int] | None:
    value = value.strip().lower()
    if value in ("off", "none", "default"):
        return None
    intra, _, inter = value.partition(":")
    try:
        n, m = int(intra), int(inter) if inter else 1
    except ValueError:
        raise ValueError(f"{ENV}={value!r}: expected a thread count N, N:M (intra-op:inter-op) or 'off'") from None
    if n < 1 or m < 1:
        raise ValueError(f"{ENV}={value!r}: thread counts must be >= 1")
    return n, m


def configure_threads(*, environ: dict | None = None) -> dict:
    """Set the backends' thread counts in the environment (only where not set); return what was decided.

    Returns a dict: ``cpus`` (usable CPUs), ``intra``, ``inter`` (``None`` when ``MEDXCEPT_THREADS=off``)
    and ``set``, the variables this call wrote. Call it before Keras is imported (``import medxcept``
    does); later calls return the first decision.
    """
    global _applied
    env = os.environ if environ is None else environ
    if _applied is not None and environ is None:
        return _applied
    cpus = available_cpus()
    choice = _parse(env[ENV]) if env.get(ENV) else (cpus, 1)
    decided: dict = {"cpus": cpus, "intra": None, "inter": None, "set": {}}
    if choice is not None:
        intra, inter = choice
        decided.update(intra=intra, inter=inter)
        wanted = {"OMP_NUM_THREADS": str(intra), "OPENCV_FOR_THREADS_NUM": "1"}
        backend = env.get("KERAS_BACKEND", "tensorflow")
        if backend == "tensorflow":
            wanted.update(TF_NUM_INTRAOP_THREADS=str(intra), TF_NUM_INTEROP_THREADS=str(inter))
        elif backend == "jax" and intra == 1 and "XLA_FLAGS" not in env:
            wanted["XLA_FLAGS"] = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        for key, value in wanted.items():
            if key not in env:
                env[key] = value
                decided["set"][key] = value
    if environ is None:
        _applied = decided
    return decided
