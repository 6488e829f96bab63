"""Shared fixtures: a tiny demo cohort file, an isolated cache per test session, and the tiny network.

**The tiny test network.** Most tests check plumbing (resume, faults, external validation,
reproduce, k-fold, the JAX backend, the report), not Xception. For them the suite sets the test
hook ``MEDXCEPT_TEST_NETWORK=tiny`` (:mod:`medxcept.models.testnet`) for itself and for every subprocess
it starts: ``build_model`` then builds an Xception-shaped network with the same layer names,
blocks and freezing logic, 8-256 channels and one middle block, which traces and trains in a
fraction of Xception's time. Tests marked ``xception`` (and fixtures inside
:func:`real_xception`) run the real Xception: the ones that check that it learns, its block
structure, ImageNet weights and Grad-CAM on it. ``MEDXCEPT_TEST_NETWORK= python -m pytest``
(set, empty) runs every test on the real Xception.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from medxcept.models import testnet

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault(testnet.ENV, testnet.TINY)  # before any test or subprocess builds a model

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


@contextlib.contextmanager
def real_xception() -> Iterator[None]:
    """Within this block ``build_model`` builds the real Xception (for module-scoped fixtures; a
    test marked ``xception`` gets the same for its whole duration)."""
    saved = os.environ.get(testnet.ENV)
    os.environ[testnet.ENV] = ""
    try:
        yield
    finally:
        if saved is None:
            del os.environ[testnet.ENV]
        else:
            os.environ[testnet.ENV] = saved


@pytest.fixture(autouse=True)
def _network_of_the_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """The real Xception for tests marked ``xception``; the tiny test network for the others."""
    if request.node.get_closest_marker("xception") is None:
        yield
        return
    with real_xception():
        yield


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


def finished_tiny_run(basetemp: Path) -> Path:
    """The run directory of one finished TINY_COHORT run (24 patients, seed 3, defaults of the cohort
    file, learning curve at 50 %), trained once per pytest session and shared by every test that
    only needs "a finished run" (test_pipeline_e2e, test_external, test_report_render, test_faults'
    uninterrupted reference): each full run costs about a minute of CI time.

    Layout: ``basetemp/tiny-run/tiny.yaml`` (the cohort file) and ``basetemp/tiny-run/reports/tiny``.
    Tests must not write into the run directory itself (copy it first); siblings in ``reports/``
    (``--reproduce`` writes ``tiny-reproduced*``) are fine. A second import of a test module (as
    ``tests.x`` and as ``x``) finds the finished run by its ``complete.json``.
    """
    base = Path(basetemp) / "tiny-run"
    done = base / "reports" / "tiny"
    if not (done / "complete.json").is_file():
        from medxcept.cohort.table import load_cohort_spec
        from medxcept.config import load_config
        from medxcept.workflows.single import run_pipeline

        base.mkdir(parents=True, exist_ok=True)
        cohort = base / "tiny.yaml"
        cohort.write_text(TINY_COHORT.format(n_patients=24, seed=3), encoding="utf-8")
        spec = load_cohort_spec(cohort)
        cfg = load_config(cohort_defaults=spec.defaults,
                          overrides={"out_dir": str(base / "reports"), "cohort": str(cohort)})
        assert run_pipeline(cfg, spec, run_name="tiny", learning_curve=(0.5,)).parent == done
    return done


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Path:
    """:func:`finished_tiny_run`: a finished tiny run shared by the whole session (read-only)."""
    return finished_tiny_run(tmp_path_factory.getbasetemp())


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


def graded_cohort(*, train_extra: str = "", eval_options: str = "n_bootstrap: 50") -> str:
    """The tiny three-grade ordinal cohort (30 generated patients) the graded end-to-end tests run on;
    ``train_extra`` is appended to its ``train`` defaults, ``eval_options`` are its ``eval`` defaults."""
    return f"""
name: tiny-graded
classes: [none, mild, moderate]
task: ordinal
endpoints: {{referable: grade >= moderate}}
generator: demo_graded
generator_options: {{n_patients: 30, n_grades: 3, seed: 5, size_scale: 0.35}}
pseudonym_salt: test-salt
sources:
  - {{name: photos, kind: photos, root: photos, labels: photos/labels.csv, label_column: grade,
     patient_column: patient, laterality_column: eye, columns: {{camera: source}}}}
defaults:
  preprocess: {{image_px: 71}}
  train: {{batch_size: 8, head_epochs: 1, finetune_epochs: 0, workers: 1{train_extra}}}
  eval: {{{eval_options}}}
  audit: {{on_leak: warn}}
"""
