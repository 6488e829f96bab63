"""One assessment: a trained model (or its saved logits) and the units it is measured on -> one outcome.

Every workflow that turns a model into numbers calls :func:`assess_model`: the single run (its
validation and test splits), each k-fold fold (its inner validation split and its held-out fold;
the hold-out test split too) and external validation (every image of another cohort, with the
source run's calibrator and threshold). What differs between them is only *which* rows are
validation and test and whether the choices are fitted here or taken as they were made elsewhere;
everything else is this module:

=============================  ============================================================
logits                         :func:`predict_units`: the model's logits with the test-time
                               augmentation of ``eval.tta`` (:class:`TTA`), each image's
                               augmented copies keyed by its ``image_id`` (so an image gets the
                               same logit whichever split, fold or cohort it is predicted in)
choices                        the calibrator, the threshold (binary) or decision rule and
                               endpoint thresholds (k classes), fitted on the validation units
                               (:func:`assess`), or given (:class:`Fixed`, :func:`assess_frozen`)
metrics                        image- and unit-level metrics with patient-bootstrap CIs,
                               calibration before / after, the clinical reading
                               (:func:`measure_test`)
references                     the reference models with their paired comparison, when the
                               workflow gives a way to score them (``references=``)
the method                     ``metrics.json["method"]``: where the epoch, calibrator,
                               threshold and decision rule were chosen and with which TTA
                               (:func:`method_record`); the reports' sentences about the method
                               are made from these fields, never written in a template
=============================  ============================================================

One writer, :func:`write_outcome`, records an outcome in a run directory (prediction tables,
``calibration.json``, ``versions.json``, ``metrics.json``); the completion marker is
:func:`write_marker`, written last by the workflow.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pandas as pd

from medxcept.config import RunConfig
from medxcept.errors import ConfigError
from medxcept.evaluation.calibrate import Calibrator, brier, calibration_summary, ece, make_calibrator
from medxcept.evaluation.clinical import clinical_reading, decision_thresholds, operating_thresholds
from medxcept.evaluation.graded import assess_graded
from medxcept.evaluation.intervals import bootstrap_ci
from medxcept.evaluation.metrics import (
    binary_metrics,
    choose_threshold,
    metric_names,
    multiclass_metrics,
    ranking_metrics,
)
from medxcept.evaluation.units import (
    aggregate_by_patient,
    probabilities,
    unit_keys,
    unit_patients,
    unit_visits,
)
from medxcept.run import RunDir

__all__ = ["TTA", "Units", "Fixed", "Assessment", "assess_model", "predict_units", "method_record", "write_outcome",
           "write_marker", "assess", "assess_frozen", "measure_test", "add_probabilities", "compare_references",
           "clinical_block", "calibration_change", "unit_record", "prediction_table", "patient_frame",
           "CI_METRICS", "PREDICTION_COLUMNS"]

#: Metrics with a patient-bootstrap confidence interval (the registry's ``ci`` flag).
CI_METRICS = metric_names(ci=True)


# ------------------------------------------------------------------------------ the inputs


@dataclasses.dataclass(frozen=True)
class TTA:
    """Test-time augmentation: the mean logit over the image and ``passes`` augmented copies.

    Attributes
    ----------
    passes : int
        ``eval.tta`` (0: the plain logits).
    seed : int
        The run's seed (an external validation uses its source run's: the logits its threshold
        and calibrator were fitted on).
    policy : str
        ``augment.policy`` (the copies use its ``light`` strength).
    batch_size : int
        Inference batch size.
    """

    passes: int
    seed: int
    policy: str
    batch_size: int

    @classmethod
    def of(cls, cfg: RunConfig, *, batch_size: int | None = None) -> TTA:
        """The TTA of a run's configuration (``eval.tta``, ``seed``, ``augment.policy``, ``train.batch_size``)."""
        return cls(passes=int(cfg.eval.tta), seed=int(cfg.seed), policy=cfg.augment.policy,
                   batch_size=int(batch_size if batch_size is not None else cfg.train.batch_size))

    def record(self) -> dict[str, Any]:
        """``metrics.json["method"]["tta"]``."""
        return {"passes": self.passes, "seed": self.seed, "policy": self.policy,
                "copies_keyed_by": "image_id" if self.passes else None}


@dataclasses.dataclass(frozen=True)
class Units:
    """The rows of one part (validation or test) and what to score them with.

    Attributes
    ----------
    frame : pandas.DataFrame
        Cohort rows (``y``, ``patient_key``, ``image_id``; ``study_id`` for visits), in the order
        of ``images`` / ``logits``.
    images : numpy.ndarray, optional
        Their preprocessed images (uint8, N x px x px x 3): predicted by the model.
    logits : numpy.ndarray, optional
        Saved logits instead (shape (N,) or (N, k)); they win over ``images``.
    """

    frame: pd.DataFrame
    images: np.ndarray | None = None
    logits: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Fixed:
    """Choices made elsewhere and applied unchanged (external validation): nothing is refitted.

    Attributes
    ----------
    calibrator : Calibrator
        Fitted (``Calibrator.from_dict`` of the source run's ``calibration.json``).
    threshold : dict or None
        The source run's threshold record (binary); ``value`` is applied as is.
    graded : dict or None
        ``{"decision_rule": ..., "endpoint_thresholds": {...}}`` (k classes).
    """

    calibrator: Calibrator
    threshold: dict[str, Any] | None = None
    graded: dict[str, Any] | None = None


def _key_seeds(frame: pd.DataFrame) -> list[int] | None:
    """One integer per row from its ``image_id`` (keyed pseudonym): the TTA copies' random stream."""
    if "image_id" not in frame:
        return None
    return [int.from_bytes(hashlib.sha256(str(k).encode("utf-8")).digest()[:8], "little")
            for k in frame["image_id"]]


def predict_units(model: Any, units: Units, tta: TTA) -> np.ndarray:
    """The logits of ``units``: saved ones, or the model's with test-time augmentation ``tta``.

    Each image's augmented copies are drawn from a stream keyed by its ``image_id``, so its logit
    does not depend on which other images were predicted with it (a split, a fold, a cohort).
    """
    if units.logits is not None:
        logits = np.asarray(units.logits)
        if len(logits) != len(units.frame):
            raise ConfigError(f"{len(logits)} saved logits for {len(units.frame)} rows: they do not belong together")
        return logits
    if units.images is None or model is None:
        raise ConfigError("assessing needs either saved logits or a model and the images")
    from medxcept.models.inference import predict_logits_tta  # here: measuring saved logits needs no Keras

    return predict_logits_tta(model, units.images, passes=tta.passes, seed=tta.seed, policy=tta.policy,
                              batch_size=tta.batch_size, keys=_key_seeds(units.frame))


def method_record(*, classes: tuple[str, ...], cfg: RunConfig, epoch_chosen_on: str, chosen_on: str,
                  tta: TTA, refitted: bool, val: pd.DataFrame | None = None,
                  threshold: dict[str, Any] | None = None) -> dict[str, Any]:
    """``metrics.json["method"]``: where each choice behind the numbers was made, in fields.

    Parameters
    ----------
    classes : tuple of str
    cfg : RunConfig
        ``eval.threshold``, ``eval.calibration``, ``eval.unit``, ``eval.patient_aggregation``.
    epoch_chosen_on : str
        Where the early-stopping epoch was chosen (a phrase: "the validation split").
    chosen_on : str
        Where the calibrator and the threshold / decision rule were fitted (a phrase).
    tta : TTA
    refitted : bool
        False when the choices were taken from another run (external validation).
    val : pandas.DataFrame, optional
        The validation rows the choices were fitted on (their patients and units are counted).
    threshold : dict, optional
        The applied threshold record (binary), for its rule when it was taken from another run.

    Returns
    -------
    dict
        ``epoch``, ``calibrator``, ``threshold`` (binary) or ``decision_rule`` (k classes), ``tta``,
        ``refitted``, ``ranking_from``; the report and CV report build their method sentences
        from these fields.
    """
    ec = cfg.eval
    counts = {}
    if val is not None:
        counts = {"n_patients": int(val["patient_key"].nunique()),
                  "n_units": int(len(set(unit_keys(val["patient_key"], unit_visits(val, ec.unit)))))}
    graded = len(classes) > 2
    out: dict[str, Any] = {
        # what EpochEvaluation ranks epochs by (medxcept.evaluation.units.patient_auc)
        "epoch": {"chosen_on": epoch_chosen_on,
                  "by": "the macro one-vs-rest ROC-AUC of the validation patients (class probabilities averaged "
                        "per patient)" if graded else
                        f"the ROC-AUC of the validation units (the {ec.patient_aggregation} of each unit's image "
                        "probabilities)"},
        "calibrator": {"method": ec.calibration, "fitted_on": chosen_on, **counts},
        "tta": tta.record(), "refitted": bool(refitted),
        "ranking_from": "the uncalibrated scores",
    }
    if graded:
        out["decision_rule"] = {"rule": "cumulative thresholds maximizing quadratic kappa", "chosen_on": chosen_on,
                                **counts}
    else:
        rule = (threshold or {}).get("method", ec.threshold)
        # the unit the scores were aggregated to: a visit only when the rows carry visits
        unit = ("visit" if unit_visits(val, ec.unit) is not None else "patient") if val is not None else \
            (threshold or {}).get("unit", "visit" if ec.unit == "visit" else "patient")
        out["threshold"] = {"rule": rule, "chosen_on": chosen_on, "unit": unit, **counts}
    return out


# ----------------------------------------------------------------------------- the stage


def assess_model(model: Any, *, test: Units, cfg: RunConfig, classes: tuple[str, ...], tta: TTA,
                 method: Mapping[str, Any], val: Units | None = None, fixed: Fixed | None = None,
                 task: str = "nominal", endpoints: tuple = (),
                 references: Callable[[pd.DataFrame], tuple[dict[str, Any] | None, pd.DataFrame | None]] | None = None
                 ) -> Assessment:
    """Measure a trained model on ``test``, its choices fitted on ``val`` (or taken from ``fixed``).

    The one assessment of every workflow (single run, k-fold fold, external validation).

    Parameters
    ----------
    model : keras.Model or None
        The trained model; ``None`` when both parts carry saved logits.
    test : Units
        The rows measured.
    cfg : RunConfig
        ``eval`` (threshold rule, calibration, unit, aggregation, bootstrap, bins) and ``seed``.
    classes : tuple of str
    tta : TTA
        Test-time augmentation of every prediction (validation and test alike).
    method : mapping
        ``epoch_chosen_on`` and ``chosen_on`` (phrases) for :func:`method_record`.
    val : Units, optional
        The rows the calibrator and threshold (k classes: decision rule, endpoint thresholds) are
        fitted on, at the unit level. Required unless ``fixed``.
    fixed : Fixed, optional
        Choices made elsewhere, applied unchanged.
    task, endpoints
        The cohort's task (``nominal`` / ``ordinal``) and derived endpoints (k classes).
    references : callable, optional
        ``references(test_frame) -> (block, per-image scores)`` (binary): the reference models
        scored on the same rows, compared with the uncalibrated scores of ``test_frame``.

    Returns
    -------
    Assessment
    """
    test_logits = predict_units(model, test, tta)
    if fixed is None:
        if val is None:
            raise ConfigError("an assessment needs validation units to fit its choices on, or fixed choices")
        val_logits = predict_units(model, val, tta)
        out = assess(val=val.frame, test=test.frame, val_logits=val_logits, test_logits=test_logits, cfg=cfg,
                     classes=classes, task=task, endpoints=endpoints)
    else:
        out = assess_frozen(test.frame, test_logits, calibrator=fixed.calibrator, threshold=fixed.threshold, cfg=cfg,
                            classes=classes, task=task, endpoints=endpoints, graded=fixed.graded)
    record = method_record(classes=classes, cfg=cfg, epoch_chosen_on=method["epoch_chosen_on"],
                           chosen_on=method["chosen_on"], tta=tta, refitted=fixed is None,
                           val=out.val, threshold=out.metrics.get("threshold"))
    refs, scores = (None, None)
    if references is not None and len(classes) == 2:
        refs, scores = references(out.test)
    return dataclasses.replace(out, metrics={**out.metrics, "method": record}, references=refs,
                               reference_scores=scores)


# ------------------------------------------------------------------------------ the writer


def write_outcome(run: RunDir, outcome: Assessment, *, tables: Mapping[str, pd.DataFrame],
                  calibration: dict[str, Any] | None = None, versions: Mapping[str, Any] | None = None,
                  metrics: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """Record an outcome in ``run``: prediction tables, ``calibration.json``, ``versions.json``,
    ``metrics.json`` (in that order; the completion marker is :func:`write_marker`, written last).

    Parameters
    ----------
    run : RunDir
    outcome : Assessment
    tables : mapping
        File name -> table (``predictions.csv``, ``val_predictions.csv``, ``oof_predictions.csv`` ...).
    calibration : dict, optional
        ``calibration.json`` (default: the outcome's :attr:`Assessment.calibration_record`; pass
        ``{}`` to write none).
    versions : mapping, optional
        Keyword arguments of :meth:`medxcept.run.RunDir.write_versions`; ``None`` writes none.
    metrics : dict, optional
        ``metrics.json``; ``None`` writes none (a caller that needs ``versions.json``'s hashes in
        it writes it afterwards).

    Returns
    -------
    dict or None
        The content of ``versions.json`` when written.
    """
    record = outcome.calibration_record if calibration is None else calibration
    if record:
        run.write_json("calibration.json", record)
    for name, frame in tables.items():
        run.write_csv(name, frame)
    written = run.write_versions(**versions) if versions is not None else None
    if metrics is not None:
        run.write_json("metrics.json", metrics)
    return written


def write_marker(run: RunDir, name: str, content: Mapping[str, Any]) -> None:
    """The completion marker (``complete.json``, a fold's ``fold.json``), with the time it was written."""
    run.write_json(name, {**content, "completed": _dt.datetime.now().isoformat(timespec="seconds")})


# ------------------------------------------------------------------ fitting and measuring


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
    references : dict or None
        ``metrics.json["references"]``: the reference models compared with the deep model on the
        same test units (binary, when :func:`assess_model` was given a way to score them).
    reference_scores : pandas.DataFrame or None
        The references' per-image scores (``image_id``, ``ref_<name>``) for the prediction tables.
    """

    metrics: dict[str, Any]
    test: pd.DataFrame
    val: pd.DataFrame | None
    calibrator: Calibrator
    references: dict[str, Any] | None = None
    reference_scores: pd.DataFrame | None = None

    @property
    def method(self) -> dict[str, Any]:
        """``metrics.json["method"]`` (:func:`method_record`; empty for a bare :func:`assess`)."""
        return dict(self.metrics.get("method") or {})

    def predictions(self, classes: tuple[str, ...], how: str, unit: str = "visit") -> pd.DataFrame:
        """``predictions.csv`` of the test rows (:func:`prediction_table`), with the reference scores."""
        table = prediction_table(self.test, classes, how, unit)
        if self.reference_scores is not None:
            table = table.merge(self.reference_scores, on="image_id", how="left")
        return table

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
                       assessed: Assessment | pd.DataFrame, cfg: RunConfig, classes: tuple[str, ...],
                       save_models: Any = None) -> tuple[dict[str, Any] | None, pd.DataFrame | None]:
    """The reference models (:mod:`medxcept.evaluation.references`) fitted on ``fit_rows`` (positions of the
    training + validation images in ``table`` / ``images``) and compared with the deep model's
    uncalibrated scores on ``test_rows`` (the rows of ``assessed.test``, or of the frame ``assessed``,
    in its order). Binary tasks only: ``(None, None)`` otherwise.

    Returns the ``metrics.json["references"]`` block and the per-image reference scores (``image_id``
    and ``ref_<name>`` columns) for ``predictions.csv``. ``save_models``: where to keep the fitted
    models (``references.joblib`` of a run: external validation applies them).
    """
    from medxcept.evaluation.references import reference_block

    if len(classes) != 2:
        return None, None
    test = assessed.test if isinstance(assessed, Assessment) else assessed
    return reference_block(table.reset_index(drop=True), images, fit_rows, test_rows,
                           test["logit"].to_numpy(np.float64), how=cfg.eval.patient_aggregation,
                           unit=cfg.eval.unit, n_resamples=cfg.eval.n_bootstrap, seed=cfg.seed,
                           save_models=save_models, scale="logit")

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
    probability (:func:`medxcept.evaluation.units.aggregate_by_patient`), as ``patient_*`` columns."""
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
