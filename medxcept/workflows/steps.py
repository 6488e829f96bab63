"""The shared steps every workflow is composed of (:mod:`medxcept.workflows`).

Each step is one job a workflow does on a run directory, written once:

=========================  ==============================================================
ingest into a run          :func:`ingest_into_run` (:func:`prepare_cohort`,
                           :func:`record_ingestion`): the table, the preprocessing cache,
                           ``exclusions.csv`` and ``private/``
split and audit            :func:`split_and_audit`: the patient-level split, then the audit
assess                     :func:`assess` (calibrator and threshold fitted on validation) and
                           :func:`assess_frozen` (both given): an :class:`Assessment`
predictions                :func:`prediction_table`: ``predictions.csv``
summaries                  :func:`summary_counts`, :func:`reason_counts` for ``metrics.json``
provenance                 :meth:`medxcept.run.RunDir.write_versions`
render                     :func:`medxcept.report.render_report`
=========================  ==============================================================

Steps import stages (``medxcept.cohort.ingest``, ``medxcept.integrity.splits``, ``medxcept.integrity.audit``,
``medxcept.evaluation.metrics``, ``medxcept.evaluation.calibrate`` ...); no stage imports a step.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from medxcept.integrity.audit import AuditReport, audit_cohort, duplicate_groups, fingerprints
from medxcept.images.augment import augment_batch, build_augment
from medxcept.evaluation.calibrate import Calibrator, brier, calibration_summary, ece, make_calibrator
from medxcept.evaluation.clinical import clinical_reading, decision_thresholds, operating_thresholds
from medxcept.cohort.table import CohortSpec
from medxcept.config import RunConfig
from medxcept.cohort.demo import DemoSpec, demo_root
from medxcept.cohort.demo_graded import GradedDemoSpec, graded_demo_root
from medxcept.errors import CohortError, ConfigError, ReadError
from medxcept.evaluation.metrics import (
    aggregate_by_patient,
    binary_metrics,
    bootstrap_ci,
    ranking_metrics,
    choose_threshold,
    metric_names,
    multiclass_metrics,
    probabilities,
    unit_keys,
    unit_patients,
    unit_visits,
)
from medxcept.evaluation.graded import assess_graded
from medxcept.cohort.ingest import IngestResult, ingest, public_exclusions, read_frames
from medxcept.io import file_label
from medxcept.paths import cache_dir
from medxcept.images.preprocess import PreprocessCache, decode_key
from medxcept.report import raw_preview
from medxcept.run import RunDir
from medxcept.integrity.splits import assign_splits

__all__ = ["GENERATORS", "materialize", "Assessment", "assess", "assess_frozen", "compare_references",
           "summary_block", "unit_record", "leaks_let_through", "add_probabilities", "measure_test", "cohort_cache",
           "prepare_cohort", "prepare_withholding_names", "record_ingestion", "ingest_into_run",
           "split_and_audit", "summary_counts", "reason_counts", "prediction_table", "report_examples",
           "CI_METRICS", "clinical_block"]

#: Metrics with a patient-bootstrap confidence interval (the registry's ``ci`` flag).
CI_METRICS = metric_names(ci=True)


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
    (:func:`medxcept.images.preprocess.decode_key`, e.g. another DICOM window gives other pixels)."""
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



# ------------------------------------------------------------------------------------ assess


def add_probabilities(frame: pd.DataFrame, logits: np.ndarray, calibrator: Any,
                      classes: tuple[str, ...]) -> pd.DataFrame:
    """A copy of ``frame`` with ``logit``, ``prob_raw`` and calibrated ``prob`` (per class when k > 2)."""
    frame = frame.copy()
    raw = probabilities(logits)
    cal = calibrator.predict_proba(logits)
    if len(classes) == 2:
        frame["logit"] = logits
        frame["prob_raw"] = raw
        frame["prob"] = cal
        return frame
    for i, c in enumerate(classes):
        frame[f"prob_raw_{c}"] = raw[:, i]
        frame[f"prob_{c}"] = cal[:, i]
    return frame


_RANK = ("roc_auc", "pr_auc")


def _with_rank_metrics(metrics: dict[str, Any], y: np.ndarray, raw: np.ndarray,
                       threshold: float | None) -> dict[str, Any]:
    """``metrics`` (calibrated, at the threshold) with ROC-AUC and PR-AUC of the uncalibrated ``raw``."""
    rank = ranking_metrics(y, raw)
    return {**metrics, **{k: rank[k] for k in _RANK if k in rank}}


def _split_bootstrap(y: np.ndarray, p: np.ndarray, raw: np.ndarray, groups: np.ndarray, threshold: float | None,
                     n_resamples: int, seed: int) -> dict[str, Any]:
    """Patient-bootstrap CIs: ranking metrics of ``raw``, threshold metrics of ``p``, on the same
    resamples (same seed, same groups, hence the same draws)."""
    cut = [m for m in CI_METRICS if m not in _RANK]
    out = dict(bootstrap_ci(y, p, groups, metrics=cut, threshold=threshold, n_resamples=n_resamples, seed=seed))
    rank = bootstrap_ci(y, raw, groups, metrics=[m for m in CI_METRICS if m in _RANK], threshold=threshold,
                        n_resamples=n_resamples, seed=seed)
    return {m: (rank if m in _RANK else out)[m] for m in CI_METRICS}


def measure_test(test: pd.DataFrame, *, threshold: float | None, cfg: RunConfig,
                 classes: tuple[str, ...], operating: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Test metrics of a frame from :func:`add_probabilities` at a threshold fixed beforehand.

    Image- and patient-level metrics, patient-bootstrap CIs (:data:`CI_METRICS`), calibration
    before/after and (binary) the clinical reading (:func:`clinical_block`; ``operating``: the
    operating points chosen on validation). The same code measures a run's own test split, a fold
    and an external cohort.
    """
    ec = cfg.eval
    y = test["y"].to_numpy()
    out: dict[str, Any] = {}
    if len(classes) == 2:
        # discrimination (ROC-AUC, PR-AUC) from the uncalibrated scores: isotonic ties or a Platt
        # sign flip must not change it; the threshold metrics from the calibrated probabilities
        p, pr = test["prob"].to_numpy(), test["prob_raw"].to_numpy()
        # ranked on the logits (logit of the unit's aggregated probability): probabilities saturate
        # (frames without logits: the uncalibrated probabilities)
        logit = "logit" in test
        z = test["logit" if logit else "prob_raw"].to_numpy(np.float64)
        out["test_image"] = _with_rank_metrics(binary_metrics(y, p, threshold=threshold), y, z, threshold)
        visit = unit_visits(test, ec.unit)
        keys, yp, pp = aggregate_by_patient(test["patient_key"], y, p, how=ec.patient_aggregation, visit=visit)
        _, _, ppr = aggregate_by_patient(test["patient_key"], y, pr, how=ec.patient_aggregation, visit=visit)
        _, _, pz = aggregate_by_patient(test["patient_key"], y, z, how=ec.patient_aggregation, visit=visit,
                                        scale="logit" if logit else "probability")
        out["test_patient"] = _with_rank_metrics(binary_metrics(yp, pp, threshold=threshold), yp, pz, threshold)
        out["patient_aggregation"] = ec.patient_aggregation
        out["evaluation_unit"] = unit_record(test, ec)
        out["discrimination_from"] = ("uncalibrated logits (logit of each unit's aggregated probability)" if logit
                                      else "uncalibrated scores (prob_raw)")
        if ec.n_bootstrap:
            # one row per unit (patient or visit); the bootstrap resamples patients (all their visits)
            cis = _split_bootstrap(yp, pp, pz, unit_patients(keys), threshold, ec.n_bootstrap, cfg.seed)
            out["test_patient_ci"] = {k: v.to_dict() for k, v in cis.items()}
            cis_img = _split_bootstrap(y, p, z, test["patient_key"].to_numpy(), threshold, ec.n_bootstrap,
                                       cfg.seed)
            out["test_image_ci"] = {k: v.to_dict() for k, v in cis_img.items()}
        out["n_bootstrap"] = ec.n_bootstrap
        out["calibration_test"] = {"before": calibration_summary(y, test["prob_raw"].to_numpy(), ec.n_bins),
                                   "after": calibration_summary(y, p, ec.n_bins)}
        out["calibration_test"]["change"] = calibration_change(out["calibration_test"], ec.calibration)
        auc_ci = (out.get("test_patient_ci") or {}).get("roc_auc")
        out["clinical"] = clinical_block(yp, pp, ppr, unit_patients(keys), operating=operating, ec=ec,
                                         seed=cfg.seed, unit=out["evaluation_unit"]["unit"],
                                         auc_ci=None if auc_ci is None else (auc_ci["low"], auc_ci["high"]))
        return out
    P = test[[f"prob_{c}" for c in classes]].to_numpy()
    out["test_image"] = multiclass_metrics(y, P, classes=list(classes))
    Praw = test[[f"prob_raw_{c}" for c in classes]].to_numpy()
    out["calibration_test"] = {"before": calibration_summary(y, Praw, ec.n_bins),
                               "after": calibration_summary(y, P, ec.n_bins)}
    out["calibration_test"]["change"] = calibration_change(out["calibration_test"], ec.calibration)
    return out


def clinical_block(y: np.ndarray, p: np.ndarray, p_raw: np.ndarray, groups: np.ndarray, *,
                   operating: list[dict[str, Any]] | None, ec: Any, seed: int, unit: str,
                   auc_ci: tuple[float | None, float | None] | None = None) -> dict[str, Any]:
    """``metrics.json["clinical"]``: :func:`medxcept.evaluation.clinical.clinical_reading` of one set of test units
    (``y``, calibrated ``p``, uncalibrated ``p_raw``, each unit's patient ``groups``) under ``eval``."""
    out = clinical_reading(y, p, p_raw, groups, operating=operating, thresholds=decision_thresholds(*ec.decision_thresholds),
                           prevalence=ec.prevalence, n_resamples=ec.n_bootstrap, seed=seed, unit=unit,
                           auc_ci=auc_ci)
    if not operating:
        out["operating_note"] = ("no operating points: they are chosen on validation units, and none were "
                                 "recorded for this model (a run made before they were)")
    out["calibration_method"] = ec.calibration
    return out


def calibration_change(cal: dict[str, Any], method: str) -> dict[str, Any]:
    """Whether recalibration helped on test, in plain words: ``worse`` (bool: the test ECE rose),
    ``sentence``. A calibrator fitted on a few validation patients can make the test calibration
    worse; the report then says so instead of showing a repair."""
    before, after = cal["before"]["ece"], cal["after"]["ece"]
    if method == "none" or before is None or after is None:
        return {"worse": False, "sentence": ""}
    if after > before:
        return {"worse": True, "sentence": (
            f"Recalibration made the test calibration worse: ECE {before:.3f} before, {after:.3f} after "
            f"({method} fitted on the validation split; Brier {cal['before']['brier']:.3f} → "
            f"{cal['after']['brier']:.3f}). The fitted calibrator does not carry over to the test images: "
            "a validation split this small cannot estimate it well. Do not read the calibrated "
            "probabilities as risks.")}
    return {"worse": False, "sentence": f"Recalibration lowered the test ECE from {before:.3f} to {after:.3f}."}


@dataclasses.dataclass(frozen=True)
class Assessment:
    """What the ``assess`` step measured: the metrics, and the frames they were measured on.

    Attributes
    ----------
    metrics : dict
        The measured part of ``metrics.json``: ``classes``, ``calibration_method``,
        ``calibrator``, ``threshold`` (binary), ``test_image``, ``test_patient``, their CIs,
        ``calibration_test`` and, when a validation split was given, ``val_image``.
    test : pandas.DataFrame
        The test rows with ``logit`` / ``prob_raw`` / ``prob`` (per class when k > 2).
    val : pandas.DataFrame or None
        The same for the rows the calibrator and threshold were fitted on (``None`` when both
        were given: :func:`assess_frozen`).
    calibrator : Calibrator
    """

    metrics: dict[str, Any]
    test: pd.DataFrame
    val: pd.DataFrame | None
    calibrator: Calibrator

    @property
    def threshold(self) -> float | None:
        """The operating threshold applied (binary), or ``None``."""
        t = self.metrics.get("threshold")
        return None if t is None else float(t["value"])

    @property
    def calibration_record(self) -> dict[str, Any]:
        """The content of ``calibration.json``: method, fitted calibrator, threshold."""
        record = {"method": self.metrics["calibration_method"], "calibrator": self.metrics["calibrator"],
                  "threshold": self.metrics.get("threshold")}
        graded = self.metrics.get("graded")
        if graded:  # k classes: the decision rule and each endpoint's threshold, chosen on validation
            record["decision_rule"] = graded["decision_rule"]
            record["endpoint_thresholds"] = {n: e["threshold"]["value"] for n, e in graded["endpoints"].items()}
        return record

    def patient_calibration(self, how: str, n_bins: int, unit: str = "visit") -> dict[str, float]:
        """ECE and Brier of the test units' (patients', or visits') calibrated and raw probabilities
        (binary)."""
        frame = self.test
        visit = unit_visits(frame, unit)
        _, yp, pp = aggregate_by_patient(frame["patient_key"], frame["y"], frame["prob"], how=how, visit=visit)
        _, _, pr = aggregate_by_patient(frame["patient_key"], frame["y"], frame["prob_raw"], how=how, visit=visit)
        return {"ece": ece(yp, pp, n_bins=n_bins), "brier": brier(yp, pp),
                "ece_raw": ece(yp, pr, n_bins=n_bins), "brier_raw": brier(yp, pr)}


def assess(*, val: pd.DataFrame, test: pd.DataFrame, val_logits: np.ndarray, test_logits: np.ndarray,
           cfg: RunConfig, classes: tuple[str, ...], task: str = "nominal",
           endpoints: tuple = ()) -> Assessment:
    """Calibrate on ``val``, choose the threshold on ``val``, measure on ``test``.

    ``val`` is the validation split of a run, or the training folds of a cross-validation fold.
    More than two classes add ``graded`` (:func:`medxcept.evaluation.graded.assess_graded`: the decision rule
    and each derived endpoint's threshold chosen on ``val``; ``task``: ``nominal`` or ``ordinal``;
    ``endpoints``: the cohort's :class:`~medxcept.cohort.table.Endpoint` list).
    """
    ec = cfg.eval
    calibrator = make_calibrator(ec.calibration).fit(val_logits, val["y"].to_numpy())
    val = add_probabilities(val, val_logits, calibrator, classes)
    test = add_probabilities(test, test_logits, calibrator, classes)
    out: dict[str, Any] = {"classes": list(classes), "calibration_method": ec.calibration,
                           "calibrator": calibrator.to_dict()}
    threshold = None
    if len(classes) == 2:
        # chosen on the kind of score the headline applies it to: the validation patients' scores
        _, vy, vp = aggregate_by_patient(val["patient_key"], val["y"], val["prob"], how=ec.patient_aggregation,
                                         visit=unit_visits(val, ec.unit))
        threshold = choose_threshold(vy, vp, method=ec.threshold, target=ec.target_sensitivity)
        out["threshold"] = {"value": float(threshold), "method": ec.threshold, "chosen_on": "validation",
                            "level": "patient", "patient_aggregation": ec.patient_aggregation,
                            "unit": unit_record(val, ec)["unit"],
                            "n_validation_patients": int(val["patient_key"].nunique()),
                            "n_validation_units": int(len(vy)),
                            "target_sensitivity": ec.target_sensitivity if ec.threshold == "sensitivity" else None,
                            # the clinical reading's fixed-specificity / -sensitivity points, also chosen here
                            "operating_points": operating_thresholds(vy, vp)}
    out.update(measure_test(test, threshold=threshold, cfg=cfg, classes=classes,
                            operating=out["threshold"]["operating_points"] if threshold is not None else None))
    if len(classes) == 2:
        out["val_image"] = _with_rank_metrics(
            binary_metrics(val["y"].to_numpy(), val["prob"].to_numpy(), threshold=threshold),
            val["y"].to_numpy(), val["prob_raw"].to_numpy(), threshold)
    else:
        out["graded"] = assess_graded(val=val, test=test, classes=classes, task=task, endpoints=endpoints,
                                      eval_cfg=ec, seed=cfg.seed)
        out["n_bootstrap"] = ec.n_bootstrap
    return Assessment(metrics=out, test=test, val=val, calibrator=calibrator)


def assess_frozen(test: pd.DataFrame, logits: np.ndarray, *, calibrator: Calibrator,
                  threshold: dict[str, Any] | None, cfg: RunConfig, classes: tuple[str, ...],
                  task: str = "nominal", endpoints: tuple = (), graded: dict[str, Any] | None = None
                  ) -> Assessment:
    """Measure ``test`` under a calibrator and threshold fitted elsewhere (nothing is refitted).

    The test half of :func:`assess`, for external validation.

    Parameters
    ----------
    test : DataFrame
        Cohort rows (``y``, ``patient_key``), in the order of ``logits``.
    logits : ndarray of shape (n,) or (n, k)
    calibrator : Calibrator
        Fitted (``Calibrator.from_dict`` of the source run's ``calibration.json``).
    threshold : dict or None
        The source run's threshold record (binary models); ``value`` is applied as is.
    cfg : RunConfig
        ``eval.n_bootstrap``, ``n_bins``, ``patient_aggregation`` and ``seed`` are used.
    classes : tuple of str
    task, endpoints : the cohort's task and derived endpoints (more than two classes).
    graded : dict, optional
        ``{"decision_rule": ..., "endpoint_thresholds": {name: t}}`` of the source run's
        ``calibration.json`` (more than two classes); applied as they are.

    Raises
    ------
    ConfigError
        A binary model without a threshold record.
    """
    out: dict[str, Any] = {"classes": list(classes), "calibration_method": calibrator.name,
                           "calibrator": calibrator.to_dict()}
    t = None
    if len(classes) == 2:
        if threshold is None or threshold.get("value") is None:
            raise ConfigError("the source run's calibration.json holds no threshold for this binary model; "
                              "the run directory is damaged, re-run training")
        t = float(threshold["value"])
        out["threshold"] = threshold
    test = add_probabilities(test, logits, calibrator, classes)
    out.update(measure_test(test, threshold=t, cfg=cfg, classes=classes,
                            operating=(threshold or {}).get("operating_points")))
    if len(classes) > 2 and graded is not None and graded.get("decision_rule"):
        out["graded"] = assess_graded(val=None, test=test, classes=classes, task=task, endpoints=endpoints,
                                      eval_cfg=cfg.eval, seed=cfg.seed, fixed=graded)
        out["n_bootstrap"] = cfg.eval.n_bootstrap
    return Assessment(metrics=out, test=test, val=None, calibrator=calibrator)


def compare_references(table: pd.DataFrame, images: np.ndarray, fit_rows: np.ndarray, test_rows: np.ndarray,
                       assessed: Assessment, cfg: RunConfig, classes: tuple[str, ...],
                       save_models: Any = None) -> tuple[dict[str, Any] | None, pd.DataFrame | None]:
    """The reference models (:mod:`medxcept.evaluation.references`) fitted on ``fit_rows`` (positions of the
    training + validation images in ``table`` / ``images``) and compared with the deep model's
    uncalibrated scores on ``test_rows`` (the rows of ``assessed.test``, in its order). Binary tasks
    only: ``(None, None)`` otherwise.

    Returns the ``metrics.json["references"]`` block and the per-image reference scores (``image_id``
    and ``ref_<name>`` columns) for ``predictions.csv``. ``save_models``: where to keep the fitted
    models (``references.joblib`` of a run: external validation applies them).
    """
    from medxcept.evaluation.references import reference_block

    if len(classes) != 2:
        return None, None
    return reference_block(table.reset_index(drop=True), images, fit_rows, test_rows,
                           assessed.test["logit"].to_numpy(np.float64), how=cfg.eval.patient_aggregation,
                           unit=cfg.eval.unit, n_resamples=cfg.eval.n_bootstrap, seed=cfg.seed,
                           save_models=save_models, scale="logit")


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
    """The report's example panel: per class, training images raw (masked: :func:`~medxcept.report.raw_preview`),
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


PREDICTION_COLUMNS = ("image_id", "patient_key", "study_id", "unit_key", "laterality", "source", "label", "y")


def unit_record(frame: pd.DataFrame, ec: Any) -> dict[str, Any]:
    """What a unit of evaluation is in ``frame`` under ``ec`` (``eval``): ``unit`` ("visit" when the
    rows carry visits and ``eval.unit`` is "visit", else "patient"), ``rule`` in words, ``n_units``
    and ``n_patients``."""
    visit = unit_visits(frame, ec.unit)
    keys = unit_keys(frame["patient_key"], visit)
    unit = "visit" if visit is not None else "patient"
    what = "patient visit (study)" if unit == "visit" else "patient"
    score = "the maximum" if ec.patient_aggregation == "max" else "the mean"
    return {"unit": unit, "patient_aggregation": ec.patient_aggregation,
            "rule": f"one score per {what}: {score} of its images' probabilities; its label is positive when "
                    "any of its images is; bootstrap intervals resample patients",
            "n_units": int(len(set(keys))), "n_patients": int(frame["patient_key"].nunique())}


def prediction_table(test: pd.DataFrame, classes: tuple[str, ...], how: str, unit: str = "visit") -> pd.DataFrame:
    """``predictions.csv``: pseudonymized rows, logits and probabilities, each image's evaluation unit
    (``unit_key``: the patient, or patient and visit) and (binary) the unit's label and aggregated
    probability (:func:`medxcept.evaluation.metrics.aggregate_by_patient`), as ``patient_*`` columns."""
    test = test.copy()
    test["unit_key"] = unit_keys(test["patient_key"], unit_visits(test, unit))
    cols = [c for c in PREDICTION_COLUMNS if c in test] + [c for c in test.columns if c.startswith(("logit", "prob"))]
    predictions = test[cols].copy()
    if len(classes) == 2:
        predictions = predictions.merge(patient_frame(predictions, how), left_on="unit_key",
                                        right_index=True, how="left")
    return predictions


def patient_frame(frame: pd.DataFrame, how: str) -> pd.DataFrame:
    """``patient_y`` and ``patient_prob`` per evaluation unit (index ``unit_key``, or ``patient_key``
    when ``frame`` has no ``unit_key``), aggregated by ``how``; also ``patient_prob_raw`` (the
    uncalibrated score, what discrimination is measured on) when ``frame`` has ``prob_raw``."""
    key = "unit_key" if "unit_key" in frame else "patient_key"
    keys, yp, pp = aggregate_by_patient(frame[key].to_numpy(), frame["y"].to_numpy(),
                                        frame["prob"].to_numpy(), how=how)
    out = pd.DataFrame({"patient_y": yp, "patient_prob": pp}, index=pd.Index(keys, name=key))
    if "prob_raw" in frame:
        raw_keys, _, pr = aggregate_by_patient(frame[key].to_numpy(), frame["y"].to_numpy(),
                                               frame["prob_raw"].to_numpy(), how=how)
        out["patient_prob_raw"] = pd.Series(pr, index=pd.Index(raw_keys, name=key))
    if "logit" in frame:  # what ranking metrics rank: the logit of the unit's aggregated probability
        z_keys, _, pz = aggregate_by_patient(frame[key].to_numpy(), frame["y"].to_numpy(),
                                             frame["logit"].to_numpy(np.float64), how=how, scale="logit")
        out["patient_logit"] = pd.Series(pz, index=pd.Index(z_keys, name=key))
    return out


