"""Ingestion of the mixed DICOM + photograph corpus (issue #4), case by case, and the check step.

The corpus (:func:`medxcept.testing.corpus.write_mixed_corpus`) is written and ingested once per
module. Every case of its table is checked against what ingestion did: decoded cases are rows
of the cohort table whose pixels, decoded again by the same reader, match the values planted
when the file was written (hand-computed windows, MONOCHROME1 stored inverted, EXIF-rotated
storage...); excluded cases are rows of the exclusion log whose reason holds the expected
fragment and names the file; nothing is lost between the two tables.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from types import SimpleNamespace

import markupsafe
import numpy as np
import pandas as pd
import pydicom
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from medxcept.cohort.ingest import ingest, public_exclusions  # noqa: E402
from medxcept.cohort.table import load_cohort_spec  # noqa: E402
from medxcept.config import load_config  # noqa: E402
from medxcept.errors import CohortError, MissingDecoderError, SplitError  # noqa: E402
from medxcept.images.cache import PreprocessCache
from medxcept.images.preprocess import PreprocessConfig  # noqa: E402
from medxcept.integrity.check import is_skip_reason, reason_groups  # noqa: E402
from medxcept.io.dicom import read_dicom  # noqa: E402
from medxcept.io.images import read_image  # noqa: E402
from medxcept.testing import corpus as corpus_mod  # noqa: E402
from medxcept.workflows.check import check_cohort  # noqa: E402

PX = 71
# the truncated encapsulated DICOM makes pydicom warn before medxcept refuses it
pytestmark = pytest.mark.filterwarnings("ignore:End of file reached before delimiter:UserWarning")
# every case the issue lists must be in the corpus (fragments of the ``case`` column)
ISSUE_CASES = (
    "implicit VR", "explicit VR", "deflated", "JPEG baseline (8-bit gray)", "JPEG extended", "JPEG lossless",
    "JPEG-LS", "JPEG 2000 lossless", "JPEG 2000 lossy", "RLE", "MONOCHROME1", "signed", "BitsStored",
    "multi-frame", "YBR_FULL (", "YBR_FULL_422", "PlanarConfiguration", "no preamble", "structured report",
    "DICOMDIR", "presentation state", "JPEG progressive", "PNG 8-bit", "PNG 16-bit grayscale", "TIFF", "BMP",
    "JPEG grayscale", "RGBA", "CMYK", "EXIF", "PNG named .jpg", "truncated DICOM", "truncated JPEG",
    "zero-byte .dcm", "zero-byte .jpg", "decompression bomb", "absurd dimensions", "text file named .dcm",
    "unknown label", "file missing", "file not in the label table", "empty patient", "non-ASCII",
    "unknown transfer syntax", "Rows/Columns inconsistent", "header without Pixel Data",
    # issue 18
    "VOI LUT, 8-bit entries", "trailing padding", "JPEG frame cut short", "PatientID differs", "laterality differs",
    "another patient's folder", "Unicode NFD", "identical label row repeated", "is not a laterality",
)


def _esc(text: str) -> str:
    """Text as jinja2's autoescape writes it."""
    return str(markupsafe.escape(text))


def _norm(path: object) -> str:
    return os.path.normpath(os.path.abspath(str(path).split("#frame")[0]))


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("mixed-corpus")
    cases = corpus_mod.write_mixed_corpus(root, seed=0)
    spec = load_cohort_spec(root / "cohort.yaml")
    cfg = PreprocessConfig(image_px=PX)
    cache = PreprocessCache(session_cache / "mixed-preprocessed")
    result = ingest(spec, preprocess_cfg=cfg, cache=cache, workers=1)
    return SimpleNamespace(root=root, cases=cases, spec=spec, cfg=cfg, cache=cache, result=result,
                           truth=corpus_mod.load_expected_pixels(root))


def _rows_of(mixed: SimpleNamespace, file: str) -> pd.DataFrame:
    table = mixed.result.table
    return table[table["path"].map(_norm) == _norm(mixed.root / file)]


def _exclusions_of(mixed: SimpleNamespace, file: str) -> pd.DataFrame:
    ex = mixed.result.exclusions
    return ex[ex["path"].map(_norm) == _norm(mixed.root / file)]


def _cases(mixed: SimpleNamespace, kind: str) -> list:
    return [c for c in mixed.cases.itertuples(index=False) if str(c.expected).startswith(kind)]


# --------------------------------------------------------------------------- the corpus itself


def test_corpus_holds_every_case_of_the_issue(mixed: SimpleNamespace) -> None:
    names = " | ".join(mixed.cases["case"])
    missing = [c for c in ISSUE_CASES if c not in names]
    assert not missing, f"cases missing from the corpus: {missing}"
    assert mixed.cases["case"].is_unique
    on_disk = [c for c in mixed.cases.itertuples() if "missing on disk" not in c.case]
    assert all((mixed.root / c.file).exists() for c in on_disk)
    assert not (mixed.root / mixed.cases.loc[mixed.cases["case"].str.contains("missing on disk"), "file"].iloc[0]).exists()
    decoded = mixed.cases[mixed.cases["expected"] == "decoded"]
    assert set(decoded["label"]) == {"normal", "abnormal"} and len(decoded) >= 30
    assert set(mixed.truth) == set(decoded["case"])


# --------------------------------------------------------------------------- decoded cases


def test_decoded_cases_are_cohort_rows_of_the_expected_size(mixed: SimpleNamespace) -> None:
    problems = []
    for c in _cases(mixed, "decoded"):
        rows = _rows_of(mixed, c.file)
        got = [(int(r.height), int(r.width), int(r.channels)) for r in rows.itertuples()]
        if got != [(c.height, c.width, c.channels)] * c.rows:
            problems.append(f"{c.case}: rows {got}, expected {c.rows} x {(c.height, c.width, c.channels)}")
        elif not _exclusions_of(mixed, c.file).empty:
            problems.append(f"{c.case}: decoded but also in the exclusion log")
        elif sorted(rows["label"]) != [c.label] * c.rows:
            problems.append(f"{c.case}: label {sorted(rows['label'])} instead of {c.label}")
    assert not problems, "\n".join(problems)
    frames = _rows_of(mixed, "dicom/multiframe_3.dcm")
    assert sorted(frames["frame"]) == [0, 1, 2] and frames["image_id"].is_unique


def test_decoded_pixels_match_the_planted_values(mixed: SimpleNamespace) -> None:
    """The reader ingestion used, with ingestion's options, gives back the pixels written."""
    spec, problems = mixed.spec, []
    for c in _cases(mixed, "decoded"):
        path = mixed.root / c.file
        if c.reader == "dicom":
            image, _ = read_dicom(path, window_index=spec.window_index, max_pixels=spec.max_pixels)
        else:
            single, _ = read_image(path, max_pixels=spec.max_pixels)
            image = single[np.newaxis]
        truth = mixed.truth[c.case]
        if image.dtype != np.float32 or image.min() < 0 or image.max() > 1:
            problems.append(f"{c.case}: {image.dtype} values in [{image.min()}, {image.max()}]")
        elif image.shape != truth.shape:
            problems.append(f"{c.case}: shape {image.shape}, expected {truth.shape}")
        elif (mae := float(np.abs(image - truth).mean())) > c.tolerance:
            problems.append(f"{c.case}: mean abs error {mae:.4f} > {c.tolerance}")
    assert not problems, "\n".join(problems)


def test_decoded_rows_are_in_the_preprocessing_cache(mixed: SimpleNamespace) -> None:
    for r in mixed.result.table.itertuples():
        arr = mixed.cache.get(r.sha256, int(r.frame), mixed.cfg)
        assert arr is not None and arr.shape == (PX, PX, 3) and arr.dtype == np.uint8, r.image_id
        assert arr.std() > 0, f"{r.image_id}: constant preprocessed image"


def test_monochrome1_is_inverted_so_higher_is_brighter(mixed: SimpleNamespace) -> None:
    path = mixed.root / "dicom/monochrome1.dcm"
    stored = pydicom.dcmread(path).pixel_array.astype(np.float64)  # raw stored values, no display transform
    image, meta = read_dicom(path)
    assert meta["photometric"] == "MONOCHROME1"
    np.testing.assert_allclose(image[0, ..., 0], 1.0 - stored / 4095.0, atol=1e-6)
    # the darkest stored value is the brightest displayed pixel
    assert image[0, ..., 0].flat[np.argmin(stored)] == 1.0


def test_exif_rotation_and_rgba_compositing(mixed: SimpleNamespace) -> None:
    truth = mixed.truth["JPEG with EXIF orientation 6"][0]
    image, meta = read_image(mixed.root / "photos/img_0011.jpg")
    assert meta["exif_transposed"] and image.shape == truth.shape == (60, 76, 3)
    upright = np.abs(image - truth).mean()
    assert upright < 0.04 and upright < np.abs(np.rot90(image, 2) - truth).mean() / 2
    rgba, _ = read_image(mixed.root / "photos/img_0009.png")
    outside = mixed.truth["PNG RGBA (transparent surround)"][0].max(axis=-1) == 0
    assert rgba[outside].max() == 0.0  # white transparent surround composited on black


# --------------------------------------------------------------------------- excluded and skipped


def test_excluded_cases_are_logged_with_their_reason(mixed: SimpleNamespace) -> None:
    problems = []
    for c in _cases(mixed, "excluded"):
        fragment = c.expected.split(": ", 1)[1]
        ex = _exclusions_of(mixed, c.file)
        name = Path(c.file).name
        if ex.empty:
            problems.append(f"{c.case}: no exclusion row for {c.file}")
        elif not any(fragment in r for r in ex["reason"]):
            problems.append(f"{c.case}: no reason holds {fragment!r}: {list(ex['reason'])}")
        elif not all(Path(p).name == name for p in ex["path"]):
            problems.append(f"{c.case}: exclusion rows name {list(ex['path'])}")
        elif any(is_skip_reason(r) for r in ex["reason"]) or not _rows_of(mixed, c.file).empty:
            problems.append(f"{c.case}: also skipped or used")
    assert not problems, "\n".join(problems)
    stages = set(mixed.result.exclusions["stage"])
    assert stages <= {"ingest", "decode", "label", "quality", "pattern"}, stages


def test_label_issues_name_the_spreadsheet_row(mixed: SimpleNamespace) -> None:
    ex = mixed.result.exclusions
    unknown = ex[ex["reason"].str.contains("not one of the declared classes")]["reason"].iloc[0]
    missing = ex[ex["reason"].str.contains("label row whose file is missing")]["reason"].iloc[0]
    assert unknown.startswith("row ") and "'img_0013.png'" in unknown and "'MAYBE'" in unknown
    assert missing.startswith("row ") and "'img_9999.png'" in missing


def test_non_images_are_skipped_even_without_a_label_row(mixed: SimpleNamespace) -> None:
    for c in _cases(mixed, "skipped"):
        ex = _exclusions_of(mixed, c.file)
        assert len(ex) == 1 and is_skip_reason(ex["reason"].iloc[0]), (c.case, list(ex["reason"]))
        assert ex["stage"].iloc[0] == "ingest"
    ex = _exclusions_of(mixed, "dicom/DICOMDIR")
    assert ex["reason"].iloc[0] == "not an image: DICOMDIR (Media Storage Directory Storage)"
    assert not mixed.result.exclusions["reason"].str.contains("'DICOMDIR' is on disk").any()


def test_files_found_equal_used_plus_excluded_plus_skipped(mixed: SimpleNamespace) -> None:
    on_disk = {_norm(Path(d) / n) for src in ("dicom", "photos", "pattern") for d, _, names in os.walk(mixed.root / src)
               for n in names if n != "labels.csv"}
    res = mixed.result
    used = set(res.table["path"].map(_norm))
    by_file: dict[str, list[str]] = {}
    for p, r in zip(res.exclusions["path"], res.exclusions["reason"], strict=True):
        by_file.setdefault(_norm(p), []).append(r)
    skipped = {p for p, rs in by_file.items() if all(is_skip_reason(r) for r in rs)} & on_disk
    excluded = (set(by_file) & on_disk) - skipped
    assert res.files_found == len(on_disk) == 69
    assert not used & excluded and not used & skipped
    assert used | excluded | skipped == on_disk, f"lost: {on_disk - used - excluded - skipped}"
    assert res.files_found == len(used) + len(excluded) + len(skipped)
    assert (res.files_used, res.files_excluded) == (len(used), len(excluded) + len(skipped))
    # the only exclusion row that names no file on disk is the label row whose file is missing
    # (and the row naming pat_b/left.png, which exists only as pat_a/left.png)
    assert {Path(p).relative_to(mixed.root).as_posix() for p in set(by_file) - on_disk} == {
        "photos/img_9999.png", "photos/pat_b/left.png"}


def test_exclusions_record_the_class_when_it_is_known(mixed: SimpleNamespace) -> None:
    """Issue 18: the exclusion log's label column, for decode, label, pattern and header exclusions."""
    ex = mixed.result.exclusions
    assert {"path", "stage", "reason", "label"} <= set(ex.columns)
    by_case = {c.case: c for c in mixed.cases.itertuples(index=False)}
    for case in ("encapsulated JPEG frame cut short (file well formed)", "truncated DICOM (native)",
                 "label table PatientID differs from the DICOM header", "label row: file missing on disk",
                 "file-name pattern: eye field '005' is not a laterality",
                 "label row naming another patient's folder (its path missing on disk)"):
        c = by_case[case]
        rows = _exclusions_of(mixed, c.file)
        assert set(rows["label"]) == {c.label}, (case, rows.to_dict("records"))
    for case in ("file not in the label table", "label row: unknown label value"):
        assert set(_exclusions_of(mixed, by_case[case].file)["label"]) == {""}
    # stages: the pattern exclusion is "pattern", the table/header disagreement is "label"
    assert _exclusions_of(mixed, "pattern/abnormal/Glaucoma_005.png")["stage"].tolist() == ["pattern"]
    assert _exclusions_of(mixed, "dicom/table_patient_differs.dcm")["stage"].tolist() == ["label"]
    # no patient identifier in the disagreement reason
    reason = _exclusions_of(mixed, "dicom/table_patient_differs.dcm")["reason"].iloc[0]
    assert "MRN" not in reason and reason.startswith("row ")


def test_case_outcomes_table_agrees(mixed: SimpleNamespace) -> None:
    out = corpus_mod.case_outcomes(mixed.cases, mixed.root, mixed.result.table, mixed.result.exclusions)
    assert len(out) == len(mixed.cases) and out["ok"].all(), out.loc[~out["ok"], ["case", "actual"]].to_string()
    md = corpus_mod.outcomes_markdown(out)
    assert md.count("\n") == len(out) + 1 and "**NO**" not in md
    assert ("| MONOCHROME1 | `dicom/monochrome1.dcm` | decoded | decoded: 1 row(s), 40x52x1, pixels match "
            "(MAE 0.0000 <= 0.002) | yes |") in md


def test_case_outcomes_flags_a_wrong_expectation(mixed: SimpleNamespace) -> None:
    cases = mixed.cases.copy()
    cases.loc[cases["case"] == "MONOCHROME1", "expected"] = "excluded: anything"
    cases.loc[cases["case"] == "zero-byte .dcm", "expected"] = "excluded: no such fragment"
    out = corpus_mod.case_outcomes(cases, mixed.root, mixed.result.table, mixed.result.exclusions)
    assert set(out.loc[~out["ok"], "case"]) == {"MONOCHROME1", "zero-byte .dcm"}


def test_case_outcomes_flags_wrong_pixels(mixed: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that forgot the MONOCHROME1 inversion would show as 'PIXELS DIFFER'."""
    truth = dict(mixed.truth)
    truth["MONOCHROME1"] = 1.0 - truth["MONOCHROME1"]
    monkeypatch.setattr(corpus_mod, "load_expected_pixels", lambda root: truth)
    out = corpus_mod.case_outcomes(mixed.cases, mixed.root, mixed.result.table, mixed.result.exclusions)
    assert list(out.loc[~out["ok"], "case"]) == ["MONOCHROME1"]
    actual = out.set_index("case").loc["MONOCHROME1", "actual"]
    assert "PIXELS DIFFER" in actual and float(actual.split("MAE ")[1].split()[0]) > 0.3


def test_missing_decoder_plugin_stops_the_run_once(mixed: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate an install without pylibjpeg-openjpeg: one install error, not one exclusion per file."""
    from pydicom import uid as dcm_uid

    from medxcept.io import dicom as dicom_mod

    real = dicom_mod.get_decoder
    j2k = {dcm_uid.JPEG2000Lossless, dcm_uid.JPEG2000}

    class _Unavailable:
        is_available = False
        missing_dependencies = ["pylibjpeg-openjpeg (simulated as not installed)"]

    monkeypatch.setattr(dicom_mod, "get_decoder", lambda ts: _Unavailable() if ts in j2k else real(ts))
    with pytest.raises(MissingDecoderError) as excinfo:
        ingest(mixed.spec, preprocess_cfg=mixed.cfg, cache=mixed.cache, workers=1)
    message = str(excinfo.value)
    assert "pip install pylibjpeg pylibjpeg-openjpeg" in message and message.count("cannot decode") == 1
    assert "JPEG 2000" in message


def test_a_process_pool_ingests_the_corpus_exactly_as_one_process(mixed: SimpleNamespace, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The pool path (spawned decoders after the timed probe files), forced on for the corpus: the same
    cohort table and exclusion log as the one-process ingestion, in the same order."""
    from medxcept.cohort import ingest as ingest_mod

    pools: list[int] = []

    class _Counted(ingest_mod.ProcessPoolExecutor):
        def __init__(self, *args, **kwargs) -> None:
            pools.append(kwargs.get("max_workers"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(ingest_mod, "ProcessPoolExecutor", _Counted)
    monkeypatch.setattr(ingest_mod, "POOL_MIN_SECONDS", 0.0)
    monkeypatch.setattr(ingest_mod, "POOL_PROBE_FILES", 3)
    pooled = ingest(mixed.spec, preprocess_cfg=mixed.cfg, cache=PreprocessCache(tmp_path / "c"), workers=2)
    assert pools == [2]
    pd.testing.assert_frame_equal(pooled.table.reset_index(drop=True), mixed.result.table.reset_index(drop=True))
    pd.testing.assert_frame_equal(pooled.exclusions.reset_index(drop=True),
                                  mixed.result.exclusions.reset_index(drop=True))


# --------------------------------------------------------------------------- a strict cohort


def _small_dicom_cohort(root: Path, *, on_label_issue: str, patients: int) -> Path:
    """``patients`` gray DICOMs (alternating classes, one per patient) plus a DICOMDIR, unlabelled."""
    d = root / "dicom"
    d.mkdir(parents=True)
    rng = np.random.default_rng(1)
    rows = ["file,label"]
    for k in range(patients):
        stored = np.rint(rng.random((32, 40)) * 4095).astype(np.uint16)
        corpus_mod.write_gray(d / f"im{k}.dcm", stored, bits_stored=12, PatientID=f"SMALL-{k}")
        rows.append(f"im{k}.dcm,{('normal', 'abnormal')[k % 2]}")
    corpus_mod.write_dicomdir(d / "DICOMDIR")
    (d / "labels.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    cohort = root / "cohort.yaml"
    cohort.write_text(
        "name: small\nclasses: [normal, abnormal]\nmodality: gray\npseudonym_salt: s\n"
        f"on_label_issue: {on_label_issue}\nsources:\n  - {{name: pacs, kind: dicom, root: dicom, labels: dicom/labels.csv}}\n",
        encoding="utf-8")
    return cohort


def test_unlabelled_dicomdir_does_not_stop_a_strict_cohort(tmp_path: Path, session_cache: Path) -> None:
    spec = load_cohort_spec(_small_dicom_cohort(tmp_path, on_label_issue="error", patients=2))
    cfg, cache = PreprocessConfig(image_px=PX), PreprocessCache(tmp_path / "cache")
    res = ingest(spec, preprocess_cfg=cfg, cache=cache, workers=1)
    assert len(res.table) == 2 and res.files_found == 3
    assert list(res.exclusions["reason"]) == ["not an image: DICOMDIR (Media Storage Directory Storage)"]
    # an unlabelled *image* is still a label problem that stops a strict cohort
    corpus_mod.write_gray(tmp_path / "dicom" / "stray.dcm", np.arange(64, dtype=np.uint16).reshape(8, 8))
    with pytest.raises(CohortError, match="file without a label: '…'") as err:
        ingest(spec, preprocess_cfg=cfg, cache=cache, workers=1)
    assert "stray" not in str(err.value)  # the console never gets file names...
    assert "file without a label: 'stray.dcm'" in err.value.private_detail  # ...private/ingest_error.txt does


# --------------------------------------------------------------------------- the check step


def test_reason_groups_merge_per_file_reasons() -> None:
    ex = pd.DataFrame({
        "path": ["/data/p/a.jpg", "/data/p/b.jpg", "/data/p/c.dcm", "/data/p/m.dcm#frame2"],
        "stage": ["label", "label", "ingest", "quality"],
        "reason": ["row 3: label row whose file is missing: 'a.jpg' was not found under /data/p; check",
                   "row 9: label row whose file is missing: 'b.jpg' was not found under /data/p; check",
                   "not an image: Comprehensive SR Storage (structured report)",
                   "quality score 0.12 < 0.5: too dark"],
    })
    groups = reason_groups(ex, hide="/data/p")
    assert [(g["stage"], g["reason"], g["count"], g["skipped"]) for g in groups] == [
        ("label", "label row whose file is missing", 2, False),
        ("ingest", "not an image", 1, True),
        ("quality", "quality score N < N", 1, False),
    ]
    assert [f["name"] for f in groups[0]["files"]] == ["a.jpg", "b.jpg"]
    assert groups[2]["files"][0]["name"] == "m.dcm#frame2"
    assert all("/data/p" not in f["reason"] for g in groups for f in g["files"])


@pytest.fixture(scope="module")
def checked(mixed: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    keras_before = "keras" in sys.modules
    cfg = load_config(cohort_defaults=mixed.spec.defaults)
    out = tmp_path_factory.mktemp("check-runs")
    page = check_cohort(mixed.spec, cfg, out_dir=out, run_name="check")
    return SimpleNamespace(page=page, run=page.parent, html=page.read_text(encoding="utf-8"),
                           private_html=(page.parent / "private" / "check.html").read_text(encoding="utf-8"),
                           keras_imported=not keras_before and "keras" in sys.modules)


def test_check_writes_the_run_directory_without_training(checked: SimpleNamespace, mixed: SimpleNamespace) -> None:
    names = {p.name for p in checked.run.iterdir()}
    assert {"check.html", "cohort.csv", "exclusions.csv", "split.csv", "audit.json", "config.yaml",
            "versions.json", "private"} <= names
    assert not {"model.keras", "metrics.json", "report.html"} & names and not checked.keras_imported
    cohort = pd.read_csv(checked.run / "cohort.csv")
    assert "patient_id" not in cohort and "path" not in cohort and len(cohort) == len(mixed.result.table)
    split = pd.read_csv(checked.run / "split.csv")
    assert split.groupby("patient_key")["split"].nunique().max() == 1  # patients never straddle splits
    assert set(split["split"]) == {"train", "val", "test"}
    assert len(pd.read_csv(checked.run / "exclusions.csv")) == len(mixed.result.exclusions)
    assert json.loads((checked.run / "audit.json").read_text())["summary"]["error"] == 0
    assert "step: check" in (checked.run / "config.yaml").read_text()


def test_check_page_counts_and_reasons(checked: SimpleNamespace, mixed: SimpleNamespace) -> None:
    page, res = checked.html, mixed.result
    n_skipped = sum(str(c).startswith("skipped") for c in mixed.cases["expected"])
    assert f'id="n-found">{res.files_found}<' in page and f'id="n-used">{res.files_used}<' in page
    assert f'id="n-skipped">{n_skipped}<' in page
    assert f'id="n-excluded">{res.files_excluded - n_skipped}<' in page
    # the data owner's copy names the files and gives the full reasons...
    private = checked.private_html
    base = str(Path(mixed.spec.base_dir).resolve())
    for reason in res.exclusions["reason"]:
        assert _esc(reason.replace(base, "…")) in private, reason
    for c in _cases(mixed, "excluded") + _cases(mixed, "skipped"):
        assert _esc(Path(c.file).name) in private, c.file
    # ...the shareable page gives the same counts, files by keyed id and reasons without names
    assert f'id="n-found">{res.files_found}<' in private and f'id="n-skipped">{n_skipped}<' in private
    shared = public_exclusions(res.exclusions)
    for fid, reason in zip(shared["file_id"], shared["reason"], strict=True):
        assert fid in page and _esc(reason) in page, reason


def test_check_page_escapes_file_names_and_hides_patient_ids(checked: SimpleNamespace, mixed: SimpleNamespace) -> None:
    page = checked.html
    assert "&lt;b onmouseover=alert(1)&gt;tronqué&amp;.jpg" in checked.private_html
    assert "<b onmouseover" not in page and "<b onmouseover" not in checked.private_html
    assert "œil_gauche_é.png" not in page  # used files are not listed, only exclusions
    raw_ids = set(mixed.result.patient_map["patient_id"])
    assert raw_ids and all(pid.startswith(("MRN", "PT", "PA")) for pid in raw_ids)
    for name in ("check.html", "cohort.csv", "split.csv", "audit.json", "exclusions.csv"):
        text = (checked.run / name).read_text(encoding="utf-8")
        leaked = [pid for pid in raw_ids if pid in text]
        assert not leaked, f"{name} shows raw patient IDs {leaked[:3]}"
    assert str(mixed.root) not in checked.private_html  # names, not paths
    excluded_names = {Path(p.split("#frame")[0]).name for p in mixed.result.exclusions["path"]}
    assert not [n for n in excluded_names if _esc(n) in page and len(n) > 8], "the shareable page names files"


def test_check_shows_an_impossible_split_then_raises(tmp_path: Path, session_cache: Path) -> None:
    spec = load_cohort_spec(_small_dicom_cohort(tmp_path, on_label_issue="exclude", patients=2))
    cfg = load_config(overrides={"preprocess.image_px": PX})
    with pytest.raises(SplitError, match="check page"):
        check_cohort(spec, cfg, out_dir=tmp_path / "runs", run_name="tiny")
    page = (tmp_path / "runs" / "tiny" / "check.html").read_text(encoding="utf-8")
    assert 'id="split-error"' in page and "fewer than" in page
    assert not (tmp_path / "runs" / "tiny" / "split.csv").exists()


def test_check_page_shows_exclusions_by_class(checked: SimpleNamespace, mixed: SimpleNamespace) -> None:
    """Issue 18: the per-class table is on the page; nothing in the corpus depends on the class."""
    page = checked.html
    assert 'id="exclusions-by-class"' in page and 'id="class-exclusion-warnings"' not in page
    # the eye-field exclusion: one abnormal item of the pattern source, 0 normal
    ex = mixed.result.exclusions
    assert ex.loc[ex["stage"] == "pattern", "label"].tolist() == ["abnormal"]
    assert "<td>pattern</td><td>eye &#39;…&#39; is not a laterality (pattern {patient}_{eye}.*)</td>" in page
    assert "Fisher exact p = 1" in page
