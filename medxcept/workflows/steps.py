"""The shared steps every workflow is composed of (:mod:`medxcept.workflows`).

Each step is one job a workflow does on a run directory, written once:

=========================  ==============================================================
ingest into a run          :func:`ingest_into_run` (:func:`prepare_cohort`,
                           :func:`record_ingestion`): the table, the preprocessing cache,
                           ``exclusions.csv`` and ``private/``
split and audit            :func:`split_and_audit`: the patient-level split, then the audit
assess                     the stage :mod:`medxcept.evaluation.assess` (:func:`~medxcept.evaluation.assess.assess_model`:
                           one typed :class:`~medxcept.evaluation.assess.Assessment`; its writer
                           :func:`~medxcept.evaluation.assess.write_outcome`)
summaries                  :func:`summary_counts`, :func:`reason_counts`, :func:`cohort_block`,
                           :func:`summary_block`
metrics document           :func:`metrics_document`: ``metrics.json`` of a single run or an
                           external validation, one layout
provenance                 :meth:`medxcept.run.RunDir.write_versions`
render                     :func:`render_run_report`: the stages compute what the report shows
                           (:func:`report_inputs`, :func:`report_examples`), then
                           :func:`medxcept.report.render_report` draws it
=========================  ==============================================================

Steps import stages (``medxcept.cohort.ingest``, ``medxcept.integrity.splits``, ``medxcept.integrity.audit``,
``medxcept.evaluation.metrics``, ``medxcept.evaluation.calibrate`` ...); no stage imports a step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxcept.cohort.class_exclusions import exclusions_by_class
from medxcept.cohort.demo import DemoSpec, demo_root
from medxcept.cohort.demo_graded import GradedDemoSpec, graded_demo_root
from medxcept.cohort.ingest import IngestResult, ingest, public_exclusions, read_frames
from medxcept.cohort.table import CohortSpec
from medxcept.config import RunConfig
from medxcept.errors import CohortError, ConfigError, ReadError
from medxcept.evaluation.assess import Assessment
from medxcept.evaluation.graded import endpoint_scores
from medxcept.evaluation.metrics import metric_names
from medxcept.evaluation.subgroups import subgroup_rows
from medxcept.evaluation.units import aggregate_by_patient, unit_visits
from medxcept.images.augment import augment_batch, build_augment
from medxcept.images.cache import PreprocessCache, decode_key
from medxcept.images.preview import raw_preview
from medxcept.integrity.audit import AuditReport, audit_cohort, duplicate_groups, fingerprints
from medxcept.integrity.splits import assign_splits
from medxcept.io import file_label
from medxcept.paths import cache_dir
from medxcept.report import ReportInputs, render_report
from medxcept.report.graded import graded_figures
from medxcept.run import RunDir

__all__ = ["GENERATORS", "materialize", "summary_block", "leaks_let_through", "cohort_cache", "prepare_cohort",
           "prepare_withholding_names", "record_ingestion", "ingest_into_run", "split_and_audit", "summary_counts",
           "reason_counts", "report_examples", "report_inputs", "cohort_block", "metrics_document",
           "render_run_report"]

# ------------------------------------------------------------------------------------ ingest

#: Cohort generators by name (a cohort file's ``generator:``): options -> the folder written.
#: Ingestion only reads files; a workflow writes a generated cohort first (:func:`materialize`).
GENERATORS: dict[str, Any] = {
    "demo": lambda options: demo_root(DemoSpec(**options)),
    "demo_graded": lambda options: graded_demo_root(GradedDemoSpec(**options)),
}


def materialize(spec: CohortSpec) -> CohortSpec:
    """``spec`` ready for ingestion: a generated cohort is written (once, into the cache) and
    returned with ``base_dir`` set to its folder; any other cohort is returned as it is."""
    if not spec.generator:
        return spec
    if spec.generator not in GENERATORS:
        raise ConfigError(f"cohort '{spec.name}': generator {spec.generator!r} is not one of {sorted(GENERATORS)}")
    root = GENERATORS[spec.generator](dict(spec.generator_options))
    return dataclasses.replace(spec, base_dir=str(root), generator=None)


def prepare_cohort(spec: CohortSpec, cfg: RunConfig) -> tuple[IngestResult, PreprocessCache]:
    """Ingest the cohort (written first when generated: :func:`materialize`) into the table and the
    preprocessing cache."""
    spec = materialize(spec)
    cache = cohort_cache(spec)
    return ingest(spec, preprocess_cfg=cfg.preprocess, cache=cache), cache


def cohort_cache(spec: CohortSpec | None = None, decode: str | None = None) -> PreprocessCache:
    """The preprocessing cache for a cohort: one sub-folder per cohort-level decoding
    (:func:`medxcept.images.cache.decode_key`, e.g. another DICOM window gives other pixels)."""
    key = decode_key(spec) if decode is None else decode
    root = cache_dir() / "preprocessed"
    return PreprocessCache(root / key if key else root)


#: The raw values kept in ``private/image_paths.csv`` (when the cohort has them).
PRIVATE_IMAGE_COLUMNS = ("image_id", "patient_key", "path", "frame", "study_id", "study_uid", "series_uid",
                         "sop_uid", "acquisition_date", "age", "visit")


def record_ingestion(run: RunDir, ing: IngestResult) -> None:
    """Record an ingestion in ``run``: what may be shared at the root, identifiers in ``private/``.

    * ``exclusions.csv``: every file not used, by keyed ``file_id`` with stage, reason (file names
      and paths removed), source and class label when known: :func:`medxcept.cohort.ingest.public_exclusions`;
    * ``exclusions_summary.json``: files found = used + excluded, and the rows per reason;
    * ``private/exclusions.csv``: the same rows with full paths and unabridged reasons;
    * ``private/patient_map.csv`` (raw patient ID -> pseudonym) and ``private/image_paths.csv``
      (image_id -> path, frame, raw UIDs, exact date and age).
    """
    shared = public_exclusions(ing.exclusions)
    run.write_csv("exclusions.csv", shared)
    run.write_json("exclusions_summary.json", {
        "files_found": ing.files_found, "files_used": ing.files_used, "files_excluded": ing.files_excluded,
        "check": "files_found = files_used + files_excluded",
        "holds": ing.files_found == ing.files_used + ing.files_excluded,
        "exclusion_rows": len(shared), "rows_by_reason": reason_counts(ing.exclusions)})
    run.write_private("exclusions.csv", ing.exclusions)
    run.write_private("patient_map.csv", ing.patient_map)
    run.write_private("image_paths.csv", ing.table[[c for c in PRIVATE_IMAGE_COLUMNS if c in ing.table]])


def ingest_into_run(run: RunDir, spec: CohortSpec, cfg: RunConfig) -> tuple[IngestResult, PreprocessCache]:
    """Ingest ``spec`` and record it in ``run`` (:func:`record_ingestion`).

    An ingestion error whose full text names files (label problems under ``on_label_issue: error``)
    is raised without the names; the full text is written to ``private/ingest_error.txt``.
    """
    ing, cache = prepare_withholding_names(run, spec, cfg)
    record_ingestion(run, ing)
    return ing, cache


def prepare_withholding_names(run: RunDir, spec: CohortSpec, cfg: RunConfig, *,
                              keep_detail: bool = True) -> tuple[IngestResult, PreprocessCache]:
    """:func:`prepare_cohort`, with a stopping ingestion error's file names kept out of the console.

    The error is raised with shareable text; when ``keep_detail`` the full text (naming the files)
    goes to ``private/ingest_error.txt`` of ``run`` (a refused ``--resume`` writes nothing).
    """
    try:
        return prepare_cohort(spec, cfg)
    except CohortError as exc:
        detail = getattr(exc, "private_detail", None)
        if not detail:
            raise
        if not keep_detail:
            raise CohortError(f"{exc}\nFile names are withheld here (logs may be shared)") from None
        where = run.write_private("ingest_error.txt", detail + "\n")
        raise CohortError(f"{exc}\nFile names are withheld here (logs may be shared); they are in {where}") from None



# ---------------------------------------------------------------------------- split, audit


def split_and_audit(table: pd.DataFrame, images: np.ndarray, cfg: RunConfig,
                    fp: pd.DataFrame | None = None) -> tuple[pd.DataFrame, AuditReport]:
    """Patient-level split (near-duplicates merged first under ``on_leak: fix``), then the audit.

    Returns the table with ``split`` and the :class:`~medxcept.integrity.audit.AuditReport` (not yet
    raised: the caller writes ``audit.json`` first). ``fp``: fingerprints of ``images`` if known.
    """
    fp = fingerprints(images) if fp is None else fp
    merge = duplicate_groups(table, fp, cfg.audit.hamming_threshold) if cfg.audit.on_leak == "fix" else None
    table = assign_splits(table, cfg.split, merge=merge)
    report = audit_cohort(table, fp=fp, policy=cfg.audit.on_leak, hamming_threshold=cfg.audit.hamming_threshold,
                          group_column=cfg.split.group_column,
                          max_images_per_patient=cfg.audit.max_images_per_patient)
    return table, report


# ------------------------------------------------------------------------------- summaries


def summary_counts(table: pd.DataFrame) -> dict[str, Any]:
    """Images and patients, per class and per split, for ``metrics.json``'s ``cohort`` block."""
    out: dict[str, Any] = {"n_images": int(len(table)), "n_patients": int(table["patient_key"].nunique()),
                           "images_per_class": table["label"].value_counts().sort_index().to_dict(),
                           "patients_per_class": table.groupby("label")["patient_key"].nunique().to_dict()}
    if "split" in table:
        out["per_split"] = {
            s: {"images": int((g := table[table["split"] == s]).shape[0]), "patients": int(g["patient_key"].nunique()),
                "images_per_class": g["label"].value_counts().sort_index().to_dict()}
            for s in ("train", "val", "test")}
    return out


def reason_counts(exclusions: pd.DataFrame) -> dict[str, int]:
    """Exclusion rows per stage and kind of reason (shareable: no file name)."""
    if exclusions.empty:
        return {}
    if "path" in exclusions:  # the shareable reasons: no file name reaches metrics.json
        exclusions = public_exclusions(exclusions)
    # group reasons by their first clause so per-file numbers do not split one reason into many
    # (after the label table's "row 7:" / "rows 3, 9:" prefix)
    reason = exclusions["reason"].str.replace(r"^rows? [\d, ]+:\s*", "", regex=True)
    key = exclusions["stage"] + ": " + reason.str.split(r"[:(]", n=1, regex=True).str[0].str.strip()
    return key.value_counts().to_dict()





def summary_block(metrics: dict[str, Any], training: dict[str, Any],
                  references: dict[str, Any] | None) -> dict[str, Any]:
    """``chance`` (:func:`medxcept.evaluation.verdict.chance_statement` of the test patient AUC) and
    ``summary_items`` (:func:`medxcept.evaluation.verdict.summary_items`) for ``metrics.json`` and the report."""
    from medxcept.evaluation.verdict import chance_statement, summary_items

    auc = (metrics.get("test_patient") or {}).get("roc_auc")
    ci = (metrics.get("test_patient_ci") or {}).get("roc_auc")
    chance = chance_statement(auc, ci) if metrics.get("test_patient") else None
    return {"chance": chance,
            "summary_items": summary_items(training=training, references=references, chance=chance)}


def cohort_block(table: pd.DataFrame, ing: IngestResult, classes: Sequence[str],
                 by_class: dict[str, Any] | None = None) -> dict[str, Any]:
    """``metrics.json["cohort"]``: the counts of the images used, of the files found, used and
    excluded, the exclusions by reason and by class (``by_class``, when already computed)."""
    return {**summary_counts(table), "files_found": ing.files_found, "files_used": ing.files_used,
            "files_excluded": ing.files_excluded, "exclusions_by_reason": reason_counts(ing.exclusions),
            "exclusions_by_class": by_class if by_class is not None
            else exclusions_by_class(ing.table, ing.exclusions, list(classes))}


def metrics_document(*, run: dict[str, Any], cohort: dict[str, Any], class_balance: dict[str, Any],
                     training: dict[str, Any], assessed: Assessment, summary: dict[str, Any],
                     audit: dict[str, Any], timings: dict[str, float], versions: dict[str, Any],
                     **sections: Any) -> dict[str, Any]:
    """``metrics.json`` of a single run or an external validation, one layout for both: the run, any
    workflow's own ``sections`` (external: ``external``), the cohort, class balance and training, the
    assessment's metrics and references (:class:`~medxcept.evaluation.assess.Assessment`), the summary
    (:func:`summary_block`), audit, timings and the hashes of ``versions.json``."""
    references = assessed.references
    return {"run": run, **sections, "cohort": cohort, "class_balance": class_balance, "training": training,
            **assessed.metrics, **({"references": references} if references is not None else {}), **summary,
            "audit": audit, "timings": timings,
            "hashes": {k: versions[k] for k in ("data_hash", "split_hash", "config_hash")}}


#: Audit finding kinds that stop a run under ``--on-leak error`` (``*_overlap`` too).
LEAK_KINDS = ("duplicate_across_splits", "label_conflict")


def leaks_let_through(report: AuditReport, policy: str) -> list[str]:
    """Messages of the leakage findings that ``--on-leak warn`` turned into warnings (the report
    shows them in a banner and the checklist does not claim a clean partition)."""
    if policy != "warn":
        return []
    return [f.message for f in report.findings
            if f.severity == "warning" and (f.kind.endswith("_overlap") or f.kind in LEAK_KINDS)]


# ------------------------------------------------------------------------------------ render


def report_examples(table: pd.DataFrame, images: np.ndarray, cfg: RunConfig, spec: CohortSpec,
                    n_per_class: int = 2) -> list[tuple[Any, ...]]:
    """The report's example panel: per class, training images raw (masked: :func:`~medxcept.images.preview.raw_preview`),
    preprocessed and augmented twice; rows for :func:`medxcept.report.figures.examples_figure`.

    Files are read again here (the raw view), through the reader that ingested them.
    """
    aug = build_augment(cfg.augment, seed=cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    rows = []
    train = table.index[table["split"] == "train"] if "split" in table else table.index
    for label in spec.classes:
        idx = [i for i in train if table.at[i, "label"] == label][:n_per_class]
        for i in idx:
            r = table.loc[i]
            try:
                with file_label(str(r["image_id"])):  # a reader's warning names the image id, not the file
                    _, frames, meta = read_frames(r["reader"], r["path"], frames=int(r["frame"]))
            except (ReadError, OSError, ValueError):
                continue
            shown, title = raw_preview(frames[0], modality=spec.modality,
                                       burned_in=meta.get("burned_in_annotation", ""))
            pre = images[table.index.get_loc(i)]
            augs = list(augment_batch(aug, np.repeat(pre[None], 2, axis=0), rng=rng)) if aug is not None else []
            rows.append((f"{label}", (title, shown), pre, augs))
    return rows


def report_inputs(run_dir: Path, metrics: dict[str, Any], test: pd.DataFrame, cfg: RunConfig,
                  classes: list[str]) -> ReportInputs:
    """What :func:`medxcept.report.render_report` shows besides ``metrics.json``, computed by the
    stages: ``config.yaml`` as written, the metrics given a CI, and for binary runs the subgroup rows
    and the headline unit's scores (uncalibrated for the curves, calibrated for the operating point)."""
    subgroups, scores = [], None
    if len(classes) == 2:
        threshold = (metrics.get("threshold") or {}).get("value")
        how = metrics.get("patient_aggregation") or cfg.eval.patient_aggregation
        unit = (metrics.get("evaluation_unit") or {}).get("unit", "patient")
        visit = unit_visits(test, unit)
        # the curves draw what the headline AUC ranks: each unit's logit (probabilities saturate), else prob_raw
        raw_col = next(c for c in ("logit", "prob_raw", "prob") if c in test)
        _, y, raw = aggregate_by_patient(test["patient_key"], test["y"], test[raw_col].to_numpy(float), how=how,
                                         visit=visit, scale="logit" if raw_col == "logit" else "probability")
        _, _, cal = aggregate_by_patient(test["patient_key"], test["y"], test["prob"], how=how, visit=visit)
        scores = {"y": y, "raw": raw, "calibrated": cal}
        subgroups = subgroup_rows(test, threshold, how=how, n_resamples=int(metrics.get("n_bootstrap") or 0),
                                  seed=int((metrics.get("run") or {}).get("seed") or 0), unit=unit)
    return ReportInputs(config_yaml=(Path(run_dir) / "config.yaml").read_text(encoding="utf-8"),
                        ci_metrics=tuple(metric_names(ci=True)), subgroups=subgroups, unit_scores=scores)


def render_run_report(run: RunDir, full: dict[str, Any], *, assessed: Assessment, history: pd.DataFrame,
                      audit: Any, versions: dict[str, Any], spec: CohortSpec, cfg: RunConfig, table: pd.DataFrame,
                      images: np.ndarray, figs: dict[str, str | None] | None = None) -> Path:
    """``report.html`` of a single run or an external validation: the stages compute what it shows
    (:func:`report_inputs`, the example panel, the graded endpoints' scores), the report draws it."""
    figs = dict(figs or {})
    if full.get("graded"):
        figs.update(graded_figures(full["graded"], endpoint_scores(full["graded"], assessed.test)))
    frames = {"test": assessed.test} if assessed.val is None else {"val": assessed.val, "test": assessed.test}
    return render_report(run.path, metrics=full, history=history, audit=audit, versions=versions, spec=spec,
                         frames=frames, inputs=report_inputs(run.path, full, assessed.test, cfg, list(spec.classes)),
                         examples=report_examples(table, images, cfg, spec), extra_figs=figs)
