"""Patient-level k-fold cross-validation: the plan on disk, the folds' tables and markers, the statistics.

The workflow (planning, running and aggregating the folds) is :mod:`medxcept.workflows.cv`, one fold
:mod:`medxcept.workflows.fold`, the fold executors :mod:`medxcept.workflows.executors`; this module holds what they share, and explains
what the numbers mean.

On a cohort of a few dozen patients a single train/validation/test split gives a number whose
uncertainty is larger than most of the differences a study cares about. Cross-validation trains
``k`` models, each evaluated on patients it never saw, and reports the spread across folds.

Layout. ``plan_cv`` (:mod:`medxcept.workflows.cv`) ingests the cohort once, keeps the hold-out test split of
:func:`medxcept.integrity.splits.assign_splits` (the same one ``pipelines.retina`` would use with the same
configuration) out of every fold when ``split.test_fraction > 0``, and assigns patient-level,
stratified folds over the other patients with :func:`medxcept.integrity.splits.assign_folds` (seed
``split.seed + r`` for repeat ``r``). It writes ``<out_dir>/<cv-name>/``::

    cv.json          plan: folds, repeats, classes, config / data / split hashes, the inner
                     validation rule and, per fold, its inner seed, split hash and the
                     patients / images trained, inner-validated and held out
    config.yaml      the resolved RunConfig (the same for every fold)
    cohort.csv       the public cohort table with ``cv_split`` (cv | test) and ``fold_r<r>``
    audit.json       the integrity audit of the whole CV partition (before any training)
    fold-0/ ...      one run directory per fold (``r0-fold-0/`` ... with repeats)
    cv_metrics.json  per-fold metrics and sizes, mean, SD and 95 % t-interval, pooled out-of-fold metrics
    cv_report.html   the self-contained CV report

What a fold does. Fold ``i`` sets aside a share of its training folds' patients as its **inner
validation split** (:func:`fold_split`): ``split.inner_val_fraction``, by default
``split.val_fraction`` (0.2: with 3 folds a fold trains on 80 % of the patients outside fold ``i``),
made by :func:`medxcept.integrity.splits.assign_splits` exactly as the single run's validation split is
(patient-grouped, stratified on the patient label, every class on both sides), with seed
:func:`inner_seed` (``split.seed + repeat + 1000 * (fold + 1)``), so it is the same on every
machine and every resume. It trains on the rest of the training folds; early stopping watches the
inner split's patient-level AUC, as validation does in a single run. Its **out-of-fold (OOF)**
predictions are its predictions on fold ``i``, which chose nothing. No patient is in two of
train / inner validation / held-out fold / hold-out test: :func:`check_fold_disjoint` checks it
when the plan is made and again before a fold trains, and the fold's audit checks it too.

* Discrimination (ROC-AUC, PR-AUC) is computed from the uncalibrated scores.
* Calibration (``eval.calibration``) and the operating threshold (``eval.threshold``) are fitted on
  the inner validation split, never on fold ``i``: fold ``i``'s labels set none of the numbers
  reported on fold ``i``, with any number of folds, 2 included (issue 17 moved the epoch off fold
  ``i``; issue 36 replaced the whole "next fold" inner split, which trained a 3-fold model on a
  third of the data and left 2 folds choosing on fold ``i``).
* The reference models (:mod:`medxcept.evaluation.references`) are fitted on all training-fold images and
  compared with the deep model on fold ``i`` (``metrics.json["references"]`` of each fold).
* The hold-out test split (if any) is predicted by every fold model with the same calibration and
  threshold; the report gives its per-fold metrics and their mean.

Per-fold metrics are patient level (a patient's image probabilities aggregated by
``eval.patient_aggregation``), including ECE and Brier of the calibrated patient probabilities.
Across folds: mean, SD (ddof=1) and a 95 % t-interval ``mean ± t(0.975, n-1) · SD / √n``. Folds
share training patients, so they are not independent and that interval is too narrow; the
**pooled** OOF estimate (every patient predicted once per repeat by the model that did not see
it, each fold's own threshold) is given next to it.

Resuming. Each fold writes ``fold.json`` last, holding the configuration hash and the fold's split
hash (train / inner validation / held-out / test, as recorded in ``cv.json``). A CV planned before
inner validation splits (``cv.json`` without ``inner_validation``) is not resumed: planning or
running a fold of it stops with one line (:func:`require_inner_split`); its complete folds can
still be aggregated, and its report then says where those folds chose (the next fold; with 2
folds the held-out fold itself). A re-run skips every fold whose marker matches; a marker from another configuration, split
or data raises :class:`~medxcept.errors.ConfigError` naming both hashes, so folds of different
experiments are never mixed. A fold directory without a marker was interrupted: it continues from
its last per-epoch checkpoint (:func:`medxcept.models.train.fit` with ``resume=True``, which refuses a
checkpoint of another configuration or other training data), or restarts when it was killed
before its first epoch ended. A fold is run under a lock (``.<fold>.lock`` in the CV directory,
``flock``, released by the OS when the process dies): a second process on the same fold (a
resubmitted array job) stops with a clear message and never deletes the directory of a fold
another process is training.

Failures. A fold that raises, or whose process dies (``os._exit``, a killed Ray worker), is
recorded in ``<fold>/failed.json`` with its error; the other folds run on.
:func:`~medxcept.workflows.cv.run_cv` then raises :class:`FoldsFailedError` naming every failed fold
(the CLI: one line, exit 2), and the same command again runs only the folds that are not complete.

Executors (:mod:`medxcept.workflows.executors`, by name). Folds are independent: ``local`` runs them
in this process one after the other (or in ``jobs`` spawned processes), ``processes`` in ``jobs``
spawned processes, ``ray`` as one ``ray.remote`` task per fold (``pip install 'medxcept[ray]'``); a
scheduler can run ``run_cv(..., only=[i])`` per job (see ``pipelines/slurm/kfold.sbatch``). Every
executor writes the same layout, and a fold reads everything it needs from the CV directory, so the
directory must be on a shared file system when folds run on several machines.

Cohorts with more than two classes (nominal or ordinal, :mod:`medxcept.evaluation.graded`): each fold chooses
its decision rule and its endpoints' thresholds on its inner validation split, like the binary
threshold; ``cv_metrics.json`` → ``graded`` holds the per-fold patient-level kappa, grade
error, macro / weighted / per-class AUCs and endpoint metrics with their spread, and the pooled
out-of-fold metrics with patient-bootstrap CIs (:func:`medxcept.evaluation.graded.pooled_report`).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from medxcept.config import RunConfig, config_hash
from medxcept.errors import ConfigError, MedxceptError, SplitError
from medxcept.evaluation.calibrate import brier, ece, reliability_table
from medxcept.evaluation.class_metrics import class_metric_bounds
from medxcept.evaluation.clinical import OPERATING_TARGETS, clinical_reading, decision_thresholds
from medxcept.evaluation.metrics import METRICS as METRIC_REGISTRY
from medxcept.evaluation.metrics import (
    binary_metrics,
    counts_metrics,
    metric_labels,
    metric_names,
    ranking_metrics,
)
from medxcept.evaluation.references import REFERENCES, compare_with_references, reference_sentences
from medxcept.evaluation.units import aggregate_by_patient, unit_keys, unit_patients, unit_visits
from medxcept.integrity.split_keys import split_hash
from medxcept.integrity.splits import SplitConfig, assign_folds, assign_splits
from medxcept.run import DirectoryLock, json_default, load_run_config, write_atomic

__all__ = [
    "CVPlan",
    "FoldTask",
    "default_cv_name",
    "load_plan",
    "fold_table",
    "fold_split",
    "fold_counts",
    "check_fold_disjoint",
    "inner_fraction",
    "inner_seed",
    "require_inner_split",
    "fold_status",
    "t_interval",
    "cv_bounds",
    "cv_labels",
    "CV_METRICS",
    "FoldsFailedError",
    "pooled_references",
    "pooled_clinical",
    "pooled_oof_metrics",
    "combined_split_hash",
    "cv_table",
    "fold_tasks",
    "read_json",
    "write_json_atomic",
    "record_failure",
    "check_marker",
    "fold_lock",
    "prediction_frame",
]

log = logging.getLogger(__name__)

#: Metrics summarized across folds (patient level): the registry's ``cv`` flag
#: (:data:`medxcept.evaluation.metrics.METRICS`).
CV_METRICS = metric_names(cv=True)
MARKER = "fold.json"
FAILED = "failed.json"
PLAN = "cv.json"
#: The ``split`` value of a fold's inner validation rows in its fold table (:func:`fold_split`).
INNER = "inner_val"
#: A fold table's parts, in the order the report names them, and what each is called there.
FOLD_PARTS = {"train": "train", INNER: "inner_val", "val": "held_out", "test": "test"}
PLAN_PATHS = "plan_paths.json"
"""In the plan's ``private/``: the cohort file's absolute path (kept out of the shareable ``cv.json``)."""


class FoldsFailedError(MedxceptError):
    """One or more folds failed (each recorded in its ``failed.json``); the others ran."""


# ------------------------------------------------------------------------------------------ plan


@dataclasses.dataclass(frozen=True)
class FoldTask:
    """One fold of one repeat; ``index`` is its position in the flat task list (``r * k + fold``)."""

    index: int
    repeat: int
    fold: int
    name: str


@dataclasses.dataclass
class CVPlan:
    """A cross-validation as planned on disk (``cv.json`` + ``config.yaml`` + ``cohort.csv``).

    Attributes
    ----------
    path : pathlib.Path
        The CV directory.
    cfg : RunConfig
        The resolved configuration shared by every fold.
    info : dict
        The content of ``cv.json``.
    table : pandas.DataFrame
        The public cohort table with ``cv_split`` and ``fold_r<r>`` columns.
    images : numpy.ndarray or None
        Preprocessed images in ``table`` row order when already in memory.
    """

    path: Path
    cfg: RunConfig
    info: dict[str, Any]
    table: pd.DataFrame
    images: np.ndarray | None = None

    @property
    def n_folds(self) -> int:
        return int(self.info["n_folds"])

    @property
    def repeats(self) -> int:
        return int(self.info["repeats"])

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.info["classes"])

    @property
    def tasks(self) -> list[FoldTask]:
        """Every fold of every repeat, in order."""
        return fold_tasks(self.n_folds, self.repeats)


def fold_tasks(n_folds: int, repeats: int) -> list[FoldTask]:
    """Every fold of every repeat, in order (``index = repeat * n_folds + fold``)."""
    return [FoldTask(r * n_folds + i, r, i, _fold_name(r, i, repeats)) for r in range(repeats)
            for i in range(n_folds)]


def _fold_name(repeat: int, fold: int, repeats: int) -> str:
    return f"fold-{fold}" if repeats == 1 else f"r{repeat}-fold-{fold}"


def default_cv_name(cohort_name: str, cfg: RunConfig, n_folds: int, repeats: int = 1) -> str:
    """``<cohort>-cv<k>[x<repeats>]-<config hash>``: deterministic, so re-running a command resumes it."""
    slug = "".join(c if c.isalnum() or c in "_.-" else "-" for c in cohort_name).strip("-")[:40] or "cohort"
    rep = f"x{repeats}" if repeats > 1 else ""
    return f"{slug}-cv{n_folds}{rep}-{config_hash(cfg)}"


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename, so a reader never sees half a file."""
    write_atomic(path, json.dumps(data, indent=2, default=json_default) + "\n")


def read_json(path: Path) -> dict[str, Any]:
    """A CV record (``plan.json``, a fold's ``metrics.json`` ...); a missing or broken file is a clear error."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as JSON ({exc}); delete it to start this part again") from None


def _short(h: str) -> str:
    return h[:12]


def combined_split_hash(table: pd.DataFrame, repeats: int) -> str:
    """One hash of the hold-out split and every repeat's fold assignment."""
    parts = []
    for r in range(repeats):
        t = table[["image_id", "patient_key"] + [c for c in ("sha256", "frame") if c in table.columns]].copy()
        t["split"] = table["cv_split"].to_numpy()
        t["fold"] = table[f"fold_r{r}"].to_numpy()
        parts.append(split_hash(t))
    return hashlib.sha256("|".join(parts).encode()).hexdigest()


def cv_table(table: pd.DataFrame, cfg: RunConfig, n_folds: int, repeats: int,
              merge: pd.Series | None) -> pd.DataFrame:
    """Hold-out test split (as a single run makes it) plus the fold columns of every repeat."""
    out = table.drop(columns=[c for c in ("split", "fold") if c in table.columns])
    if cfg.split.test_fraction > 0:
        held = assign_splits(out, cfg.split, merge=merge)
        out["cv_split"] = np.where(held["split"].to_numpy() == "test", "test", "cv")
    else:
        out["cv_split"] = "cv"
    for r in range(repeats):
        split_cfg = dataclasses.replace(cfg.split, n_folds=n_folds, seed=cfg.split.seed + r)
        folded = assign_folds(out.assign(split=out["cv_split"]), split_cfg, exclude_test=True, merge=merge)
        out[f"fold_r{r}"] = folded["fold"].to_numpy()
    return out


def fold_table(table: pd.DataFrame, repeat: int, fold: int) -> pd.DataFrame:
    """The cohort as fold ``fold`` of repeat ``repeat`` sees it.

    ``split`` is ``train`` (the other folds), ``val`` (this fold) or ``test`` (the hold-out);
    ``fold`` is this repeat's fold assignment (-1 for the hold-out).
    """
    f = table[f"fold_r{repeat}"].to_numpy().astype(int)
    split = np.where(table["cv_split"].to_numpy() == "test", "test", np.where(f == fold, "val", "train"))
    return table.assign(split=split, fold=f)


def _fold_split_hash(table: pd.DataFrame, repeat: int, fold: int) -> str:
    """The split hash of a fold planned before inner validation splits (``cv.json`` without
    ``inner_validation``): train / held-out fold / test only."""
    return split_hash(fold_table(table, repeat, fold))


def inner_fraction(split_cfg: SplitConfig) -> float:
    """The share of the training folds' patients that each fold keeps as its inner validation split.

    ``split.inner_val_fraction``, or ``split.val_fraction`` (the single run's validation share)
    when that is unset.

    Raises
    ------
    ConfigError
        Both are 0 / unset: a fold would have nowhere to choose its epoch, calibration and threshold.
    """
    f = split_cfg.inner_val_fraction if split_cfg.inner_val_fraction is not None else split_cfg.val_fraction
    if not f:
        raise ConfigError("cross-validation chooses each fold's epoch, calibration and threshold on an inner "
                          "validation split of its training folds, but split.inner_val_fraction is unset and "
                          "split.val_fraction is 0: set one, e.g. --set split.inner_val_fraction=0.2")
    return float(f)


def inner_seed(split_seed: int, repeat: int, fold: int) -> int:
    """Seed of the inner validation split of fold ``fold`` of repeat ``repeat``:
    ``split.seed + repeat + 1000 * (fold + 1)`` (the repeat's fold seed is ``split.seed + repeat``)."""
    return int(split_seed) + int(repeat) + 1000 * (int(fold) + 1)


def fold_split(table: pd.DataFrame, split_cfg: SplitConfig, repeat: int, fold: int, *, fraction: float,
               merge: pd.Series | None = None) -> pd.DataFrame:
    """The cohort as fold ``fold`` of repeat ``repeat`` sees it, with its inner validation split.

    :func:`fold_table`, then a share ``fraction`` of the training folds' patients becomes the
    fold's inner validation split (``split == "inner_val"``): chosen by
    :func:`medxcept.integrity.splits.assign_splits`, the function that makes the single run's validation
    split, so it is patient-grouped (``split.group_column``, and ``merge``: the audit's duplicate
    groups under ``audit.on_leak: fix``), stratified on the patient label, holds every class on
    both sides, and is a function of the data and the seed :func:`inner_seed` only.

    Parameters
    ----------
    table : pandas.DataFrame
        The plan's cohort table (``cv_split``, ``fold_r<repeat>``, ``patient_key``, ``y``/``label``).
    split_cfg : SplitConfig
        ``seed``, ``group_column`` and ``patient_label`` are used; fractions and ``user_split`` are not.
    repeat, fold : int
        Which fold.
    fraction : float
        :func:`inner_fraction` of the configuration.
    merge : pandas.Series, optional
        Duplicate groups per ``image_id`` (:func:`medxcept.integrity.audit.duplicate_groups`), kept on one side.

    Returns
    -------
    pandas.DataFrame
        A copy of ``table`` with ``split`` (``train`` | ``inner_val`` | ``val``: the held-out fold
        | ``test``) and ``fold``.

    Raises
    ------
    SplitError
        The training folds hold too few patients of a class for both sides.

    Examples
    --------
    >>> t = pd.DataFrame({"image_id": [f"i{k}" for k in range(60)],
    ...                   "patient_key": [f"P-{k:02d}" for k in range(60)],
    ...                   "y": [k % 2 for k in range(60)], "cv_split": "cv",
    ...                   "fold_r0": [k // 2 % 3 for k in range(60)]})
    >>> f = fold_split(t, SplitConfig(), 0, 0, fraction=0.2)
    >>> f.drop_duplicates("patient_key")["split"].value_counts().sort_index().to_dict()
    {'inner_val': 8, 'train': 32, 'val': 20}
    """
    out = fold_table(table, repeat, fold)
    train = np.flatnonzero(out["split"].to_numpy() == "train")
    cfg = dataclasses.replace(split_cfg, test_fraction=0.0, val_fraction=float(fraction), user_split=None,
                              inner_val_fraction=None, seed=inner_seed(split_cfg.seed, repeat, fold))
    split_log = logging.getLogger("medxcept.integrity.splits")
    level = split_log.level
    split_log.setLevel(logging.WARNING)  # its "split N patients into train/val" line would name the wrong split
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a thin inner split is said by plan_cv, in its own words
            inner = assign_splits(out.iloc[train], cfg, merge=merge)
    except SplitError as exc:
        raise SplitError(f"fold {fold} of repeat {repeat}: its training folds cannot give an inner validation split "
                         f"of {fraction:g} of their patients with every class on both sides. {exc}") from None
    finally:
        split_log.setLevel(level)
    split = out["split"].to_numpy().astype(object)
    split[train[inner["split"].to_numpy() == "val"]] = INNER
    return out.assign(split=split)


def fold_counts(table: pd.DataFrame) -> dict[str, dict[str, int]]:
    """Patients, images and positive patients (any class above the first) of each part of a fold table.

    Keys: ``train``, ``inner_val``, ``held_out`` (the fold's own patients) and ``test`` (the hold-out).
    """
    out = {}
    for part, key in FOLD_PARTS.items():
        f = table[table["split"].to_numpy() == part]
        pos = int((f.groupby("patient_key")["y"].max() > 0).sum()) if len(f) else 0
        out[key] = {"patients": int(f["patient_key"].nunique()), "images": int(len(f)), "positive_patients": pos}
    return out


def check_fold_disjoint(table: pd.DataFrame, name: str) -> None:
    """Raise unless every patient of a fold table is in exactly one of its parts.

    Raises
    ------
    SplitError
        A patient is in two of train / inner validation / held-out fold / hold-out test.
    """
    n = table.groupby(table["patient_key"].astype(str))["split"].nunique()
    if (n > 1).any():
        raise SplitError(f"{name}: {int((n > 1).sum())} patient(s) are in two of train / inner validation / "
                         "held-out fold / hold-out test: the fold must not run (please report this as a bug)")


def require_inner_split(info: dict[str, Any], path: Path) -> None:
    """Refuse to run folds of a plan made before inner validation splits (``cv.json`` without
    ``inner_validation``), whose folds chose on a whole fold (with 2 folds, the held-out fold).

    Raises
    ------
    ConfigError
        One line: what the plan is, and what to do (aggregate it, or start it again).
    """
    if "inner_validation" not in info:
        raise ConfigError(
            f"{path} was planned before k-fold inner validation splits were sized by split.inner_val_fraction "
            "(its cv.json records no inner_validation; its folds chose the epoch, calibration and threshold on a "
            "whole fold, with 2 folds on the held-out fold itself): this version does not resume it. Its complete "
            f"folds can still be aggregated (--aggregate {path}); to run it with the new inner split, delete the "
            "folder or use another --cv-name.")


def _planned_fold_hash(plan: CVPlan, task: FoldTask) -> str:
    """A fold's split hash as planned: recorded in ``cv.json`` (with its inner validation split), or, for a
    plan made before inner validation splits, the train / held-out / test hash computed as then."""
    if "inner_validation" in plan.info:
        return str(plan.info["folds"][task.index]["split_hash"])
    return _fold_split_hash(plan.table, task.repeat, task.fold)


def _read_cohort_csv(path: Path) -> pd.DataFrame:
    text_cols = ("image_id", "path", "patient_key", "study_id", "laterality", "label", "source", "modality",
                 "sha256", "cv_split", "sex", "visit", "group", "reader")
    head = pd.read_csv(path, nrows=0)
    dtype = {c: str for c in head.columns if c in text_cols}
    # keep_default_na=False: laterality "NA" is a value, not a missing one
    df = pd.read_csv(path, dtype=dtype, keep_default_na=False, na_values={c: [""] for c in head.columns
                                                                          if c not in text_cols})
    return df


def load_plan(cv_dir: str | Path) -> CVPlan:
    """Read a CV directory written by :func:`plan_cv` (no image in memory).

    Raises
    ------
    ConfigError
        ``cv_dir`` is not a CV directory, or its ``config.yaml`` no longer gives its hash.
    """
    path = Path(cv_dir).resolve()
    if not (path / PLAN).is_file():
        raise ConfigError(f"{path} is not a cross-validation directory (no {PLAN}); run "
                          "`python -m pipelines.kfold --cohort ...` first")
    info = read_json(path / PLAN)
    if "cohort_file" not in info and (path / "private" / PLAN_PATHS).is_file():
        info = {**info, **read_json(path / "private" / PLAN_PATHS)}  # plans of issue 33 on
    cfg = load_run_config(path)
    if config_hash(cfg) != info["config_hash"]:
        raise ConfigError(f"{path / 'config.yaml'} resolves to configuration {config_hash(cfg)}, but {PLAN} "
                          f"records {info['config_hash']}: the file was edited; restore it or start a new CV")
    table = _read_cohort_csv(path / "cohort.csv")
    return CVPlan(path=path, cfg=cfg, info=info, table=table)


def fold_status(plan: CVPlan) -> dict[str, str]:
    """``complete`` / ``interrupted`` / ``missing`` for every fold name, checking every marker.

    Raises
    ------
    ConfigError
        A fold marker records another configuration, data or split than the plan (both hashes named).
    """
    out = {}
    for t in plan.tasks:
        d = plan.path / t.name
        if (d / MARKER).is_file():
            check_marker(plan, t, read_json(d / MARKER))
            out[t.name] = "complete"
        elif (d / FAILED).is_file():
            out[t.name] = "failed"
        else:
            out[t.name] = "interrupted" if d.exists() else "missing"
    return out


def fold_lock(plan_path: Path, task: FoldTask) -> Any:
    """The fold's lock file sits in the CV directory (``.<fold>.lock``), outside the fold directory,
    so that restarting a fold (deleting its directory) can never delete a lock another process holds."""
    return DirectoryLock(plan_path / f".{task.name}.lock", f"{task.name} of {plan_path}")


def record_failure(fdir: Path, task: FoldTask, error_class: str, message: str, detail: str = "") -> None:
    """``failed.json`` in the fold directory: why the fold failed (a re-run retries it)."""
    fdir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(fdir / FAILED, {"name": task.name, "fold": task.fold, "repeat": task.repeat,
                                       "error_class": error_class, "message": message, "detail": detail[-4000:],
                                       "failed": _dt.datetime.now().isoformat(timespec="seconds")})


def check_marker(plan: CVPlan, task: FoldTask, marker: dict[str, Any]) -> None:
    """A complete fold's marker must name this plan's config, data and fold split; else a clear error."""
    where = plan.path / task.name / MARKER
    expected = {"config_hash": plan.info["config_hash"], "data_hash": plan.info["data_hash"],
                "split_hash": _planned_fold_hash(plan, task)}
    for key, value in expected.items():
        if marker.get(key) != value:
            what = key.replace("_hash", "")
            raise ConfigError(
                f"{where} was made with {what} hash {_short(str(marker.get(key)))}, but this cross-validation "
                f"has {what} hash {_short(value)}: folds of different {what}s are never mixed. Delete "
                f"{plan.path / task.name} to re-run that fold with the current plan, or use another --cv-name.")


# ----------------------------------------------------------------------------------- fold files


def prediction_frame(frame: pd.DataFrame, task: FoldTask, threshold: float, how: str,
                      unit: str = "visit") -> pd.DataFrame:
    """A fold's prediction rows, with each image's evaluation unit (``unit_key``: the patient, or
    patient and visit) and the unit's aggregated probability (``patient_prob``)."""
    frame = frame.assign(unit_key=unit_keys(frame["patient_key"], unit_visits(frame, unit)))
    cols = [c for c in ("image_id", "patient_key", "study_id", "unit_key", "laterality", "source", "label", "y",
                        "logit", "prob_raw", "prob") if c in frame.columns]
    out = frame[cols].copy()
    out.insert(0, "repeat", task.repeat)
    out.insert(1, "fold", task.fold)
    out["threshold"] = threshold
    pat = out.groupby("unit_key")["prob"].agg(how).rename("patient_prob")
    return out.merge(pat, left_on="unit_key", right_index=True, how="left")


def _pooled_units(df: pd.DataFrame) -> np.ndarray:
    """The pooled evaluation unit of each row: (repeat, unit), never a unit across repeats. Older
    fold files without ``unit_key``: (repeat, patient)."""
    key = df["unit_key"] if "unit_key" in df else df["patient_key"]
    return ("r" + df["repeat"].astype(str) + ":" + key.astype(str)).to_numpy()


def _pooled_patients(units: ArrayLike) -> np.ndarray:
    """The patient of each pooled unit (:func:`_pooled_units`), repeat prefix removed: the cluster a
    pooled bootstrap resamples. A patient predicted in every repeat is one cluster, not one per
    repeat: repeating the same folds adds no new patients, so it must not narrow an interval."""
    return np.array([str(p).split(":", 1)[1] for p in unit_patients(units)], dtype=object)


def _pooled_rank(df: pd.DataFrame, unit: np.ndarray, how: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Each pooled unit's uncalibrated ranking score: the logit of its aggregated probability (fold
    files with ``logit``), else its aggregated ``prob_raw``; never the calibrated ``prob`` (isotonic
    ties units, and each fold's calibrator maps scores differently)."""
    if "logit" in df and df["logit"].notna().all():
        keys, _, z = aggregate_by_patient(unit, df["y"].to_numpy(), df["logit"].to_numpy(np.float64), how=how,
                                          scale="logit")
        return keys, z, "uncalibrated logits (logit of each unit's aggregated probability)"
    keys, _, pr = aggregate_by_patient(unit, df["y"].to_numpy(), df["prob_raw"].to_numpy(np.float64), how=how)
    return keys, pr, "uncalibrated probabilities (prob_raw)"


# ------------------------------------------------------------------------------------- aggregate


def graded_fold_summary(rows: Sequence[dict[str, Any]], columns: Sequence[str], n_classes: int) -> dict[str, Any]:
    """Across-fold :func:`t_interval` of each k-class column of the per-fold rows
    (:func:`medxcept.evaluation.graded.fold_row`), clipped to the metric's range from the k-class registry
    (:func:`medxcept.evaluation.class_metrics.class_metric_bounds`: kappa in [-1, 1], grade error in
    [0, k - 1], the rest in [0, 1])."""
    return {k: t_interval([r.get(k) for r in rows], bounds=class_metric_bounds(k, n_classes)) for k in columns}


def t_interval(values: Sequence[float | None], confidence: float = 0.95,
               bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """Mean, SD (ddof=1) and the t-interval of the mean of the defined values.

    Parameters
    ----------
    values : sequence of float or None
        One value per fold; ``None`` and NaN (metric undefined in that fold) are left out.
    confidence : float, default 0.95
    bounds : (float, float), optional
        Clip the interval to the metric's range (e.g. ``(0, 1)``).

    Returns
    -------
    dict
        ``n`` (values used), ``mean``, ``sd``, ``low``, ``high``: ``mean ± t(1 - α/2, n - 1) · sd / √n``;
        ``None`` where undefined (SD and interval need two values).

    Examples
    --------
    >>> r = t_interval([0.7, 0.8, 0.9])
    >>> round(r["mean"], 3), round(r["sd"], 3), round(r["low"], 3), round(r["high"], 3)
    (0.8, 0.1, 0.552, 1.048)
    """
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))],
                 dtype=float)
    n = int(v.size)
    out: dict[str, Any] = {"n": n, "mean": None, "sd": None, "low": None, "high": None}
    if n == 0:
        return out
    out["mean"] = float(v.mean())
    if n >= 2:
        sd = float(v.std(ddof=1))
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
        low, high = out["mean"] - half, out["mean"] + half
        if bounds is not None:
            low, high = max(low, bounds[0]), min(high, bounds[1])
        out.update(sd=sd, low=low, high=high)
    return out


def pooled_oof_metrics(frames: list[pd.DataFrame], how: str, n_bins: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pooled patient-level OOF metrics (each fold's own threshold), the reliability tables and the
    figure's data: ``y``, calibrated ``prob`` (the operating point) and ``score``, what the pooled
    ROC-AUC ranks (each fold's uncalibrated logits), so the drawn curve's AUC is the stated one."""
    df = pd.concat(frames, ignore_index=True)
    # a patient is predicted once per repeat: pool (repeat, unit), never a patient across repeats
    unit = _pooled_units(df)
    keys, y, p = aggregate_by_patient(unit, df["y"].to_numpy(), df["prob"].to_numpy(), how=how)
    _, _, pr = aggregate_by_patient(unit, df["y"].to_numpy(), df["prob_raw"].to_numpy(), how=how)
    _, score, ranked_on = _pooled_rank(df, unit, how)
    threshold = df.assign(unit=unit).groupby("unit")["threshold"].first().reindex(keys).to_numpy()
    y = y.astype(int)
    pred = p >= threshold
    tp, fp = int((pred & (y == 1)).sum()), int((pred & (y == 0)).sum())
    fn, tn = int((~pred & (y == 1)).sum()), int((~pred & (y == 0)).sum())
    # ranking metrics of the folds' uncalibrated scores, never of each fold's calibrated prob
    rank = ranking_metrics(y, score)
    counted = counts_metrics(tp, fp, tn, fn, [m for m in CV_METRICS if m in metric_names(kinds=("counts",))])
    metrics: dict[str, Any] = {}
    for m in CV_METRICS:
        if m in rank and m in metric_names(kinds=("rank",)):
            metrics[m] = rank[m]
        elif m in counted:
            metrics[m] = None if np.isnan(counted[m]) else float(counted[m])
    metrics.update({"ece": ece(y, p, n_bins=n_bins), "brier": brier(y, p),
                    "ece_raw": ece(y, pr, n_bins=n_bins), "brier_raw": brier(y, pr),
                    "roc_auc_raw": rank["roc_auc"], "roc_auc_calibrated": binary_metrics(y, p, threshold=0.5)["roc_auc"],
                    "ranked_on": ranked_on,
                    "tp": tp, "fp": fp, "tn": tn, "fn": fn, "n": int(len(y)), "n_pos": int(y.sum()),
                    "n_images": int(len(df)), "median_threshold": float(np.median(threshold)), "n_bins": n_bins})
    rel = {"before": reliability_table(y, pr, n_bins=n_bins).to_dict("records"),
           "after": reliability_table(y, p, n_bins=n_bins).to_dict("records"),
           # the ROC / PR figure draws the scores the pooled AUC ranks; its operating point is on ``prob``
           "y": y, "prob": p, "score": score, "ranked_on": ranked_on}
    return metrics, rel


def pooled_clinical(frames: list[pd.DataFrame], fold_operating: list[list[dict[str, Any]] | None], eval_cfg: Any,
                    *, seed: int = 0) -> dict[str, Any] | None:
    """The clinical reading (:func:`medxcept.evaluation.clinical.clinical_reading`) of the pooled out-of-fold units.

    Each fold's units keep that fold's recalibration and, for the operating points, that fold's thresholds
    chosen on its inner validation split (``fold_operating[i]``: the ``operating_points`` of frame ``i``'s
    fold); a unit is predicted once per repeat, and the bootstrap resamples (repeat, patient).
    ``None`` when a fold file lacks the uncalibrated scores or the pooled units have one class.
    """
    df = pd.concat([f.assign(_frame=i) for i, f in enumerate(frames)], ignore_index=True)
    if "prob_raw" not in df or df["y"].nunique() < 2:
        return None
    unit = _pooled_units(df)
    how = eval_cfg.patient_aggregation
    keys, y, p = aggregate_by_patient(unit, df["y"].to_numpy(), df["prob"].to_numpy(), how=how)
    _, _, pr = aggregate_by_patient(unit, df["y"].to_numpy(), df["prob_raw"].to_numpy(), how=how)
    _, score, _ = _pooled_rank(df, unit, how)  # what the pooled AUC ranks: each fold's logits
    frame_of = df.assign(unit=unit).groupby("unit")["_frame"].first().reindex(keys).to_numpy()
    operating, per_unit = [], []
    for i, (fixed, target) in enumerate(OPERATING_TARGETS):
        per_fold = [None if not ops or i >= len(ops) else ops[i].get("threshold") for ops in fold_operating]
        operating.append({"fixed": fixed, "target": target, "threshold": None, "val_sensitivity": None,
                          "val_specificity": None, "per_fold_thresholds": per_fold,
                          "note": "each fold's own threshold, chosen on its inner validation split"})
        per_unit.append(np.array([np.nan if per_fold[f] is None else per_fold[f] for f in frame_of], dtype=float))
    visits = any(" @ " in str(k) for k in keys)
    out = clinical_reading(y.astype(int), p, pr, _pooled_patients(keys), operating=operating,
                           operating_per_unit=per_unit, thresholds=decision_thresholds(*eval_cfg.decision_thresholds),
                           prevalence=eval_cfg.prevalence, n_resamples=eval_cfg.n_bootstrap, seed=seed,
                           unit="visit" if visits else "patient", y_rank=score)
    out["calibration_method"] = eval_cfg.calibration
    return out


def pooled_references(frames: list[pd.DataFrame], how: str, *, n_resamples: int = 1000,
                      seed: int = 0) -> dict[str, Any] | None:
    """The reference models pooled over the folds, next to the deep model's pooled out-of-fold AUC.

    Each fold fitted the references on its training folds and scored its held-out fold
    (``ref_<name>`` columns of ``oof_predictions.csv``); pooling every fold's held-out units gives
    each reference's pooled out-of-fold AUC, compared with the deep model's pooled uncalibrated scores
    (each fold's ``logit``, else ``prob_raw``: what the pooled ROC-AUC of the CV report ranks) by
    :func:`medxcept.evaluation.references.compare_with_references`: paired difference with a bootstrap CI
    resampling patients (one cluster per patient across repeats), DeLong p, the p it states
    (``test_used``) and the sentences, the classical model first.

    Returns None when the fold files have no reference scores (folds run before references existed).
    """
    df = pd.concat(frames, ignore_index=True)
    names = [n for n in REFERENCES if f"ref_{n}" in df]
    if not names or df[[f"ref_{n}" for n in names]].isna().any().any():
        return None
    refs = {n: {"scores": df[f"ref_{n}"].to_numpy(np.float64), "label": REFERENCES[n],
                "detail": "fitted in each fold on its training folds, scored on its held-out fold"} for n in names}
    # unit keys carry the repeat; the bootstrap cluster is the patient, across repeats
    units = _pooled_units(df)
    logit = "logit" in df and df["logit"].notna().all()
    deep = df["logit" if logit else "prob_raw"].to_numpy(np.float64)
    block = compare_with_references(df["y"].to_numpy(), deep, refs, units, how=how, n_resamples=n_resamples,
                                    seed=seed, scale="logit" if logit else "probability",
                                    clusters=_pooled_patients(units))
    block["deep_scores"] = ("pooled out-of-fold uncalibrated " + ("logits" if logit else "probabilities (prob_raw)")
                            + ", as the pooled ROC-AUC")
    block["sentences"] = reference_sentences(block)
    return block


def cv_bounds() -> dict[str, tuple[float, float]]:
    """The range of each CV metric (its t-interval is clipped to it)."""
    return {m.name: m.bounds for m in METRIC_REGISTRY if m.name in CV_METRICS}


def cv_labels() -> dict[str, str]:
    """How the CV report names each CV metric."""
    labels = metric_labels()
    return {m: labels[m] for m in CV_METRICS}


