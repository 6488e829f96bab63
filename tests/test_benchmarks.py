"""Smoke tests of the two throughput benchmarks: they run, print parsable tables, and the
batches they time are the batches a model would receive. Speed itself is never asserted
(shared CPUs are noisy)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
ENV = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", "NO_ALBUMENTATIONS_UPDATE": "1"}
NUM = r"(\d+(?:\.\d+)?)"


def _load(name: str):
    """Import a benchmark script as a module (its top level imports numpy only)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(args: list[str], timeout: int) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


# --------------------------------------------------------------------------- ingest_bench


def test_ingest_bench_times_real_ingestion_against_the_decode_floor(tmp_path, monkeypatch, capsys):
    import medxcept.testing.camera as camera

    ib = _load("ingest_bench")
    monkeypatch.setattr(camera, "CAMERA_SIZES", ((1280, 1200, 1.05), (1600, 1200, 1.0)))  # small: a quick run
    out = ib.main(["--n-files", "2", "--workers", "0", "--files-dir", str(tmp_path / "files"),
                   "--json", str(tmp_path / "r.json")])
    stdout = capsys.readouterr().out
    assert "2 camera-size JPEGs (1280x1200, 1600x1200; quality 92" in stdout
    assert sorted(p.name for p in (tmp_path / "files").iterdir()) == [
        "v1_q92_1280x1200_000.jpg", "v1_q92_1600x1200_001.jpg"]
    floor, serial = out["rows"]
    assert floor["path"].startswith("Pillow") and serial["path"] == "medxcept ingest, 1 process"
    assert floor["ratio_to_floor"] == 1.0 and serial["files"] == 2
    # the printed ratio is the time per file over the floor's, both from this run
    assert serial["ratio_to_floor"] == pytest.approx(serial["s_per_file_wall"] / floor["s_per_file_wall"], rel=0.02)
    m = re.search(rf"^medxcept ingest, 1 process\s+{NUM}\s+{NUM}\s+{NUM}\s+{NUM}$", stdout, flags=re.M)
    assert m and float(m.group(4)) == pytest.approx(serial["ratio_to_floor"], abs=0.051), stdout
    assert json.loads((tmp_path / "r.json").read_text()) == out
    assert "target: 0.35 s per file on 2 cores" in stdout
    # 1200 // 598 = 2, and the field of view (1200-1260 px across) keeps 598 px at 1/2
    assert out["decoded_at"] == "1/2" and "files decoded at 1/2 of their stored size" in stdout


# --------------------------------------------------------------------------- input_pipeline


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ip") / "ip.json"
    stdout = _run([str(BENCH / "input_pipeline.py"), "--sizes", "80", "--n-images", "16", "--batch-size", "8",
                   "--seconds", "0", "--json", str(out)], timeout=300)
    return stdout, json.loads(out.read_text())


def test_input_pipeline_prints_a_positive_ratio(pipeline_run):
    stdout, _ = pipeline_run
    m = re.search(rf"^\s*80px\s+{NUM}\s+{NUM}\s+{NUM}x", stdout, flags=re.M)
    assert m, stdout
    medx, tut, ratio = (float(g) for g in m.groups())
    assert medx > 0 and tut > 0 and ratio > 0
    assert ratio == pytest.approx(medx / tut, rel=0.02, abs=0.06)  # the printed ratio is of the printed rates
    assert "One-time preprocessing cost" in stdout and "cache on disk" in stdout
    assert re.search(r"on a 16-core machine: [\d,]+ img/s", stdout)


def test_input_pipeline_batches_have_model_shape_and_dtype(pipeline_run):
    _, res = pipeline_run
    (r,) = res["results"]
    mx, tut = r["medxcept_batch"], r["tutorial_batch"]
    assert mx["x_shape"] == [8, 80, 80, 3] and mx["x_dtype"] == "uint8"  # the model casts; a quarter of the bytes to move
    assert mx["y_shape"] == [8, 1] and mx["y_dtype"] == "float32"
    assert 0.0 <= mx["x_min"] and mx["x_max"] <= 255.0 and mx["x_max"] > 50  # uint8 range, not blank
    assert tut["x_shape"] == [8, 80, 80, 3] and tut["y_shape"] == [8, 1]
    assert 0.0 <= tut["x_min"] and tut["x_max"] <= 255.0
    # a cached image is 80*80*3 bytes + the .npy header; 16 of them
    assert 16 * 80 * 80 * 3 <= r["cache_bytes"] <= 16 * (80 * 80 * 3 + 256)
    assert r["preprocess_once_s"] > 0 and r["images_measured"]["medxcept_1thread"] >= 16


def test_timed_epochs_counts_whole_epochs():
    ip = _load("input_pipeline")
    calls = []

    def epoch():
        calls.append(1)
        for n in (8, 8, 3):
            np.sort(np.random.default_rng(n).random(200_000))  # some CPU time to measure
            yield np.zeros((n, 2)), np.zeros(n)

    rate, n, first, per_cpu = ip._timed_epochs(epoch, seconds=0.0)
    assert len(calls) == 1 and n == 19 and first[0].shape == (8, 2)
    assert rate > 0 and math.isfinite(rate) and per_cpu > 0


def test_tutorial_scipy_augmenter_keeps_shape_and_black_corners():
    ip = _load("input_pipeline")
    aug = ip.tutorial_augmenter("scipy", seed=0)
    yy, xx = np.mgrid[0:41, 0:41]
    disc = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 15**2).astype(np.float32)
    img = np.repeat(disc[:, :, None], 3, axis=2) * 200.0
    for _ in range(5):
        out = aug(img)
        assert out.shape == img.shape
        # a centred disc is invariant under flips and rotations about the centre (up to the rim)
        inner = (yy - 20) ** 2 + (xx - 20) ** 2 <= 13**2
        outer = (yy - 20) ** 2 + (xx - 20) ** 2 >= 17**2
        assert np.allclose(out[inner], 200.0, atol=1e-3) and np.allclose(out[outer], 0.0, atol=1e-3)


# --------------------------------------------------------------------------- gpu_xception


@pytest.mark.slow
def test_gpu_xception_smoke_prints_positive_rates(tmp_path, capsys):
    """In this process (the suite has TensorFlow imported already; a subprocess would import it again),
    with Keras' global dtype policy restored afterwards: tracing Xception's train step dominates."""
    import keras

    if keras.backend.backend() != "tensorflow":
        pytest.skip(f"checks the TensorFlow run; this process uses {keras.backend.backend()} "
                    "(tests/test_backend_jax.py runs it under JAX)")
    gx = _load("gpu_xception")
    out = tmp_path / "gx.json"
    policy = keras.mixed_precision.global_policy().name
    capsys.readouterr()
    try:
        assert gx.main(["--smoke", "--skip-timm", "--json", str(out)]) == 0
    finally:
        keras.mixed_precision.set_global_policy(policy)
    stdout = capsys.readouterr().out
    rows = {}
    for m in re.finditer(r"^\((a|b|c)\)\s.*?\s(\S+)\s+(\S+)\s+(n/a|[\d.]+ GiB)\s*$", stdout, flags=re.M):
        rows[m.group(1)] = (m.group(2), m.group(3))
    assert set(rows) == {"a", "b", "c"}, stdout
    for path in ("a", "b"):
        train, infer = (float(v) for v in rows[path])
        assert train > 0 and infer > 0 and math.isfinite(train) and math.isfinite(infer)
    assert rows["c"] == ("skipped", "skipped")
    assert re.search(r"^\(b\)/\(a\) train\s+[\d.]+x", stdout, flags=re.M)
    assert "backend: tensorflow" in stdout and "keras 3" in stdout
    res = json.loads(out.read_text())
    assert res["keras"]["n_devices"] == 1  # one device: data parallelism is a no-op
    if res["keras"]["device"]["device"] == "cpu":
        assert res["keras"]["policy"] == "float32" and "bf16 requested but no GPU visible" in stdout


def test_gpu_xception_args_smoke_and_validation():
    gx = _load("gpu_xception")
    a = gx.parse_args(["--smoke", "--workers", "8"])
    assert (a.px, a.batch, a.steps, a.warmup, a.pool, a.workers) == (71, 4, 2, 1, 8, 2)
    b = gx.parse_args([])
    assert (b.px, b.batch, b.steps, b.warmup, b.precision) == (299, 64, 50, 10, "bf16")
    with pytest.raises(SystemExit):
        gx.parse_args(["--px", "64"])
    with pytest.raises(SystemExit):
        gx.parse_args(["--steps-per-execution", "4", "--warmup", "10"])


def test_gpu_xception_report_ratios_against_targets(capsys):
    gx = _load("gpu_xception")
    args = gx.parse_args(["--px", "299"])
    k = {"device": {"backend": "jax", "device": "gpu", "detail": "1 x H100"}, "n_devices": 1,
         "versions": {"keras": "3"}, "policy": "mixed_bfloat16", "jit": True, "pool_seconds": 1.0,
         "n_unique_images": 64, "wall_seconds": {"a_fit": 1.0},
         "paths": {"a": {"train": 1300.0, "infer": 4000.0, "peak": 2**31},
                   "b": {"train": 1100.0, "infer": 3900.0, "peak": 2**31}}}
    timm = {"train": 1000.0, "infer": 4100.0, "peak": 2**30, "device": "H100", "amp_bf16": True,
            "compile": False, "torch": "2", "timm": "1"}
    gx.print_report(args, k, timm)
    out = capsys.readouterr().out
    assert re.search(r"\(a\)/\(c\) train\s+1\.30x .*PASS", out)  # 1300 / 1000 meets >= 1.3x exactly
    assert re.search(r"\(b\)/\(a\) train\s+0\.85x .*FAIL", out)  # 1100 / 1300 < 0.9
    assert re.search(r"\(a\)/\(c\) inference\s+0\.98x .*FAIL", out)  # 4000 / 4100 < 1
    assert "2.00 GiB" in out and "1.00 GiB" in out
