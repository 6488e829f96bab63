"""External validation: apply a trained run, unchanged, to another cohort.

``python -m pipelines.retina evaluate --run RUN_DIR --cohort OTHER.yaml`` calls
:func:`medxcept.workflows.external.evaluate_run`; this module reads and checks the source run and
decides what comes from it. An external validation answers one question: *how does the model that
was trained, calibrated and thresholded in RUN_DIR do on patients it has never seen, from
another site or camera?* For the answer to mean anything, **nothing may be fitted on the new
cohort**:

* the model is ``RUN_DIR/model.keras``, loaded without recompiling;
* preprocessing (image size, field-of-view crop, illumination, CLAHE, quality policy) is the
  source run's ``config.yaml``: the model only knows images prepared that way. Where the new
  cohort's configuration differs, a log line names the section and says the source run wins;
* the calibrator (temperature, Platt or isotonic) and the operating threshold are those of
  ``RUN_DIR/calibration.json``, fitted on the source run's validation split;
* every usable image of the new cohort is a test image: there is no training, no validation
  split, no refitting of temperature or threshold.

Only reporting choices come from the new configuration: the output folder, the bootstrap seed
and resample count, and the number of calibration bins.

An "external" cohort that contains images of the training run is not external, and public
collections are full of re-encoded, resized and re-cropped copies of each other's images. So a
training run keeps, in ``private/fingerprints.joblib`` (:func:`keep_source_fingerprints`; derived
from patient images, so private), the fingerprints its integrity audit computed for its training
and validation images, with small thumbnails. The external cohort is fingerprinted with the same
preprocessing and the audit's pair verification runs across the two sets
(:func:`near_copies`: the candidate search and geometric verification of
:func:`medxcept.integrity.pairs.duplicate_pairs` on the union, cross-set pairs kept). Confirmed
pairs (byte-identical, same pixels, or near copies) are an error under the run's ``--on-leak
error`` (the run stops before predicting) and a warning under ``warn``/``fix``
(:func:`near_copy_findings`); they are listed with thumbnails in ``private/external_copies.html``
and by keyed image ids in ``audit.json`` and ``metrics.json`` (``external.near_copies``). A source
run saved without fingerprints (made before this check) is named in the log and in the findings,
and only the byte check below runs.

Files with the same sha256 as an image of ``RUN_DIR/cohort.csv`` (any split, test included) are
reported as a warning in the log, in ``metrics.json`` (``external.overlap``), in ``audit.json`` and
in the report. Patients whose pseudonym also appears in the source run are a warning too:
pseudonyms agree only when both cohorts share the pseudonym salt and number patients in one ID
space, and then they are the same people.

The new run directory follows :func:`medxcept.workflows.single.run_pipeline`'s conventions
(``config.yaml``, ``exclusions.csv``, ``cohort.csv``, ``split.csv``, ``audit.json``,
``predictions.csv``, ``calibration.json`` (the source run's, as applied), ``metrics.json`` with
``run.external_validation: true`` and ``run.source_run``, ``versions.json``, ``report.html``).
It holds no model and no ``history.csv``: both belong to the source run, which the report names;
the training section of the report shows the source run's history.

The report carries a run's summary card: the chance statement of the external patient AUC, the
source run's reference models (``references.joblib``: the prevalence, the image-statistics and
the acquisition models fitted on its training + validation images, with their feature spec)
applied unchanged to the external images and compared with the deep model on the external
patients (paired bootstrap CI, DeLong p; :func:`external_references`), the source run's training
verdict, and the transfer line (:func:`transfer_line`). A source run made before the models were
saved gets no comparison, and the card says so.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from medxcept.cohort.table import CohortSpec
from medxcept.config import RunConfig, load_config
from medxcept.errors import ConfigError
from medxcept.evaluation.references import (
    compare_with_references,
    load_reference_models,
    reference_sentences,
    score_reference_models,
)
from medxcept.evaluation.units import unit_keys, unit_visits
from medxcept.evaluation.verdict import training_verdict
from medxcept.integrity.audit import Finding
from medxcept.integrity.pairs import duplicate_pairs
from medxcept.models import testnet
from medxcept.models.backbones import get_backbone
from medxcept.run import RunDir, legacy_defaults, restore_config_paths

__all__ = ["REQUIRED_FILES", "SourceRun", "check_run_dir", "load_source_run", "load_source_config",
           "external_config", "source_overlap", "read_run_json", "external_references", "transfer_line",
           "SOURCE_FINGERPRINTS", "keep_source_fingerprints", "load_source_fingerprints", "near_copies",
           "near_copy_findings", "copies_rows", "match_classes", "load_source_model", "source_history",
           "training_block", "run_block", "source_choices", "SourceCopies", "copies_of_source",
           "source_provenance", "external_block"]

log = logging.getLogger(__name__)

#: Files a finished training run holds that an external validation needs.
REQUIRED_FILES = ("model.keras", "config.yaml", "calibration.json", "cohort.csv", "metrics.json")

#: Sections of the configuration that define the model and its inputs: always the source run's.
SOURCE_SECTIONS = ("preprocess", "model", "train", "augment", "split")
#: Evaluation options that were part of fitting (the threshold rule, the calibrator, the
#: patient aggregation the threshold was meant for): the source run's too.
SOURCE_EVAL_FIELDS = ("threshold", "target_sensitivity", "calibration", "patient_aggregation", "unit")

_MAX_DETAILS = 100


def check_run_dir(run_dir: Path) -> None:
    """Raise :class:`ConfigError` naming every file an external validation needs and lacks.

    Parameters
    ----------
    run_dir : Path
        The directory a finished ``python -m pipelines.retina`` run wrote.

    Raises
    ------
    ConfigError
        The directory does not exist, or lacks one of :data:`REQUIRED_FILES`.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"run directory not found: {run_dir}. Pass --run the folder a training run wrote "
                          "(reports/<date>-<cohort>-<hash>/)")
    missing = [name for name in REQUIRED_FILES if not (run_dir / name).is_file()]
    if missing:
        raise ConfigError(
            f"{run_dir} is not a complete training run: missing {', '.join(missing)}. External validation "
            f"needs the trained model and what was fitted with it ({', '.join(REQUIRED_FILES)}); point --run "
            "at the directory of a run that finished, or re-run training (an interrupted run resumes).")


def read_run_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read as JSON ({exc}); the run directory is damaged, "
                          "re-run training") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a JSON object; the run directory is damaged, re-run training")
    return data


def load_source_config(run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    """The source run's resolved configuration and the extra keys saved beside it.

    Returns
    -------
    cfg : RunConfig
        Rebuilt from ``config.yaml`` (validated like any configuration).
    extras : dict
        Keys of ``config.yaml`` that are not configuration fields (``cohort_name``, ``classes``).
    """
    path = Path(run_dir) / "config.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}); the run directory is damaged, "
                          "re-run training") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options")
    data = restore_config_paths(data, run_dir, strict=False)  # paths kept in private/ (issue 33)
    fields = {f.name for f in dataclasses.fields(RunConfig)}
    extras = {k: v for k, v in data.items() if k not in fields}
    saved = {k: v for k, v in data.items() if k in fields}
    cfg = load_config(cohort_defaults=legacy_defaults(saved))
    return cfg, extras


def external_config(source: RunConfig, new: RunConfig) -> tuple[RunConfig, list[str]]:
    """The configuration an external validation runs under, and what the source run overrode.

    Model-defining sections (:data:`SOURCE_SECTIONS`) and the fitted evaluation options
    (:data:`SOURCE_EVAL_FIELDS`) come from ``source``; the output folder, seed, bootstrap
    resamples, calibration bins and audit options from ``new``.

    Returns
    -------
    cfg : RunConfig
    differences : list of str
        One plain-words line per section or option where ``new`` differed and lost.
    """
    differences = []
    for section in SOURCE_SECTIONS:
        a, b = getattr(source, section), getattr(new, section)
        if a != b:
            changed = {k: (v, getattr(b, k)) for k, v in dataclasses.asdict(a).items() if getattr(b, k) != v}
            what = ", ".join(f"{k}={mine!r} (this cohort's config: {theirs!r})"
                             for k, (mine, theirs) in changed.items())
            differences.append(f"{section}: the source run's {what} wins")
    for name in SOURCE_EVAL_FIELDS:
        a, b = getattr(source.eval, name), getattr(new.eval, name)
        if a != b:
            differences.append(f"eval.{name}: the source run's {a!r} wins (this cohort's config: {b!r})")
    eval_cfg = dataclasses.replace(new.eval, **{k: getattr(source.eval, k) for k in SOURCE_EVAL_FIELDS})
    cfg = dataclasses.replace(new, eval=eval_cfg, **{s: getattr(source, s) for s in SOURCE_SECTIONS})
    return cfg, differences


def source_overlap(table: pd.DataFrame, source_cohort: pd.DataFrame, source_id: str) -> tuple[dict[str, Any],
                                                                                           list[Finding]]:
    """Images (same file sha256) and patient pseudonyms the new cohort shares with the source run.

    Parameters
    ----------
    table : DataFrame
        The external cohort table (``image_id``, ``sha256``, ``patient_key``).
    source_cohort : DataFrame
        The source run's ``cohort.csv`` (``sha256``, ``patient_key``, ``split``).
    source_id : str
        The source run's id, for the messages.

    Returns
    -------
    overlap : dict
        ``images_same_sha256`` (count), ``image_ids`` (at most 100), ``by_source_split``,
        ``patients_same_key`` (count) and ``checked`` (what could be compared).
    findings : list of Finding
        ``external_overlap`` (warning) and ``external_patient_keys`` (info), when any.
    """
    overlap: dict[str, Any] = {"images_same_sha256": 0, "image_ids": [], "by_source_split": {},
                               "patients_same_key": 0, "checked": []}
    findings: list[Finding] = []
    if "sha256" in source_cohort.columns:
        overlap["checked"].append("file sha256")
        split_of = (source_cohort.drop_duplicates("sha256").set_index("sha256")["split"]
                    if "split" in source_cohort.columns else None)
        same = table[table["sha256"].isin(set(source_cohort["sha256"].astype(str)))]
        if len(same):
            splits = (same["sha256"].map(split_of).fillna("?") if split_of is not None
                      else pd.Series("?", index=same.index))
            overlap["images_same_sha256"] = int(len(same))
            overlap["image_ids"] = same["image_id"].astype(str).tolist()[:_MAX_DETAILS]
            counts = splits.value_counts().sort_index()
            overlap["by_source_split"] = {str(k): int(v) for k, v in counts.items()}
            findings.append(Finding(
                "external_overlap", "warning",
                f"{len(same)} of {len(table)} image(s) of this cohort are byte-identical (same file sha256) "
                f"to images of the source run {source_id} ({overlap['by_source_split']} by source split): "
                "for them this is not an external validation. Remove them from the cohort, or evaluate on a "
                "cohort the model has never seen.",
                len(same),
                [{"image_id": str(i), "source_split": str(s)}
                 for i, s in zip(same["image_id"], splits, strict=True)][:_MAX_DETAILS]))
    else:
        log.warning("! the source run's cohort.csv has no sha256 column: overlap with the training images "
                    "cannot be checked")
    if "patient_key" in source_cohort.columns:
        overlap["checked"].append("patient pseudonym")
        keys = sorted(set(table["patient_key"].astype(str)) & set(source_cohort["patient_key"].astype(str)))
        overlap["patients_same_key"] = len(keys)
        if keys:
            findings.append(Finding(
                "external_patient_keys", "warning",
                f"{len(keys)} patient pseudonym(s) of this cohort also appear in the source run {source_id}. "
                "Pseudonyms agree when both cohorts share the pseudonym salt and the same raw patient ID: "
                "the same people, unless the two cohorts number patients independently (then a coincidence).",
                len(keys), [{"patient_key": k} for k in keys[:_MAX_DETAILS]]))
    return overlap, findings


# ------------------------------------------------------------------ near copies of training images

#: In a training run's ``private/``: fingerprints of its training and validation images.
SOURCE_FINGERPRINTS = "fingerprints.joblib"
_FP_FORMAT = 1
_THUMB_PX = 64


def _small(img: np.ndarray, px: int = _THUMB_PX) -> np.ndarray:
    """A ``px``-pixel uint8 thumbnail (for the private page of pairs)."""
    from PIL import Image

    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)
    im = Image.fromarray(a[:, :, 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    im.thumbnail((px, px))
    return np.asarray(im)


def keep_source_fingerprints(run: RunDir, table: pd.DataFrame, images: np.ndarray,
                             fp: dict[str, np.ndarray]) -> Path:
    """Keep the audit's fingerprints of the training and validation images in ``private/``.

    Parameters
    ----------
    run : RunDir
        The training run.
    table : pandas.DataFrame
        The split cohort table (``split``, ``image_id``, ``sha256``), rows aligned with ``images``.
    images : numpy.ndarray
        The preprocessed images the fingerprints were computed from (thumbnails are kept).
    fp : dict
        :func:`medxcept.integrity.fingerprints.fingerprints` of ``images``.

    Returns
    -------
    Path
        ``private/fingerprints.joblib``.
    """
    import joblib

    sel = np.flatnonzero(table["split"].astype(str).isin(("train", "val")).to_numpy())
    rows = table.iloc[sel]
    store = {
        "format": _FP_FORMAT,
        "image_id": rows["image_id"].astype(str).tolist(),
        "split": rows["split"].astype(str).tolist(),
        "sha256": rows["sha256"].astype(str).tolist() if "sha256" in rows else [""] * len(rows),
        "frame": rows["frame"].astype(str).tolist() if "frame" in rows else ["0"] * len(rows),
        "fp": {k: np.asarray(v)[sel] for k, v in fp.items()},
        "thumbs": [_small(images[i]) for i in sel],
    }
    buf = io.BytesIO()
    joblib.dump(store, buf, compress=3)
    return run.write_private(SOURCE_FINGERPRINTS, buf.getvalue())


def load_source_fingerprints(run_dir: Path) -> dict[str, Any] | None:
    """The fingerprints :func:`keep_source_fingerprints` kept, or None when the run has none."""
    import joblib

    path = Path(run_dir) / "private" / SOURCE_FINGERPRINTS
    if not path.is_file():
        return None
    store = joblib.load(path)  # the run's own private file, written by keep_source_fingerprints
    return store if isinstance(store, dict) and store.get("format") == _FP_FORMAT else None


def near_copies(source: dict[str, Any], table: pd.DataFrame, fp: dict[str, np.ndarray],
                hamming_threshold: int) -> pd.DataFrame:
    """Confirmed pairs (source training/validation image, image of ``table``).

    The audit's pair search (:func:`medxcept.integrity.pairs.duplicate_pairs`: the same file, the
    same pixels, or a near copy found by the candidate search and confirmed by geometry) runs on
    the two sets together; the pairs that join one image of each are kept.

    Parameters
    ----------
    source : dict
        :func:`load_source_fingerprints` of the source run.
    table : pandas.DataFrame
        The external cohort (``image_id``, ``sha256``), rows aligned with ``fp``.
    fp : dict
        :func:`medxcept.integrity.fingerprints.fingerprints` of the external images, preprocessed as the
        source run's were.
    hamming_threshold : int
        The audit's hash threshold (for images without structure).

    Returns
    -------
    pandas.DataFrame
        One row per pair: ``source_pos``, ``pos`` (row positions), ``source_image_id``,
        ``source_split``, ``image_id``, ``match`` (``sha256``, ``pixel``, ``near``), ``method``,
        ``inliers`` and the transform columns of :func:`medxcept.integrity.pairs.verified_near_pairs`.

    Raises
    ------
    ValueError
        The two sets of fingerprints were computed by different versions (other arrays).
    """
    n_s = len(source["image_id"])
    if set(source["fp"]) != set(fp):
        raise ValueError(f"fingerprint arrays differ: {sorted(set(source['fp']) ^ set(fp))}")
    try:
        union = {k: np.concatenate([np.asarray(source["fp"][k]), np.asarray(fp[k])]) for k in fp}
    except ValueError as exc:
        raise ValueError(f"fingerprint arrays of other shapes ({exc})") from None
    frame = table["frame"].astype(str).tolist() if "frame" in table else ["0"] * len(table)
    both = pd.DataFrame({"sha256": list(source["sha256"]) + table["sha256"].astype(str).tolist(),
                         "frame": list(source["frame"]) + frame})
    pairs = duplicate_pairs(both, union, int(hamming_threshold))
    cross = pairs[(pairs["i"].to_numpy() < n_s) & (pairs["j"].to_numpy() >= n_s)].copy()
    cross["source_pos"] = cross["i"].astype(np.int64)
    cross["pos"] = cross["j"].astype(np.int64) - n_s
    cross["source_image_id"] = [source["image_id"][i] for i in cross["source_pos"]]
    cross["source_split"] = [source["split"][i] for i in cross["source_pos"]]
    cross["image_id"] = table["image_id"].astype(str).to_numpy()[cross["pos"].to_numpy()] if len(cross) else []
    return cross.drop(columns=["i", "j"]).reset_index(drop=True)


def _pair_detail(row: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"image_id": str(row.image_id), "source_image_id": str(row.source_image_id),
           "source_split": str(row.source_split), "match": str(row.match)}
    if isinstance(row.method, str):
        out["method"] = row.method
    if row.inliers == row.inliers and row.inliers is not None:  # not NaN
        out["inliers"] = int(row.inliers)
        transform: dict[str, Any] = {k: round(float(getattr(row, k)), 3) for k in
                                     ("rotation_deg", "scale", "shear_rad", "shift_x", "shift_y")
                                     if getattr(row, k) == getattr(row, k)}
        out["transform"] = {**transform, "flip": bool(row.flipped)}
    return out


def near_copy_findings(pairs: pd.DataFrame | None, n_images: int, source_id: str, policy: str
                       ) -> tuple[dict[str, Any], list[Finding]]:
    """The ``external.near_copies`` block and the finding for the pairs :func:`near_copies` confirmed.

    Parameters
    ----------
    pairs : pandas.DataFrame or None
        :func:`near_copies`; None when the source run kept no fingerprints (then an ``info``
        finding says that only byte-identical files were compared).
    n_images : int
        Images of the external cohort.
    source_id : str
        The source run's id.
    policy : {"error", "warn", "fix"}
        The run's ``audit.on_leak``: ``error`` makes confirmed pairs an error, else a warning.

    Returns
    -------
    block : dict
        ``checked``, ``confirmed_pairs``, ``images``, ``by_source_split``, ``by_match``, ``pairs``
        (keyed ids, at most 100).
    findings : list of Finding
        ``external_near_copies`` (error or warning) when any pair, or
        ``external_near_copies_not_checked`` (info) without source fingerprints.
    """
    if pairs is None:
        return {"checked": False}, [Finding(
            "external_near_copies_not_checked", "info",
            f"The source run {source_id} kept no fingerprints of its training images (a run made before "
            "they were kept, or without its private/ folder): only byte-identical files were compared, "
            "not re-encoded, resized or cropped copies. Re-run training to check them.")]
    block: dict[str, Any] = {"checked": True, "confirmed_pairs": int(len(pairs)),
                             "images": int(pairs["image_id"].nunique()) if len(pairs) else 0,
                             "by_source_split": {str(k): int(v) for k, v in
                                                 pairs["source_split"].value_counts().sort_index().items()},
                             "by_match": {str(k): int(v) for k, v in pairs["match"].value_counts().sort_index().items()},
                             "pairs": [_pair_detail(r) for r in pairs.head(_MAX_DETAILS).itertuples()]}
    if not len(pairs):
        return block, []
    severity = "error" if policy == "error" else "warning"
    what = (f"{block['images']} of {n_images} image(s) of this cohort are copies of training or validation "
            f"images of the source run {source_id}: {len(pairs)} confirmed pair(s) "
            f"({', '.join(f'{v} {k}' for k, v in block['by_match'].items())}; near = re-encoded, resized, "
            "cropped or otherwise transformed, confirmed by geometry). For them this is not an external "
            "validation. The pairs, with thumbnails, are in private/external_copies.html; remove those "
            "images from the cohort")
    what += (", or re-run with --on-leak warn to evaluate anyway (the report will say so)." if severity == "error"
             else f" (--on-leak {policy}: evaluated anyway, at your own risk).")
    return block, [Finding("external_near_copies", severity, what, int(len(pairs)), block["pairs"])]


@dataclasses.dataclass(frozen=True)
class SourceRun:
    """What an external validation takes from the training run: read, checked, never changed."""

    path: Path
    id: str
    cfg: RunConfig
    extras: dict[str, Any]
    metrics: dict[str, Any]
    calibration: dict[str, Any]
    classes: tuple[str, ...]

    @property
    def info(self) -> dict[str, Any]:
        """The source run's ``metrics.json`` ``run`` block."""
        return dict(self.metrics.get("run") or {})

    @property
    def cohort_name(self) -> Any:
        return self.info.get("cohort", self.extras.get("cohort_name"))


def load_source_run(run_dir: Path) -> SourceRun:
    """Check and read a finished training run (:data:`REQUIRED_FILES`) for external validation.

    Raises
    ------
    ConfigError
        A missing file (all of them named), unreadable JSON/YAML, no class list, no fitted calibrator.
    """
    run_dir = Path(run_dir)
    check_run_dir(run_dir)
    metrics = read_run_json(run_dir / "metrics.json")
    calibration = read_run_json(run_dir / "calibration.json")
    cfg, extras = load_source_config(run_dir)
    run_id = str((metrics.get("run") or {}).get("id") or run_dir.name)
    classes = tuple(str(c) for c in (extras.get("classes") or metrics.get("classes") or ()))
    if len(classes) < 2:
        raise ConfigError(f"{run_dir / 'config.yaml'} does not list the model's classes; the run directory "
                          "is damaged, re-run training")
    if "calibrator" not in calibration:
        raise ConfigError(f"{run_dir / 'calibration.json'} holds no fitted calibrator; re-run training")
    return SourceRun(run_dir, run_id, cfg, extras, metrics, calibration, classes)


def match_classes(spec: CohortSpec, src: SourceRun) -> CohortSpec:
    """The external cohort with the model's class order (which decides ``y``); same class names required."""
    if sorted(src.classes) != sorted(spec.classes):
        raise ConfigError(
            f"cohort '{spec.name}' declares classes {list(spec.classes)} but the model of run {src.id} "
            f"predicts {list(src.classes)}: set the cohort file's 'classes' to the model's classes (label "
            "values are matched to them case-insensitively)")
    if tuple(spec.classes) == src.classes:
        return spec
    log.info("class order of the model (%s) used for cohort '%s'", list(src.classes), spec.name)
    positive = src.classes[1] if len(src.classes) == 2 else spec.positive_class
    return dataclasses.replace(spec, classes=src.classes, positive_class=positive)


def load_source_model(src: SourceRun, image_px: int) -> Any:
    """``model.keras`` without recompiling, checked against the run's input size and classes."""
    import keras  # here: reading a source run's files does not load Keras, only loading its model does

    path = src.path / "model.keras"
    try:
        model = keras.saving.load_model(path, compile=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be loaded as a Keras model ({exc}); re-run training") from None
    if model.name == testnet.MODEL_NAME and not testnet.active():
        raise ConfigError(f"{path} is the tiny test network of the test suite ({testnet.ENV}), not Xception: "
                          "its predictions mean nothing; evaluate a run trained without that variable")
    in_px = model.input_shape[1]
    if in_px is not None and int(in_px) != image_px:
        raise ConfigError(f"{path} takes {in_px} px images but the run's config.yaml says "
                          f"preprocess.image_px={image_px}; the run directory is inconsistent")
    n_out, k = int(model.output_shape[-1]), len(src.classes)
    if n_out != (1 if k == 2 else k):
        raise ConfigError(f"{path} has {n_out} output(s), which does not fit the {k} classes "
                          f"{list(src.classes)} of its config.yaml; the run directory is inconsistent")
    return model


def source_history(run_dir: Path) -> pd.DataFrame:
    """The source run's ``history.csv`` (empty when it has none)."""
    path = run_dir / "history.csv"
    if path.is_file() and path.stat().st_size > 1:
        return pd.read_csv(path)
    log.warning("! %s is missing: the report shows no training curves", path)
    return pd.DataFrame()


def training_block(src: SourceRun, history: pd.DataFrame) -> dict[str, Any]:
    """The source run's training summary, labelled as such (this run trains nothing)."""
    block = dict(src.metrics.get("training") or {})
    if "verdict" not in block:
        block = {**training_verdict(history, int(block.get("best_epoch", 0))), **block}
    block.setdefault("stages", [])
    block.setdefault("seconds", 0.0)
    block.setdefault("epochs_run", int(history["epoch"].max()) if "epoch" in history else 0)
    block["verdict"] = f"training of the source run {src.id} (nothing was trained here): {block['verdict']}"
    if block.get("headline"):
        block["headline"] = f"Training of the source run (nothing was trained here): {block['headline']}"
    block["source_run"] = src.id
    return block


def external_references(src: SourceRun, test: pd.DataFrame, images: np.ndarray, ecfg: RunConfig
                        ) -> tuple[dict[str, Any], pd.DataFrame | None]:
    """The source run's reference models (``references.joblib``, fitted on its training + validation
    images) applied unchanged to the external images, and compared with the deep model's
    uncalibrated scores on the external units (patients or visits), like a run's references.

    Returns the ``metrics.json["references"]`` block (with ``sentences``; for a source run without
    saved models: no comparison, and a note that says so) and the per-image ``ref_*`` scores for
    ``predictions.csv`` (None without models).
    """
    payload, why = load_reference_models(src.path / "references.joblib")
    if payload is not None and int(payload.get("image_px", 0)) != int(images.shape[1]):
        payload, why = None, (f"the source run's reference models were fitted at {payload.get('image_px')} px, "
                              f"these images are {images.shape[1]} px: not applied")
    if payload is None:
        block: dict[str, Any] = {"deep": {"auc": None, "ci": None}, "references": {}, "classical_not_better": None,
                                 "notes": [f"{why}."], "level": "patient", "from_source_run": False}
        block["sentences"] = reference_sentences(block)
        return block, None
    refs = score_reference_models(payload, test.reset_index(drop=True), images)
    ec = ecfg.eval
    keys = unit_keys(test["patient_key"], unit_visits(test, ec.unit))
    block = compare_with_references(test["y"].to_numpy(), test["logit"].to_numpy(np.float64), refs, keys,
                                    how=ec.patient_aggregation, n_resamples=ec.n_bootstrap, seed=ecfg.seed,
                                    scale="logit")
    block["from_source_run"] = True
    block["sentences"] = reference_sentences(block)
    scores = pd.DataFrame({f"ref_{n}": np.asarray(r["scores"]) for n, r in refs.items()
                           if np.asarray(r["scores"]).ndim == 1})
    scores.insert(0, "image_id", test["image_id"].to_numpy())
    return block, scores


def transfer_line(src: SourceRun, measured: dict[str, Any]) -> str | None:
    """One sentence: the external patient AUC next to the source run's own test AUC."""
    here = (measured.get("test_patient") or {}).get("roc_auc")
    there = (src.metrics.get("test_patient") or {}).get("roc_auc")
    if here is None or there is None:
        return None
    ci = ((src.metrics.get("test_patient_ci") or {}).get("roc_auc") or {})
    ci_txt = f" (95 % CI {ci['low']:.3f}-{ci['high']:.3f})" if ci.get("low") is not None else ""
    change = "lower" if here < there else "higher" if here > there else "the same"
    return (f"Transfer: patient ROC-AUC {here:.3f} on this cohort vs {there:.3f}{ci_txt} on the source run's own "
            f"test patients ({change}; difference {here - there:+.3f}).")


def run_block(run: RunDir, spec: CohortSpec, src: SourceRun, ecfg: RunConfig,
               device: dict[str, str]) -> dict[str, Any]:
    info = src.info
    weights = src.cfg.model.weights
    return {"id": run.path.name, "cohort": spec.name, "description": spec.description,
            "weights": info.get("weights", weights),
            "weights_description": info.get("weights_description", weights),
            "pretrained": bool(info.get("pretrained", weights != "none")), "recipe": src.cfg.train.recipe,
            "backbone": src.cfg.model.backbone, "network": get_backbone(src.cfg.model.backbone).label,
            "image_px": ecfg.preprocess.image_px, "seed": ecfg.seed, "backend": device["backend"],
            "device": device["device"], "external_validation": True, "source_run": src.id,
            "source_cohort": src.cohort_name, "tta_passes": src.cfg.eval.tta}


def copies_rows(pairs: pd.DataFrame, table: pd.DataFrame, max_pairs: int = 200) -> list[dict[str, Any]]:
    """The confirmed pairs the private page shows (at most ``max_pairs``): each pair's details, the
    external image's file path (``table`` must hold ``path``), ``pos`` (its row in ``table``) and
    ``source_pos`` (its source image's thumbnail), for :func:`medxcept.report.check.copies_page`.

    Patient file names: for ``private/`` only.
    """
    paths = table["path"].astype(str).to_numpy() if "path" in table else np.full(len(table), "")
    return [{**_pair_detail(row), "path": paths[row.pos], "pos": int(row.pos), "source_pos": int(row.source_pos)}
            for row in pairs.head(max_pairs).itertuples()]


# ----------------------------------------------------------------------------- the workflow's blocks


def source_choices(src: SourceRun) -> tuple[Any, dict[str, Any] | None]:
    """The source run's calibrator and threshold (binary; ``None`` for k classes), applied unchanged:
    the threshold record says it was chosen on the source run's validation split and not refitted."""
    from medxcept.evaluation.calibrate import Calibrator

    threshold = src.calibration.get("threshold")
    if threshold is not None:
        threshold = {**threshold, "chosen_on": f"the validation split of run {src.id}", "refitted": False}
    return Calibrator.from_dict(src.calibration["calibrator"]), threshold


@dataclasses.dataclass(frozen=True)
class SourceCopies:
    """What :func:`copies_of_source` found of the source run's images in the external cohort.

    ``overlap``: ``metrics.json["external"]["overlap"]`` (byte-identical files, shared patient keys,
    near copies, what was checked); ``findings``: every audit finding about the source run (overlap
    and near copies); ``copy_finding``: the near-copy finding alone (None when there is none);
    ``pairs``: the confirmed pairs (None when not looked for); ``source_thumbs``: the source run's
    thumbnails (for the private page).
    """

    overlap: dict[str, Any]
    findings: list[Finding]
    copy_finding: Finding | None
    pairs: pd.DataFrame | None
    source_thumbs: Any


def copies_of_source(src: SourceRun, table: pd.DataFrame, fp: dict[str, np.ndarray], hamming_threshold: int,
                     on_leak: str) -> SourceCopies:
    """The source run's images in the external cohort: byte-identical files and shared patients
    (:func:`source_overlap`), then copies re-encoded, resized or cropped (the audit's pair verification
    across the source run's training and validation fingerprints and ``fp``: :func:`near_copies`)."""
    overlap, findings = source_overlap(table, pd.read_csv(src.path / "cohort.csv", dtype=str), src.id)
    source_fp = load_source_fingerprints(src.path)
    pairs = None
    if source_fp is None:
        log.warning("! the source run %s kept no fingerprints of its training images: only byte-identical "
                    "copies are looked for in this cohort", src.id)
    else:
        try:
            pairs = near_copies(source_fp, table, fp, hamming_threshold)
        except ValueError as exc:
            log.warning("! the source run %s kept fingerprints of another medxcept version (%s): only "
                        "byte-identical copies are looked for in this cohort", src.id, exc)
    copies, copy_findings = near_copy_findings(pairs, len(table), src.id, on_leak)
    overlap["near_copies"] = copies
    if pairs is not None:
        overlap["checked"].append("near-duplicate fingerprints (training and validation images)")
    return SourceCopies(overlap, findings + copy_findings, copy_findings[0] if copy_findings else None, pairs,
                        None if source_fp is None else source_fp["thumbs"])


def source_provenance(src: SourceRun) -> dict[str, Any]:
    """``versions.json["source_run"]``: the source run's id, the SHA-256 of its model file and its hashes."""
    from medxcept.cohort.ingest import file_sha256

    versions = read_run_json(src.path / "versions.json") if (src.path / "versions.json").is_file() else {}
    return {"id": src.id, "model_sha256": file_sha256(src.path / "model.keras"),
            **{k: versions[k] for k in ("data_hash", "split_hash", "config_hash") if k in versions}}


def external_block(src: SourceRun, differences: list[str], copies: SourceCopies) -> dict[str, Any]:
    """``metrics.json["external"]``: what came from the source run, that nothing was refitted, the
    configuration differences and the overlap with the source run's images."""
    return {"source_run": src.id, "source_cohort": src.cohort_name, "refitted": [],
            "from_source_run": ["model", "preprocessing", "calibrator", "threshold", "test-time augmentation",
                                *[f"eval.{k}" for k in SOURCE_EVAL_FIELDS]],
            "note": "every usable image of this cohort is a test image; nothing (model, temperature or other "
                    "calibrator, threshold) was fitted on it",
            "config_differences": differences, "overlap": copies.overlap,
            "warnings": [f.message for f in copies.findings if f.severity == "warning"]}
