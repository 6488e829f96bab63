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
                    / StationName / InstitutionName, hashed with the pseudonym key (``h:`` + 8 hex
                    of an HMAC): equal devices agree within a cohort and across the runs of one
                    key, and a guessed station or hospital name cannot be confirmed without it
``acq_fov``         field-of-view geometry of a fundus photograph (:func:`geometry_fingerprint`):
                    radius relative to the frame and centre offset, bucketed (``r0.95 c+0.00+0.05``),
                    or ``none`` (no dark surround: a pre-cropped image)
``acq_border``      how dark the surround is (mean level outside the field of view, 8-bit, bucketed
                    by 4: ``k0``, ``k4``; ``none`` without a surround); radiographs: the mean level
                    of the outermost 2 % of the frame
``acq_aspect``      frame aspect ratio ``width / height``, 2 decimals
==================  ===============================================================

plus ``width x height`` from the table. The geometry comes from the decoded pixels (ingestion
computes it beside the preprocessing, :func:`geometry_fingerprint`); the others from headers. Device strings are hashed
with the pseudonym key so that institution and station names, which are not patient identifiers
but are site-identifying, never reach a log or a shared file in clear nor as a hash anyone can
recompute from a guess. :func:`shortcut_probe` then reports Cramér's V of each fingerprint against the label
and the out-of-fold AUC of a logistic regression on the fingerprints alone, folds grouped by
patient (``StratifiedGroupKFold``).
"""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["ACQ_COLUMNS", "GEOMETRY_COLUMNS", "SHORTCUT_AUC", "acquisition_fingerprint", "cramers_v", "geometry_fingerprint",
           "jpeg_quality", "shortcut_probe"]

GEOMETRY_COLUMNS = ("acq_fov", "acq_border", "acq_aspect")
ACQ_COLUMNS = ("acq_format", "acq_mode", "acq_jpeg_q", "acq_jpeg_qt", "acq_subsampling", "acq_device",
               *GEOMETRY_COLUMNS)
SHORTCUT_AUC = 0.75
"""Out-of-fold AUC of the probe from which the audit warns that the label is predictable from acquisition."""

# IJG standard luminance quantization table (quality 50), natural order
_STD_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)


def cramers_v(table: pd.DataFrame | np.ndarray, *, bias_correction: bool = True) -> float:
    """Cramér's V of a contingency table (0 = independent, 1 = one determines the other).

    Parameters
    ----------
    table : array-like of shape (r, c)
        Counts.
    bias_correction : bool, default True
        Bergsma's (2013) correction, which removes the upward bias of V in small
        samples (independent 2 x 3 tables of 30 images average V ~ 0.25 uncorrected).

    Returns
    -------
    float
        V in [0, 1]; 0.0 when the table has a single row or column.
    """
    obs = np.asarray(table, dtype=np.float64)
    obs = obs[obs.sum(axis=1) > 0][:, obs.sum(axis=0) > 0]
    n = obs.sum()
    r, c = obs.shape if obs.ndim == 2 else (0, 0)
    if r < 2 or c < 2 or n <= 1:
        return 0.0
    expected = np.outer(obs.sum(axis=1), obs.sum(axis=0)) / n
    phi2 = float(((obs - expected) ** 2 / expected).sum() / n)
    if not bias_correction:
        return float(np.sqrt(phi2 / (min(r, c) - 1)))
    phi2c = max(0.0, phi2 - (r - 1) * (c - 1) / (n - 1))
    rc = r - (r - 1) ** 2 / (n - 1)
    cc = c - (c - 1) ** 2 / (n - 1)
    denom = min(rc - 1, cc - 1)
    return float(np.sqrt(phi2c / denom)) if denom > 0 else 0.0


def _h(value: Any) -> str:
    """``h:`` + 8 hex digits of a string's sha256 (empty stays empty): for encoder settings only."""
    s = str(value or "").strip()
    return "h:" + hashlib.sha256(s.encode()).hexdigest()[:8] if s else ""


def _keyed(value: str, key: str) -> str:
    """``h:`` + 8 hex of HMAC-SHA256(``key``, device string): site-identifying strings are keyed."""
    if not value.replace("|", "").strip():
        return ""
    msg = f"medxcept-device\x00{value.strip()}".encode()
    return "h:" + hmac.new(key.encode(), msg, hashlib.sha256).hexdigest()[:8]


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


def _photo(path: Path, key: str) -> dict[str, str]:
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
            out["acq_device"] = _keyed(dev, key)
        except Exception:  # noqa: BLE001 - unreadable EXIF: no device fingerprint
            pass
    return out


def _dicom(path: Path, key: str) -> dict[str, str]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    dev = " | ".join(str(ds.get(k, "") or "") for k in
                     ("Manufacturer", "ManufacturerModelName", "StationName", "InstitutionName"))
    return {"acq_format": f"{path.suffix.lower() or '(none)'}:DICOM",
            "acq_mode": f"bits={ds.get('BitsStored', '?')} {ds.get('PhotometricInterpretation', '')}".strip(),
            "acq_jpeg_q": "",
            # the transfer syntax (JPEG baseline, lossless, uncompressed...) is the DICOM analogue of the
            # JPEG tables; file_meta is an attribute of the dataset, not an element ("in ds" would not find it)
            "acq_jpeg_qt": str((getattr(ds, "file_meta", None) or {}).get("TransferSyntaxUID", "") or ""),
            "acq_subsampling": "", "acq_device": _keyed(dev, key)}


def acquisition_fingerprint(path: str | Path, kind: str = "photo", *, key: str) -> dict[str, str]:
    """The ``acq_*`` columns of one file (empty strings where a fingerprint does not apply).

    Reads headers only; never raises for an odd file (the missing fingerprints stay empty).

    Parameters
    ----------
    path : str or Path
        The image file.
    kind : {"photo", "dicom"}
        Which headers to read.
    key : str
        The pseudonym key (:func:`medxcept.cohort.ingest.pseudonym_salt`): ``acq_device`` is keyed with it.
    """
    if not key:
        raise ValueError("acquisition_fingerprint: an empty key would give unkeyed, guessable device hashes")
    p = Path(path)
    out = dict.fromkeys(ACQ_COLUMNS, "")
    try:
        out.update(_dicom(p, key) if kind == "dicom" else _photo(p, key))
    except Exception:  # noqa: BLE001 - fingerprints are a courtesy: the image was already decoded
        out["acq_format"] = out["acq_format"] or f"{p.suffix.lower()}:?"
    return out


def geometry_fingerprint(img: np.ndarray, modality: str = "fundus", *,
                         fov: tuple[float, float, float, bool] | None = None,
                         stored_size: tuple[int, int] | None = None) -> dict[str, str]:
    """The border and field-of-view columns (``acq_fov``, ``acq_border``, ``acq_aspect``) of a decoded image.

    Two cameras (or two collections cropped differently) differ in where their circular field of
    view sits in the frame, how large it is and how black its surround is, whatever the eye; a
    label that follows these is a shortcut. Buckets are coarse (radius by 0.05 of the half-side,
    centre by 0.05, border level by 4 of 255) so that one camera's images share a value.

    Parameters
    ----------
    img : numpy.ndarray
        Decoded image, ``H x W [x C]``, float in [0, 1] (integer pixels are scaled by their dtype).
    modality : {"fundus", "gray"}
        ``gray``: no field of view (``acq_fov`` empty); the border is the outermost 2 % of the frame.
    fov : tuple, optional
        :func:`medxcept.images.preprocess.find_fov`'s result for this same image, when the caller has it.
    stored_size : (height, width), optional
        The size of the stored image when ``img`` was decoded at a reduced size (the aspect ratio
        is taken from it, so it does not depend on the decoder's rounding); the other columns are
        relative to the frame and need no correction.

    Examples
    --------
    >>> yy, xx = np.mgrid[0:100, 0:120]
    >>> img = np.where(np.hypot(yy - 50, xx - 60) < 45, 0.6, 0.0)[..., None].repeat(3, axis=2)
    >>> geometry_fingerprint(img)
    {'acq_fov': 'r0.90 c+0.00+0.00', 'acq_border': 'k0', 'acq_aspect': '1.20'}
    """
    a = np.asarray(img)
    if a.dtype.kind in "ui":
        a = a.astype(np.float32) / float(np.iinfo(a.dtype).max)
    if a.ndim == 2:
        a = a[:, :, None]
    h, w = a.shape[:2]
    sh, sw = stored_size if stored_size is not None else (h, w)
    out = {"acq_fov": "", "acq_border": "", "acq_aspect": f"{sw / max(sh, 1):.2f}"}
    luma = a.mean(axis=2)
    if modality != "fundus":
        e = max(1, int(round(0.02 * min(h, w))))
        rim = np.concatenate([luma[:e].ravel(), luma[-e:].ravel(), luma[:, :e].ravel(), luma[:, -e:].ravel()])
        out["acq_border"] = f"k{int(np.mean(rim) * 255) // 4 * 4}"
        return out
    from medxcept.images.preprocess import find_fov

    cy, cx, r, found = find_fov(a) if fov is None else fov
    if not found:
        out["acq_fov"] = out["acq_border"] = "none"
        return out
    half = min(h, w) / 2.0

    def b(x: float) -> float:
        return round(round(x / 0.05) * 0.05, 2) + 0.0  # + 0.0: no "-0.00"

    out["acq_fov"] = f"r{b(r / half):.2f} c{b((cx - (w - 1) / 2) / half):+.2f}{b((cy - (h - 1) / 2) / half):+.2f}"
    yy, xx = np.ogrid[0:h, 0:w]
    outside = (yy - cy) ** 2 + (xx - cx) ** 2 > (1.05 * r) ** 2
    out["acq_border"] = f"k{int(float(luma[outside].mean()) * 255) // 4 * 4}" if outside.any() else "none"
    return out


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def _content_groups(df: pd.DataFrame) -> np.ndarray:
    """Patient groups numbered by content (a digest of each patient's sorted image contents), not by
    the per-machine pseudonym: the probe's folds, and so its AUC, are the same on any machine."""
    import hashlib

    from medxcept.integrity.split_keys import content_ids

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
