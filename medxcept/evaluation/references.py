"""Reference models: what a deep model must beat before anyone should believe it learned the disease.

A patient-level AUC means little on its own. On a small, hard cohort a network trained from scratch
can finish at 0.57 while a logistic regression on a few dozen crude colour statistics, fitted on the
same patients, reaches 0.69: the deep model then adds nothing, and the report must say so first.
Three references are fitted on the **same training + validation images** the deep model learned
from (the validation split also chose its epoch, threshold and calibration) and scored on the
**same test patients**:

``prevalence``
    A constant: the positive share of the training + validation images. Its AUC is 0.5 by
    construction; it anchors the comparison ("better than guessing?").
``image_statistics``
    A standardized, L2-regularized logistic regression on simple statistics of the preprocessed
    image *inside the field of view* (:func:`image_statistics`): per-channel intensity histograms,
    means, spreads and percentiles, a uniform local-binary-pattern histogram and grey-level
    co-occurrence (GLCM) texture of the luminance (scikit-image). Its regularization strength is
    chosen by patient-grouped cross-validation on the training + validation images only.
``acquisition``
    The audit's acquisition-fingerprint model (:mod:`medxcept.integrity.acquisition`): a logistic regression
    on the one-hot ``acq_*`` fingerprints (format, pixel mode, JPEG settings, device) and the
    image size. When it does as well as the deep model, the model may have learned the camera.

Image scores are combined into patient scores by the same aggregation as the deep model's
(``aggregate``), and :func:`compare_with_references` puts the deep model's patient-level AUC next to
each reference with the paired difference, its patient-bootstrap CI
(:func:`medxcept.evaluation.intervals.paired_bootstrap_auc`) and DeLong's p (:func:`medxcept.evaluation.intervals.delong_test`).
:func:`reference_sentences` turns that into plain words, the classical comparison first.

Binary tasks only: for more than two classes :func:`fit_references` returns the references'
macro one-vs-rest AUC without paired tests (see ``notes``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from medxcept.evaluation.intervals import bootstrap_ci, delong_test, paired_bootstrap_auc
from medxcept.evaluation.units import aggregate_by_patient, unit_keys, unit_patients, unit_visits
from medxcept.integrity.acquisition import ACQ_COLUMNS

__all__ = [
    "REFERENCES",
    "CLASSICAL",
    "image_statistics",
    "acquisition_features",
    "fit_references",
    "compare_with_references",
    "reference_sentences",
    "reference_block",
    "save_reference_models",
    "load_reference_models",
    "score_reference_models",
    "FEATURE_SPEC",
]

#: Reference names, in the order the report lists them, with their plain-words labels.
REFERENCES: dict[str, str] = {
    "prevalence": "prevalence (a constant)",
    "image_statistics": ("classical model on image statistics "
                         "(colour histograms + texture, logistic regression)"),
    "acquisition": "acquisition-fingerprint model (file format, JPEG settings, device, size)",
}
#: The reference the summary compares first.
CLASSICAL = "image_statistics"

_FOV_LEVEL = 8  # a pixel belongs to the field of view when its brightest channel exceeds this (of 255)
_HIST_BINS = 8
_LBP_POINTS, _LBP_RADIUS = 8, 1
_GLCM_LEVELS = 32
_C_GRID = (0.01, 0.1, 1.0)


# ------------------------------------------------------------------------------ features


def _image_features(img: np.ndarray) -> np.ndarray:
    from skimage.feature import graycomatrix, graycoprops, local_binary_pattern

    rgb = img.astype(np.float64)
    fov = rgb.max(axis=2) > _FOV_LEVEL
    if fov.sum() < 16:  # nothing usable: an all-black image gives zeros (and says nothing)
        fov = np.ones(fov.shape, dtype=bool)
    px = rgb[fov]  # (n, 3)
    feats: list[float] = []
    for c in range(3):
        v = px[:, c]
        hist = np.histogram(v, bins=_HIST_BINS, range=(0, 256))[0] / v.size
        feats += list(hist)
        feats += [v.mean() / 255, v.std() / 255, *(np.percentile(v, [5, 50, 95]) / 255)]
    gray = (0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]).astype(np.uint8)
    lbp = local_binary_pattern(gray, _LBP_POINTS, _LBP_RADIUS, method="uniform")
    feats += list(np.bincount(lbp[fov].astype(np.int64), minlength=_LBP_POINTS + 2)[: _LBP_POINTS + 2]
                  / max(int(fov.sum()), 1))
    # GLCM on the bounding box of the field of view, grey levels reduced so the matrix is not sparse
    q = (gray // (256 // _GLCM_LEVELS)).astype(np.uint8)
    glcm = graycomatrix(q, distances=[1, 3], angles=[0, np.pi / 2], levels=_GLCM_LEVELS, symmetric=True,
                        normed=True)
    for prop in ("contrast", "homogeneity", "energy", "correlation"):
        feats += list(np.nan_to_num(graycoprops(glcm, prop).mean(axis=1)))
    return np.asarray(feats, dtype=np.float64)


def image_statistics(images: np.ndarray) -> np.ndarray:
    """Simple statistics of each preprocessed image inside its field of view.

    Parameters
    ----------
    images : ndarray of shape (n, h, w, 3), uint8
        Preprocessed images as the model sees them (black outside the field of view).

    Returns
    -------
    ndarray of shape (n, 62)
        Per channel: an 8-bin histogram (shares), mean, SD and the 5th/50th/95th percentiles
        (39 values); a 10-bin uniform LBP histogram (P=8, R=1) of the luminance (10); GLCM
        contrast, homogeneity, energy and correlation at distances 1 and 3, averaged over the
        horizontal and vertical directions (8); the field-of-view share of the image and the
        luminance mean, SD, 5th and 95th percentiles (5).
    """
    arr = np.asarray(images)
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise ValueError(f"images must have shape (n, h, w, 3); got {arr.shape}")
    rows = []
    for img in arr:
        f = _image_features(img)
        rgb = img.astype(np.float64)
        fov = rgb.max(axis=2) > _FOV_LEVEL
        lum = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
        lum = lum[fov] if fov.any() else lum.ravel()
        extra = [fov.mean(), lum.mean() / 255, lum.std() / 255, *(np.percentile(lum, [5, 95]) / 255)]
        rows.append(np.r_[f, extra])
    return np.vstack(rows) if rows else np.zeros((0, 62))


def acquisition_features(table: pd.DataFrame) -> pd.DataFrame:
    """The acquisition fingerprints of each image as strings (``acq_*`` columns and ``size``).

    The same fingerprints the audit's shortcut probe uses (:mod:`medxcept.integrity.acquisition`); columns
    absent from ``table`` are skipped.
    """
    cols = [c for c in ACQ_COLUMNS if c in table.columns]
    feats = pd.DataFrame({c: table[c].fillna("").astype(str).to_numpy() for c in cols})
    if {"width", "height"} <= set(table.columns):
        feats["size"] = (table["width"].astype(str) + "x" + table["height"].astype(str)).to_numpy()
    return feats


# ------------------------------------------------------------------------------- fitting


def _grouped_c(x: np.ndarray, y: np.ndarray, groups: np.ndarray, seed: int) -> tuple[float, str]:
    """Regularization strength by patient-grouped CV (mean fold AUC); 0.1 when CV is not possible."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedGroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    per_class = pd.Series(groups).groupby(y).nunique()
    k = int(min(3, per_class.min())) if len(per_class) == 2 else 0
    if k < 2:
        return 0.1, "C = 0.1 (too few patients per class for a grouped cross-validation)"
    scores = {c: [] for c in _C_GRID}
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for tr, te in cv.split(x, y, groups):
        if len(set(y[tr])) < 2 or len(set(y[te])) < 2:
            continue
        for c in _C_GRID:
            model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
            model.fit(x[tr], y[tr])
            scores[c].append(roc_auc_score(y[te], model.predict_proba(x[te])[:, 1]))
    means = {c: float(np.mean(v)) for c, v in scores.items() if v}
    if not means:
        return 0.1, "C = 0.1 (no cross-validation fold had both classes)"
    best = max(means, key=lambda c: (round(means[c], 6), -c))  # ties: the stronger regularization
    return best, f"C = {best:g}, chosen by {k}-fold patient-grouped cross-validation on training + validation"


def _fit_logistic(x_fit: np.ndarray, y_fit: np.ndarray, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=2000))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence chatter on tiny sets; the AUC says what it is worth
        model.fit(x_fit, y_fit)
    return model


def _predict(model: Any, x: np.ndarray) -> np.ndarray:
    proba = model.predict_proba(x)
    return proba if proba.shape[1] > 2 else proba[:, 1]


def _logistic(x_fit: np.ndarray, y_fit: np.ndarray, x_score: np.ndarray, c: float) -> np.ndarray:
    return _predict(_fit_logistic(x_fit, y_fit, c), x_score)


def fit_references(
    table: pd.DataFrame,
    images: np.ndarray,
    fit_rows: ArrayLike,
    score_rows: ArrayLike,
    *,
    n_classes: int = 2,
    seed: int = 0,
    features: np.ndarray | None = None,
) -> dict[str, dict[str, Any]]:
    """Fit every reference on ``fit_rows`` and score the images of ``score_rows``.

    Parameters
    ----------
    table : pandas.DataFrame
        The cohort table (rows aligned with ``images``): ``y``, ``patient_key`` and, for the
        acquisition reference, the ``acq_*``, ``width`` and ``height`` columns.
    images : ndarray of shape (n, h, w, 3)
        Preprocessed images, aligned with ``table``.
    fit_rows, score_rows : array-like of int
        Positions (``iloc``) of the training + validation images, and of the test images.
    n_classes : int, default 2
    seed : int, default 0
        Seed of the cross-validation that chooses the classical model's regularization.
    features : ndarray or None
        :func:`image_statistics` of ``images`` when already computed (k-fold computes them once).

    Returns
    -------
    dict
        Per reference name (:data:`REFERENCES`): ``scores`` (image-level scores of ``score_rows``:
        shape (m,) for binary, (m, k) otherwise), ``label`` and ``detail`` (how it was fitted, in words).
    """
    fit_idx = np.asarray(fit_rows, dtype=np.int64)
    score_idx = np.asarray(score_rows, dtype=np.int64)
    y = table["y"].to_numpy().astype(np.int64)
    y_fit = y[fit_idx]
    if len(np.unique(y_fit)) < 2:
        raise ValueError("the reference models need both classes among the training + validation images")
    groups = table["patient_key"].astype(str).to_numpy()
    out: dict[str, dict[str, Any]] = {}

    share = np.bincount(y_fit, minlength=n_classes) / len(y_fit)
    const = np.tile(share, (len(score_idx), 1)) if n_classes > 2 else np.full(len(score_idx), share[1])
    out["prevalence"] = {"scores": const, "label": REFERENCES["prevalence"],
                         "detail": f"positive share of the training + validation images: {share[-1]:.3f}"
                         if n_classes == 2 else "class shares of the training + validation images",
                         "model": {"kind": "constant", "share": share.tolist()}}

    x = image_statistics(images[np.r_[fit_idx, score_idx]]) if features is None else np.asarray(features)[
        np.r_[fit_idx, score_idx]]
    x_fit, x_score = x[: len(fit_idx)], x[len(fit_idx):]
    if n_classes == 2:
        c, how_c = _grouped_c(x_fit, y_fit, groups[fit_idx], seed)
    else:
        c, how_c = 0.1, "C = 0.1"
    stats_model = _fit_logistic(x_fit, y_fit, c)
    out["image_statistics"] = {
        "scores": _predict(stats_model, x_score), "label": REFERENCES["image_statistics"],
        "detail": f"{x.shape[1]} statistics inside the field of view, standardized; {how_c}",
        "model": {"kind": "image_statistics", "estimator": stats_model, "n_features": int(x.shape[1])}}

    acq = acquisition_features(table)
    if not acq.empty:
        acq = acq.loc[:, acq.iloc[fit_idx].nunique() > 1]
    if acq.empty:
        out["acquisition"] = {"scores": const.copy(), "label": REFERENCES["acquisition"],
                              "detail": "no acquisition fingerprint varies among the training + validation "
                                        "images: the model is the constant prevalence",
                              "model": {"kind": "constant", "share": share.tolist()}}
    else:
        frame = pd.get_dummies(acq)
        dummies = frame.to_numpy(np.float64)
        acq_model = _fit_logistic(dummies[fit_idx], y_fit, 1.0)
        out["acquisition"] = {"scores": _predict(acq_model, dummies[score_idx]),
                              "label": REFERENCES["acquisition"],
                              "detail": f"one-hot fingerprints ({', '.join(acq.columns)}), "
                                        "logistic regression C = 1",
                              "model": {"kind": "acquisition", "estimator": acq_model, "columns": list(acq.columns),
                                        "dummy_columns": [str(c) for c in frame.columns]}}
    return out


#: Version of the saved reference models' layout (:func:`save_reference_models`).
MODELS_VERSION = 1
#: How the saved image-statistics model's inputs are computed: a loaded model is refused when the
#: code computing them changed (:func:`load_reference_models`).
FEATURE_SPEC: dict[str, Any] = {"function": "medxcept.evaluation.references.image_statistics", "n_features": 62,
                                "fov_level": _FOV_LEVEL, "hist_bins": _HIST_BINS,
                                "lbp": [_LBP_POINTS, _LBP_RADIUS], "glcm_levels": _GLCM_LEVELS}


def save_reference_models(path: str | Path, references: dict[str, dict[str, Any]], *,
                          image_px: int) -> Path:
    """Write the fitted references of :func:`fit_references` (their ``model`` entries) to ``path``
    (joblib), with the feature spec and the image size they were fitted at, so an external
    validation scores its images with the same models (:func:`score_reference_models`).

    The file holds scikit-learn estimators and the acquisition reference's one-hot column names
    (fingerprint values such as the file format or hashed device strings, as in ``cohort.csv``);
    no identifier. Written atomically.
    """
    import joblib

    payload = {"version": MODELS_VERSION, "feature_spec": dict(FEATURE_SPEC), "image_px": int(image_px),
               "models": {n: {"label": r["label"], "detail": r["detail"], **r["model"]}
                          for n, r in references.items() if "model" in r}}
    path = Path(path)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    joblib.dump(payload, tmp)
    os.replace(tmp, path)
    return path


def load_reference_models(path: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """The saved references of a run (:func:`save_reference_models`), or ``(None, why)``: a run made
    before they were saved, or with another feature spec."""
    import joblib

    path = Path(path)
    if not path.is_file():
        return None, (f"the source run has no saved reference models ({path.name}; runs made before they were "
                      "saved): no reference comparison on these patients")
    payload = joblib.load(path)
    if payload.get("version") != MODELS_VERSION or payload.get("feature_spec") != FEATURE_SPEC:
        return None, ("the source run's reference models were saved with another feature spec or layout: "
                      "not applied here")
    return payload, None


def score_reference_models(payload: dict[str, Any], table: pd.DataFrame, images: np.ndarray,
                           features: np.ndarray | None = None) -> dict[str, dict[str, Any]]:
    """Score ``images`` (rows of ``table``) with saved reference models: the input of
    :func:`compare_with_references`, like :func:`fit_references`' output. Nothing is refitted:
    an acquisition fingerprint value the source run never saw gets no one-hot column (all zero)."""
    out: dict[str, dict[str, Any]] = {}
    n = len(table)
    x = None
    for name, m in payload["models"].items():
        if m["kind"] == "constant":
            share = np.asarray(m["share"], dtype=np.float64)
            scores = np.tile(share, (n, 1)) if share.size > 2 else np.full(n, share[-1])
        elif m["kind"] == "image_statistics":
            x = (image_statistics(images) if features is None else np.asarray(features)) if x is None else x
            scores = _predict(m["estimator"], x)
        else:
            acq = acquisition_features(table)
            for c in m["columns"]:
                if c not in acq:
                    acq[c] = ""
            dummies = pd.get_dummies(acq[m["columns"]]).reindex(columns=m["dummy_columns"], fill_value=0)
            unseen = int((dummies.to_numpy().sum(axis=1) < len(m["columns"])).sum())
            scores = _predict(m["estimator"], dummies.to_numpy(np.float64))
            m = {**m, "detail": m["detail"] + (f"; {unseen} image(s) with a fingerprint value the source run never "
                                               "saw (no column: scored as the rest of the model says)"
                                               if unseen else "")}
        out[name] = {"scores": scores, "label": m["label"], "detail": m["detail"] + " (fitted on the source run)"}
    return out


# ---------------------------------------------------------------------------- comparing


Aggregate = Callable[[ArrayLike, ArrayLike, ArrayLike], tuple[np.ndarray, np.ndarray, np.ndarray]]


def _default_aggregate(how: str) -> Aggregate:
    def agg(keys: ArrayLike, y: ArrayLike, p: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return aggregate_by_patient(keys, y, p, how=how)  # type: ignore[arg-type]

    return agg


def _num(v: Any) -> float | None:
    return None if v is None or (isinstance(v, float) and not math.isfinite(v)) else float(v)


def compare_with_references(
    y_true: ArrayLike,
    deep_scores: ArrayLike,
    references: dict[str, dict[str, Any]],
    patient_key: ArrayLike,
    *,
    aggregate: Aggregate | None = None,
    how: str = "max",
    n_resamples: int = 1000,
    seed: int = 0,
    scale: str = "probability",
    clusters: ArrayLike | None = None,
) -> dict[str, Any]:
    """The deep model's patient-level AUC next to each reference's, with paired tests.

    Parameters
    ----------
    y_true : array-like of shape (n,)
        0/1 labels of the test images.
    deep_scores : array-like of shape (n,)
        The deep model's image scores (uncalibrated probabilities or logits: only the ranking counts).
    references : dict
        :func:`fit_references` output for the same images.
    patient_key : array-like of shape (n,)
        The unit the headline is reported on: patient keys, or unit keys
        (:func:`medxcept.evaluation.units.unit_keys`: patient and visit). The bootstrap resamples the
        patients of the units (:func:`medxcept.evaluation.units.unit_patients`): all visits of a patient
        together.
    aggregate : callable or None
        ``aggregate(keys, y, scores) -> (keys, y_patient, score_patient)``, the run's patient
        aggregation; None uses :func:`medxcept.evaluation.units.aggregate_by_patient` with ``how``.
    n_resamples, seed :
        The patient bootstrap (0 resamples: no CIs, DeLong only).
    scale : {"probability", "logit"}, default "probability"
        What ``deep_scores`` are: ``"logit"`` aggregates them on the logit scale
        (:func:`medxcept.evaluation.units.aggregate_by_patient`), so confident cases never tie.
    clusters : array-like of shape (n,), optional
        The patient of each image, when it is not the patient part of ``patient_key`` (pooled
        out-of-fold units keyed by repeat: every repeat of a patient is one cluster).

    Returns
    -------
    dict
        ``deep`` (``auc``, ``ci``), ``references`` (per name: ``label``, ``detail``, ``auc``, ``ci``,
        ``diff`` = deep - reference, ``diff_ci``, ``diff_p_bootstrap``, ``delong_p``, ``p_value`` (the
        one the sentences state) and ``test_used`` (which test gave it: DeLong when every patient
        has one unit, else the patient-cluster bootstrap, because DeLong treats a patient's units as
        independent), ``better``: "yes" when the paired CI lies above 0, "no" otherwise),
        ``classical_not_better`` (bool), ``n_patients``, ``level`` ("patient"), ``notes``.
    """
    if aggregate is None and scale == "logit":
        def agg_deep(k: ArrayLike, yy: ArrayLike, s: ArrayLike) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            return aggregate_by_patient(k, yy, s, how=how, scale="logit")  # type: ignore[arg-type]
    else:
        agg_deep = aggregate or _default_aggregate(how)
    agg = aggregate or _default_aggregate(how)
    y = np.asarray(y_true)
    keys, yp, deep_p = agg_deep(patient_key, y, np.asarray(deep_scores, dtype=np.float64))
    out: dict[str, Any] = {"level": "patient", "n_patients": int(len(keys)), "n_resamples": int(n_resamples),
                           "references": {}, "notes": []}
    if len(np.unique(yp)) < 2:
        out["notes"].append("the test patients have one class: no AUC, no comparison")
        out["deep"] = {"auc": None, "ci": None}
        out["classical_not_better"] = None
        return out

    def auc_ci(p: np.ndarray) -> tuple[float | None, list | None]:
        if not n_resamples:
            from sklearn.metrics import roc_auc_score

            return float(roc_auc_score(yp, p)), None
        # logits are ranked as they are (a sigmoid would saturate above about 37 and tie)
        ci = bootstrap_ci(yp, p, clusters, metrics=("roc_auc",), threshold=None,
                          n_resamples=n_resamples, seed=seed)["roc_auc"]
        return _num(ci.point), [_num(ci.low), _num(ci.high)]

    if clusters is None:
        clusters = unit_patients(keys)
    else:
        cluster_of = dict(zip(np.asarray(patient_key).astype(str), np.asarray(clusters).astype(str), strict=True))
        clusters = np.array([cluster_of[str(k)] for k in keys], dtype=object)
    out["n_units"], out["n_patients"] = int(len(keys)), int(len(set(clusters)))
    # DeLong treats units as independent: with several units per patient the patient-cluster
    # bootstrap's p is the one to state
    several = out["n_units"] > out["n_patients"]
    test_used = "patient-cluster bootstrap" if several and n_resamples else "DeLong"
    out["test_used"] = test_used
    deep_auc, deep_ci = auc_ci(deep_p)
    out["deep"] = {"auc": deep_auc, "ci": deep_ci}
    for name, ref in references.items():
        _, _, ref_p = agg(patient_key, y, np.asarray(ref["scores"], dtype=np.float64))
        auc, ci = auc_ci(ref_p)
        row: dict[str, Any] = {"label": ref.get("label", name), "detail": ref.get("detail", ""), "auc": auc,
                               "ci": ci, "diff": None if deep_auc is None or auc is None else deep_auc - auc}
        dl = delong_test(yp, deep_p, ref_p)
        row["delong_p"] = _num(dl["p_value"])
        row["notes"] = list(dl["notes"])
        if n_resamples:
            pb = paired_bootstrap_auc(yp, deep_p, ref_p, clusters, n_resamples=n_resamples, seed=seed)
            row["diff_ci"] = None if pb["ci"] is None else [float(pb["ci"][0]), float(pb["ci"][1])]
            row["diff_p_bootstrap"] = _num(pb["p_value"])
        else:
            row["diff_ci"] = None if dl["ci"] is None else [float(dl["ci"][0]), float(dl["ci"][1])]
            row["diff_p_bootstrap"] = None
        row["test_used"] = test_used
        row["p_value"] = row["diff_p_bootstrap"] if test_used != "DeLong" else row["delong_p"]
        if several:
            row["notes"].append(f"{out['n_units']} units of {out['n_patients']} patients: DeLong treats a "
                                f"patient's units as independent; the stated p is the {test_used}'s")
        low = row["diff_ci"][0] if row["diff_ci"] else None
        row["better"] = "yes" if low is not None and low > 0 else "no"
        out["references"][name] = row
    classical = out["references"].get(CLASSICAL)
    out["classical_not_better"] = None if classical is None else classical["better"] == "no"
    return out


def _ci_text(ci: list | None) -> str:
    return "" if not ci or ci[0] is None else f", 95 % CI {ci[0]:.3f} to {ci[1]:.3f}"


def reference_sentences(comparison: dict[str, Any]) -> list[str]:
    """Plain-words lines for the summary card; when the deep model is not better than the classical
    reference, that comes first.

    "Not better" means the paired patient-bootstrap interval of the AUC difference (deep minus
    reference) does not lie above 0: worse, or not distinguishable.
    """
    deep = comparison.get("deep", {})
    refs = comparison.get("references", {})
    if deep.get("auc") is None or not refs:
        return list(comparison.get("notes", []))
    lines: list[str] = []

    def line(name: str, row: dict[str, Any]) -> str:
        what = row["label"].split(" (")[0]
        p = row.get("p_value", row.get("delong_p"))
        test = row.get("test_used", "DeLong")
        stats = (f"patient AUC {deep['auc']:.3f} vs {row['auc']:.3f}, difference {row['diff']:+.3f}"
                 f"{_ci_text(row.get('diff_ci'))}" + (f", {test} p = {p:.3g}" if p is not None else ""))
        if row["better"] == "yes":
            return f"The deep model is better than the {what} ({stats})."
        if row["diff"] is not None and row["diff"] <= 0:
            return (f"The deep model is not better than the {what}: it ranks the test patients worse "
                    f"({stats}).")
        return (f"The deep model is not better than the {what}: the difference is not distinguishable "
                f"from 0 ({stats}).")

    if CLASSICAL in refs:
        lines.append(line(CLASSICAL, refs[CLASSICAL]))
    for name, row in refs.items():
        if name != CLASSICAL:
            lines.append(line(name, row))
    acq = refs.get("acquisition")
    if acq and acq.get("auc") is not None and deep["auc"] is not None and acq["auc"] >= deep["auc"] - 0.05 \
            and acq["auc"] > 0.6:
        lines.append(f"The acquisition fingerprints alone reach a patient AUC of {acq['auc']:.3f}: the deep "
                     "model may have learned the camera or the file format rather than the disease.")
    return lines


def reference_block(
    table: pd.DataFrame,
    images: np.ndarray,
    fit_rows: ArrayLike,
    test_rows: ArrayLike,
    deep_scores: ArrayLike,
    *,
    aggregate: Aggregate | None = None,
    how: str = "max",
    unit: str = "patient",
    n_resamples: int = 1000,
    seed: int = 0,
    features: np.ndarray | None = None,
    save_models: str | Path | None = None,
    scale: str = "probability",
) -> tuple[dict[str, Any], pd.DataFrame]:
    """References for one split (a run, a fold): fitted, compared, put in words.

    The one call a workflow makes: :func:`fit_references` on ``fit_rows`` (training + validation),
    :func:`compare_with_references` against ``deep_scores`` (the deep model's **uncalibrated** image
    scores of ``test_rows``, in that order) and :func:`reference_sentences`. ``unit``: the run's
    ``eval.unit`` (``"visit"``: one score per patient and visit when the table has ``study_id``).
    ``save_models``: a path where the fitted models are written (:func:`save_reference_models`), for
    external validation of the run. ``scale``: ``"logit"`` when ``deep_scores`` are logits
    (:func:`compare_with_references`).

    Returns
    -------
    block : dict
        JSON-ready, for ``metrics.json["references"]``: the comparison plus ``sentences``.
    scores : pandas.DataFrame
        One row per test image (``image_id`` when the table has it), a ``ref_<name>`` column per
        reference: for ``predictions.csv``, so a reviewer can redo the comparison.
    """
    test_idx = np.asarray(test_rows, dtype=np.int64)
    refs = fit_references(table, images, fit_rows, test_idx, seed=seed, features=features)
    if save_models is not None:
        save_reference_models(save_models, refs, image_px=int(np.asarray(images).shape[1]))
    sub = table.iloc[test_idx]
    keys = unit_keys(sub["patient_key"], unit_visits(sub, unit))
    block = compare_with_references(sub["y"].to_numpy(), deep_scores, refs, keys,
                                    aggregate=aggregate, how=how, n_resamples=n_resamples, seed=seed, scale=scale)
    block["sentences"] = reference_sentences(block)
    scores = pd.DataFrame({f"ref_{name}": np.asarray(ref["scores"]) for name, ref in refs.items()
                           if np.asarray(ref["scores"]).ndim == 1})
    if "image_id" in sub:
        scores.insert(0, "image_id", sub["image_id"].to_numpy())
    return block, scores
