"""Shared fixtures: a tiny demo cohort file and an isolated cache per test session."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

REPO = Path(__file__).resolve().parent.parent

TINY_COHORT = """
name: tiny-demo
description: tiny synthetic cohort for tests
classes: [non_referable, referable]
positive_class: referable
modality: fundus
generator: demo
generator_options: {{n_patients: {n_patients}, seed: {seed}, size_scale: 0.5}}
pseudonym_salt: test-salt
sources:
  - name: photos
    kind: photos
    root: photos
    labels: photos/labels.csv
    patient_column: patient
    laterality_column: eye
    visit_column: visit
    columns: {{camera: source, sex: sex, age: age}}
  - name: dicom
    kind: dicom
    root: dicom
    labels: dicom/labels.csv
defaults:
  preprocess: {{image_px: 71}}
  train: {{batch_size: 8, head_epochs: 1, finetune_epochs: 1, workers: 1}}
  eval: {{n_bootstrap: 50}}
  audit: {{on_leak: warn}}
"""


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One MEDXCEPT_CACHE for the whole test session (demo data and preprocessing cache)."""
    path = tmp_path_factory.mktemp("medxcept-cache")
    os.environ["MEDXCEPT_CACHE"] = str(path)
    return path


@pytest.fixture()
def tiny_cohort(tmp_path: Path, session_cache: Path) -> Path:
    """A cohort file for a ~50-image synthetic demo at half size (generated once per session)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_COHORT.format(n_patients=24, seed=3), encoding="utf-8")
    return path


@pytest.fixture(autouse=True)
def _restore_medxcept_logging():
    """A CLI ``main()`` called in-process configures the ``medxcept`` logger (own handler, no
    propagation); undo it after each test so later tests' ``caplog`` still sees the records."""
    logger = logging.getLogger("medxcept")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def pytest_terminal_summary(terminalreporter, exitstatus, config):  # noqa: ARG001 - pytest's hook signature
    """Say which Keras backends this run exercised (issue 20: CI says that the JAX tests ran)."""
    counts: dict[str, dict[str, int]] = {}
    for outcome in ("passed", "failed", "error", "skipped"):
        for rep in terminalreporter.stats.get(outcome, []):
            nodeid = getattr(rep, "nodeid", "")
            if getattr(rep, "when", "call") != "call" and outcome != "error":
                continue
            backend = "jax (subprocess, KERAS_BACKEND=jax)" if "test_backend_jax.py" in nodeid else None
            if backend:
                counts.setdefault(backend, {}).setdefault(outcome, 0)
                counts[backend][outcome] += 1
    line = "; ".join(f"{b}: " + ", ".join(f"{n} {o}" for o, n in c.items()) for b, c in counts.items())
    terminalreporter.write_line(f"Keras backends tested: tensorflow (in process){'; ' + line if line else ''}")
