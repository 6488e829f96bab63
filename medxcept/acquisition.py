"""Acquisition fingerprints: how each image was made, and whether that alone predicts the label.

A model learns whatever separates the classes most easily. When every diseased eye comes from
one collection and every healthy one from another, "which camera, which software, which JPEG
settings" separates them perfectly, and a cohort without a ``source`` column hides it. So at
ingestion, while the file is open, each image gets a few acquisition fingerprints (columns
``acq_*`` of the cohort table):

==================  ===============================================================
``acq_format``      file extension as written (``.jpeg`` and ``.jpg`` differ) and format
``acq_mode``        pixel mode / bit depth (``RGB``, ``L``, ``I;16``; DICOM ``bits=N``)
``acq_jpeg_q``      estimated JPEG quality (from the luminance quantization table), bucketed
``acq_jpeg_qt``     hash of the quantization tables (encoder + settings signature)
``acq_subsampling`` JPEG chroma subsampling (``4:4:4``, ``4:2:2``, ``4:2:0``)
``acq_device``      EXIF make / model / software, or DICOM Manufacturer / ManufacturerModelName
                    / StationName / InstitutionName, each hashed (``h:`` + 8 hex)
==================  ===============================================================

plus ``width x height`` from the table. Long strings are hashed so that institution names,
which are not patient identifiers but are site-identifying, never reach a log or a shared file
in clear. :func:`shortcut_probe` then reports Cramér's V of each fingerprint against the label
and the out-of-fold AUC of a logistic regression on the fingerprints alone, folds grouped by
patient (``StratifiedGroupKFold``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ACQ_COLUMNS", "SHORTCUT_AUC", "acquisition_fingerprint", "jpeg_quality", "shortcut_probe"]

ACQ_COLUMNS = ("acq_format", "acq_mode", "acq_jpeg_q", "acq_jpeg_qt", "acq_subsampling", "acq_device")
SHORTCUT_AUC = 0.75
"""Out-of-fold AUC of the probe from which the audit warns that the label is predictable from acquisition."""

# IJG standard luminance quantization table (quality 50), natural order
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


def _h(value: Any) -> str:
    """``h:`` + 8 hex digits of a string's sha256 (empty stays empty)."""
    s = str(value or "").strip()
    return "h:" + hashlib.sha256(s.encode()).hexdigest()[:8] if s else ""


def jpeg_quality(luma_table: Any) -> int:
    """IJG quality (1-100) whose scaled standard table is nearest to ``luma_table`` (64 values).

    >>> jpeg_quality(_STD_LUMA)
    50
    """
    t = np.sort(np.asarray(list(luma_table), dtype=np.float64))
    best, err = 50, np.inf
    std = np.sort(_STD_LUMA)
    for q in range(1, 101):
        scale = 5000 / q if q < 50 else 200 - 2 * q
        ref = np.clip(np.floor((std * scale + 50) / 100), 1, 255)
        e = float(np.abs(ref - t).mean())
        if e < err:
            best, err = q, e
    return best


def _photo(path: Path) -> dict[str, str]:
    from PIL import Image

    out: dict[str, str] = {}
    with Image.open(path) as im:
        out["acq_format"] = f"{path.suffix.lower() or '(none)'}:{im.format or '?'}"
        out["acq_mode"] = str(im.mode)
        q = getattr(im, "quantization", None)
        if q:
            out["acq_jpeg_q"] = str(int(round(jpeg_quality(q[0]) / 5.0) * 5))
            out["acq_jpeg_qt"] = _h(repr(sorted((k, tuple(v)) for k, v in q.items())))
            try:
                from PIL import JpegImagePlugin

                sampling = JpegImagePlugin.get_sampling(im)
                out["acq_subsampling"] = {0: "4:4:4", 1: "4:2:2", 2: "4:2:0"}.get(sampling, str(sampling))
            except Exception:  # noqa: BLE001 - an odd JPEG: no subsampling fingerprint
                pass
        try:
            exif = im.getexif()
            dev = " | ".join(str(exif.get(t, "")) for t in (271, 272, 305))  # Make, Model, Software
            out["acq_device"] = _h(dev) if dev.replace("|", "").strip() else ""
        except Exception:  # noqa: BLE001 - unreadable EXIF: no device fingerprint
            pass
    return out


def _dicom(path: Path) -> dict[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    dev = " | ".join(str(ds.get(k, "") or "") for k in
                     ("Manufacturer", "ManufacturerModelName", "StationName", "InstitutionName"))
    return {"acq_format": f"{path.suffix.lower() or '(none)'}:DICOM",
            "acq_mode": f"bits={ds.get('BitsStored', '?')} {ds.get('PhotometricInterpretation', '')}".strip(),
            "acq_jpeg_q": "",
            "acq_jpeg_qt": str(ds.file_meta.get("TransferSyntaxUID", "")) if "file_meta" in ds else "",
            "acq_subsampling": "", "acq_device": _h(dev) if dev.replace("|", "").strip() else ""}


def acquisition_fingerprint(path: str | Path, kind: str = "photo") -> dict[str, str]:
    """The ``acq_*`` columns of one file (empty strings where a fingerprint does not apply).

    Reads headers only; never raises for an odd file (the missing fingerprints stay empty).
    """
    p = Path(path)
    out = dict.fromkeys(ACQ_COLUMNS, "")
    try:
        out.update(_dicom(p) if kind == "dicom" else _photo(p))
    except Exception:  # noqa: BLE001 - fingerprints are a courtesy: the image was already decoded
        out["acq_format"] = out["acq_format"] or f"{p.suffix.lower()}:?"
    return out


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def _content_groups(df: pd.DataFrame) -> np.ndarray:
    """Patient groups numbered by content (a digest of each patient's sorted image contents), not by
    the per-machine pseudonym: the probe's folds, and so its AUC, are the same on any machine."""
    import hashlib

    from medxcept.splits import content_ids

    keys = df["patient_key"].astype(str).to_numpy()
    ids = content_ids(df).astype(str).to_numpy()
    digest = {k: hashlib.sha256("\n".join(sorted(ids[keys == k])).encode()).hexdigest() for k in set(keys)}
    ranks = {d: i for i, d in enumerate(sorted(set(digest.values())))}
    return np.array([ranks[digest[k]] for k in keys], dtype=np.int64)


def shortcut_probe(df: pd.DataFrame, *, n_splits: int = 5, seed: int = 0) -> dict[str, Any] | None:
    """Can the label be predicted from acquisition fingerprints alone? (patient-grouped, out of fold)

    Parameters
    ----------
    df : pandas.DataFrame
        Cohort table with ``label``, ``patient_key`` and some ``acq_*`` columns (``width`` and
        ``height`` are used too).

    Returns
    -------
    dict or None
        ``auc`` (out-of-fold, one-vs-rest macro for more than two classes), ``n_splits``,
        ``features`` (fingerprint columns used) and ``cramers_v`` (per column, against the label);
        None when there is nothing to probe (no fingerprint varies, one class, too few patients).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedGroupKFold

    from medxcept.audit import cramers_v

    cols = [c for c in ACQ_COLUMNS if c in df.columns]
    feats = pd.DataFrame({c: df[c].fillna("").astype(str) for c in cols})
    if {"width", "height"} <= set(df.columns):
        feats["size"] = df["width"].astype(str) + "x" + df["height"].astype(str)
    feats = feats.loc[:, feats.nunique() > 1]
    lab = df["label"].astype(str).to_numpy()
    classes = sorted(set(lab))
    if feats.empty or len(classes) < 2:
        return None
    v = {c: round(cramers_v(pd.crosstab(lab, feats[c])), 3) for c in feats.columns}
    groups = _content_groups(df)
    counts = pd.Series(groups).groupby(lab).nunique()
    k = int(min(n_splits, counts.min()))
    if k < 2:
        return {"auc": None, "n_splits": 0, "features": list(feats.columns), "cramers_v": v}
    x = pd.get_dummies(feats).to_numpy(np.float64)
    y = np.searchsorted(classes, lab)
    proba = np.zeros((len(y), len(classes)))
    cv = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for tr, te in cv.split(x, y, groups):
        if len(set(y[tr])) < len(classes):
            proba[te] = np.bincount(y[tr], minlength=len(classes)) / len(tr)
            continue
        model = LogisticRegression(C=1.0, max_iter=1000).fit(x[tr], y[tr])
        proba[te] = model.predict_proba(x[te])
    if len(classes) == 2:
        auc = _auc(y, proba[:, 1])
    else:
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(y, proba, multi_class="ovr", average="macro"))
    return {"auc": round(auc, 3), "n_splits": k, "features": list(feats.columns), "cramers_v": v}
