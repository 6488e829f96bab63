"""A run directory can be shared without identifiers: everything outside ``private/`` is free of
patient IDs and names, file and folder names, record numbers, DICOM UIDs and exact dates.

The proof builds a cohort in which every identifier is a distinctive string -- patient IDs and
names, folder and file names (with record numbers and dates in them), StudyInstanceUID /
SeriesInstanceUID / SOPInstanceUID, StudyDate / AcquisitionDateTime / PatientBirthDate, ages --
with DICOM files (``write_ophthalmic_photo``) and photographs (``paint_fundus``), plus the files a
real export holds: a corrupt file, a label row without its file, a file without a label, links
out of the cohort folder (a file and a folder), a multi-page TIFF that makes the reader warn and a
DICOM marked ``BurnedInAnnotation: YES``. It runs the real ``check`` command (CLI, with its
console log captured as a cluster ``.out`` file would) and renders the real report into the same
directory from planted logits (training is covered by ``test_pipeline_e2e``, whose demo run is
grepped the same way there). Then every file outside ``private/`` -- and the console log -- is
searched for each identifier and its obvious variants.

The smaller tests pin the mechanisms: keyed ids, coarsened dates and ages, the atomic and
non-empty pseudonym key, owner-only ``private/``, and the masked raw panel of the report.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import stat
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pydicom
import pytest
from PIL import Image

from medxcept.cohort.table import CohortSpec, age_band, keyed_id, load_cohort_spec, public_view
from medxcept.errors import ConfigError

PX = 71
DICOM_PATIENTS = 8
PHOTO_PATIENTS = 10

COHORT = """
name: privacy
classes: [normal, abnormal]
positive_class: abnormal
modality: fundus
sources:
  - name: photos
    kind: photos
    root: photos
    labels: photos/labels.csv
    patient_column: patient
    laterality_column: eye
    visit_column: visit
    columns: {sex: sex, age: age}
  - name: dicom
    kind: dicom
    root: dicom
    labels: dicom/labels.csv
defaults:
  preprocess: {image_px: 71, quality_policy: "off"}
  split: {val_fraction: 0.25, test_fraction: 0.3}
  eval: {n_bootstrap: 20}
  audit: {on_leak: warn}
"""


def _fundus(i: int, positive: bool) -> np.ndarray:
    from medxcept.cohort.demo import CAMERAS, paint_fundus

    rng = np.random.default_rng(100 + i)
    rgb, _, _ = paint_fundus(rng, CAMERAS[0], laterality="R", referable=positive, scale=0.3)
    return rgb


def build_cohort(base: Path) -> dict[str, list[str]]:
    """Write the cohort under ``base``; return the identifiers that must stay private, by kind."""
    from medxcept.io.dicom_writer import write_ophthalmic_photo

    secrets: dict[str, list[str]] = {k: [] for k in ("ids", "names", "files", "folders", "digits", "uids", "dates")}
    outside = base.parent / f"{base.name}-outside"
    outside.mkdir()
    dicom, photos = base / "dicom", base / "photos"
    dicom_rows, photo_rows = [], []
    for k in range(DICOM_PATIENTS):
        number = str(48151620 + k)
        pid, name = f"MRN{number}", f"Qorbanova{k}^Zyxwvut"
        folder = f"Qorbanova{k}_Zyxwvut_{pid}"
        date, birth = f"1987061{k}", f"1929030{k}"
        fname = f"{pid}_Qorbanova{k}_OD_{date}.dcm"
        uid = f"1.2.826.0.1.3680043.10.777.{number}"
        path = write_ophthalmic_photo(
            dicom / folder / fname, _fundus(k, k % 2 == 1), patient_id=pid, patient_name=name, laterality="R",
            study_uid=f"{uid}.1", series_uid=f"{uid}.1.2", sop_uid=f"{uid}.1.2.3", sex="F",
            age=f"{93 if k < 3 else 58:03d}Y", acquisition_date=date, manufacturer="Zeiss", model="Visucam")
        ds = pydicom.dcmread(path)
        ds.PatientBirthDate = birth
        ds.BurnedInAnnotation = "YES" if k == 0 else "NO"
        ds.save_as(path, enforce_file_format=True)
        dicom_rows.append({"file": f"{folder}/{fname}", "label": "abnormal" if k % 2 else "normal"})
        secrets["ids"].append(pid)
        secrets["names"] += [name, f"Qorbanova{k}", "Zyxwvut"]
        secrets["files"] += [fname, Path(fname).stem]
        secrets["folders"].append(folder)
        secrets["digits"].append(number)
        secrets["uids"] += [f"{uid}.1", f"{uid}.1.2", f"{uid}.1.2.3"]
        secrets["dates"] += [date, f"{date[:4]}-{date[4:6]}-{date[6:]}", birth, f"{birth[:4]}-{birth[4:6]}-{birth[6:]}"]
    for k in range(PHOTO_PATIENTS):
        number = str(73349210 + k)
        pid = f"PTX{number}"
        visit = f"2018-11-2{k}"
        folder = f"Xylophagou{k}_{pid}"
        ext = "tif" if k == 0 else "jpg"
        fname = f"Xylophagou{k}_{pid}_left_{visit.replace('-', '')}.{ext}"
        (photos / folder).mkdir(parents=True)
        img = Image.fromarray(_fundus(50 + k, k % 2 == 0))
        if ext == "tif":  # two pages: the reader warns that only the first is read
            img.save(photos / folder / fname, save_all=True, append_images=[img])
        else:
            img.save(photos / folder / fname, quality=92)
        photo_rows.append({"file": f"{folder}/{fname}", "patient": pid, "eye": "L", "visit": visit,
                           "label": "abnormal" if k % 2 == 0 else "normal", "sex": "M", "age": 93 + k % 4})
        secrets["ids"].append(pid)
        secrets["names"].append(f"Xylophagou{k}")
        secrets["files"] += [fname, Path(fname).stem]
        secrets["folders"].append(folder)
        secrets["digits"].append(number)
        secrets["dates"] += [visit, visit.replace("-", "")]
    # what an export also holds, every name distinctive
    bad = dicom / "Vrbanjac_MRN55512345" / "MRN55512345_Vrbanjac_19991231.dcm"
    bad.parent.mkdir()
    bad.write_bytes(b"DICM-not-really" * 10)
    dicom_rows.append({"file": "Vrbanjac_MRN55512345/MRN55512345_Vrbanjac_19991231.dcm", "label": "normal"})
    photo_rows.append({"file": "Kowalczyk_MRN66612345_20010101.jpg", "patient": "PTX66612345", "eye": "R",
                       "visit": "2001-01-01", "label": "normal", "sex": "F", "age": 71})
    Image.fromarray(_fundus(90, False)).save(photos / "Oyelaran_MRN77712345_20020202.png")
    Image.fromarray(_fundus(91, False)).save(outside / "EscapeTarget_MRN88812345.jpg")
    os.symlink(outside / "EscapeTarget_MRN88812345.jpg", photos / "Escape_MRN88812345_20030303.jpg")
    photo_rows.append({"file": "Escape_MRN88812345_20030303.jpg", "patient": "PTX88812345", "eye": "R",
                       "visit": "2003-03-03", "label": "normal", "sex": "F", "age": 66})
    (outside / "LinkedDirTarget_MRN99912345").mkdir()
    Image.fromarray(_fundus(92, True)).save(outside / "LinkedDirTarget_MRN99912345" / "Inside_MRN99912345.jpg")
    os.symlink(outside / "LinkedDirTarget_MRN99912345", photos / "LinkedDir_MRN99912345")
    secrets["files"] += ["MRN55512345_Vrbanjac_19991231.dcm", "Kowalczyk_MRN66612345_20010101.jpg",
                         "Oyelaran_MRN77712345_20020202.png", "Escape_MRN88812345_20030303.jpg",
                         "EscapeTarget_MRN88812345.jpg", "Inside_MRN99912345.jpg"]
    secrets["folders"] += ["Vrbanjac_MRN55512345", "LinkedDir_MRN99912345", "LinkedDirTarget_MRN99912345",
                           str(outside), str(dicom), str(photos)]
    secrets["names"] += ["Vrbanjac", "Kowalczyk", "Oyelaran"]
    secrets["digits"] += ["55512345", "66612345", "77712345", "88812345", "99912345"]
    secrets["ids"] += ["PTX66612345", "PTX88812345"]
    secrets["dates"] += ["19991231", "20010101", "2001-01-01", "20020202", "20030303", "2003-03-03"]
    pd.DataFrame(dicom_rows).to_csv(dicom / "labels.csv", index=False)
    pd.DataFrame(photo_rows).to_csv(photos / "labels.csv", index=False)
    (base / "cohort.yaml").write_text(COHORT, encoding="utf-8")
    return secrets


def _report_into(run_dir: Path, spec: CohortSpec, log: io.StringIO) -> Path:
    """Render report.html into the check's run directory as run_pipeline does, from planted logits."""
    from medxcept.config import load_config
    from medxcept.evaluation.assess import assess, prediction_table
    from medxcept.evaluation.verdict import training_verdict
    from medxcept.images.augment import effective_class_frequencies
    from medxcept.integrity.audit import audit_cohort, fingerprints
    from medxcept.integrity.splits import assign_splits
    from medxcept.report import render_report
    from medxcept.workflows.steps import (
        prepare_cohort,
        reason_counts,
        report_examples,
        report_inputs,
        summary_counts,
    )

    handler = logging.StreamHandler(log)
    logger = logging.getLogger("medxcept")
    logger.addHandler(handler)
    try:
        cfg = load_config(cohort_defaults=spec.defaults)
        versions = json.loads((run_dir / "versions.json").read_text(encoding="utf-8"))  # the check's
        ing, cache = prepare_cohort(spec, cfg)
        table = assign_splits(ing.table, cfg.split)
        images = np.stack([cache.get(s, int(f), cfg.preprocess) for s, f in zip(table["sha256"], table["frame"],
                                                                                strict=True)])
        parts = {s: table[table["split"] == s] for s in ("train", "val", "test")}
        rng = np.random.default_rng(0)

        def logits(frame: pd.DataFrame) -> np.ndarray:
            z = 2.0 * frame["y"].to_numpy() - 1.0 + rng.normal(0, 1.0, len(frame))
            z[np.argmax(frame["y"].to_numpy() == 1)] = -2.0  # one misranked pair keeps T finite
            return z

        assessed = assess(val=parts["val"], test=parts["test"], val_logits=logits(parts["val"]),
                                       test_logits=logits(parts["test"]), cfg=cfg, classes=spec.classes)
        metrics, frames = assessed.metrics, {"val": assessed.val, "test": assessed.test}
        history = pd.DataFrame({"epoch": [1, 2], "stage": ["scratch"] * 2, "loss": [0.7, 0.6],
                                "val_loss": [0.7, 0.65], "auc": [0.6, 0.7], "val_patient_auc": [0.55, 0.6]})
        full = {"run": {"id": run_dir.name, "cohort": spec.name, "description": "", "weights": "none",
                        "weights_description": "random initialization", "pretrained": False, "recipe": "default",
                        "image_px": PX, "seed": 0, "backend": "none", "device": "cpu",
                        "external_validation": False},
                "cohort": {**summary_counts(table), "files_found": ing.files_found, "files_used": ing.files_used,
                           "files_excluded": ing.files_excluded,
                           "exclusions_by_reason": reason_counts(ing.exclusions)},
                "class_balance": {"method": cfg.augment.balance, **effective_class_frequencies(
                    parts["train"]["y"].to_numpy(), cfg.augment, n_classes=spec.n_classes)},
                "training": {**training_verdict(history, 2), "stages": [], "seconds": 1.0},
                **metrics, "audit": {"errors": 0, "n_findings": 0}, "timings": {"total_s": 1.0},
                "hashes": {k: versions[k] for k in ("data_hash", "split_hash", "config_hash")}}
        (run_dir / "metrics.json").write_text(json.dumps(full, default=str), encoding="utf-8")
        prediction_table(frames["test"], spec.classes, cfg.eval.patient_aggregation).to_csv(
            run_dir / "predictions.csv", index=False)  # the columns run_pipeline writes
        return render_report(run_dir, metrics=full, history=history,
                             audit=audit_cohort(table, fp=fingerprints(images), policy="warn"),
                             versions={**versions, "device": {"backend": "none", "device": "cpu", "detail": ""}},
                             spec=spec, frames=frames,
                             inputs=report_inputs(run_dir, full, frames["test"], cfg, list(spec.classes)),
                             examples=report_examples(table, images, cfg, spec))
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def shared_run(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> SimpleNamespace:
    from pipelines.retina import main

    base = tmp_path_factory.mktemp("privacy") / "cohort"
    secrets = build_cohort(base)
    out = base.parent / "reports"
    log, stdout = io.StringIO(), io.StringIO()
    logger = logging.getLogger("medxcept")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    try:
        with contextlib.redirect_stderr(log), contextlib.redirect_stdout(stdout):
            rc = main(["check", "--cohort", str(base / "cohort.yaml"), "--out-dir", str(out),
                       "--run-name", "shared", "-v"])
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    run_dir = out / "shared"
    assert rc == 0, log.getvalue()[-2000:]
    report = _report_into(run_dir, load_cohort_spec(base / "cohort.yaml"), log)
    return SimpleNamespace(run=run_dir, secrets=secrets, log=log.getvalue(), report=report, base=base)


def _shared_files(run_dir: Path) -> list[Path]:
    return [p for p in sorted(run_dir.rglob("*")) if p.is_file() and "private" not in p.relative_to(run_dir).parts]


def test_the_cohort_really_carries_the_identifiers_into_the_run(shared_run: SimpleNamespace) -> None:
    """Meaningful only if ingestion saw the identifiers: they are in private/, and every planted case happened."""
    priv = shared_run.run / "private"
    pmap = pd.read_csv(priv / "patient_map.csv", dtype=str)
    assert set(pmap["patient_id"]) >= {f"MRN{48151620 + k}" for k in range(DICOM_PATIENTS)}
    paths = pd.read_csv(priv / "image_paths.csv", dtype=str)
    assert paths["study_uid"].str.contains(".777.48151620.1", regex=False).any()
    assert paths["acquisition_date"].eq("1987-06-10").any() and paths["visit"].eq("2018-11-20").any()
    ex = pd.read_csv(priv / "exclusions.csv", dtype=str)
    text = " ".join(ex["path"]) + " ".join(ex["reason"])
    for planted in ("MRN55512345", "Kowalczyk", "Oyelaran", "Escape_MRN88812345", "LinkedDir_MRN99912345"):
        assert planted in text, planted
    assert (ex["reason"].str.contains("outside the source folder")).sum() == 2
    # the multi-page TIFF made the reader warn, and the log names it by its keyed id
    assert "holds 2 frames/pages" in shared_run.log and "F-" in shared_run.log
    assert 'id="raw-panel-note"' in shared_run.report.read_text(encoding="utf-8")


def test_no_identifier_in_any_shared_file_or_in_the_log(shared_run: SimpleNamespace) -> None:
    files = _shared_files(shared_run.run)
    names = {p.relative_to(shared_run.run).as_posix() for p in files}
    assert {"check.html", "report.html", "cohort.csv", "exclusions.csv", "exclusions_summary.json", "split.csv",
            "audit.json", "config.yaml", "versions.json", "metrics.json", "predictions.csv"} <= names
    needles = sorted({s for values in shared_run.secrets.values() for s in values}, key=len)
    leaks = []
    for p in files:
        text = p.read_bytes().decode("utf-8", errors="replace").lower()
        leaks += [f"{p.name}: {s}" for s in needles if s.lower() in text]
    log = shared_run.log.lower()
    leaks += [f"console log: {s}" for s in needles if s.lower() in log]
    assert not leaks, leaks[:20]


def test_shared_tables_hold_keys_years_and_age_bands_only(shared_run: SimpleNamespace) -> None:
    cohort = pd.read_csv(shared_run.run / "cohort.csv", dtype=str, keep_default_na=False)
    assert not {"path", "patient_id", "study_uid", "series_uid", "sop_uid", "visit"} & set(cohort.columns)
    assert cohort["image_id"].str.fullmatch(r"I-[0-9a-f]{10}(-f\d+)?").all()
    assert cohort["study_id"].str.fullmatch(r"S-[0-9a-f]{10}").all()
    assert set(cohort.loc[cohort["reader"] == "dicom", "acquisition_date"]) == {"1987"}
    assert set(cohort["age"]) <= {"55-59", "90+"} and "90+" in set(cohort["age"])
    ex = pd.read_csv(shared_run.run / "exclusions.csv", dtype=str, keep_default_na=False)
    assert list(ex.columns) == ["file_id", "frame", "source", "stage", "reason", "label", "found"]
    assert ex["file_id"].str.fullmatch(r"F-[0-9a-f]{10}").all()
    summary = json.loads((shared_run.run / "exclusions_summary.json").read_text())
    assert summary["files_found"] == summary["files_used"] + summary["files_excluded"] and summary["holds"]
    assert summary["files_used"] == DICOM_PATIENTS + PHOTO_PATIENTS
    # found = used + excluded, counted on the shared log alone: the files found among its rows
    assert summary["files_excluded"] == ex.loc[ex["found"] == "True", "file_id"].nunique()
    assert {"label", "ingest"} <= set(ex["stage"])


def test_private_folder_is_owner_only(shared_run: SimpleNamespace) -> None:
    priv = shared_run.run / "private"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o700
    for p in priv.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p.name
    assert (priv / "check.html").is_file() and "Oyelaran_MRN77712345_20020202.png" in (
        priv / "check.html").read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- mechanisms


def test_keyed_ids_depend_on_the_key_and_the_domain() -> None:
    a = keyed_id("I-", "image", "photos/MRN123_OD.jpg#0", "k" * 64)
    assert a != keyed_id("I-", "image", "photos/MRN123_OD.jpg#0", "j" * 64)  # not recomputable without the key
    assert a[2:] != keyed_id("F-", "file", "photos/MRN123_OD.jpg#0", "k" * 64)[2:]
    assert age_band(89.9) == "85-89" and age_band(90) == "90+" and age_band(4) == "0-4"
    df = pd.DataFrame({"image_id": ["I-1"], "path": ["/x/MRN1.jpg"], "patient_id": ["MRN1"],
                       "study_uid": ["1.2.3"], "acquisition_date": ["2019-03-04"], "age": [91.0]})
    pub = public_view(df)
    assert list(pub.columns) == ["image_id", "acquisition_date", "age"]
    assert pub.iloc[0].tolist() == ["I-1", "2019", "90+"]


def test_pseudonym_key_is_created_whole_and_a_short_key_is_refused(tmp_path: Path, monkeypatch) -> None:
    from medxcept.cohort.ingest import pseudonym_salt

    monkeypatch.setenv("MEDXCEPT_CACHE", str(tmp_path))
    spec = CohortSpec(name="k", classes=("a", "b"), sources=(), base_dir=str(tmp_path))
    key = pseudonym_salt(spec)
    assert len(key) == 64 and (tmp_path / "pseudonym.key").read_text() == key
    assert stat.S_IMODE((tmp_path / "pseudonym.key").stat().st_mode) == 0o600
    assert not list(tmp_path.glob(".pseudonym.key.*"))  # the temporary file is gone
    assert pseudonym_salt(spec) == key
    (tmp_path / "pseudonym.key").write_text("")  # what a racing reader used to see
    with pytest.raises(ConfigError, match="0 character"):
        pseudonym_salt(spec)


def test_raw_panel_masks_outside_the_field_of_view_and_honours_burned_in_annotation() -> None:
    from medxcept.images.preview import raw_preview

    rgb = _fundus(7, True)
    h, w = rgb.shape[:2]
    rgb[: h // 8, : w // 3] = 255  # burned-in text block in the corner, outside the disc
    shown, title = raw_preview(rgb, modality="fundus")
    assert shown is not None and "masked" in title
    assert shown[: shown.shape[0] // 10, : shown.shape[1] // 10].max() == 0  # the corner is black
    centre = shown[shown.shape[0] // 2, shown.shape[1] // 2]
    assert centre.max() > 0.1  # the retina itself is shown
    assert raw_preview(rgb, modality="fundus", burned_in="YES")[0] is None
    assert raw_preview(rgb, modality="gray")[0] is None
    assert raw_preview(np.full((64, 64, 3), 200, np.uint8), modality="fundus")[0] is None  # no FOV


def test_links_out_of_the_source_folder_are_not_followed(tmp_path: Path) -> None:
    from medxcept.io import walk_files

    root, out = tmp_path / "root", tmp_path / "out"
    (root / "a").mkdir(parents=True)
    out.mkdir()
    (root / "a" / "x.png").write_bytes(b"1")
    (out / "y.png").write_bytes(b"2")
    os.symlink(out / "y.png", root / "a" / "link.png")
    os.symlink(out, root / "outdir")
    os.symlink(root / "a", root / "inlink")  # inside: followed, walked once
    files, refused = walk_files(root)
    assert [p.relative_to(root).as_posix() for p in files] == ["a/x.png"]
    assert sorted(p.name for p in refused) == ["link.png", "outdir"]


def test_a_stopping_label_error_withholds_file_names_from_the_console(tmp_path: Path, session_cache: Path) -> None:
    from medxcept.config import load_config
    from medxcept.errors import CohortError
    from medxcept.run import RunDir
    from medxcept.workflows.steps import ingest_into_run

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(_fundus(1, False)).save(photos / "a.png")
    Image.fromarray(_fundus(2, False)).save(photos / "Stray_MRN31415926.png")
    pd.DataFrame([{"file": "a.png", "label": "normal", "patient": "p1"}]).to_csv(photos / "labels.csv", index=False)
    (tmp_path / "c.yaml").write_text(
        "name: strict\nclasses: [normal, abnormal]\non_label_issue: error\npseudonym_salt: s\nsources:\n"
        "  - {name: photos, kind: photos, root: photos, labels: photos/labels.csv, patient_column: patient}\n",
        encoding="utf-8")
    run = RunDir(tmp_path / "run")
    with pytest.raises(CohortError, match="1 label problem") as err:
        ingest_into_run(run, load_cohort_spec(tmp_path / "c.yaml"), load_config(overrides={"preprocess.image_px": PX}))
    assert "MRN31415926" not in str(err.value) and "private" in str(err.value)
    assert "Stray_MRN31415926.png" in (run.path / "private" / "ingest_error.txt").read_text(encoding="utf-8")


def test_config_yaml_keeps_paths_in_private(tmp_path: Path) -> None:
    """Issue 33: config.yaml held the absolute cohort path (and a resolved split.user_split file).
    Such paths go to private/config_paths.json and come back when the run's configuration is read."""
    import yaml

    from medxcept.config import RunConfig, config_hash, load_config
    from medxcept.run import PRIVATE_PATH, RunDir, load_run_config

    base = tmp_path / "Qorbanova_MRN48151620"
    cfg = load_config(overrides={"cohort": str(base / "cohort.yaml"), "out_dir": str(tmp_path / "reports"),
                                 "split.user_split": "split.csv"}, cohort_dir=base)
    assert cfg.split.user_split == str(base / "split.csv")  # resolved against the cohort's folder
    run = RunDir(tmp_path / "run")
    run.write_config(cfg, extra={"cohort_name": "c"})
    shared = (run.path / "config.yaml").read_text()
    assert "Qorbanova" not in shared and str(tmp_path) not in shared
    saved = yaml.safe_load(shared)
    assert saved["cohort"] == saved["out_dir"] == saved["split"]["user_split"] == PRIVATE_PATH
    assert load_run_config(run.path) == cfg and config_hash(load_run_config(run.path)) == config_hash(cfg)
    # relative paths inside the working directory stay readable; a column name is no path
    plain = RunConfig(cohort="cohorts/demo.yaml", out_dir="reports")
    run2 = RunDir(tmp_path / "run2")
    run2.write_config(plain)
    assert yaml.safe_load((run2.path / "config.yaml").read_text())["cohort"] == "cohorts/demo.yaml"
    assert not (run2.path / "private").exists()
    # a run copied without private/ says what is missing
    import shutil

    shutil.rmtree(run.path / "private")
    with pytest.raises(ConfigError, match="option 'cohort' is kept in"):
        load_run_config(run.path)


def test_workflows_write_shared_files_atomically() -> None:
    """Issue 33: compare and check wrote with plain write_text; every workflow writes through
    medxcept.run.write_atomic (or RunDir, which uses it), so a reader never sees half a file."""
    import ast

    root = Path(__file__).resolve().parent.parent / "medxcept" / "workflows"
    plain = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                    "write_text", "write_bytes", "to_csv", "savefig") and not (
                    isinstance(node.func.value, ast.Name) and node.func.value.id in ("run", "self")) and (
                    node.func.attr != "to_csv" or node.args or any(k.arg == "path_or_buf" for k in node.keywords)):
                plain.append(f"{path.name}:{node.lineno} .{node.func.attr}(")
    assert not plain, plain
