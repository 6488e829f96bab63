"""The cross-validation workflow: plan the folds, run each fold, aggregate the CV report.

``python -m pipelines.kfold`` calls :func:`run_cv`. A fold is :func:`medxcept.workflows.fold.run_fold`
(measured through the one assessment, :mod:`medxcept.evaluation.assess`); the CV report states where
the folds chose their epoch, calibrator, threshold and decision rule from the folds' own
``metrics.json["method"]`` records (:func:`recorded_method`). What a fold measures and why (calibration and
threshold from each fold's inner validation split, the pooled out-of-fold estimate, resuming, failures) is in
:mod:`medxcept.evaluation.kfold`, which also holds the plan on disk (``cv.json``, fold markers, fold tables)
and the statistics across folds; this module composes the steps and runs the folds.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxcept import errors
from medxcept.cohort.table import public_view
from medxcept.config import RunConfig, config_hash
from medxcept.errors import ConfigError, MedxceptError
from medxcept.evaluation.graded import check_task_config, endpoint_scores, fold_row, pooled_report
from medxcept.evaluation.kfold import (
    CV_METRICS,
    FAILED,
    INNER,
    PLAN,
    PLAN_PATHS,
    CVPlan,
    FoldsFailedError,
    FoldTask,
    check_fold_disjoint,
    combined_split_hash,
    cv_bounds,
    cv_labels,
    cv_table,
    default_cv_name,
    fold_counts,
    fold_split,
    fold_status,
    fold_tasks,
    graded_fold_summary,
    inner_fraction,
    inner_seed,
    load_plan,
    pooled_clinical,
    pooled_oof_metrics,
    pooled_references,
    read_json,
    record_failure,
    require_inner_split,
    t_interval,
    write_json_atomic,
)
from medxcept.evaluation.metrics import metric_names
from medxcept.images.cache import decode_key, load_images
from medxcept.integrity.audit import AuditReport, Finding, audit_cohort, duplicate_groups, fingerprints
from medxcept.integrity.split_keys import split_hash
from medxcept.models.backbones import get_backbone
from medxcept.report import environment
from medxcept.report.figures import clinical_figure, fold_curves_figure, reliability_figure, roc_pr_figure
from medxcept.report.graded import graded_figures
from medxcept.run import RunDir, data_hash, write_atomic
from medxcept.workflows.executors import Executor, make_executor
from medxcept.workflows.fold import run_fold, task_of
from medxcept.workflows.steps import (
    prepare_cohort,
    record_ingestion,
)

__all__ = ["plan_cv", "run_fold", "run_cv", "aggregate_cv"]

log = logging.getLogger("medxcept.evaluation.kfold")  # the log lines keep their logger name


# ------------------------------------------------------------------------------------------ plan


def plan_cv(cfg: RunConfig, spec: Any, *, n_folds: int | None = None, repeats: int = 1,
            cv_dir: str | Path | None = None, cohort_file: str | Path | None = None) -> CVPlan:
    """Ingest the cohort, assign the folds, audit them, and write (or check) the CV directory.

    Parameters
    ----------
    cfg : RunConfig
        The resolved configuration (``split``, ``audit``, ``train``, ``eval`` ...).
    spec : CohortSpec
        The cohort (:func:`medxcept.cohort.table.load_cohort_spec`).
    n_folds : int, optional
        Folds per repeat; default ``cfg.split.n_folds``. Stored in the configuration (and hash).
    repeats : int, default 1
        Repeated CV: repeat ``r`` assigns folds with seed ``split.seed + r``.
    cv_dir : path, optional
        Default ``<cfg.out_dir>/<default_cv_name(...)>``.
    cohort_file : path, optional
        The cohort YAML (default ``cfg.cohort``); recorded so that a fold running on a machine
        without the preprocessing cache can ingest the cohort again.

    Returns
    -------
    CVPlan
        With the preprocessed images in memory.

    Raises
    ------
    ConfigError
        ``cv_dir`` holds a CV of another configuration, data or split (both hashes named); an
        ordinal loss on a task without order; ``repeats < 1``.
    SplitError, LeakageError
        The folds cannot each hold every class; the audit found leakage under ``on_leak=error``.
    """
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ConfigError(f"repeats={repeats!r} must be an integer >= 1")
    check_task_config(spec.task, spec.n_classes, cfg.train.ordinal_loss)
    inner_fraction(cfg.split)  # refused before anything is ingested when there is no inner split to make
    k = int(n_folds if n_folds is not None else cfg.split.n_folds)
    cfg = dataclasses.replace(cfg, split=dataclasses.replace(cfg.split, n_folds=k))
    path = Path(cv_dir) if cv_dir is not None else Path(cfg.out_dir) / default_cv_name(spec.name, cfg, k, repeats)
    path = path.resolve()
    existing = read_json(path / PLAN) if (path / PLAN).is_file() else None
    if existing is not None:
        require_inner_split(existing, path)
    chash = config_hash(cfg)
    if existing is not None and existing.get("config_hash") != chash:
        raise ConfigError(
            f"{path} holds a cross-validation with configuration {existing.get('config_hash')}, but this "
            f"command resolves to configuration {chash}: folds of different configurations are never mixed. "
            "Use another --cv-name (or the default name), or delete that folder to start again.")

    ing, cache = prepare_cohort(spec, cfg)
    images = load_images(ing.table, cache, cfg.preprocess)
    merge = None
    if cfg.audit.on_leak == "fix":
        merge = duplicate_groups(ing.table, fingerprints(images), cfg.audit.hamming_threshold)
    table = cv_table(ing.table, cfg, k, repeats, merge).reset_index(drop=True)
    folds = _plan_folds(table, cfg, k, repeats, merge)
    info = {
        "kind": "medxcept k-fold cross-validation",
        "cohort_name": spec.name,
        "classes": list(spec.classes), "task": spec.task,
        "endpoints": [{"name": e.name, "positive": list(e.positive), "rule": e.rule} for e in spec.endpoints],
        "n_folds": k, "repeats": repeats,
        "fold_seeds": [cfg.split.seed + r for r in range(repeats)],
        "holdout_test": bool((table["cv_split"] == "test").any()),
        "config_hash": chash, "data_hash": data_hash(table, decode=decode_key(spec)),
        "decode_key": decode_key(spec),
        "split_hash": hashlib.sha256("|".join([combined_split_hash(table, repeats)]
                                              + [f["split_hash"] for f in folds]).encode()).hexdigest(),
        "inner_validation": {
            "fraction": inner_fraction(cfg.split),
            "fraction_from": "split.inner_val_fraction" if cfg.split.inner_val_fraction is not None
            else "split.val_fraction",
            "of": "the patients of each fold's training folds",
            "made_by": "medxcept.integrity.splits.assign_splits, as the single run's validation split: patient-grouped, "
                       "stratified on the patient label, every class on both sides",
            "seed": "split.seed + repeat + 1000 * (fold + 1)"},
        "folds": folds,
    }
    if existing is not None:
        for key, what in (("data_hash", "data"), ("split_hash", "split"), ("n_folds", "number of folds"),
                          ("repeats", "number of repeats")):
            if existing.get(key) != info[key]:
                raise ConfigError(
                    f"{path} holds a cross-validation with {what} {existing.get(key)}, but this command gives "
                    f"{what} {info[key]} (configuration {chash} in both): folds of different {what}s are never "
                    "mixed. Use another --cv-name, or delete that folder to start again.")
    path.mkdir(parents=True, exist_ok=True)
    run = RunDir(path)
    if existing is None:
        # concurrent array jobs may all get here: every file is identical and written atomically
        run.write_config(cfg)
        # the cohort file's path names where the data lives: private/, read back by load_plan
        run.write_private(PLAN_PATHS, json.dumps({"cohort_file": str(Path(cohort_file or cfg.cohort).resolve())}))
        record_ingestion(run, ing)  # shared exclusions.csv; paths and identifiers in private/
        run.write_csv("cohort.csv", public_view(table))
    # the audit of the whole partition: every fold's train/val and the hold-out, before any training
    report = audit_every_repeat(table, repeats, fp=fingerprints(images), cfg=cfg)
    if existing is None or not (path / "audit.json").is_file():
        write_json_atomic(path / "audit.json", report.to_dict())  # a resumed plan leaves it as it was
    report.raise_if_errors()
    for f in report.findings:
        if f.severity == "warning":
            log.warning("! audit: %s", f.message)
    if existing is None:
        write_json_atomic(path / PLAN, {**info, "created": _dt.datetime.now().isoformat(timespec="seconds")})
    log.info("cross-validation %s: %d fold(s) x %d repeat(s) over %d patient(s)%s", path, k, repeats,
             table.loc[table["cv_split"] == "cv", "patient_key"].nunique(),
             f", hold-out test of {table.loc[table['cv_split'] == 'test', 'patient_key'].nunique()} patient(s)"
             if info["holdout_test"] else "")
    return CVPlan(path=path, cfg=cfg, info=read_json(path / PLAN), table=public_view(table), images=images)



def _plan_folds(table: pd.DataFrame, cfg: RunConfig, n_folds: int, repeats: int,
                merge: pd.Series | None) -> list[dict[str, Any]]:
    """Every fold's record for ``cv.json``: its task, inner validation seed, split hash (train /
    inner validation / held-out fold / hold-out test) and the patients and images of each part."""
    fraction = inner_fraction(cfg.split)
    out = []
    for t in fold_tasks(n_folds, repeats):
        ft = fold_split(table, cfg.split, t.repeat, t.fold, fraction=fraction, merge=merge)
        check_fold_disjoint(ft, t.name)
        counts = fold_counts(ft)
        inner = ft[ft["split"] == INNER]
        per_class = inner.groupby("patient_key")["y"].max().value_counts()
        if (per_class == 1).any():
            log.warning("! %s: the inner validation split (%d patient(s)) holds a single patient of a class; the "
                        "epoch, calibration and threshold of that fold rest on one person (raise "
                        "split.inner_val_fraction, or use fewer folds)", t.name, counts["inner_val"]["patients"])
        out.append({**dataclasses.asdict(t), "inner_seed": inner_seed(cfg.split.seed, t.repeat, t.fold),
                    "split_hash": split_hash(ft), "counts": counts})
    return out
def audit_every_repeat(table: pd.DataFrame, repeats: int, *, fp: dict[str, np.ndarray] | None,
                       cfg: RunConfig) -> AuditReport:
    """The integrity audit of every repeat's partition (``fold_r0``, ``fold_r1``, ...), as one report.

    Repeat 0's findings come first, as they are; a later repeat adds each error or warning that
    repeat 0 does not have (same kind, severity and count), its message starting ``repeat r:``
    and its details naming the repeat. Without this a duplicate pair kept in one fold by repeat 0
    but split by a later repeat surfaced only mid-run, as a failed fold (issue 33).

    Parameters
    ----------
    table : pandas.DataFrame
        The plan's table: ``cv_split`` and ``fold_r<r>`` for ``r < repeats``.
    repeats : int
        Number of repeats.
    fp : dict, optional
        Fingerprints of the images, in row order.
    cfg : RunConfig
        ``audit.on_leak``, ``audit.hamming_threshold`` and ``split.group_column`` are used.

    Returns
    -------
    AuditReport
    """
    reports = [audit_cohort(table.assign(split=table["cv_split"], fold=table[f"fold_r{r}"]), fp=fp,
                            policy=cfg.audit.on_leak, hamming_threshold=cfg.audit.hamming_threshold,
                            group_column=cfg.split.group_column) for r in range(repeats)]
    report = reports[0]
    seen = {(f.kind, f.severity, f.count) for f in report.findings}
    for r, other in enumerate(reports[1:], start=1):
        for f in other.findings:
            if f.severity == "info" or (f.kind, f.severity, f.count) in seen:
                continue
            report.findings.append(Finding(f.kind, f.severity, f"repeat {r}: {f.message}", f.count,
                                           [{"repeat": r, **d} for d in f.details]))
    return report


# ------------------------------------------------------------------------------- fold entry points


def _worker(cv_dir: str, task_index: int, save_model: bool, env: dict[str, str], log_level: int) -> dict[str, Any]:
    """Entry point of a fold in another process (spawned or Ray); errors come back as values."""
    for k, v in env.items():
        os.environ.setdefault(k, v)
    root = logging.getLogger("medxcept")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        root.addHandler(handler)
        root.setLevel(log_level)
    return _guarded_fold(cv_dir, task_index, images=None, save_model=save_model)


def _guarded_fold(cv_dir: str | Path, task_index: int, *, images: np.ndarray | None,
                  save_model: bool) -> dict[str, Any]:
    """:func:`run_fold`, with any exception returned as a value and recorded in the fold's
    ``failed.json`` (one failing fold must not stop the others)."""
    try:
        return run_fold(cv_dir, task_index, images=images, save_model=save_model)
    except Exception as exc:  # noqa: BLE001 - every failure of a fold is recorded, then reported
        result = {"index": task_index, "status": "error", "error_class": type(exc).__name__, "message": str(exc)}
        locked = isinstance(exc, MedxceptError) and "in use by another process" in str(exc)
        try:
            tasks = load_plan(cv_dir).tasks
        except MedxceptError:
            return result
        if 0 <= task_index < len(tasks):
            result["name"] = tasks[task_index].name
            if not locked:  # a fold another process runs is not a failed fold
                record_failure(Path(cv_dir).resolve() / tasks[task_index].name, tasks[task_index],
                                type(exc).__name__, str(exc), traceback.format_exc())
        return result


def _raise_worker_error(result: dict[str, Any]) -> None:
    cls = getattr(errors, result.get("error_class", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, MedxceptError)) or cls is errors.ReadError:
        cls = MedxceptError
    raise cls(result["message"])


def run_cv(cfg: RunConfig, spec: Any, *, n_folds: int | None = None, repeats: int = 1,
           cv_dir: str | Path | None = None, only: Sequence[int] | None = None,
           executor: str | Executor = "local", jobs: int = 1, executor_options: Mapping[str, Any] | None = None,
           save_model: bool = True, aggregate: bool | None = None,
           cohort_file: str | Path | None = None) -> dict[str, Any]:
    """Plan (or resume) a cross-validation, run the folds that are not complete, and aggregate.

    Parameters
    ----------
    cfg, spec, n_folds, repeats, cv_dir, cohort_file
        As in :func:`plan_cv`.
    only : sequence of int, optional
        Task indices (``repeat * n_folds + fold``) to run; default all. An empty sequence only
        plans (writes the CV directory, trains nothing).
    executor : str or Executor, default "local"
        A name of :data:`medxcept.workflows.executors.EXECUTORS` (``local``: in this process, or
        ``jobs`` spawned processes; ``processes``; ``ray``: one ``ray.remote`` task per fold), or
        an executor object.
    jobs : int, default 1
        Concurrent folds of the ``local`` / ``processes`` executors.
    executor_options : mapping, optional
        Options of the named executor, e.g. ``{"address": ..., "num_cpus": 1, "num_gpus": 0}``
        for ``ray``.
    save_model : bool, default True
        Keep every fold's ``model.keras``.
    aggregate : bool, optional
        Write the CV report afterwards; default: when every fold is complete.

    Returns
    -------
    dict
        ``path`` (the CV directory), ``trained`` and ``skipped`` (fold names), ``missing`` (folds
        not complete afterwards) and ``report`` (path of ``cv_report.html`` or ``None``).
    """
    # made (and Ray checked) before anything is ingested or trained
    runner = make_executor(executor, jobs, executor_options) if isinstance(executor, str) else executor
    if cfg.model.weights == "imagenet":
        from medxcept.models.network import (
            fetch_imagenet_weights,  # here: Keras is imported only when it is needed
        )

        fetch_imagenet_weights(cfg.model.backbone)  # downloaded (or refused) once, before ingestion, not inside a fold
    plan = plan_cv(cfg, spec, n_folds=n_folds, repeats=repeats, cv_dir=cv_dir, cohort_file=cohort_file)
    tasks = plan.tasks
    wanted = tasks if only is None else []
    for i in dict.fromkeys(only or []):  # each fold once, in the order given
        if not 0 <= int(i) < len(tasks):
            raise ConfigError(f"--fold {i} is out of range: this cross-validation has {len(tasks)} fold(s) "
                              f"(0..{len(tasks) - 1}; with repeats, index = repeat * {plan.n_folds} + fold)")
        wanted.append(tasks[int(i)])
    status = fold_status(plan)  # raises on a marker of another configuration before anything trains
    skipped = [t.name for t in wanted if status[t.name] == "complete"]
    for name in skipped:
        log.info("%s: complete (fold.json matches configuration %s), skipped", name, plan.info["config_hash"])
    todo = [t for t in wanted if status[t.name] != "complete"]
    if todo:
        log.info("running %d fold(s) with the %s executor: %s", len(todo),
                 executor if isinstance(executor, str) else type(executor).__name__,
                 ", ".join(t.name for t in todo))
    results: list[dict[str, Any]] = []
    if todo:
        results = runner.run(plan, todo, save_model=save_model, in_process=_guarded_fold, worker=_worker)
    errors = [r for r in results if r.get("status") == "error"]
    trained = [r["name"] for r in results if r["status"] == "trained"]
    skipped += [r["name"] for r in results if r["status"] == "skipped"]
    if errors:
        for r in errors:
            log.error("%s failed: %s: %s", r.get("name", f"fold task {r['index']}"), r["error_class"], r["message"])
        names = [r.get("name", str(r["index"])) for r in errors]
        done = f"; done: {', '.join(trained)}" if trained else ""
        raise FoldsFailedError(
            f"{len(errors)} of {len(results)} fold(s) failed: "
            + "; ".join(f"{n} ({r['error_class']}: {' '.join(str(r['message']).split())[:200]})"
                        for n, r in zip(names, errors))
            + f"{done}. Each failure is in <fold>/{FAILED} under {plan.path}; re-run the same command to "
            "retry only the folds not complete")
    missing = [n for n, s in fold_status(plan).items() if s != "complete"]
    report = None
    if aggregate or (aggregate is None and not missing):
        report = aggregate_cv(plan.path)["report"]
    return {"path": plan.path, "trained": trained, "skipped": skipped, "missing": missing, "report": report}



def _fold_counts_of(m: dict[str, Any]) -> dict[str, dict[str, int]] | None:
    """A fold's patients and images per part (``metrics.json`` ``counts``); folds of older plans
    called the held-out fold ``val``; None when the fold recorded no counts."""
    c = m.get("counts")
    if not c:
        return None
    return {key: c[key] for key in ("train", "inner_val", "held_out", "test") if key in c} | (
        {"held_out": c["val"]} if "val" in c and "held_out" not in c else {})


def recorded_method(folds: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
    """What the folds' ``metrics.json["method"]`` records say (:func:`medxcept.evaluation.assess.method_record`),
    without each fold's own counts; ``differs_between_folds`` when they do not all say the same.
    ``None`` when a fold has no record (folds run before the record existed)."""
    records = [f.get("method") for f in folds]
    if not records or any(not r for r in records):
        return None

    def common(r: Mapping[str, Any]) -> dict[str, Any]:
        return {k: {kk: vv for kk, vv in v.items() if kk not in ("n_patients", "n_units")}
                if isinstance(v, dict) else v for k, v in r.items()}

    out = common(records[0])
    out["differs_between_folds"] = any(common(r) != out for r in records[1:])
    return out


def _where_chosen(plan: CVPlan, graded: bool, folds: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """The sentences of ``cv_metrics.json`` → ``method`` that say where a fold's choices were made:
    from the folds' own records (``recorded``: :func:`recorded_method`) when they hold one, else
    (folds run before the record existed) from the plan."""
    recorded = recorded_method(folds)
    out = _where_planned(plan, graded)
    if recorded is not None:
        choice = recorded.get("threshold") or recorded.get("decision_rule") or {}
        out.update({"recorded": recorded, "threshold_and_calibration_fitted_on": choice.get("chosen_on"),
                    "early_stopping_on": f"{recorded['epoch']['chosen_on']} ({recorded['epoch']['by']})"})
    return out


def _where_planned(plan: CVPlan, graded: bool) -> dict[str, Any]:
    """:func:`_where_chosen` as the plan says (``cv.json``), for folds without a method record."""
    inner = plan.info.get("inner_validation")
    what = "patient-level macro AUC" if graded else "patient-level AUC"
    if inner is not None:
        share = f"{100 * inner['fraction']:g} %"
        where = (f"each fold's inner validation split: {share} of the patients of its training "
                 f"folds ({inner['fraction_from']}), patient-grouped and stratified like the single run's "
                 "validation split, seeded per fold and repeat; never the held-out fold")
        return {"inner_validation": inner, "inner_validation_sentence": (
                    f"Fold i's model trained on the other folds' patients except {share} of them, "
                    "kept aside as its inner validation split (patient-grouped and stratified like the single "
                    "run's validation split)"),
                "threshold_and_calibration_fitted_on": where,
                "early_stopping_on": f"{where} ({what})"}
    # planned before inner validation splits (cv.json without inner_validation): what those folds did
    if plan.n_folds >= 3:
        where = "an inner validation split of the training folds (the next fold, a whole fold)"
        return {"inner_validation": None, "inner_validation_sentence": (
                    "Fold i's model trained on the other folds' patients except one whole fold, kept aside as "
                    "its inner validation split (planned before split.inner_val_fraction)"),
                "threshold_and_calibration_fitted_on": where, "early_stopping_on": f"{where} ({what})"}
    where = "the held-out fold itself (2 folds, planned before split.inner_val_fraction): optimistic"
    return {"inner_validation": None, "inner_validation_sentence": (
                "Fold i's model trained on the other fold's patients and chose its epoch, calibration and "
                "threshold on fold i itself (planned before split.inner_val_fraction)"),
            "threshold_and_calibration_fitted_on": where, "early_stopping_on": f"{where} ({what})"}


def aggregate_cv(cv_dir: str | Path) -> dict[str, Any]:
    """Write ``cv_metrics.json`` and ``cv_report.html`` from the complete folds of ``cv_dir``.

    Incomplete folds are listed (``missing``), in the report too; at least one fold must be complete.

    Returns
    -------
    dict
        ``report`` (path), ``metrics`` (the content of ``cv_metrics.json``), ``missing``.

    Raises
    ------
    ConfigError
        No fold is complete yet; a fold marker of another configuration or split.
    """
    plan = load_plan(cv_dir)
    status = fold_status(plan)
    missing = [n for n, s in status.items() if s != "complete"]
    done = [t for t in plan.tasks if status[t.name] == "complete"]
    if not done:
        raise ConfigError(f"no fold of {plan.path} is complete yet (missing: {', '.join(missing)}); run the folds "
                          "first (python -m pipelines.kfold ... or --fold i)")
    if missing:
        log.warning("! %d of %d fold(s) not complete, left out of the CV report: %s", len(missing),
                    len(status), ", ".join(missing))
    ec = plan.cfg.eval
    if len(plan.classes) > 2:
        return _aggregate_graded(plan, done, missing)
    rows, holdout_rows, oof_frames, histories, audits, verdicts = [], [], [], [], [], []
    fold_operating: list[Any] = []
    fold_metrics: list[dict[str, Any]] = []
    first: dict[str, Any] = {}
    for t in done:
        d = plan.path / t.name
        m = read_json(d / "metrics.json")
        first = first or m
        fold_metrics.append(m)
        row = {"name": t.name, "repeat": t.repeat, "fold": t.fold, "n_patients": m["oof"]["patient"]["n"],
               "n_pos": m["oof"]["patient"]["n_pos"], "threshold": m["threshold"]["value"],
               "best_epoch": m["training"]["best_epoch"], "seconds": m["seconds"], "counts": _fold_counts_of(m),
               **{k: m["oof"]["patient"].get(k) for k in CV_METRICS}}
        rows.append(row)
        if m.get("holdout"):
            holdout_rows.append({"name": t.name, "n_patients": m["holdout"]["patient"]["n"],
                                 **{k: m["holdout"]["patient"].get(k) for k in CV_METRICS}})
        oof_frames.append(pd.read_csv(d / "oof_predictions.csv", dtype={"patient_key": str, "image_id": str}))
        fold_operating.append(m["threshold"].get("operating_points"))  # chosen on the fold's inner validation
        hist = pd.read_csv(d / "history.csv") if (d / "history.csv").stat().st_size > 1 else pd.DataFrame()
        histories.append((t.name, hist, int(m["training"]["best_epoch"])))
        verdicts.append({"name": t.name, "verdict": m["training"]["verdict"],
                         "seconds": m["training"]["seconds"]})
        audits.append({"name": t.name, **{k: m["audit"].get(k, 0) for k in ("error", "warning", "info")},
                       "warnings": m["audit"].get("warnings", [])})
    # each interval is clipped to its metric's range ([0, 1]; [-1, 1] for MCC)
    bounds = cv_bounds()
    summary = {k: t_interval([r[k] for r in rows], bounds=bounds[k]) for k in CV_METRICS}
    holdout_summary = ({k: t_interval([r[k] for r in holdout_rows], bounds=bounds[k]) for k in CV_METRICS}
                       if holdout_rows else None)
    pooled, rel = pooled_oof_metrics(oof_frames, ec.patient_aggregation, ec.n_bins)
    pooled_refs = pooled_references(oof_frames, ec.patient_aggregation, n_resamples=ec.n_bootstrap,
                                    seed=plan.cfg.seed)
    cv_audit = read_json(plan.path / "audit.json") if (plan.path / "audit.json").is_file() else {}
    notes = []
    mean_auc, pooled_auc = summary["roc_auc"]["mean"], pooled["roc_auc"]
    if mean_auc is not None and pooled_auc is not None and mean_auc - pooled_auc > 0.05:
        # seen on the demo: every fold 1.000, pooled 0.61 (temperature scaling cannot shift an offset)
        notes.append(
            f"The pooled out-of-fold ROC-AUC ({pooled_auc:.3f}) is well below the mean per-fold ROC-AUC "
            f"({mean_auc:.3f}): each fold model ranks its own patients well, but the models put their "
            "probabilities on different scales, so patients of different folds do not rank against each other. "
            "The mean per-fold AUC measures discrimination; the pooled AUC also measures how interchangeable "
            "the fold models' scores are. Pooled sensitivity and specificity use each fold's own threshold "
            "and are not affected.")
    result = {
        "cv": {"dir": plan.path.name, "cohort": plan.info["cohort_name"], "n_folds": plan.n_folds,
               "repeats": plan.repeats, "fold_seeds": plan.info["fold_seeds"], "classes": list(plan.classes),
               "holdout_test": plan.info["holdout_test"], "complete": [t.name for t in done],
               "missing": missing, "seed": plan.cfg.seed, "backbone": plan.cfg.model.backbone,
               "network": get_backbone(plan.cfg.model.backbone).label},
        "hashes": {k: plan.info[k] for k in ("config_hash", "data_hash", "split_hash")},
        "weights": {"kind": first.get("weights"), "description": first.get("weights_description"),
                    "pretrained": first.get("pretrained")},
        "method": {"threshold": ec.threshold, "target_sensitivity": ec.target_sensitivity,
                   "calibration": ec.calibration, "patient_aggregation": ec.patient_aggregation,
                   "unit": "each patient's visit (study) when the cohort records one, else the patient"
                   if ec.unit == "visit" else "the patient (all visits together)",
                   **_where_chosen(plan, graded=False, folds=fold_metrics), "confidence": 0.95,
                   "interval": "t-distribution over folds: mean ± t(0.975, n-1) · SD / √n, clipped to [0, 1]"},
        "notes": notes, "per_fold": rows, "summary": summary, "pooled_oof": pooled,
        "pooled_references": pooled_refs,
        "pooled_clinical": pooled_clinical(oof_frames, fold_operating, ec, seed=plan.cfg.seed),
        "holdout_per_fold": holdout_rows, "holdout_summary": holdout_summary,
        "audit": {"cv": cv_audit.get("summary", {}), "per_fold": audits},
    }
    RunDir(plan.path).write_json("cv_metrics.json", result)

    figs = {
        "roc_pr": roc_pr_figure(rel["y"], rel["score"], pooled["median_threshold"], operating=rel["prob"],
                                title_suffix=" (pooled out-of-fold, patients, uncalibrated scores)"),
        "reliability": reliability_figure(rel["before"], rel["after"],
                                          labels=("pooled OOF, before recalibration",
                                                  f"pooled OOF, after ({ec.calibration}, per fold)")),
        "curves": fold_curves_figure(histories),
        "clinical": clinical_figure(result["pooled_clinical"], title_suffix=" (pooled out-of-fold)")
        if result["pooled_clinical"] else None,
    }
    html = environment().get_template("cv_report.html.j2").render(
        r=result, figs=figs, metrics=CV_METRICS, verdicts=verdicts,
        cv_findings=cv_audit.get("findings", []),
        created=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        config_yaml=(plan.path / "config.yaml").read_text(encoding="utf-8"),
        labels=cv_labels())
    out = write_atomic(plan.path / "cv_report.html", html)
    return {"report": out, "metrics": result, "missing": missing}


# ------------------------------------------------------------------------- graded / multi-class


def _aggregate_graded(plan: CVPlan, done: list[FoldTask], missing: list[str]) -> dict[str, Any]:
    """:func:`aggregate_cv` for k classes: per-fold graded metrics, their spread, and the pooled
    out-of-fold metrics with patient-bootstrap CIs (:func:`medxcept.evaluation.graded.pooled_report`)."""
    ec = plan.cfg.eval
    kind, endpoints = task_of(plan)
    classes = list(plan.classes)
    rows, holdout_rows, oof_frames, holdout_frames, histories, audits, verdicts = [], [], [], [], [], [], []
    fold_metrics: list[dict[str, Any]] = []
    first: dict[str, Any] = {}
    dtypes = {"patient_key": str, "image_id": str}
    for t in done:
        d = plan.path / t.name
        m = read_json(d / "metrics.json")
        first = first or m
        fold_metrics.append(m)
        g = m["oof"]["graded"]
        rows.append({"name": t.name, "repeat": t.repeat, "fold": t.fold, "n_patients": g["test_patient"]["n"],
                     "best_epoch": m["training"]["best_epoch"], "seconds": m["seconds"],
                     "counts": _fold_counts_of(m), **fold_row(g)})
        oof_frames.append(pd.read_csv(d / "oof_predictions.csv", dtype=dtypes))
        if m.get("holdout"):
            holdout_rows.append({"name": t.name, "n_patients": m["holdout"]["graded"]["test_patient"]["n"],
                                 **fold_row(m["holdout"]["graded"])})
            holdout_frames.append(pd.read_csv(d / "holdout_predictions.csv", dtype=dtypes))
        hist = pd.read_csv(d / "history.csv") if (d / "history.csv").stat().st_size > 1 else pd.DataFrame()
        histories.append((t.name, hist, int(m["training"]["best_epoch"])))
        verdicts.append({"name": t.name, "verdict": m["training"]["verdict"], "seconds": m["training"]["seconds"]})
        audits.append({"name": t.name, **{k: m["audit"].get(k, 0) for k in ("error", "warning", "info")},
                       "warnings": m["audit"].get("warnings", [])})
    columns = [k for k in rows[0]
               if k not in ("name", "repeat", "fold", "n_patients", "best_epoch", "seconds", "counts")]
    summary = graded_fold_summary(rows, columns, len(classes))
    pooled = pooled_report(oof_frames, classes=classes, task=kind, endpoints=endpoints, eval_cfg=ec,
                           seed=plan.cfg.seed)
    holdout = None
    if holdout_rows:
        holdout = {"per_fold": holdout_rows,
                   "summary": graded_fold_summary(holdout_rows, columns, len(classes))}
    cv_audit = read_json(plan.path / "audit.json") if (plan.path / "audit.json").is_file() else {}
    notes = []
    mean_auc, pooled_auc = summary["macro_roc_auc"]["mean"], pooled["test_patient"]["macro_roc_auc"]["point"]
    if mean_auc is not None and pooled_auc is not None and mean_auc - pooled_auc > 0.05:
        notes.append(
            f"The pooled out-of-fold macro ROC-AUC ({pooled_auc:.3f}) is well below the mean per-fold macro ROC-AUC "
            f"({mean_auc:.3f}): each fold model ranks its own patients better than the pooled patients rank against "
            "each other, because the fold models put their probabilities on different scales. The mean per-fold AUC "
            "measures discrimination; the pooled AUC also measures how interchangeable the fold models are. Pooled "
            "kappa, confusion matrices and endpoint sensitivity / specificity use each fold's own rule and threshold.")
    result = {
        "cv": {"dir": plan.path.name, "cohort": plan.info["cohort_name"], "n_folds": plan.n_folds,
               "repeats": plan.repeats, "fold_seeds": plan.info["fold_seeds"], "classes": classes,
               "task": kind, "holdout_test": plan.info["holdout_test"], "complete": [t.name for t in done],
               "missing": missing, "seed": plan.cfg.seed, "backbone": plan.cfg.model.backbone,
               "network": get_backbone(plan.cfg.model.backbone).label},
        "hashes": {k: plan.info[k] for k in ("config_hash", "data_hash", "split_hash")},
        "weights": {"kind": first.get("weights"), "description": first.get("weights_description"),
                    "pretrained": first.get("pretrained")},
        "method": {"decision_rule": "ordinal: cumulative thresholds maximizing quadratic kappa" if kind == "ordinal"
                   else "argmax", "threshold": ec.threshold, "calibration": ec.calibration,
                   **_where_chosen(plan, graded=True, folds=fold_metrics), "confidence": 0.95,
                   "interval": "across folds: t-distribution, mean ± t(0.975, n-1) · SD / √n; pooled: "
                               "patient-bootstrap percentile interval"},
        "notes": notes, "graded": {"per_fold": rows, "columns": columns, "summary": summary, "pooled": pooled,
                                "holdout": holdout},
        "audit": {"cv": cv_audit.get("summary", {}), "per_fold": audits},
    }
    RunDir(plan.path).write_json("cv_metrics.json", result)
    oof = pd.concat(oof_frames, ignore_index=True)
    figs = {**graded_figures(pooled, endpoint_scores(pooled, oof)), "curves": fold_curves_figure(histories)}
    html = environment().get_template("cv_report.html.j2").render(
        r=result, figs=figs, metrics=[], verdicts=verdicts, cv_findings=cv_audit.get("findings", []),
        created=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        config_yaml=(plan.path / "config.yaml").read_text(encoding="utf-8"), labels=cv_labels(),
        ci_metrics=metric_names(ci=True))
    out = write_atomic(plan.path / "cv_report.html", html)
    return {"report": out, "metrics": result, "missing": missing}
