"""Fault injection: a real run killed (SIGKILL) at every phase, then ``--resume``; locks; refused resumes.

Each killed run is a subprocess of ``python -m pipelines.retina`` on the tiny 24-patient cohort of
``tests/conftest.py`` (71 px, 1 + 1 epochs from scratch); ``MEDXCEPT_FAULT`` (the test hook of
:mod:`medxcept.faults`) makes it kill itself at one named point, so where it dies is exact, not a
matter of timing. One chain covers every phase at the cost of one run: killed between epochs 1
and 2, resumed and killed during epoch 2, resumed and killed after training (before evaluation),
resumed and killed after ``metrics.json`` (before the report), resumed to completion. The finished
run must give the predictions of an uninterrupted run with the same seed.

Tolerance of "the same predictions": 1e-4 on logits and probabilities, the one two uninterrupted
runs with one seed are held to (``tests/test_train.py``): a resumed run restores the weights,
optimizer, schedule, data order, augmentation draws and dropout seeds, so only the order of
floating-point sums in multi-threaded CPU kernels may differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parent.parent
ATOL = 1e-4


def _cli(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("MEDXCEPT_FAULT", None)
    if fault:
        env["MEDXCEPT_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "pipelines.retina", *args, "-q"], cwd=REPO, capture_output=True,
                          text=True, timeout=900, env=env)


def _hashes(d: Path) -> dict[str, str]:
    """Every file of a run but its ``.lock`` (which holds the pid of whoever holds the lock)."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def _rows(run: Path) -> int:
    return len(json.loads((run / "checkpoints" / "state.json").read_text())["rows"])


@pytest.fixture(scope="module")
def reference(tiny_run):
    """The uninterrupted run: the session's finished tiny run (tests/conftest.py, made in this process;
    the killed ones are subprocesses). Its learning curve is computed after predictions.csv and the
    test metrics, so it changes nothing compared here."""
    return tiny_run


@pytest.fixture(scope="module")
def cohort(reference, tmp_path_factory):
    """The reference run's own cohort file; the killed run goes to another folder."""
    return {"file": reference.parent.parent / "tiny.yaml", "out": tmp_path_factory.mktemp("faults") / "reports"}


@pytest.mark.slow
def test_run_killed_at_every_phase_resumes_to_the_uninterrupted_predictions(cohort, reference, capsys):
    from medxcept.run import DirectoryLock
    from pipelines.retina import main

    run = cohort["out"] / "killed"
    base = ["--cohort", str(cohort["file"]), "--out-dir", str(cohort["out"]), "--run-name", "killed"]

    # 1. between epochs: epoch 1's checkpoint is on disk, epoch 2 never started
    res = _cli(*base, fault="epoch_end:1")
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert _rows(run) == 1 and not (run / "metrics.json").exists()
    assert not list((run / "checkpoints").glob(".*")), "no temporary file left beside the checkpoint"

    # a second process on the same run directory stops with one clear line and changes nothing
    before = _hashes(run)
    with DirectoryLock(run / ".lock", "test"):
        assert main(["--resume", str(run), "-q"]) == 2
    assert _hashes(run) == before

    # 2. during epoch 2 (after its first batch): resumes from epoch 1 again
    res = _cli("--resume", str(run), fault="epoch_batch:2")
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert _rows(run) == 1

    # 3. after training, before evaluation (TTA, bootstraps, learning curve): the window where a resume
    #    used to evaluate a freshly built, untrained model
    res = _cli("--resume", str(run), fault="trained")
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    state = json.loads((run / "checkpoints" / "state.json").read_text())
    assert state["stage_finished"] and len(state["rows"]) == 2
    assert (run / "model.keras").is_file() and not (run / "metrics.json").exists()

    # 4. after metrics.json, before the report: metrics.json is not the completion marker
    res = _cli("--resume", str(run), fault="evaluated")
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert (run / "metrics.json").is_file() and not (run / "complete.json").exists()
    assert not (run / "report.html").exists()

    # 5. the last resume completes the run (in this process: only the killed runs need their own)
    capsys.readouterr()
    assert main(["--resume", str(run), "-q"]) == 0, capsys.readouterr().err[-2000:]
    assert capsys.readouterr().out.strip().endswith("report.html")
    assert (run / "complete.json").is_file() and not (run / "checkpoints").exists()

    ref_m, m = (json.loads((d / "metrics.json").read_text()) for d in (reference, run))
    assert m["run"]["resumed_after_training"] is True
    assert m["run"]["weights_sha256"] == json.loads((run / "complete.json").read_text())["weights_sha256"]
    assert m["training"]["best_epoch"] == ref_m["training"]["best_epoch"]
    ref_h, h = (pd.read_csv(d / "history.csv") for d in (reference, run))
    assert list(h["epoch"]) == list(ref_h["epoch"]) == [1, 2]
    np.testing.assert_allclose(h["loss"], ref_h["loss"], rtol=ATOL, atol=1e-5)
    np.testing.assert_allclose(h["val_loss"], ref_h["val_loss"], rtol=ATOL, atol=1e-5)
    ref_p, p = (pd.read_csv(d / "predictions.csv") for d in (reference, run))
    assert list(p["image_id"]) == list(ref_p["image_id"])
    np.testing.assert_allclose(p["logit"], ref_p["logit"], atol=ATOL)
    np.testing.assert_allclose(p["prob"], ref_p["prob"], atol=ATOL)
    for k in ("roc_auc", "pr_auc", "sensitivity", "specificity"):
        assert m["test_patient"][k] == pytest.approx(ref_m["test_patient"][k], abs=ATOL), k

    # a complete run is never resumed, and the refusal changes nothing
    before = _hashes(run)
    assert main(["--resume", str(run), "-q"]) == 2
    err = capsys.readouterr().err
    assert "the run is complete" in err and "Traceback" not in err
    assert _hashes(run) == before


@pytest.mark.slow
def test_saved_model_has_no_optimizer_state_and_predicts_as_the_run_did(reference):
    import keras

    from medxcept.images.cache import load_images
    from medxcept.models.inference import predict_logits
    from medxcept.run import load_run_config

    path = reference / "model.keras"
    model = keras.models.load_model(path)
    assert getattr(model, "optimizer", None) is None, "the inference model carries no optimizer state"
    # the archive's weights file holds the model's values and nothing else (with Adam's two moments
    # it held about 3x as many); counted, not sized, so it holds for any network size
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as archive:
        h5 = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    stored: dict[str, int] = {}
    h5.visititems(lambda name, obj: stored.__setitem__(name, obj.size) if isinstance(obj, h5py.Dataset) else None)
    assert not [name for name in stored if name.startswith("optimizer")], sorted(stored)[:5]
    assert sum(stored.values()) == sum(int(np.prod(w.shape)) for w in model.get_weights())
    size = path.stat().st_size
    m = json.loads((reference / "metrics.json").read_text())
    assert m["run"]["model_bytes"] == size
    assert json.loads((reference / "versions.json").read_text())["model"]["bytes"] == size

    # reloaded, it predicts the test images as the run did (predictions.csv, TTA off)
    from medxcept.cohort.table import load_cohort_spec
    from medxcept.workflows.steps import prepare_cohort

    cfg = load_run_config(reference)
    assert cfg.eval.tta == 0
    ing, cache = prepare_cohort(load_cohort_spec(cfg.cohort), cfg)
    preds = pd.read_csv(reference / "predictions.csv")
    table = ing.table.set_index("image_id").loc[preds["image_id"]].reset_index()
    logits = predict_logits(model, load_images(table, cache, cfg.preprocess))
    np.testing.assert_allclose(logits, preds["logit"], atol=1e-5)


@pytest.mark.slow
def test_refused_resume_leaves_every_file_of_the_run_byte_identical(cohort, reference, tmp_path):
    """A checkpoint of other data is refused after ingestion, but before anything is written."""
    import shutil

    from pipelines.retina import main

    run = tmp_path / "interrupted"
    shutil.copytree(reference, run, ignore=shutil.ignore_patterns("complete.json", ".lock"))
    ckpt = run / "checkpoints"
    ckpt.mkdir()
    (ckpt / "state.json").write_text(json.dumps({"fingerprint": {"config_hash": "0" * 8, "n_train": 1},
                                                 "rows": [], "stage_index": 0, "stage_epochs_done": 1,
                                                 "stage_finished": False}))
    before = _hashes(run)
    assert main(["--resume", str(run), "-q"]) == 2
    assert _hashes(run) == before, "a refused resume rewrote files of the run"


def test_run_name_of_an_existing_directory_is_refused(tmp_path, tiny_cohort, capsys):
    from pipelines.retina import main

    (tmp_path / "r" / "taken").mkdir(parents=True)
    (tmp_path / "r" / "taken" / "notes.txt").write_text("someone else's")
    assert main(["--cohort", str(tiny_cohort), "--out-dir", str(tmp_path / "r"), "--run-name", "taken", "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("medxcept: error:")]
    assert len(err) == 1 and "already exists and is not empty" in err[0] and "--resume" in err[0]
    assert sorted(p.name for p in (tmp_path / "r" / "taken").iterdir()) == ["notes.txt"]


def test_directory_lock_is_exclusive_and_released_when_its_process_dies(tmp_path):
    from medxcept.errors import ConfigError
    from medxcept.run import DirectoryLock

    lock = tmp_path / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r); from medxcept.run import DirectoryLock; "
        "DirectoryLock(%r, 'x').acquire(); print('held', flush=True); time.sleep(60)") % (str(REPO), str(lock))],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match=rf"in use by another process \(pid {holder.pid}\)"):
            DirectoryLock(lock, "run directory x").acquire()
        assert DirectoryLock(lock, "x").is_held()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with DirectoryLock(lock, "x"):  # the kernel released it with the process
        pass


def test_write_atomic_never_leaves_a_torn_file(tmp_path, monkeypatch):
    from medxcept.run import RunDir

    run = RunDir(tmp_path)
    run.write_json("metrics.json", {"a": 1})

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        run.write_json("metrics.json", {"a": 2, "b": list(range(1000))})
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"a": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"], "temporary file removed"


def test_cache_key_follows_the_dicom_window(tmp_path, session_cache):
    """Another window_index decodes other pixels: another cache folder and another data hash."""
    import dataclasses

    import pandas as pd

    from medxcept.cohort.table import CohortSpec
    from medxcept.images.cache import decode_key
    from medxcept.run import data_hash
    from medxcept.workflows.steps import cohort_cache

    spec = CohortSpec(name="x", classes=("a", "b"), sources=(), base_dir=str(tmp_path))
    other = dataclasses.replace(spec, window_index=1)
    gray = dataclasses.replace(spec, modality="gray")
    assert decode_key(spec) == "" and len({decode_key(spec), decode_key(other), decode_key(gray)}) == 3
    assert cohort_cache(spec).root != cohort_cache(other).root != cohort_cache(gray).root
    table = pd.DataFrame({"image_id": ["i"], "sha256": ["ab"], "frame": [0], "label": ["a"], "patient_key": ["P-1"]})
    assert data_hash(table, decode=decode_key(spec)) == data_hash(table)  # existing hashes unchanged
    assert data_hash(table, decode=decode_key(other)) != data_hash(table)
