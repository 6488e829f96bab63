"""Pre-training integrity audit: leakage, duplicates, label conflicts, confounding.

A model evaluated on images it (almost) saw in training looks better than it is. The
audit looks for the usual ways this happens in small medical cohorts *before* any
training, and reports them in plain words:

* the same patient in two splits (or in two cross-validation folds);
* the same image twice: exact copies (file hash ``sha256`` or decoded-pixel hash) and
  near-copies (perceptual hashes: flipped, rescaled, re-compressed copies) — within a
  split (info), across splits (error by default: leakage) and across patients (warning:
  possibly one person under two IDs);
* label conflicts: the same image, or a near-copy of it, with two different labels;
* class balance per split and fold, and patients per class;
* confounding: a class that comes (almost) entirely from one source or image size;
* laterality sanity: more than two images of one eye in one visit, missing laterality;
* patient plausibility (:func:`check_patient_plausibility`): a patient with implausibly many
  images (a file-name pattern that took a class name or a prefix for the patient), and a
  patient whose images carry more than one class (plausible across two eyes, not within one
  eye at one visit).

Every finding names patients by ``patient_key`` (the pseudonym) and images by
``image_id``; the raw ``patient_id`` never leaves memory.

The image-fingerprint engine (hashes, detail bit-maps, the pair search and its verification)
is :mod:`medxcept.integrity.fingerprints`; this module holds the checks.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from medxcept.errors import ConfigError, LeakageError
from medxcept.integrity.acquisition import ACQ_COLUMNS, SHORTCUT_AUC, cramers_v, shortcut_probe
from medxcept.integrity.fingerprints import DETAIL_PX, check_fingerprints, fingerprints, hamming
from medxcept.integrity.pairs import (
    DEFAULT_HAMMING_THRESHOLD,
    DETAIL_THRESHOLD,
    canonical_rows,
    components,
    detail_similarity,
    duplicate_groups,
    duplicate_pairs,
    input_order_groups,
    near_duplicate_pairs,
    verified_near_pairs,
)

__all__ = [
    "DEFAULT_HAMMING_THRESHOLD",
    "DETAIL_THRESHOLD",
    "DETAIL_PX",
    "POLICIES",
    "Finding",
    "AuditReport",
    "fingerprints",
    "hamming",
    "detail_similarity",
    "near_duplicate_pairs",
    "verified_near_pairs",
    "duplicate_groups",
    "cramers_v",
    "audit_cohort",
]

logger = logging.getLogger(__name__)

POLICIES = ("error", "warn", "fix")
SEVERITIES = ("error", "warning", "info")

# ---------------------------------------------------------------- confounding


def _size_bucket(df: pd.DataFrame, max_buckets: int = 12) -> pd.Series:
    """``"W x H"`` per image; coarsened to 256-px steps when there are many sizes."""
    w = pd.to_numeric(df["width"], errors="coerce")
    h = pd.to_numeric(df["height"], errors="coerce")
    exact = w.astype("Int64").astype(str) + "x" + h.astype("Int64").astype(str)
    if exact.nunique() <= max_buckets:
        return exact
    wr = (np.round(w / 256) * 256).astype("Int64").astype(str)
    hr = (np.round(h / 256) * 256).astype("Int64").astype(str)
    return "~" + wr + "x" + hr


# ------------------------------------------------------------------ report


def _jsonable(x: Any) -> Any:
    """Plain Python types for ``json.dumps`` (numpy scalars, arrays, NA)."""
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return [_jsonable(v) for v in x.tolist()]
    if isinstance(x, np.generic):
        return _jsonable(x.item())
    if isinstance(x, float) and not np.isfinite(x):
        return None
    if x is pd.NA or x is None:
        return None
    return x


@dataclass
class Finding:
    """One result of the audit.

    Attributes
    ----------
    kind : str
        Machine name (``patient_overlap``, ``duplicate_across_splits``, ...).
    severity : str
        ``"error"`` (stops the run under ``raise_if_errors``), ``"warning"`` or ``"info"``.
    message : str
        One or two sentences in plain words, saying what to do where relevant.
    count : int
        How many patients, pairs or images are concerned.
    details : list of dict
        Examples (at most ``max_details``), naming ``patient_key`` / ``image_id`` only.
    """

    kind: str
    severity: str
    message: str
    count: int = 0
    details: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.severity not in SEVERITIES:
            raise ConfigError(f"Finding.severity must be one of {SEVERITIES}, got {self.severity!r}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict."""
        return _jsonable(
            {
                "kind": self.kind,
                "severity": self.severity,
                "message": self.message,
                "count": int(self.count),
                "details": self.details,
            }
        )


@dataclass
class AuditReport:
    """Everything the audit found, plus the tables behind it.

    Attributes
    ----------
    findings : list of Finding
        In check order; see :attr:`errors` and :attr:`warnings`.
    tables : dict of str to pandas.DataFrame
        ``class_balance`` (images per partition x class), ``class_balance_patients``,
        ``patients_per_class`` and ``confounding_<column>`` (class x value counts).
    policy : str
        The policy the severities were assigned under.
    hamming_threshold : int
        Near-duplicate threshold used.
    merge_groups : pandas.Series or None
        Under ``policy="fix"``: :func:`duplicate_groups`, to pass to
        :func:`medxcept.integrity.splits.assign_splits` as ``merge=`` before splitting again.
    """

    findings: list[Finding] = field(default_factory=list)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    policy: str = "error"
    hamming_threshold: int = DEFAULT_HAMMING_THRESHOLD
    merge_groups: pd.Series | None = None

    @property
    def errors(self) -> list[Finding]:
        """Findings of severity ``"error"``."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def warnings(self) -> list[Finding]:
        """Findings of severity ``"warning"``."""
        return [f for f in self.findings if f.severity == "warning"]

    def by_kind(self, kind: str) -> list[Finding]:
        """Findings of one kind (empty list when none)."""
        return [f for f in self.findings if f.kind == kind]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary, findings and tables (for ``audit.json``)."""
        tables = {}
        for name, t in self.tables.items():
            tables[name] = {
                "index": [str(i) for i in t.index],
                "columns": [str(c) for c in t.columns],
                "data": _jsonable(t.to_numpy().tolist()),
            }
        return {
            "policy": self.policy,
            "hamming_threshold": int(self.hamming_threshold),
            "summary": {s: sum(f.severity == s for f in self.findings) for s in SEVERITIES},
            "findings": [f.to_dict() for f in self.findings],
            "tables": tables,
            "merge_groups": None if self.merge_groups is None else int(self.merge_groups.nunique()),
        }

    def raise_if_errors(self) -> None:
        """Raise :class:`LeakageError` when any finding is an error.

        Raises
        ------
        LeakageError
            One paragraph: the count of each error and what to do about it.
        """
        errs = self.errors
        if not errs:
            return
        parts = "; ".join(f"{f.kind.replace('_', ' ')}: {f.count}" for f in errs)
        raise LeakageError(
            f"The integrity audit found {len(errs)} problem(s) that would make the evaluation "
            f"untrustworthy ({parts}). See audit.json for the patient keys and image ids. To go on, "
            "remove or relabel the duplicated images, merge patient IDs that belong to one person, "
            "or fix the split file; or re-run with audit policy 'fix' to regroup duplicates "
            "into one split, or 'warn' to continue at your own risk (the report will say so)."
        )


# ------------------------------------------------------------------ checks


def _partition(df: pd.DataFrame) -> pd.Series | None:
    """The split/fold an image is evaluated in; None when the table is not split yet."""
    cols = [c for c in ("split", "fold") if c in df.columns]
    if not cols:
        return None
    out = pd.Series("", index=df.index, dtype=object)
    for c in cols:
        out = out + f"{c}=" + df[c].astype(str) + " "
    return out.str.strip()


def _leak_severity(policy: str) -> str:
    return "error" if policy == "error" else "warning"


def _check_overlap(
    df: pd.DataFrame, part: pd.Series, key: str, policy: str, max_details: int
) -> Finding | None:
    n_parts = part.groupby(df[key].to_numpy()).nunique()
    bad = n_parts[n_parts > 1].index
    if len(bad) == 0:
        return None
    details = []
    for k in list(bad)[:max_details]:
        rows = df[key].to_numpy() == k
        details.append(
            {key: str(k), "partitions": sorted(set(part[rows])), "n_images": int(rows.sum())}
        )
    what = "patient" if key == "patient_key" else f"'{key}' value"
    sev = _leak_severity(policy)
    return Finding(
        kind="patient_overlap" if key == "patient_key" else f"{key}_overlap",
        severity=sev,
        message=(
            f"{len(bad)} {what}(s) have images in more than one split or fold, so the model is "
            "tested on people it was trained on. Re-split by patient (medxcept does this unless "
            "a split file is supplied) or correct the split file."
        ),
        count=len(bad),
        details=details,
    )


def _pair_details(df: pd.DataFrame, pairs: pd.DataFrame, part: pd.Series | None, n: int) -> list[dict[str, Any]]:
    out = []
    ids = df["image_id"].astype(str).to_numpy()
    pk = df["patient_key"].astype(str).to_numpy()
    lab = df["label"].astype(str).to_numpy()
    for row in pairs.head(n).itertuples(index=False):
        i, j = int(row.i), int(row.j)
        d: dict[str, Any] = {
            "image_id_a": ids[i],
            "image_id_b": ids[j],
            "patient_key_a": pk[i],
            "patient_key_b": pk[j],
            "label_a": lab[i],
            "label_b": lab[j],
            "match": row.match,
        }
        if row.match == "near":
            d["phash_distance"] = int(row.phash_distance)
            d["dhash_distance"] = int(row.dhash_distance)
            d["flipped"] = bool(row.flipped)
            if not pd.isna(row.detail_similarity):
                d["detail_similarity"] = round(float(row.detail_similarity), 3)
            if isinstance(row.method, str):
                d["method"] = row.method
            if row.method == "geometry":
                d["inliers"] = int(row.inliers)
                d["aligned_agreement"] = round(float(row.aligned_agreement), 3)
                d["transform"] = {"rotation_deg": float(row.rotation_deg), "scale": float(row.scale),
                                  "shear_rad": float(row.shear_rad), "shift_x": float(row.shift_x),
                                  "shift_y": float(row.shift_y), "flip": bool(row.flipped)}
        if part is not None:
            d["partition_a"] = part.iloc[i]
            d["partition_b"] = part.iloc[j]
        out.append(d)
    return out


def _check_duplicates(
    df: pd.DataFrame, pairs: pd.DataFrame, part: pd.Series | None, policy: str, max_details: int
) -> list[Finding]:
    found: list[Finding] = []
    if pairs.empty:
        return found
    i = pairs["i"].to_numpy(np.int64)
    j = pairs["j"].to_numpy(np.int64)
    pk = df["patient_key"].astype(str).to_numpy()
    lab = df["label"].astype(str).to_numpy()
    exact = (pairs["match"] != "near").to_numpy()
    cross_patient = pk[i] != pk[j]
    if part is not None:
        p = part.to_numpy()
        cross_split = p[i] != p[j]
    else:
        cross_split = np.zeros(len(pairs), dtype=bool)

    def describe(mask: np.ndarray) -> str:
        return f"{int((mask & exact).sum())} exact, {int((mask & ~exact).sum())} near-duplicate"

    if cross_split.any():
        m = cross_split
        found.append(
            Finding(
                "duplicate_across_splits",
                _leak_severity(policy) if policy != "fix" else "warning",
                f"{int(m.sum())} pair(s) of identical or near-identical images ({describe(m)}) sit in "
                "different splits or folds: the model would be tested on images it was trained on. "
                + (
                    "Policy 'fix': they are regrouped so that re-splitting puts each set in one split."
                    if policy == "fix"
                    else "Remove the copies, or use audit policy 'fix' to keep each set in one split."
                ),
                int(m.sum()),
                _pair_details(df, pairs[m], part, max_details),
            )
        )
    if cross_patient.any():
        m = cross_patient
        n_pat = len(set(pk[i[m]]) | set(pk[j[m]]))
        found.append(
            Finding(
                "duplicate_across_patients",
                "warning",
                f"{int(m.sum())} pair(s) of identical or near-identical images ({describe(m)}) belong to "
                f"different patients ({n_pat} patient keys): possibly one person under two IDs, or a "
                "copied file. Check these patients and merge their IDs if they are one person.",
                int(m.sum()),
                _pair_details(df, pairs[m], part, max_details),
            )
        )
    within = ~cross_split & ~cross_patient
    if within.any():
        m = within
        found.append(
            Finding(
                "duplicate_within_split",
                "info",
                f"{int(m.sum())} pair(s) of identical or near-identical images ({describe(m)}) of the same "
                "patient in the same split (repeat shots or copies); harmless for the evaluation, but "
                "they weigh that patient more in training.",
                int(m.sum()),
                _pair_details(df, pairs[m], part, max_details),
            )
        )
    conflict = lab[i] != lab[j]
    if (conflict & exact).any():
        m = conflict & exact
        found.append(
            Finding(
                "label_conflict",
                "error" if policy != "warn" else "warning",
                f"{int(m.sum())} pair(s) of identical images carry different labels. One label is wrong; "
                "correct the label file or drop the copies.",
                int(m.sum()),
                _pair_details(df, pairs[m], part, max_details),
            )
        )
    if (conflict & ~exact).any():
        m = conflict & ~exact
        found.append(
            Finding(
                "label_conflict_near",
                "warning",
                f"{int(m.sum())} pair(s) of near-identical images carry different labels. This can be real "
                "(the disease changed between visits) or a labelling error; please check.",
                int(m.sum()),
                _pair_details(df, pairs[m], part, max_details),
            )
        )
    return found


def _fold_partitions(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Boolean row masks of every set that must hold every class."""
    sets: dict[str, np.ndarray] = {}
    if "split" in df.columns:
        for s in sorted(df["split"].astype(str).unique()):
            sets[f"split={s}"] = (df["split"].astype(str) == s).to_numpy()
    if "fold" in df.columns:
        fold = pd.to_numeric(df["fold"], errors="coerce").fillna(-1).astype(int).to_numpy()
        for k in sorted(set(fold[fold >= 0])):
            sets[f"fold={k} train"] = (fold >= 0) & (fold != k)
            sets[f"fold={k} val"] = fold == k
    return sets


def _check_balance(df: pd.DataFrame, report: AuditReport, max_details: int) -> list[Finding]:
    found: list[Finding] = []
    labels = sorted(df["label"].astype(str).unique())
    lab = df["label"].astype(str)
    pk = df["patient_key"].astype(str)
    per_class = pd.DataFrame(
        {
            "n_images": lab.value_counts().reindex(labels).fillna(0).astype(int),
            "n_patients": pk.groupby(lab).nunique().reindex(labels).fillna(0).astype(int),
        }
    )
    if "y" in df.columns:  # patient label = most severe (highest y), as in medxcept.integrity.splits
        y = pd.to_numeric(df["y"], errors="coerce")
        top = y.groupby(pk).transform("max")
        pl = lab[y == top].groupby(pk[y == top]).first()
        per_class["n_patients_by_patient_label"] = pl.value_counts().reindex(labels).fillna(0).astype(int)
    per_class.index.name = "label"
    report.tables["patients_per_class"] = per_class
    sets = _fold_partitions(df)
    if not sets:
        return found
    img_rows, pat_rows = {}, {}
    for name, mask in sets.items():
        img_rows[name] = lab[mask].value_counts().reindex(labels).fillna(0).astype(int)
        pat_rows[name] = pk[mask].groupby(lab[mask]).nunique().reindex(labels).fillna(0).astype(int)
    report.tables["class_balance"] = pd.DataFrame(img_rows).T.rename_axis("partition")
    report.tables["class_balance_patients"] = pd.DataFrame(pat_rows).T.rename_axis("partition")
    missing = [
        {"partition": name, "missing_classes": [c for c in labels if img_rows[name][c] == 0]}
        for name in sets
        if (img_rows[name] == 0).any()
    ]
    if missing:
        found.append(
            Finding(
                "missing_class",
                "error",
                f"{len(missing)} split(s)/fold part(s) lack at least one class, so AUC and per-class metrics "
                "cannot be computed there. Use fewer folds or smaller validation/test fractions, or "
                "collect more patients of the rare class.",
                len(missing),
                missing[:max_details],
            )
        )
    return found


def _check_confounding(
    df: pd.DataFrame,
    report: AuditReport,
    columns: Sequence[str],
    *,
    share_threshold: float,
    v_threshold: float,
    min_class_images: int,
) -> list[Finding]:
    found: list[Finding] = []
    lab = df["label"].astype(str)
    for col in columns:
        if col == "size":
            if not {"width", "height"} <= set(df.columns):
                continue
            values = _size_bucket(df)
        elif col in df.columns:
            values = df[col].fillna("NA").astype(str)
        else:
            continue
        table = pd.crosstab(lab, values)
        report.tables[f"confounding_{col}"] = table
        if table.shape[1] < 2 or table.shape[0] < 2:
            continue
        v = cramers_v(table)
        shares = table.div(table.sum(axis=1), axis=0)
        overall = table.sum(axis=0) / table.to_numpy().sum()
        hits = []
        for c in table.index:
            if table.loc[c].sum() < min_class_images:
                continue
            s = shares.loc[c].idxmax()
            # a source that dominates the whole cohort says nothing about one class
            if shares.loc[c, s] >= share_threshold and overall[s] < share_threshold:
                hits.append(
                    {"label": c, "value": str(s), "share": round(float(shares.loc[c, s]), 3),
                     "share_in_cohort": round(float(overall[s]), 3)}
                )
        if hits or v >= v_threshold:
            said = "; ".join(
                f"{h['share']:.0%} of '{h['label']}' images come from {col} '{h['value']}' "
                f"({h['share_in_cohort']:.0%} of all images)"
                for h in hits
            )
            found.append(
                Finding(
                    "confounding",
                    "warning",
                    f"Class and {col} are entangled (Cramér's V = {v:.2f}){': ' + said if said else ''}. "
                    f"The model may learn to recognise the {col} instead of the disease; report results per "
                    f"{col}, or balance the classes within each {col}.",
                    len(hits) or 1,
                    [{"column": col, "cramers_v": round(v, 3), **h} for h in hits] or [{"column": col, "cramers_v": round(v, 3)}],
                )
            )
        else:
            found.append(
                Finding(
                    "confounding_checked",
                    "info",
                    f"Class vs {col}: Cramér's V = {v:.2f}, no class comes mostly from one {col}.",
                    0,
                    [{"column": col, "cramers_v": round(v, 3)}],
                )
            )
    return found


def _check_acquisition(df: pd.DataFrame, report: AuditReport) -> list[Finding]:
    """Cramér's V of each acquisition fingerprint vs the label, and the patient-grouped shortcut probe."""

    if not any(c in df.columns for c in ACQ_COLUMNS):
        return []
    probe = shortcut_probe(df)
    if probe is None:
        return []
    report.tables["acquisition_cramers_v"] = pd.DataFrame(
        {"cramers_v": pd.Series(probe["cramers_v"], dtype=float)}).rename_axis("fingerprint")
    auc = probe["auc"]
    top = sorted(probe["cramers_v"].items(), key=lambda kv: -kv[1])
    detail = [{"auc": auc, "n_splits": probe["n_splits"], "features": probe["features"],
               "cramers_v": probe["cramers_v"]}]
    said = ", ".join(f"{c} {v:.2f}" for c, v in top[:3])
    if auc is not None and auc >= SHORTCUT_AUC:
        return [Finding(
            "acquisition_shortcut", "warning",
            f"The label can be predicted from how the image was acquired (AUC {auc:.2f}): the model may learn "
            f"the camera, not the disease. A logistic regression on acquisition fingerprints alone (file format, "
            f"size, JPEG settings, device, border and field-of-view geometry), cross-validated by patient, separates the classes; strongest: "
            f"Cramér's V {said}. Balance the classes within each acquisition, or report results per source.",
            1, detail)]
    return [Finding(
        "acquisition_checked", "info",
        f"Label vs acquisition fingerprints: patient-grouped probe AUC "
        f"{'n/a' if auc is None else f'{auc:.2f}'} (warning from {SHORTCUT_AUC}); Cramér's V {said}.",
        0, detail)]


def _check_laterality(df: pd.DataFrame, max_details: int) -> list[Finding]:
    found: list[Finding] = []
    if "laterality" not in df.columns:
        return found
    lat = df["laterality"].astype(str)
    n_na = int((lat == "NA").sum())
    if n_na:
        found.append(
            Finding(
                "laterality_missing",
                "info",
                f"{n_na} image(s) have no laterality (NA); eye-level checks skip them.",
                n_na,
            )
        )
    study = df["study_id"].astype(str) if "study_id" in df.columns else pd.Series("", index=df.index)
    sided = lat.isin(["L", "R"])
    if sided.any():
        keys = pd.DataFrame({"patient_key": df["patient_key"].astype(str), "study_id": study, "laterality": lat})[sided]
        counts = keys.value_counts()
        bad = counts[counts > 2]
        if len(bad):
            found.append(
                Finding(
                    "laterality_excess",
                    "warning",
                    f"{len(bad)} patient-visit-eye combination(s) have more than two images; check for "
                    "mislabelled laterality, a missing visit id, or repeated shots.",
                    len(bad),
                    [
                        {"patient_key": pkey, "study_id": s, "laterality": la, "n_images": int(n)}
                        for (pkey, s, la), n in list(bad.items())[:max_details]
                    ],
                )
            )
    return found


# ------------------------------------------------------------------ patient plausibility


def check_patient_plausibility(
    df: pd.DataFrame, *, max_images_per_patient: int = 20, max_details: int = 100
) -> list[Finding]:
    """Patients the cohort table makes implausible: too many images, or two classes.

    Parameters
    ----------
    df : pandas.DataFrame
        Cohort table with ``patient_key`` and ``label`` (``laterality``, ``study_id`` used when present).
    max_images_per_patient : int, default 20
        More images than this for one patient is a warning (``patient_many_images``): fundus
        cohorts hold a few images per eye and visit; 100 images usually mean the file-name
        pattern took a class name or a prefix for the patient identifier.
    max_details : int, default 100
        Patients listed per finding.

    Returns
    -------
    list of Finding
        ``patient_many_images`` (warning); ``patient_mixed_classes``: a warning for patients
        with two classes on *the same eye at the same visit* (or without laterality), an info
        for patients whose two eyes differ (discordant eyes are clinically common).
    """
    found: list[Finding] = []
    if len(df) == 0:
        return found
    keys = df["patient_key"].astype(str)
    counts = keys.value_counts()
    many = counts[counts > max_images_per_patient]
    if len(many):
        found.append(
            Finding(
                "patient_many_images",
                "warning",
                f"{len(many)} patient(s) have more than {max_images_per_patient} images (up to {int(many.max())}); "
                "check that the patient identifier really names a person (a file-name pattern can take a class "
                "name or a prefix for it), or raise audit.max_images_per_patient if this is expected.",
                len(many),
                [{"patient_key": k, "n_images": int(n)} for k, n in list(many.items())[:max_details]],
            )
        )
    labels = df["label"].astype(str)
    n_classes = labels.groupby(keys).nunique()
    mixed = n_classes[n_classes > 1].index
    if len(mixed):
        lat = df["laterality"].astype(str) if "laterality" in df.columns else pd.Series("NA", index=df.index)
        study = df["study_id"].astype(str) if "study_id" in df.columns else pd.Series("", index=df.index)
        sub = pd.DataFrame({"p": keys, "s": study, "l": lat, "y": labels})[keys.isin(mixed)]
        per_eye = sub.groupby(["p", "s", "l"])["y"].nunique()
        unsided = sub[sub["l"] == "NA"].groupby("p")["y"].nunique()
        same_eye = sorted(set(per_eye[per_eye > 1].index.get_level_values(0)) | set(unsided[unsided > 1].index))
        across = sorted(set(mixed) - set(same_eye))
        if same_eye:
            found.append(
                Finding(
                    "patient_mixed_classes",
                    "warning",
                    f"{len(same_eye)} patient(s) have images of different classes on the same eye at the same "
                    "visit (or without laterality): one label is probably wrong, or the patient identifier "
                    "joins several people; check these rows.",
                    len(same_eye),
                    [{"patient_key": k, "classes": sorted(set(sub.loc[sub["p"] == k, "y"]))}
                     for k in same_eye[:max_details]],
                )
            )
        if across:
            found.append(
                Finding(
                    "patient_mixed_classes",
                    "info",
                    f"{len(across)} patient(s) have eyes of different classes (discordant eyes); the split keeps "
                    "each patient whole and stratifies on the most severe label.",
                    len(across),
                    [{"patient_key": k} for k in across[:max_details]],
                )
            )
    return found


def audit_cohort(
    df: pd.DataFrame,
    *,
    fp: dict[str, np.ndarray] | None = None,
    policy: str = "error",
    hamming_threshold: int = DEFAULT_HAMMING_THRESHOLD,
    group_column: str | None = None,
    confound_columns: Sequence[str] = ("source", "size"),
    share_threshold: float = 0.9,
    v_threshold: float = 0.5,
    min_class_images: int = 5,
    max_details: int = 100,
    max_images_per_patient: int = 20,
) -> AuditReport:
    """Audit a cohort (split or not) for leakage, duplicates and confounding.

    Parameters
    ----------
    df : pandas.DataFrame
        Cohort table (:mod:`medxcept.cohort.table`) with ``split`` and/or ``fold`` when it has
        been split. Required columns: ``image_id``, ``patient_key``, ``label``; the
        checks that need other columns (``sha256``, ``source``, ``width``/``height``,
        ``laterality``, ``study_id``, ``y``) are skipped without them.
    fp : dict, optional
        :func:`fingerprints` of the decoded images, in row order. Without it only
        identical files (``sha256``) are found, and an info finding says so.
    policy : {"error", "warn", "fix"}, default "error"
        Severity of leakage findings. ``"error"``: errors (``raise_if_errors`` stops
        the run). ``"warn"``: leakage and label conflicts become warnings (a class
        missing from a split or fold stays an error: its metrics cannot be
        computed). ``"fix"``: duplicates
        across splits become warnings and ``report.merge_groups`` holds
        :func:`duplicate_groups` for re-splitting; patient overlap and exact label
        conflicts stay errors. The audit itself never raises on findings.
    hamming_threshold : int, default 10
        Near-duplicate threshold on pHash and dHash (see the module notes).
    group_column : str, optional
        An extra grouping column (``site``, ``group``) that must not span splits either.
    confound_columns : sequence of str, default ("source", "size")
        Columns tested against the label; ``"size"`` is the ``width x height`` bucket.
    share_threshold : float, default 0.9
        Warn when this share of a class comes from one value (and that value supplies
        less than this share of the whole cohort).
    v_threshold : float, default 0.5
        Warn when the bias-corrected Cramér's V reaches this.
    min_class_images : int, default 5
        Classes with fewer images are not judged on their shares (too few to tell).
    max_details : int, default 100
        Examples kept per finding (``count`` always holds the total).
    max_images_per_patient : int, default 20
        See :func:`check_patient_plausibility`.

    Returns
    -------
    AuditReport
    """
    if policy not in POLICIES:
        raise ConfigError(f"audit policy must be one of {POLICIES}, got {policy!r}")
    if int(hamming_threshold) != hamming_threshold or not 0 <= hamming_threshold <= 32:
        raise ConfigError(f"hamming_threshold must be an integer in [0, 32], got {hamming_threshold!r}")
    missing = [c for c in ("image_id", "patient_key", "label") if c not in df.columns]
    if missing:
        raise ConfigError(f"audit: the cohort table lacks column(s) {missing}")
    if group_column is not None and group_column not in df.columns:
        raise ConfigError(f"audit: group_column {group_column!r} is not a column of the cohort table")
    df = df.reset_index(drop=True)
    if fp is not None:
        check_fingerprints(fp, len(df))
    given_ids = df["image_id"]
    df, fp, order = canonical_rows(df, fp)
    report = AuditReport(policy=policy, hamming_threshold=int(hamming_threshold))
    part = _partition(df)

    if part is not None:
        f = _check_overlap(df, part, "patient_key", policy, max_details)
        if f is not None:
            report.findings.append(f)
        if group_column is not None:
            f = _check_overlap(df, part, group_column, policy, max_details)
            if f is not None:
                report.findings.append(f)

    pairs = duplicate_pairs(df, fp, int(hamming_threshold))
    report.findings += _check_duplicates(df, pairs, part, policy, max_details)
    if fp is None:
        report.findings.append(
            Finding(
                "near_duplicates_not_checked",
                "info",
                "Only byte-identical files were compared; pass fingerprints of the decoded images to also "
                "find re-encoded, rescaled and flipped copies.",
            )
        )
    if policy == "fix":
        report.merge_groups = input_order_groups(
            components(len(df), pairs["i"].to_numpy(np.int64), pairs["j"].to_numpy(np.int64)), order, given_ids
        )

    report.findings += _check_balance(df, report, max_details)
    report.findings += _check_confounding(
        df,
        report,
        confound_columns,
        share_threshold=share_threshold,
        v_threshold=v_threshold,
        min_class_images=min_class_images,
    )
    report.findings += _check_acquisition(df, report)
    report.findings += _check_laterality(df, max_details)
    report.findings += check_patient_plausibility(
        df, max_images_per_patient=max_images_per_patient, max_details=max_details)
    n_err, n_warn = len(report.errors), len(report.warnings)
    logger.info("audit of %d images: %d error(s), %d warning(s)", len(df), n_err, n_warn)
    return report
