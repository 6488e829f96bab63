"""Executors: where the folds of a cross-validation run, chosen by name from :data:`EXECUTORS`.

Folds are independent, and a fold reads everything it needs from the CV directory, so any way of
running ``run_fold(cv_dir, i)`` somewhere works. An executor gets the plan and the folds to run,
runs each through the entry points it is given (the in-process one, and a picklable one for
another process: :func:`medxcept.workflows.cv._guarded_fold` and :func:`~medxcept.workflows.cv._worker`),
and returns one result dict per fold in order. A fold that raises comes back as
``{"status": "error", ...}`` and is recorded in its ``failed.json``; a worker process that dies
without reporting is recorded as ``WorkerCrashed``.

=============  ==========================================================================
``local``      in this process, one fold after the other (``jobs > 1``: as ``processes``)
``processes``  ``jobs`` spawned processes on this machine, one per fold
``ray``        one ``ray.remote`` task per fold (``pip install 'medxcept[ray]'``), on the
               cluster at ``address`` or a local one; ``num_cpus`` / ``num_gpus`` per task
=============  ==========================================================================

Adding one (SLURM job arrays through ``submitit``, Dask ``client.submit``): write a class with
``run(plan, todo, *, save_model, in_process, worker) -> list[dict]`` that submits
``worker(str(plan.path), task.index, save_model, worker_env(), log_level)`` per fold and maps a
lost job to :func:`crashed`, then add it to :data:`EXECUTORS`. Without any executor, a scheduler
can also run ``python -m pipelines.kfold --fold $SLURM_ARRAY_TASK_ID`` per job
(``pipelines/slurm/kfold.sbatch``).
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing as mp
import os
from collections.abc import Callable, Mapping
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any, Protocol

from medxcept.errors import ConfigError
from medxcept.evaluation.kfold import CVPlan, FoldTask, record_failure
from medxcept.paths import cache_dir

__all__ = ["Executor", "LocalExecutor", "ProcessExecutor", "RayExecutor", "EXECUTORS", "make_executor",
           "worker_env", "crashed"]

#: The repository root: a local Ray cluster's workers import this checkout from it.
REPO = Path(__file__).resolve().parents[2]

InProcess = Callable[..., dict[str, Any]]
Worker = Callable[[str, int, bool, dict[str, str], int], dict[str, Any]]


class Executor(Protocol):
    """Runs folds; see the module docstring."""

    def run(self, plan: CVPlan, todo: list[FoldTask], *, save_model: bool, in_process: InProcess,
            worker: Worker) -> list[dict[str, Any]]: ...


def worker_env() -> dict[str, str]:
    """The environment a fold in another process needs (cache, backend, fault hooks)."""
    keep = ("KERAS_BACKEND", "NO_ALBUMENTATIONS_UPDATE", "TF_CPP_MIN_LOG_LEVEL", "MEDXCEPT_CACHE",
            "MEDXCEPT_FAULT", "MEDXCEPT_FAULT_ACTION")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("MEDXCEPT_CACHE", str(cache_dir()))
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    return env


def crashed(plan: CVPlan, task: FoldTask, how: str) -> dict[str, Any]:
    """A fold whose process died without reporting (killed, out of memory, ``os._exit``)."""
    message = f"the worker process died ({how}) before the fold finished"
    record_failure(plan.path / task.name, task, "WorkerCrashed", message)
    return {"index": task.index, "name": task.name, "status": "error", "error_class": "WorkerCrashed",
            "message": message}


def _log_level() -> int:
    return logging.getLogger("medxcept").getEffectiveLevel()


@dataclasses.dataclass(frozen=True)
class LocalExecutor:
    """Every fold in this process, one after the other (the plan's images are reused)."""

    def run(self, plan: CVPlan, todo: list[FoldTask], *, save_model: bool, in_process: InProcess,
            worker: Worker) -> list[dict[str, Any]]:
        return [in_process(plan.path, t.index, images=plan.images, save_model=save_model) for t in todo]


def _spawned(conn: Any, worker: Worker, cv_dir: str, task_index: int, save_model: bool, env: dict[str, str],
             log_level: int) -> None:
    conn.send(worker(cv_dir, task_index, save_model, env, log_level))
    conn.close()


@dataclasses.dataclass(frozen=True)
class ProcessExecutor:
    """``jobs`` folds at once, each in a spawned process of its own (not a pool: a pool breaks
    for every fold when one worker dies)."""

    jobs: int = 2

    def __post_init__(self) -> None:
        if isinstance(self.jobs, bool) or not isinstance(self.jobs, int) or self.jobs < 1:
            raise ConfigError(f"jobs={self.jobs!r} must be an integer >= 1")

    def run(self, plan: CVPlan, todo: list[FoldTask], *, save_model: bool, in_process: InProcess,
            worker: Worker) -> list[dict[str, Any]]:
        ctx = mp.get_context("spawn")
        env, level = worker_env(), _log_level()
        pending, running, results = list(todo), {}, {}
        try:
            while pending or running:
                while pending and len(running) < self.jobs:
                    t = pending.pop(0)
                    recv, send = ctx.Pipe(duplex=False)
                    proc = ctx.Process(target=_spawned,
                                       args=(send, worker, str(plan.path), t.index, save_model, env, level))
                    proc.start()
                    send.close()
                    running[proc.sentinel] = (proc, recv, t)
                for sentinel in wait(list(running)):
                    proc, recv, t = running.pop(sentinel)
                    result = None
                    try:
                        if recv.poll():
                            result = recv.recv()
                    except (EOFError, OSError):
                        result = None
                    proc.join()
                    results[t.index] = result if result is not None else crashed(plan, t,
                                                                                 f"exit code {proc.exitcode}")
        finally:
            for proc, _, _ in running.values():
                proc.terminate()
        return [results[t.index] for t in todo]


def _import_ray() -> Any:
    try:
        import ray  # optional dependency: only this executor needs it
    except ImportError:
        raise ConfigError("--executor ray needs Ray, which is not installed: pip install 'medxcept[ray]' "
                          "(or use --executor local)") from None
    return ray


@dataclasses.dataclass(frozen=True)
class RayExecutor:
    """One ``ray.remote`` task per fold, on the cluster at ``address`` (default: a local one).

    Ray is checked when the executor is made, before anything is ingested or trained.
    """

    address: str | None = None
    num_cpus: float = 1
    num_gpus: float = 0

    def __post_init__(self) -> None:
        _import_ray()

    def run(self, plan: CVPlan, todo: list[FoldTask], *, save_model: bool, in_process: InProcess,
            worker: Worker) -> list[dict[str, Any]]:
        ray = _import_ray()
        env, level = worker_env(), _log_level()
        started = False
        if not ray.is_initialized():
            runtime_env: dict[str, Any] = {"env_vars": dict(env)}
            if self.address is None:
                # a local cluster: let workers import this checkout even when it is not pip-installed
                path = os.environ.get("PYTHONPATH")
                runtime_env["env_vars"]["PYTHONPATH"] = str(REPO) + (os.pathsep + path if path else "")
            ray.init(address=self.address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=True,
                     logging_level=logging.WARNING)
            started = True
        try:
            remote = ray.remote(num_cpus=self.num_cpus, num_gpus=self.num_gpus, max_retries=0)(worker)
            refs = {remote.remote(str(plan.path), t.index, save_model, env, level): t for t in todo}
            results: dict[int, dict[str, Any]] = {}
            pending = list(refs)
            while pending:  # one fold at a time as it ends: a failing fold never stops the others
                done, pending = ray.wait(pending, num_returns=1)
                t = refs[done[0]]
                try:
                    results[t.index] = ray.get(done[0])
                except ray.exceptions.RayError as exc:  # worker killed, task cancelled, node lost ...
                    results[t.index] = crashed(plan, t, f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
            return [results[t.index] for t in todo]
        finally:
            if started:
                ray.shutdown()


def _local(jobs: int = 1) -> Executor:
    return LocalExecutor() if jobs == 1 else ProcessExecutor(jobs)


#: Executors by name: each a factory taking its options as keyword arguments.
EXECUTORS: dict[str, Callable[..., Executor]] = {
    "local": _local,
    "processes": ProcessExecutor,
    "ray": RayExecutor,
}


def make_executor(name: str, jobs: int = 1, options: Mapping[str, Any] | None = None) -> Executor:
    """The executor ``name`` of :data:`EXECUTORS`, made with ``options`` (and ``jobs`` where it runs
    several folds on this machine).

    Raises
    ------
    ConfigError
        An unknown name, ``jobs < 1``, options the executor does not take, Ray not installed.
    """
    if name not in EXECUTORS:
        raise ConfigError(f"executor={name!r} is not one of {list(EXECUTORS)}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs={jobs!r} must be an integer >= 1")
    kwargs = dict(options or {})
    if name in ("local", "processes"):
        kwargs["jobs"] = jobs
    try:
        return EXECUTORS[name](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"executor {name!r}: {exc}") from None
