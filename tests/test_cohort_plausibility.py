"""Issue 18: cohort building without silent bias or silent error.

* exclusions counted per class, with a test of independence and a warning when they depend on the
  class (:mod:`medxcept.cohort.class_exclusions`), on hand-made logs and on a real ingestion whose quality
  gate removes one class;
* a file-name pattern whose eye field is not a laterality: a whole-run error naming the pattern and
  an example when most names fail;
* label tables: identical repeated rows are a warning (also under ``on_label_issue: error``),
  disagreeing rows stay an issue, a table/header disagreement stops a strict cohort without
  writing the patient identifier;
* the audit lists implausible patients (too many images, two classes).

The file-level cases (one odd eye, the DICOM cases, cross-folder rows, NFD names) are in the mixed
corpus (``tests/test_ingest_mixed.py``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import stats

from medxcept.cohort.class_exclusions import by_class_markdown, exclusions_by_class
from medxcept.cohort.ingest import ingest
from medxcept.cohort.table import load_cohort_spec
from medxcept.config import AuditConfig
from medxcept.errors import CohortError, ConfigError
from medxcept.images.cache import PreprocessCache
from medxcept.images.preprocess import PreprocessConfig
from medxcept.integrity.audit import audit_cohort, check_patient_plausibility
from medxcept.testing import corpus as corpus_mod

PX = 71
TEMPLATES = Path(__file__).resolve().parent.parent / "medxcept" / "report" / "templates"


def _log(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    return pd.DataFrame([{"path": f"/d/{i}.png", "stage": s, "reason": r, "label": lab}
                         for i, (s, r, lab) in enumerate(rows)], columns=["path", "stage", "reason", "label"])


# --------------------------------------------------------------------------- exclusions by class


def test_quality_gate_removing_one_class_is_flagged_with_fisher_p() -> None:
    """The issue's numbers: 97 of 430 cataract vs 3 of 2,479 others removed as blurred."""
    table = pd.DataFrame({"label": ["cataract"] * 333 + ["normal"] * 2476})
    ex = _log([("quality", f"quality score 0.{k % 9}1 < 0.5: blurred (sharpness {k})", "cataract")
               for k in range(97)] + [("quality", "quality score 0.3 < 0.5: too dark", "normal")] * 3)
    out = exclusions_by_class(table, ex, ["cataract", "normal"])
    assert out["totals"] == [430, 2479] and out["used"] == [333, 2476]
    (row,) = out["rows"]  # every quality reason is one category: "quality score N < N"
    assert (row["stage"], row["reason"], row["excluded"]) == ("quality", "quality score N < N", [97, 3])
    assert row["rates"] == pytest.approx([97 / 430, 3 / 2479])
    assert row["test"] == "Fisher exact"
    assert row["p"] == pytest.approx(stats.fisher_exact([[97, 3], [333, 2476]])[1], rel=1e-9)
    assert row["flag"] and row["p"] < 1e-30
    (warning,) = out["warnings"]
    assert warning.startswith("the quality gate removed 23 % of cataract (97 of 430) and 0.12 % of normal "
                              "(3 of 2479)")
    assert "results describe gradable images only; consider `quality_policy: flag`" in warning
    assert "**depends on the class**" in by_class_markdown(out)


def test_equal_rates_are_not_flagged_and_three_classes_use_chi_square() -> None:
    table = pd.DataFrame({"label": ["a"] * 90 + ["b"] * 90})
    ex = _log([("decode", "truncated JPEG file: cut", lab) for lab in ["a"] * 10 + ["b"] * 10])
    out = exclusions_by_class(table, ex, ["a", "b"])
    assert out["rows"][0]["p"] == pytest.approx(1.0) and not out["warnings"]

    table = pd.DataFrame({"label": ["a"] * 50 + ["b"] * 45 + ["c"] * 30})
    ex = _log([("label", "row 3: label row whose file is missing: 'x.png' was not found", lab)
               for lab in ["a"] * 0 + ["b"] * 5 + ["c"] * 20])
    out = exclusions_by_class(table, ex, ["a", "b", "c"])
    (row,) = out["rows"]
    assert row["test"] == "chi-square" and row["excluded"] == [0, 5, 20]
    expected = stats.chi2_contingency(np.array([[0, 5, 20], [50, 45, 30]]), correction=False)[1]
    assert row["p"] == pytest.approx(expected, rel=1e-9) and row["flag"]
    # totals are used + excluded: 50 per class; the rest is a + b
    assert out["warnings"][0].startswith("label-table problems removed 40 % of c (20 of 50) and 5 % of the rest "
                                         "(5 of 100)")


def test_bonferroni_and_minimum_count_and_unknown_rows() -> None:
    table = pd.DataFrame({"label": ["a"] * 20 + ["b"] * 20})
    # 2 of 22 vs 0 of 20: too few to flag; "not an image" and unknown labels are not counted
    ex = _log([("decode", "empty file (0 bytes)", "a")] * 2
              + [("ingest", "not an image: DICOMDIR (Media Storage Directory Storage)", "a"),
                 ("label", "row 5: file 'q.png' has label 'maybe', which is not one of the declared classes", ""),
                 ("label", "file without a label: 'z.png' is on disk", "")])
    out = exclusions_by_class(table, ex, ["a", "b"])
    assert [r["reason"] for r in out["rows"]] == ["empty file (N bytes)"]
    assert out["totals"] == [22, 20] and out["unknown"] == 2 and not out["warnings"]
    # 5 of 20 vs 0 of 20: p = 0.047 is flagged alone, not when a second reason is tested (0.05 / 2)
    table = pd.DataFrame({"label": ["a"] * 15 + ["b"] * 19})
    ex = _log([("decode", "empty file (0 bytes)", "a")] * 5)
    p = stats.fisher_exact([[5, 0], [15, 19]])[1]
    assert 0.025 < p < 0.05 and exclusions_by_class(table, ex, ["a", "b"])["rows"][0]["flag"]
    ex = _log([("decode", "empty file (0 bytes)", "a")] * 5 + [("decode", "truncated JPEG file", "b")])
    out = exclusions_by_class(table, ex, ["a", "b"])
    assert out["rows"][0]["p"] == pytest.approx(p) and not out["rows"][0]["flag"] and not out["warnings"]


def test_flag_policy_counts_the_kept_low_quality_images_per_class() -> None:
    table = pd.DataFrame({"label": ["a"] * 40 + ["b"] * 40,
                          "quality_flag": [True] * 12 + [False] * 28 + [False] * 40})
    out = exclusions_by_class(table, _log([]), ["a", "b"])
    (row,) = out["rows"]
    assert row["kept"] and row["excluded"] == [12, 0] and row["flag"]
    assert out["warnings"][0].startswith("the quality gate flagged (kept) 30 % of a (12 of 40) and 0 % of b")


def test_by_class_table_renders_escaped(tmp_path: Path) -> None:
    hostile = "<script>alert(1)</script>"
    table = pd.DataFrame({"label": [hostile] * 30 + ["ok"] * 30})
    ex = _log([("quality", "quality score 0.1 < 0.5: blurred", hostile)] * 9)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    html = env.get_template("by_class.html.j2").render(by_class=exclusions_by_class(table, ex, [hostile, "ok"]))
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert 'class="flagged"' in html and "9 (23 %)" in html and "depends on the class" in html


# --------------------------------------------------------------------------- real ingestion


def _folder_cohort(root: Path, names: dict[str, list[str]], *, pattern: str, images: dict[str, np.ndarray],
                   quality: str = "exclude") -> Path:
    for label, files in names.items():
        (root / "img" / label).mkdir(parents=True, exist_ok=True)
        for f in files:
            Image.fromarray(images[f]).save(root / "img" / label / f)
    (root / "c.yaml").write_text(
        f"name: folders\nclasses: [normal, cataract]\nmodality: fundus\npseudonym_salt: s\n"
        f"sources:\n  - {{name: s, kind: folders, root: img, filename_pattern: '{pattern}'}}\n"
        f"defaults:\n  preprocess: {{image_px: {PX}, quality_policy: {quality}}}\n", encoding="utf-8")
    return root / "c.yaml"


@pytest.fixture(scope="module")
def fundus_images() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(18)
    good = [corpus_mod._fundus(rng, 60, 76, signal=bool(k % 2)) for k in range(10)]
    blurred = np.full((60, 76, 3), 3, dtype=np.uint8)  # a black frame: the quality gate refuses it
    out = {f"N{k:02d}_{'LR'[k % 2]}.png": good[k] for k in range(8)}
    out.update({f"C{k:02d}_{'LR'[k % 2]}.png": (blurred if k < 5 else good[8 + k % 2]) for k in range(8)})
    return out


def test_ingestion_records_the_class_of_quality_exclusions_and_warns(tmp_path: Path, fundus_images,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    names = {"normal": [f for f in fundus_images if f.startswith("N")],
             "cataract": [f for f in fundus_images if f.startswith("C")]}
    spec = load_cohort_spec(_folder_cohort(tmp_path, names, pattern="{patient}_{eye}.*", images=fundus_images))
    cfg = PreprocessConfig(image_px=PX)
    res = ingest(spec, preprocess_cfg=cfg, cache=PreprocessCache(tmp_path / "cache"), workers=1)
    quality = res.exclusions[res.exclusions["stage"] == "quality"]
    assert sorted(Path(p).name for p in quality["path"]) == [f"C{k:02d}_{'LR'[k % 2]}.png" for k in range(5)]
    assert set(quality["label"]) == {"cataract"}
    with caplog.at_level(logging.WARNING, logger="medxcept.cohort.class_exclusions"):
        out = exclusions_by_class(res.table, res.exclusions, list(spec.classes))
    (row,) = out["rows"]
    assert row["excluded"] == [0, 5] and row["p"] == pytest.approx(stats.fisher_exact([[0, 5], [8, 3]])[1])
    assert out["warnings"] and "removed 62 % of cataract (5 of 8) and 0 % of normal (0 of 8)" in out["warnings"][0]
    assert "consider `quality_policy: flag`" in caplog.text
    # the same cohort under quality_policy: flag keeps the 5 images and says where the flags are
    flagged = ingest(spec, preprocess_cfg=PreprocessConfig(image_px=PX, quality_policy="flag"),
                     cache=PreprocessCache(tmp_path / "cache"), workers=1)
    assert len(flagged.table) == 16 and flagged.exclusions.empty
    out = exclusions_by_class(flagged.table, flagged.exclusions, list(spec.classes))
    assert out["rows"][0]["kept"] and out["rows"][0]["excluded"] == [0, 5]


def test_pattern_that_does_not_describe_the_names_stops_the_run(tmp_path: Path, fundus_images) -> None:
    """``{patient}_{eye}.*`` on ``Glaucoma_005.png``: patient 'Glaucoma', eye '005' for every file."""
    img = next(iter(fundus_images.values()))
    names = {"normal": [f"Normal_{k:03d}.png" for k in range(6)], "cataract": [f"Cataract_{k:03d}.png" for k in range(6)]}
    spec = load_cohort_spec(_folder_cohort(tmp_path, names, pattern="{patient}_{eye}.*",
                                           images={f: img for fs in names.values() for f in fs}))
    with pytest.raises(CohortError) as err:
        ingest(spec, preprocess_cfg=PreprocessConfig(image_px=PX), cache=PreprocessCache(tmp_path / "c"), workers=1)
    msg = str(err.value)
    assert "12 of 12 file names give an eye that is not a laterality" in msg
    assert "filename_pattern '{patient}_{eye}.*'" in msg and "'Cataract_000.png' -> eye '000'" in msg
    assert "one_patient_per_file: true" in msg and "2 distinct value(s) for 12 files" in msg
    # "both eyes" / "unknown" values are a laterality NA, not a wrong pattern
    from medxcept.cohort.ingest import _eye_problem

    assert _eye_problem({"patient": "P1", "eye": "OU"}, "{patient}_{eye}.*") is None
    assert _eye_problem({"patient": "P1", "eye": "od"}, "{patient}_{eye}.*") is None
    assert "eye of 12 characters" in _eye_problem({"patient": "x", "eye": "SUBJECT00123"}, "{patient}_{eye}.*")
    # names written the other way round: the swapped pattern is suggested
    (tmp_path / "swapped").mkdir()
    names = {"normal": [f"{e}_P{k:02d}.png" for k in range(4) for e in "LR"],
             "cataract": [f"{e}_Q{k:02d}.png" for k in range(4) for e in "LR"]}
    spec = load_cohort_spec(_folder_cohort(tmp_path / "swapped", names, pattern="{patient}_{eye}.*",
                                           images={f: img for fs in names.values() for f in fs}))
    with pytest.raises(CohortError, match=r"filename_pattern: '\{eye\}_\{patient\}\.\*' \(fields swapped\) fits 16"):
        ingest(spec, preprocess_cfg=PreprocessConfig(image_px=PX), cache=PreprocessCache(tmp_path / "c"), workers=1)


def _dicom_table_cohort(root: Path, rows: list[str], on_label_issue: str) -> Path:
    d = root / "dicom"
    d.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    for k in range(4):
        corpus_mod.write_gray(d / f"im{k}.dcm", np.rint(rng.random((24, 28)) * 4095).astype(np.uint16),
                              bits_stored=12, PatientID=f"HDR-{k}", ImageLaterality="L")
    (d / "labels.csv").write_text("file,label,patient,eye\n" + "\n".join(rows) + "\n", encoding="utf-8")
    (root / "c.yaml").write_text(
        "name: tbl\nclasses: [normal, abnormal]\nmodality: gray\npseudonym_salt: s\n"
        f"on_label_issue: {on_label_issue}\nsources:\n  - {{name: p, kind: dicom, root: dicom, "
        "labels: dicom/labels.csv, patient_column: patient, laterality_column: eye}\n", encoding="utf-8")
    return root / "c.yaml"


GOOD_ROWS = ["im0.dcm,normal,HDR-0,L", "im1.dcm,abnormal,HDR-1,", "im2.dcm,normal,,L", "im3.dcm,abnormal,,"]


def test_identical_repeated_rows_warn_even_under_on_label_issue_error(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    spec = load_cohort_spec(_dicom_table_cohort(tmp_path, GOOD_ROWS + [GOOD_ROWS[1]], "error"))
    with caplog.at_level(logging.WARNING, logger="medxcept.cohort.ingest"):
        res = ingest(spec, preprocess_cfg=PreprocessConfig(image_px=PX), cache=PreprocessCache(tmp_path / "c"),
                     workers=1)
    assert len(res.table) == 4 and res.exclusions.empty
    assert "row 6: file '…' is listed again (same values as row 3)" in caplog.text
    assert "im1.dcm" not in caplog.text  # logs never name files (issue 14)
    # the table's laterality wins when it agrees; an empty cell leaves the header's
    assert set(res.table["laterality"]) == {"L"}
    # a conflicting repeat stays an issue
    (tmp_path / "dicom" / "labels.csv").write_text(
        "file,label,patient,eye\n" + "\n".join(GOOD_ROWS + ["im1.dcm,normal,HDR-1,"]) + "\n", encoding="utf-8")
    with pytest.raises(CohortError, match="rows 3, 6: file '…' is listed with different labels") as err:
        ingest(spec, preprocess_cfg=PreprocessConfig(image_px=PX), cache=PreprocessCache(tmp_path / "c"), workers=1)
    assert "rows 3, 6: file 'im1.dcm' is listed with different labels" in err.value.private_detail


def test_table_header_disagreement_stops_a_strict_cohort_without_the_ids(tmp_path: Path) -> None:
    rows = ["im0.dcm,normal,SOMEONE-ELSE,L", "im1.dcm,abnormal,HDR-1,R", "im2.dcm,normal,,", "im3.dcm,abnormal,,"]
    spec = load_cohort_spec(_dicom_table_cohort(tmp_path, rows, "error"))
    with pytest.raises(CohortError) as err:
        ingest(spec, preprocess_cfg=PreprocessConfig(image_px=PX), cache=PreprocessCache(tmp_path / "c"), workers=1)
    msg = str(err.value)
    assert "2 label-table row(s) disagree with the DICOM header" in msg
    assert "row 2: PatientID differs from the header (label-table column 'patient' vs DICOM PatientID" in msg
    assert "row 3: laterality differs from the header (label-table column 'eye' says R, DICOM (Image) " \
           "Laterality says L)" in msg
    assert "SOMEONE-ELSE" not in msg and "HDR-" not in msg


# --------------------------------------------------------------------------- audit: plausible patients


def test_audit_lists_implausible_patients() -> None:
    rows = [("Glaucoma", "NA", "v", "abnormal")] * 25  # a "patient" made of a class name
    rows += [("P1", "L", "v1", "normal"), ("P1", "R", "v1", "abnormal")]  # discordant eyes: plausible
    rows += [("P2", "L", "v1", "normal"), ("P2", "L", "v1", "abnormal")]  # one eye, one visit, two classes
    rows += [("P3", "R", "v1", "normal")] * 3
    df = pd.DataFrame(rows, columns=["patient_key", "laterality", "study_id", "label"])
    df["image_id"] = [f"I{k}" for k in range(len(df))]
    found = {(f.kind, f.severity): f for f in check_patient_plausibility(df, max_images_per_patient=20)}
    many = found[("patient_many_images", "warning")]
    assert many.count == 1 and many.details == [{"patient_key": "Glaucoma", "n_images": 25}]
    assert [d["patient_key"] for d in found[("patient_mixed_classes", "warning")].details] == ["P2"]
    assert found[("patient_mixed_classes", "info")].details == [{"patient_key": "P1"}]
    assert not check_patient_plausibility(df, max_images_per_patient=25)[0].kind == "patient_many_images"
    # wired into the audit with the configured threshold
    report = audit_cohort(df, policy="warn", max_images_per_patient=30)
    assert not report.by_kind("patient_many_images") and report.by_kind("patient_mixed_classes")
    assert audit_cohort(df, policy="warn").by_kind("patient_many_images")[0].count == 1
    assert AuditConfig().max_images_per_patient == 20
    with pytest.raises(ConfigError, match="max_images_per_patient"):
        AuditConfig(max_images_per_patient=0)


def test_check_page_names_the_class_dependent_exclusion_in_its_summary(tmp_path: Path, fundus_images) -> None:
    from medxcept.config import load_config
    from medxcept.errors import SplitError
    from medxcept.workflows.check import check_cohort

    names = {"normal": [f for f in fundus_images if f.startswith("N")],
             "cataract": [f for f in fundus_images if f.startswith("C")]}
    spec = load_cohort_spec(_folder_cohort(tmp_path, names, pattern="{patient}_{eye}.*", images=fundus_images))
    cfg = load_config(cohort_defaults=spec.defaults, overrides={"audit.on_leak": "warn"})
    try:
        check_cohort(spec, cfg, out_dir=tmp_path / "runs", run_name="bias")
    except SplitError:  # 11 patients may be too few to split; the page is written first
        pass
    page = (tmp_path / "runs" / "bias" / "check.html").read_text(encoding="utf-8")
    banner = page.split('id="class-exclusion-warnings"', 1)[1].split("</div>", 1)[0]
    assert "the quality gate removed 62 % of cataract (5 of 8) and 0 % of normal (0 of 8)" in banner
    assert "consider `quality_policy: flag`" in banner
    assert page.index('id="class-exclusion-warnings"') < page.index('id="exclusions"')  # in the summary
    assert 'class="flagged"' in page
    ex = pd.read_csv(tmp_path / "runs" / "bias" / "exclusions.csv", keep_default_na=False)
    assert set(ex.loc[ex["stage"] == "quality", "label"]) == {"cataract"}
