"""Tests for medxcept.io.labels: real tables written to tmp_path, issues asserted with row numbers."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from medxcept.errors import CohortError, ConfigError
from medxcept.io.labels import (
    ISSUE_KINDS,
    LabelIssue,
    labels_from_folders,
    match_files,
    normalize_laterality,
    parse_filename,
    read_label_table,
)

CLASSES = ["non-referable", "referable"]


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def by_kind(issues: list[LabelIssue], kind: str) -> list[LabelIssue]:
    assert kind in ISSUE_KINDS
    return [i for i in issues if i.kind == kind]


def touch(root: Path, *rels: str) -> list[Path]:
    out = []
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
        out.append(p)
    return out


# ----------------------------------------------------------------------------- read_label_table


def test_clean_csv_columns_and_row_numbers(tmp_path):
    p = write(tmp_path / "labels.csv", "image,grade,pid,eye\na.jpg,referable,p1,OD\nb.jpg,non-referable,p2,left\n")
    df, issues = read_label_table(p, file_column="image", label_column="grade", classes=CLASSES,
                                  patient_column="pid", laterality_column="eye")
    assert issues == []
    assert list(df.columns) == ["row", "file", "label", "patient", "laterality"]
    assert df.to_dict("records") == [
        {"row": 2, "file": "a.jpg", "label": "referable", "patient": "p1", "laterality": "R"},
        {"row": 3, "file": "b.jpg", "label": "non-referable", "patient": "p2", "laterality": "L"},
    ]
    assert df["row"].dtype.kind == "i"


def test_bom_semicolon_file(tmp_path):
    text = "file;label;camera\r\nx1.png;Referable;Topcon\r\nx2.png;NON-REFERABLE;Canon\r\n"
    p = write(tmp_path / "excel_export.csv", "\ufeff" + text)
    assert p.read_bytes()[:3] == b"\xef\xbb\xbf"
    df, issues = read_label_table(p, file_column="file", label_column="label", classes=CLASSES,
                                  extra_columns={"camera": "source"})
    assert issues == []
    assert list(df.columns) == ["row", "file", "label", "source"]  # 'file' found despite the BOM
    assert df["label"].tolist() == ["referable", "non-referable"]
    assert df["source"].tolist() == ["Topcon", "Canon"]


def test_tsv(tmp_path):
    p = write(tmp_path / "labels.tsv", "file\tlabel\tnote\nimg 1.jpg\treferable\thas, comma\nimg2.jpg\tnon-referable\t\n")
    df, issues = read_label_table(p, file_column="file", label_column="label", classes=CLASSES)
    assert issues == [] and df["file"].tolist() == ["img 1.jpg", "img2.jpg"]


def test_tab_separated_with_csv_extension_is_sniffed(tmp_path):
    p = write(tmp_path / "t.csv", "file\tlabel\na.jpg\treferable\n")
    df, _ = read_label_table(p, file_column="file", label_column="label", classes=CLASSES)
    assert df["label"].tolist() == ["referable"]


def test_label_trimmed_and_case_normalised_to_declared_spelling(tmp_path):
    p = write(tmp_path / "l.csv", 'file,label\na.jpg," Referable "\nb.jpg,REFERABLE\n')
    df, issues = read_label_table(p, file_column="file", label_column="label", classes=["Non-Referable", "referable"])
    assert issues == [] and df["label"].tolist() == ["referable", "referable"]


def test_issue_kinds_with_row_numbers(tmp_path):
    text = (
        "file,label\n"          # row 1
        "a.jpg,referable\n"     # 2 ok
        "b.jpg,maybe\n"         # 3 unknown label
        "c.jpg,\n"              # 4 empty label
        ",referable\n"          # 5 no file name
        "\n"                    # 6 blank line: skipped, still counted
        "d.jpg,referable\n"     # 7 ok, then conflicting
        "a.jpg,referable\n"     # 8 identical duplicate of row 2
        "d.jpg,non-referable\n" # 9 conflict with row 7
        "e.jpg,non-referable\n" # 10 ok
    )
    p = write(tmp_path / "l.csv", text)
    df, issues = read_label_table(p, file_column="file", label_column="label", classes=CLASSES)
    assert df[["row", "file"]].values.tolist() == [[2, "a.jpg"], [10, "e.jpg"]]
    assert [(i.row, i.file, i.kind) for i in issues] == [
        (3, "b.jpg", "unknown_label"),
        (4, "c.jpg", "empty_label"),
        (5, "", "no_file_name"),
        (7, "d.jpg", "conflict"),
        (8, "a.jpg", "duplicate"),
    ]
    unknown = by_kind(issues, "unknown_label")[0].message
    assert "row 3" in unknown and "b.jpg" in unknown and "'maybe'" in unknown
    assert "'non-referable'" in unknown and "'referable'" in unknown  # lists the declared classes
    conflict = by_kind(issues, "conflict")[0].message
    assert "rows 7, 9" in conflict and "d.jpg" in conflict and "Keep one" in conflict
    dup = by_kind(issues, "duplicate")[0].message
    assert "row 8" in dup and "row 2" in dup and "a.jpg" in dup
    assert "row 4" in by_kind(issues, "empty_label")[0].message
    assert "row 5" in by_kind(issues, "no_file_name")[0].message


def test_conflict_on_patient_does_not_reveal_patient_id(tmp_path):
    p = write(tmp_path / "l.csv", "file,label,pid\na.jpg,referable,MRN123456\na.jpg,referable,MRN999999\n")
    df, issues = read_label_table(p, file_column="file", label_column="label", classes=CLASSES,
                                  patient_column="pid")
    assert df.empty and [i.kind for i in issues] == ["conflict"]
    assert "patient" in issues[0].message and "MRN" not in issues[0].message


def test_script_file_name_passes_through_untouched(tmp_path):
    name = "<script>alert('x')</script>.jpg"
    p = write(tmp_path / "l.csv", f'file,label\n"{name}",referable\n"<b>x.jpg",bogus\n')
    df, issues = read_label_table(p, file_column="file", label_column="label", classes=CLASSES)
    assert df["file"].tolist() == [name]
    assert issues[0].file == "<b>x.jpg" and "<b>x.jpg" in issues[0].message


def test_values_kept_as_text(tmp_path):
    p = write(tmp_path / "l.csv", "file,label,pid,age\n007.jpg,referable,0042,61\n")
    df, _ = read_label_table(p, file_column="file", label_column="label", classes=CLASSES,
                             patient_column="pid", extra_columns={"age": "age"})
    assert df.loc[0, "file"] == "007.jpg" and df.loc[0, "patient"] == "0042" and df.loc[0, "age"] == "61"


def test_column_names_trimmed_and_case_insensitive(tmp_path):
    p = write(tmp_path / "l.csv", " File , Label \na.jpg,referable\n")
    df, _ = read_label_table(p, file_column="file", label_column="label", classes=CLASSES)
    assert df["file"].tolist() == ["a.jpg"]


def test_windows_1252_accepted_with_warning(tmp_path, caplog):
    p = write(tmp_path / "l.csv", "file;label\nœil_é.jpg;referable\n", encoding="cp1252")
    with caplog.at_level(logging.WARNING, logger="medxcept.io.labels"):
        df, _ = read_label_table(p, file_column="file", label_column="label", classes=CLASSES)
    assert df["file"].tolist() == ["œil_é.jpg"] and "Windows-1252" in caplog.text


def test_missing_column_names_header(tmp_path):
    p = write(tmp_path / "l.csv", "image,grade\na.jpg,referable\n")
    with pytest.raises(CohortError, match=r"no column 'file'.*\['image', 'grade'\]"):
        read_label_table(p, file_column="file", label_column="grade", classes=CLASSES)


def test_xlsx_without_openpyxl_says_export_csv(tmp_path):
    try:
        import openpyxl  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("openpyxl is installed")
    p = tmp_path / "l.xlsx"
    p.write_bytes(b"PK\x03\x04")
    with pytest.raises(CohortError, match="openpyxl.*CSV"):
        read_label_table(p, file_column="file", label_column="label", classes=CLASSES)


def test_unreadable_tables(tmp_path):
    with pytest.raises(CohortError, match="not found"):
        read_label_table(tmp_path / "none.csv", file_column="f", label_column="l", classes=CLASSES)
    write(tmp_path / "empty.csv", "  \n")
    with pytest.raises(CohortError, match="empty"):
        read_label_table(tmp_path / "empty.csv", file_column="f", label_column="l", classes=CLASSES)
    (tmp_path / "bin.csv").write_bytes(b"\x89PNG\x00\x00\x00")
    with pytest.raises(CohortError, match="binary"):
        read_label_table(tmp_path / "bin.csv", file_column="f", label_column="l", classes=CLASSES)


def test_bad_arguments(tmp_path):
    p = write(tmp_path / "l.csv", "file,label\na.jpg,referable\n")
    with pytest.raises(ConfigError, match="differ only in case"):
        read_label_table(p, file_column="file", label_column="label", classes=["Ref", "ref "])
    with pytest.raises(ConfigError, match="non-empty"):
        read_label_table(p, file_column="file", label_column="label", classes=[])
    with pytest.raises(ConfigError, match="more than one role"):
        read_label_table(p, file_column="file", label_column="file", classes=CLASSES)
    with pytest.raises(ConfigError, match="already uses"):
        read_label_table(p, file_column="file", label_column="label", classes=CLASSES,
                         extra_columns={"x": "label"})


# ----------------------------------------------------------------------------- match_files


def test_match_files_by_path_name_case_and_stem(tmp_path):
    root = tmp_path / "imgs"
    files = touch(root, "site1/a.jpg", "site2/B.JPG", "c.png", "IDRiD_01.jpg", "extra.jpg",
                  "dup/x.jpg", "dup2/x.jpg")
    table = pd.DataFrame({
        "row": [2, 3, 4, 5, 6, 7, 8],
        "file": ["site1/a.jpg", "b.jpg", ".\\c.png", "IDRiD_01", "gone.jpg", "x.jpg", "site1\\A.jpg"],
        "label": ["referable"] * 7,
    })
    matched, issues = match_files(table, root, files)
    assert dict(zip(matched["row"], matched["path"], strict=False)) == {
        2: str(root / "site1/a.jpg"),     # relative path
        3: str(root / "site2/B.JPG"),     # bare name, unique case-insensitive
        4: str(root / "c.png"),           # backslashes and ./ tolerated
        5: str(root / "IDRiD_01.jpg"),    # stem (no extension in the table)
    }
    got = {(i.kind, i.row, i.file) for i in issues}
    assert ("missing_file", 6, "gone.jpg") in got
    assert ("ambiguous_file", 7, "x.jpg") in got
    assert ("duplicate", 8, "site1\\A.jpg") in got  # same file as row 2, same label
    unlabelled = sorted(i.file for i in by_kind(issues, "unlabelled_file"))
    assert unlabelled == ["dup/x.jpg", "dup2/x.jpg", "extra.jpg"]
    assert all(i.row is None for i in by_kind(issues, "unlabelled_file"))
    missing = by_kind(issues, "missing_file")[0].message
    assert "row 6" in missing and "gone.jpg" in missing and "label row whose file is missing" in missing
    assert "file without a label" in by_kind(issues, "unlabelled_file")[0].message


def test_match_files_case_sensitive_wins(tmp_path):
    root = tmp_path
    files = touch(root, "Eye.jpg", "eye.jpg") if _case_sensitive_fs(tmp_path) else None
    if files is None:
        pytest.skip("case-insensitive file system")
    table = pd.DataFrame({"row": [2, 3], "file": ["eye.jpg", "EYE.JPG"], "label": ["referable", "referable"]})
    matched, issues = match_files(table, root, [Path("Eye.jpg"), Path("eye.jpg")])  # relative paths accepted
    assert matched["path"].tolist() == [str(root / "eye.jpg")]
    assert [(i.kind, i.row) for i in issues] == [("ambiguous_file", 3), ("unlabelled_file", None)]


def _case_sensitive_fs(d: Path) -> bool:
    (d / "probe_A").write_bytes(b"")
    return not (d / "probe_a").exists()


def test_match_files_conflict_on_same_file_drops_both(tmp_path):
    files = touch(tmp_path, "a.jpg")
    table = pd.DataFrame({"row": [2, 3], "file": ["a.jpg", "./a.jpg"], "label": ["referable", "non-referable"]})
    matched, issues = match_files(table, tmp_path, files)
    assert matched.empty and list(matched.columns) == ["row", "file", "label", "path"]
    assert [(i.kind, i.row) for i in issues] == [("conflict", 3)]


def test_bare_name_fallback_never_crosses_a_patient_folder(tmp_path):
    """Issue 18: 'P001/left.jpg' must not find 'P002/left.jpg' (a folder may be the patient)."""
    root = tmp_path / "imgs"
    files = touch(root, "P002/left.jpg", "P003/right.jpg", "P004/a/b.jpg")
    table = pd.DataFrame({
        "row": [2, 3, 4, 5],
        "file": ["P001/left.jpg", "export/P003/right.jpg", "C:\\export\\P004\\a\\b.jpg", "P004/b.jpg"],
        "label": ["referable", "non-referable", "referable", "referable"],
    })
    matched, issues = match_files(table, root, files)
    # a prefix the image root lacks is fine when the folders that remain agree ('C:/export/' dropped);
    # 'C:/export/a/b.jpg' would not match P004/a/b.jpg: 'export' stands where the file has 'P004'
    assert dict(zip(matched["row"], matched["path"], strict=False)) == {
        3: str(root / "P003/right.jpg"), 4: str(root / "P004/a/b.jpg")}
    got = {(i.kind, i.row): i for i in issues}
    crossed = got[("folder_mismatch", 2)]
    assert crossed.file == "P001/left.jpg" and crossed.label == "referable"
    assert "row 2: file 'P001/left.jpg' was not found; a file of that name is in another folder (P002/left.jpg)" \
        in crossed.message
    assert ("folder_mismatch", 5) in got  # P004/b.jpg vs P004/a/b.jpg: folder 'a' is not 'P004'
    assert [i.file for i in by_kind(issues, "unlabelled_file")] == ["P002/left.jpg"]


def test_nfd_and_nfc_names_match(tmp_path):
    import unicodedata

    nfc, nfd = (unicodedata.normalize(f, "rétine_é.jpg") for f in ("NFC", "NFD"))
    assert nfc != nfd
    root = tmp_path / "imgs"
    files = touch(root, nfc, unicodedata.normalize("NFD", "Société/œil.jpg"))
    p = write(tmp_path / "l.csv", f"file,label\n{nfd},referable\n{unicodedata.normalize('NFC', 'Société/œil.jpg')},"
                                  f"referable\n{nfc},referable\n")
    table, issues = read_label_table(p, file_column="file", label_column="label", classes=CLASSES)
    # the NFD and NFC rows name the same file: an identical repeat
    assert [(i.kind, i.row) for i in issues] == [("duplicate", 4)] and len(table) == 2
    matched, more = match_files(table, root, files)
    assert len(matched) == 2 and more == []


def test_match_files_same_file_with_another_patient_is_a_conflict(tmp_path):
    files = touch(tmp_path, "a.jpg")
    table = pd.DataFrame({"row": [2, 3], "file": ["a.jpg", "./a.jpg"], "label": ["referable"] * 2,
                          "patient": ["p1", "p2"]})
    matched, issues = match_files(table, tmp_path, files)
    assert matched.empty and [(i.kind, i.row) for i in issues] == [("conflict", 3)]
    same = table.assign(patient="p1")
    matched, issues = match_files(same, tmp_path, files)
    assert len(matched) == 1 and [(i.kind, i.row, i.label) for i in issues] == [("duplicate", 3, "referable")]


def test_end_to_end_table_then_match(tmp_path):
    root = tmp_path / "photos"
    files = touch(root, "p1_L.jpg", "p1_R.jpg", "p2_L.jpg")
    p = write(tmp_path / "l.csv", "\ufefffile;label\np1_L.jpg;referable\np1_R.jpg; Non-Referable\nzz.jpg;referable\n")
    table, issues = read_label_table(p, file_column="file", label_column="label", classes=CLASSES)
    matched, more = match_files(table, root, files)
    assert issues == []
    assert matched[["row", "label"]].values.tolist() == [[2, "referable"], [3, "non-referable"]]
    assert [(i.kind, i.row, i.file) for i in more] == [("missing_file", 4, "zz.jpg"), ("unlabelled_file", None, "p2_L.jpg")]


# ----------------------------------------------------------------------------- folders


def test_labels_from_folders(tmp_path, caplog):
    touch(tmp_path, "Referable/a.jpg", "referable/deep/b.jpg", "NON-REFERABLE/c.png", "other/d.jpg",
          "loose.jpg", "Referable/.DS_Store", "Referable/Thumbs.db")
    with caplog.at_level(logging.WARNING, logger="medxcept.io.labels"):
        df = labels_from_folders(tmp_path, CLASSES)
    assert list(df.columns) == ["file", "label", "path"]
    rows = dict(zip(df["file"], df["label"], strict=False))
    expected = {"Referable/a.jpg": "referable", "NON-REFERABLE/c.png": "non-referable"}
    if _case_sensitive_fs(tmp_path):
        expected["referable/deep/b.jpg"] = "referable"
    assert rows == expected
    kinds = sorted((i.kind, i.file) for i in df.attrs["issues"])
    assert kinds == [("unknown_folder", "other"), ("unlabelled_file", "loose.jpg")]
    # the log counts them (names can identify patients: they are in the issues, i.e. the private exclusion log)
    assert "2 file(s) or folder(s) lie outside the class folders" in caplog.text
    assert "other" not in caplog.text and "loose" not in caplog.text
    with pytest.raises(CohortError, match="not found"):
        labels_from_folders(tmp_path / "nope", CLASSES)


# ----------------------------------------------------------------------------- small parsers


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("{patient}_{eye}.jpg", "1024_left.jpg", {"patient": "1024", "eye": "left"}),
        ("{patient}_{eye}.jpg", "1024_left.png", None),
        ("{patient}_{eye}.jpg", "some/dir/77_OD.jpg", {"patient": "77", "eye": "OD"}),
        ("{patient}-{visit}_{eye}.*", "P7-v2_OD.jpeg", {"patient": "P7", "visit": "v2", "eye": "OD"}),
        ("{patient}-{visit}_{eye}.*", "P7-v2_OD.tar.gz", {"patient": "P7", "visit": "v2", "eye": "OD"}),
        ("{patient}_{eye}.jpg", "sub_001_left.jpg", None),  # field may not contain its separator
        (r"{patient:[a-z]+_\d+}_{eye}.jpg", "sub_001_left.jpg", {"patient": "sub_001", "eye": "left"}),
        (r"IM{patient:\d{4}}{eye}.png", "IM0042R.png", {"patient": "0042", "eye": "R"}),
        ("{site}/{patient}.png", "kenya/123.png", {"site": "kenya", "patient": "123"}),
        ("{site}/{patient}.png", "kenya\\123.png", {"site": "kenya", "patient": "123"}),
        ("img_{id}.png", "img_.png", None),  # a field is never empty
        ("{patient}_{eye}.png", "1.2.840_R.png", None),  # "." is a separator here
        ("{patient:[0-9.]+}_{eye}.png", "1.2.840_R.png", {"patient": "1.2.840", "eye": "R"}),
        ("{patient}", "<script>.jpg", {"patient": "<script>.jpg"}),
    ],
)
def test_parse_filename(pattern, name, expected):
    assert parse_filename(pattern, name) == expected


@pytest.mark.parametrize("bad", ["no_fields.jpg", "{a}_{a}.jpg", "{patient_{eye}.jpg", "{p}}.jpg"])
def test_parse_filename_bad_patterns(bad):
    with pytest.raises(ConfigError, match="pattern"):
        parse_filename(bad, "x.jpg")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("L", "L"), ("left", "L"), ("OS", "L"), ("l ", "L"), ("Left Eye", "L"), ("LE", "L"),
     ("R", "R"), ("right", "R"), ("OD", "R"), (" od", "R"), ("RE", "R"),
     ("OU", "NA"), ("both", "NA"), ("", "NA"), (None, "NA"), (float("nan"), "NA"), (1, "NA"), ("U", "NA")],
)
def test_normalize_laterality(value, expected):
    assert normalize_laterality(value) == expected


def test_label_issue_is_frozen():
    issue = LabelIssue(2, "a.jpg", "duplicate", "m")
    with pytest.raises(AttributeError):
        issue.row = 3  # type: ignore[misc]
