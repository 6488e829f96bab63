"""Thread settings (medxcept.threads): the usable CPU count from affinity, cgroup quota and Ray, and
the environment variables set from it. The effect on speed is measured in
``benchmarks/train_throughput.py --compare-threads``, never asserted here."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from medxcept import threads

ROOT = Path(__file__).resolve().parents[1]


def test_cgroup_quota_in_cpus(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_cpus(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_cpus(tmp_path) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")  # cgroup v1
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads._cgroup_cpus(tmp_path) == pytest.approx(3.0)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads._cgroup_cpus(tmp_path) is None


def test_available_cpus_is_the_smallest_limit(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    monkeypatch.setattr(threads, "_ray_cpus", lambda: None)
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: None)
    assert threads.available_cpus() == 8
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: 2.5)  # a quota of 2.5 CPUs keeps 2 threads busy
    assert threads.available_cpus() == 2
    monkeypatch.setattr(threads, "_ray_cpus", lambda: 1.0)
    assert threads.available_cpus() == 1
    monkeypatch.setattr(threads, "_cgroup_cpus", lambda: 0.5)  # never below one thread
    assert threads.available_cpus() == 1


def test_configure_sets_the_backends_variables_and_leaves_the_users(monkeypatch):
    monkeypatch.setattr(threads, "available_cpus", lambda: 3)
    env = {"KERAS_BACKEND": "tensorflow", "OMP_NUM_THREADS": "7"}
    got = threads.configure_threads(environ=env)
    assert (got["cpus"], got["intra"], got["inter"]) == (3, 3, 1)
    assert env["TF_NUM_INTRAOP_THREADS"] == "3" and env["TF_NUM_INTEROP_THREADS"] == "1"
    assert env["OMP_NUM_THREADS"] == "7" and "OMP_NUM_THREADS" not in got["set"], "the user's value stays"
    assert env["OPENCV_FOR_THREADS_NUM"] == "1" and "XLA_FLAGS" not in env

    env = {"KERAS_BACKEND": "jax", threads.ENV: "1"}  # JAX: no TensorFlow variables; one thread for XLA
    threads.configure_threads(environ=env)
    assert "TF_NUM_INTRAOP_THREADS" not in env and "intra_op_parallelism_threads=1" in env["XLA_FLAGS"]
    assert env["OMP_NUM_THREADS"] == "1"

    env = {"KERAS_BACKEND": "tensorflow", threads.ENV: "2:2"}
    threads.configure_threads(environ=env)
    assert (env["TF_NUM_INTRAOP_THREADS"], env["TF_NUM_INTEROP_THREADS"]) == ("2", "2")

    env = {threads.ENV: "off"}
    assert threads.configure_threads(environ=env)["set"] == {} and env == {threads.ENV: "off"}
    for bad in ("0", "two", "2:0"):
        with pytest.raises(ValueError, match=threads.ENV):
            threads.configure_threads(environ={threads.ENV: bad})


@pytest.mark.skipif(shutil.which("taskset") is None or not hasattr(os, "sched_getaffinity"),
                    reason="needs taskset (util-linux) and sched_getaffinity")
def test_import_sizes_the_pools_from_the_affinity_mask():
    """``taskset -c 0``: importing medxcept sets one intra-op thread, before TensorFlow loads."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("OMP_NUM_THREADS", "TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", threads.ENV)}
    code = "import os, medxcept; print(os.environ['TF_NUM_INTRAOP_THREADS'], os.environ['OMP_NUM_THREADS'])"
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, env={**env, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": str(ROOT)}, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["1", "1"]
