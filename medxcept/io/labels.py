"""Read label tables and folder-per-class layouts; match labels to files on disk.

Clinical label files are spreadsheets exported by hand: comma, semicolon (European
Excel) or tab separated, often with a UTF-8 byte-order mark, labels typed as
``" Referable "``, the same image listed twice. This module turns such a table
into a clean frame plus a list of :class:`LabelIssue` records, one per problem,
each naming the spreadsheet row and the file and saying what to do. Rows with a
problem are left out of the frame; nothing is silently guessed.

Row numbers are those a spreadsheet shows: the header is row 1, the first data
row is row 2 (blank lines count, as they do in a spreadsheet).

Issue kinds (``LabelIssue.kind``)
---------------------------------
``no_file_name``     the file column is empty on that row
``empty_label``      the label column is empty
``unknown_label``    the label is not one of the declared classes
``duplicate``        the file is listed again with the same values (later rows dropped)
``conflict``         the file is listed again with a different label (or patient,
                     laterality, extra value); all its rows are dropped
``missing_file``     a label row whose file was not found on disk (:func:`match_files`)
``ambiguous_file``   a bare file name that matches several files on disk
``folder_mismatch``  the row's path is not on disk and the only file of that name sits in
                     another folder (``P001/left.jpg`` vs ``P002/left.jpg``): a folder can
                     name a patient, so the row is not matched (:func:`match_files`)
``unlabelled_file``  a file on disk that no label row names (``row`` is None)
``unknown_folder``   a folder that is not a declared class (:func:`labels_from_folders`)

File names are passed through exactly as written (only surrounding whitespace is
removed); escaping them for HTML is the report's job. Patient identifiers never
appear in messages.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from medxcept.errors import CohortError, ConfigError

__all__ = [
    "LabelIssue",
    "ISSUE_KINDS",
    "read_label_table",
    "match_files",
    "labels_from_folders",
    "parse_filename",
    "normalize_laterality",
]

logger = logging.getLogger(__name__)

ISSUE_KINDS: tuple[str, ...] = (
    "no_file_name",
    "empty_label",
    "unknown_label",
    "duplicate",
    "conflict",
    "missing_file",
    "ambiguous_file",
    "folder_mismatch",
    "unlabelled_file",
    "unknown_folder",
)

_DELIMITERS = (",", ";", "\t", "|")
_SNIFF_BYTES = 64 * 1024
_RESERVED = ("row", "file", "label", "patient", "laterality", "path")
_JUNK_FILES = frozenset({"thumbs.db", "desktop.ini"})


@dataclass(frozen=True)
class LabelIssue:
    """One problem found in a label table or a labelled folder.

    Parameters
    ----------
    row : int or None
        Spreadsheet row number (header = 1); None when the issue is not about a row
        (a file on disk without a label, an unknown folder).
    file : str
        The file name as written in the table, or the path relative to the image root.
    kind : str
        One of :data:`ISSUE_KINDS`.
    message : str
        Plain-words description naming the row and the file and saying what to do.
    label : str, default ""
        The row's (declared) class when it is known (a row whose file is missing, an
        ambiguous or mismatched name), so exclusions can be counted per class; "" otherwise.
    """

    row: int | None
    file: str
    kind: str
    message: str
    label: str = ""


# --------------------------------------------------------------------------- small parsers

_LEFT = frozenset({"l", "left", "os", "lt", "le", "left eye", "oculus sinister", "sinister"})
_RIGHT = frozenset({"r", "right", "od", "rt", "re", "right eye", "oculus dexter", "dexter"})


def normalize_laterality(value: object) -> str:
    """Map a free-text eye/side value to ``"L"``, ``"R"`` or ``"NA"``.

    Accepts ``L``/``left``/``OS`` (oculus sinister)/``LE`` and ``R``/``right``/``OD``
    (oculus dexter)/``RE`` in any case with surrounding spaces. Anything else (empty,
    missing, ``"both"``, ``"OU"``, DICOM ``"B"``/``"U"``, numbers) is ``"NA"``.

    Examples
    --------
    >>> [normalize_laterality(v) for v in ["L", " left", "OS", "l ", "R", "Right", "od", "OU", None]]
    ['L', 'L', 'L', 'L', 'R', 'R', 'R', 'NA', 'NA']
    """
    if value is None or isinstance(value, bool):
        return "NA"
    if isinstance(value, float) and math.isnan(value):
        return "NA"
    if not isinstance(value, str):
        return "NA"
    key = " ".join(value.replace("_", " ").replace("-", " ").split()).casefold()
    if key in _LEFT:
        return "L"
    if key in _RIGHT:
        return "R"
    return "NA"


_FIELD = re.compile(r"\{(\w+)(?::((?:[^{}]|\{\d*,?\d*\})+))?\}")


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """Compile a ``{field}`` pattern into an anchored regular expression."""
    rest = _FIELD.sub("", pattern)
    if "{" in rest or "}" in rest:
        raise ConfigError(
            f"file-name pattern {pattern!r} has an unbalanced brace; fields look like '{{patient}}'"
        )
    # A plain field is a token: it never contains "/" or a separator used in the pattern.
    separators = sorted({ch for ch in rest if not ch.isalnum() and ch != "*"} | {"/"})
    token = "[^" + "".join(re.escape(ch) for ch in separators) + "]+"
    parts: list[str] = []
    names: list[str] = []
    pos = 0
    for m in _FIELD.finditer(pattern):
        parts.append(_literal_regex(pattern[pos : m.start()]))
        name, custom = m.group(1), m.group(2)
        if name in names:
            raise ConfigError(f"file-name pattern {pattern!r} uses the field {{{name}}} twice")
        names.append(name)
        parts.append(f"(?P<{name}>{token if custom is None else custom})")
        pos = m.end()
    parts.append(_literal_regex(pattern[pos:]))
    if not names:
        raise ConfigError(
            f"file-name pattern {pattern!r} has no {{field}}; write e.g. '{{patient}}_{{eye}}.jpg'"
        )
    try:
        return re.compile("".join(parts))
    except re.error as exc:
        raise ConfigError(f"file-name pattern {pattern!r} is not valid: {exc}") from exc


def _literal_regex(text: str) -> str:
    return ".*".join(re.escape(piece) for piece in text.split("*"))


def parse_filename(pattern: str, name: str) -> dict[str, str] | None:
    """Extract fields such as patient and eye from a file name.

    Parameters
    ----------
    pattern : str
        Literal text with ``{field}`` placeholders and ``*`` wildcards, e.g.
        ``"{patient}_{eye}.jpg"`` or ``"{patient}-{visit}_{eye}.*"``. A field matches
        one or more characters other than ``/`` and the separators the pattern itself
        uses (in ``"{patient}-{visit}_{eye}.*"``: ``-``, ``_`` and ``.``), so a name
        that could be split in two ways (``"sub_001_left.jpg"`` for
        ``"{patient}_{eye}.jpg"``) gives None rather than a guess: a wrong patient
        split would leak images across folds. ``{field:REGEX}`` gives a field its own
        regular expression, e.g. ``"{patient:[a-z]+_\\d+}_{eye}.jpg"`` for identifiers
        that contain a separator.
        When the pattern has no ``/``, only the last path component of ``name`` is used.
    name : str
        A file name or a relative path.

    Returns
    -------
    dict or None
        Field name to value, or None when ``name`` does not fit the pattern.

    Raises
    ------
    ConfigError
        When the pattern is malformed (no field, a field used twice, a stray brace).

    Examples
    --------
    >>> parse_filename("{patient}_{eye}.jpg", "1024_left.jpg")
    {'patient': '1024', 'eye': 'left'}
    >>> parse_filename("{patient}-{visit}_{eye}.*", "sub/P7-v2_OD.jpeg")
    {'patient': 'P7', 'visit': 'v2', 'eye': 'OD'}
    >>> parse_filename("{patient}_{eye}.jpg", "1024_left.png") is None
    True
    """
    regex = _pattern_regex(pattern)
    target = name.replace("\\", "/")
    if "/" not in pattern:
        target = target.rsplit("/", 1)[-1]
    m = regex.fullmatch(target)
    return None if m is None else {k: v for k, v in m.groupdict().items()}


# --------------------------------------------------------------------------- label table


def read_label_table(
    path: str | Path,
    *,
    file_column: str,
    label_column: str,
    classes: list[str],
    patient_column: str | None = None,
    laterality_column: str | None = None,
    extra_columns: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, list[LabelIssue]]:
    """Read a CSV/TSV (or .xlsx) label table into a clean frame and a list of issues.

    Parameters
    ----------
    path : str or Path
        The table. Delimiter sniffed (comma, semicolon, tab or ``|``; the one whose
        header contains ``file_column`` and ``label_column`` wins, comma by default).
        UTF-8 with or without byte-order mark; a Windows-1252 file is accepted with a
        warning. ``.xlsx`` only if openpyxl is installed.
    file_column, label_column : str
        Header names of the image-file column and the label column (matched exactly,
        then case-insensitively, after trimming spaces).
    classes : list of str
        Declared class names. Labels are trimmed and matched case-insensitively; the
        output uses the declared spelling (``" Referable "`` -> ``"referable"``).
    patient_column, laterality_column : str, optional
        Columns copied to ``patient`` (trimmed) and ``laterality`` (through
        :func:`normalize_laterality`).
    extra_columns : dict, optional
        ``{table column: output name}``, e.g. ``{"Camera": "source", "Age": "age"}``;
        values copied as trimmed text.

    Returns
    -------
    table : pd.DataFrame
        Columns ``row`` (int, spreadsheet row number, header = 1), ``file``, ``label``,
        then ``patient``, ``laterality`` and the extra names when asked for. One row
        per file; rows with a problem are left out.
    issues : list of LabelIssue
        ``no_file_name``, ``empty_label``, ``unknown_label``, ``duplicate``, ``conflict``
        in row order. Entirely blank lines are skipped without an issue.

    Raises
    ------
    ConfigError
        Invalid arguments (no classes, two classes equal up to case, a column used
        twice, an extra output name that clashes with a standard column).
    CohortError
        The table cannot be read at all (missing, not text, no such column, .xlsx
        without openpyxl).
    """
    path = Path(path)
    canon = _class_lookup(classes)
    wanted = {"file": file_column, "label": label_column}
    if patient_column is not None:
        wanted["patient"] = patient_column
    if laterality_column is not None:
        wanted["laterality"] = laterality_column
    extras = dict(extra_columns or {})
    for src, dst in extras.items():
        if dst in _RESERVED or dst in wanted:
            raise ConfigError(
                f"extra_columns maps {src!r} to {dst!r}, a name medxcept already uses "
                f"({', '.join(_RESERVED)}); choose another output name"
            )
    sources = list(wanted.values()) + list(extras)
    dup = sorted({c for c in sources if sources.count(c) > 1})
    if dup:
        raise ConfigError(f"label-table column(s) {dup} are assigned to more than one role")

    raw = _read_table(path, required=[file_column, label_column])
    resolved = {role: _find_column(raw, col, path) for role, col in wanted.items()}
    resolved_extras = {_find_column(raw, col, path): dst for col, dst in extras.items()}

    records: list[dict[str, Any]] = []
    issues: list[LabelIssue] = []
    declared = ", ".join(repr(c) for c in classes)
    for idx, values in enumerate(raw.itertuples(index=False, name=None)):
        row = idx + 2  # header is spreadsheet row 1
        cells = dict(zip(raw.columns, values, strict=False))
        if all(_text(v) == "" for v in values):
            continue  # blank line
        file = unicodedata.normalize("NFC", _text(cells[resolved["file"]]))
        label_raw = _text(cells[resolved["label"]])
        if not file:
            issues.append(
                LabelIssue(
                    row, "", "no_file_name",
                    f"row {row}: the file column {file_column!r} is empty (label {label_raw!r}); "
                    "fill in the image file name or delete the row",
                )
            )
            continue
        if not label_raw:
            issues.append(
                LabelIssue(
                    row, file, "empty_label",
                    f"row {row}: file {file!r} has an empty label; fill in one of {declared} "
                    "or delete the row",
                )
            )
            continue
        label = canon.get(label_raw.casefold())
        if label is None:
            issues.append(
                LabelIssue(
                    row, file, "unknown_label",
                    f"row {row}: file {file!r} has label {label_raw!r}, which is not one of the "
                    f"declared classes [{declared}]; correct the value or declare the class "
                    "in the cohort file",
                )
            )
            continue
        rec: dict[str, Any] = {"row": row, "file": file, "label": label}
        if "patient" in resolved:
            rec["patient"] = _text(cells[resolved["patient"]])
        if "laterality" in resolved:
            rec["laterality"] = normalize_laterality(cells[resolved["laterality"]])
        for src, dst in resolved_extras.items():
            rec[dst] = _text(cells[src])
        records.append(rec)

    columns = ["row", "file", "label"]
    columns += [c for c in ("patient", "laterality") if c in resolved]
    columns += list(resolved_extras.values())
    kept, dup_issues = _collapse_duplicates(records, columns)
    issues.extend(dup_issues)
    issues.sort(key=lambda i: (i.row if i.row is not None else 0))
    table = pd.DataFrame(kept, columns=columns)
    table["row"] = table["row"].astype(int)
    logger.info(
        "label table %s: %d rows kept, %d issue(s)", path.name, len(table), len(issues)
    )
    return table, issues


def _class_lookup(classes: list[str]) -> dict[str, str]:
    if isinstance(classes, str) or not classes:
        raise ConfigError(f"classes must be a non-empty list of class names, got {classes!r}")
    canon: dict[str, str] = {}
    for c in classes:
        key = str(c).strip().casefold()
        if not key:
            raise ConfigError(f"classes contains an empty class name: {classes!r}")
        if key in canon:
            raise ConfigError(
                f"classes {canon[key]!r} and {c!r} differ only in case or spaces; labels are "
                "matched case-insensitively, so declare each class once"
            )
        canon[key] = str(c)
    return canon


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _read_table(path: Path, required: list[str]) -> pd.DataFrame:
    """Read the whole table as text (no type guessing: '007' stays '007')."""
    if not path.is_file():
        raise CohortError(f"label table not found: {path}; check the cohort file's label path")
    suffix = path.suffix.lower()
    if suffix in (".xlsx", ".xlsm"):
        try:
            import openpyxl  # noqa: F401
        except ImportError as exc:
            raise CohortError(
                f"{path.name}: reading Excel files needs the openpyxl package, which is not "
                "installed; export the sheet as CSV (File > Save As > 'CSV UTF-8') and point "
                "the cohort file to the .csv"
            ) from exc
        frame = pd.read_excel(path, dtype=str, keep_default_na=False)
        frame.columns = [str(c).strip() for c in frame.columns]
        return frame
    if suffix == ".xls":
        raise CohortError(f"{path.name}: old .xls workbooks are not read; export the sheet as CSV UTF-8")

    data = path.read_bytes()
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise CohortError(
            f"{path.name}: this does not look like a text table (binary content); export it as CSV UTF-8"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        try:
            text = data.decode("cp1252")
        except UnicodeDecodeError as exc:
            raise CohortError(
                f"{path.name}: the table is neither UTF-8 nor Windows-1252 text; save it as 'CSV UTF-8'"
            ) from exc
        logger.warning("%s is not UTF-8; read as Windows-1252. Save it as 'CSV UTF-8' to be sure", path.name)
    if not text.strip():
        raise CohortError(f"{path.name}: the label table is empty")
    sep = _choose_delimiter(text, suffix, required)
    try:
        frame = pd.read_csv(
            io.StringIO(text),
            sep=sep,
            dtype=str,
            keep_default_na=False,
            skip_blank_lines=False,  # keep spreadsheet row numbers right
            engine="python" if len(sep) > 1 else "c",
        )
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        raise CohortError(
            f"{path.name}: cannot parse the table ({exc}); check quoting and delimiters"
        ) from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _choose_delimiter(text: str, suffix: str, required: list[str]) -> str:
    """Sniffed delimiter, checked against the header: the one that yields the required columns wins."""
    sample = text[:_SNIFF_BYTES]
    lines = sample.splitlines()
    header = lines[0] if lines else ""
    if suffix in (".tsv", ".tab"):
        default = "\t"
    else:
        try:
            default = csv.Sniffer().sniff(sample, delimiters="".join(_DELIMITERS)).delimiter
        except csv.Error:
            default = ","  # csv.Sniffer gives up on one-column or irregular samples
    wanted = {r.strip().casefold() for r in required}
    for sep in [default] + [d for d in _DELIMITERS if d != default]:
        names = {c.strip().casefold() for c in next(csv.reader([header], delimiter=sep), [])}
        if wanted <= names:
            return sep
    return default  # the missing-column error will then show the header as read


def _find_column(frame: pd.DataFrame, name: str, path: Path) -> str:
    cols = list(frame.columns)
    if name in cols:
        return name
    folded = [c for c in cols if c.casefold() == name.strip().casefold()]
    if len(folded) == 1:
        return folded[0]
    raise CohortError(
        f"{path.name}: no column {name!r} in the label table; the header has {cols}. "
        "Fix the column name in the cohort file"
    )


def _collapse_duplicates(
    records: list[dict[str, Any]], columns: list[str]
) -> tuple[list[dict[str, Any]], list[LabelIssue]]:
    """One record per file: identical repeats collapse, disagreeing repeats drop the file."""
    by_file: dict[str, list[dict[str, Any]]] = {}
    for rec in records:
        by_file.setdefault(rec["file"], []).append(rec)
    compared = [c for c in columns if c not in ("row", "file")]
    kept: list[dict[str, Any]] = []
    issues: list[LabelIssue] = []
    for file, recs in by_file.items():
        first = recs[0]
        if len(recs) == 1:
            kept.append(first)
            continue
        rows = [r["row"] for r in recs]
        differing = [c for c in compared if len({r[c] for r in recs}) > 1]
        if not differing:
            kept.append(first)
            for r in recs[1:]:
                issues.append(
                    LabelIssue(
                        r["row"], file, "duplicate",
                        f"row {r['row']}: file {file!r} is listed again (same values as row "
                        f"{first['row']}); the repeat is ignored, delete it from the table",
                        label=str(first["label"]),
                    )
                )
            continue
        if "label" in differing:
            what = "labels " + " vs ".join(repr(r["label"]) for r in recs)
        else:
            what = "values in column(s) " + ", ".join(differing)  # no patient ids in messages
        issues.append(
            LabelIssue(
                first["row"], file, "conflict",
                f"rows {', '.join(map(str, rows))}: file {file!r} is listed with different "
                f"{what}; all its rows are left out. Keep one correct row for this file",
                label="" if "label" in differing else str(first["label"]),
            )
        )
    kept.sort(key=lambda r: r["row"])
    return kept, issues


# --------------------------------------------------------------------------- files on disk


def _norm_key(value: str) -> str:
    """Table path or path on disk -> comparison key: ``/`` separators, no ``./``, Unicode NFC.

    macOS writes file names in decomposed form (NFD: ``e`` + combining accent) and a
    spreadsheet usually holds the composed form (NFC); both sides are compared in NFC.
    """
    key = unicodedata.normalize("NFC", value.replace("\\", "/").strip())
    while key.startswith("./"):
        key = key[2:]
    return key


def _folders_agree(row_key: str, rel: str) -> bool:
    """True when no folder of the table's path is contradicted by the file's folders.

    The two folder lists are aligned from the file name upwards; where both have a folder
    they must be equal (case-insensitive). ``export/P001/left.jpg`` agrees with
    ``P001/left.jpg`` and with ``left.jpg``, not with ``P002/left.jpg``: dropping ``P001``
    there would give another patient's image this row's label.
    """
    row_dirs = PurePosixPath(row_key).parts[:-1]
    file_dirs = PurePosixPath(rel).parts[:-1]
    return all(a.casefold() == b.casefold() for a, b in zip(reversed(row_dirs), reversed(file_dirs), strict=False))


def match_files(
    table: pd.DataFrame, root: str | Path, files: list[Path]
) -> tuple[pd.DataFrame, list[LabelIssue]]:
    """Match label rows to image files found on disk.

    Parameters
    ----------
    table : pd.DataFrame
        A frame from :func:`read_label_table` (needs ``file``; ``row`` and ``label``
        are used when present).
    root : str or Path
        The image root; relative paths in the table are relative to it.
    files : list of Path
        The files found on disk (absolute, or relative to ``root``).

    Returns
    -------
    matched : pd.DataFrame
        The table rows that found their file, with a ``path`` column (absolute path,
        as text), in table order.
    issues : list of LabelIssue
        ``missing_file`` (a row whose file was not found), ``ambiguous_file`` (a bare
        name matching several files), ``folder_mismatch`` (the only file of that name is
        in another folder), ``duplicate``/``conflict`` (two rows resolving to
        the same file) and ``unlabelled_file`` (a file no row names; ``row`` is None).

    Notes
    -----
    Each row's file value is tried, in order, as a relative path (case-sensitive,
    then unique case-insensitive), as a bare file name (same two steps), and, when
    it has no extension, as a file stem (``"IDRiD_01"`` finds ``IDRiD_01.jpg``).
    Backslashes are read as folder separators; names are compared in Unicode NFC (a table
    written on macOS may hold NFD). A bare-name or stem match is only taken from files whose
    folders do not contradict the row's (``P001/left.jpg`` never finds ``P002/left.jpg``:
    ``folder_mismatch``); a prefix the image root lacks (``C:/export/P001/left.jpg``) is fine.
    """
    root = Path(root)
    root_abs = Path(os.path.abspath(root))
    rels: list[str] = []
    abs_paths: list[str] = []
    seen: set[str] = set()
    for f in files:
        full = Path(os.path.abspath(root / f))  # root / absolute == absolute
        if str(full) in seen:
            continue  # the same file listed twice
        seen.add(str(full))
        try:
            rels.append(full.relative_to(root_abs).as_posix())
        except ValueError:  # outside the root: keep the whole path
            rels.append(full.as_posix())
        abs_paths.append(str(full))

    exact: dict[str, list[int]] = {}
    exact_ci: dict[str, list[int]] = {}
    name: dict[str, list[int]] = {}
    name_ci: dict[str, list[int]] = {}
    stem: dict[str, list[int]] = {}
    stem_ci: dict[str, list[int]] = {}
    for i, rel in enumerate(rels):
        rel = _norm_key(rel)
        pp = PurePosixPath(rel)
        exact.setdefault(rel, []).append(i)
        exact_ci.setdefault(rel.casefold(), []).append(i)
        name.setdefault(pp.name, []).append(i)
        name_ci.setdefault(pp.name.casefold(), []).append(i)
        stem.setdefault(pp.stem, []).append(i)
        stem_ci.setdefault(pp.stem.casefold(), []).append(i)

    issues: list[LabelIssue] = []
    owner: dict[int, dict[str, Any]] = {}  # file index -> first record that claimed it
    dropped: set[int] = set()
    matched: list[dict[str, Any]] = []
    has_row = "row" in table.columns
    for rec in table.to_dict("records"):
        row = int(rec["row"]) if has_row else None
        given = str(rec["file"])
        key = _norm_key(given)
        base = PurePosixPath(key).name
        lookups = [(exact, key), (exact_ci, key.casefold()), (name, base), (name_ci, base.casefold())]
        if not PurePosixPath(base).suffix:
            lookups += [(stem, base), (stem_ci, base.casefold())]
        # The first lookup that finds anything decides: one file is a match, several are ambiguous.
        # A bare-name or stem match only counts for files whose folders do not contradict the
        # row's folders (a folder may be the patient: P001/left.jpg must not find P002/left.jpg).
        found: list[int] = []
        elsewhere: list[int] = []
        for n_lookup, (index, k) in enumerate(lookups):
            found = index.get(k, [])
            if found and n_lookup >= 2:
                agree = [i for i in found if _folders_agree(key, rels[i])]
                elsewhere = elsewhere or [i for i in found if i not in agree]
                found = agree
            if found:
                break
        hit = found[0] if len(found) == 1 else None
        ambiguous = found if len(found) > 1 else []
        where = f"row {row}: " if row is not None else ""
        row_label = str(rec.get("label", "") or "")
        if hit is None and not ambiguous and elsewhere:
            shown = ", ".join(rels[i] for i in elsewhere[:3]) + (" ..." if len(elsewhere) > 3 else "")
            issues.append(
                LabelIssue(
                    row, given, "folder_mismatch",
                    f"{where}file {given!r} was not found; a file of that name is in another folder "
                    f"({shown}), which may be another patient, so it is not used for this row. "
                    "Correct the path in the table (relative to the image root)",
                    label=row_label,
                )
            )
            continue
        if hit is None and ambiguous:
            shown = ", ".join(rels[i] for i in ambiguous[:3]) + (" ..." if len(ambiguous) > 3 else "")
            issues.append(
                LabelIssue(
                    row, given, "ambiguous_file",
                    f"{where}file {given!r} matches {len(ambiguous)} files on disk ({shown}); "
                    "write the path relative to the image root in the table",
                    label=row_label,
                )
            )
            continue
        if hit is None:
            issues.append(
                LabelIssue(
                    row, given, "missing_file",
                    f"{where}label row whose file is missing: {given!r} was not found under "
                    f"{root}; check the spelling and folder, or delete the row",
                    label=row_label,
                )
            )
            continue
        if hit in owner:
            first = owner[hit]
            first_row = first.get("row")
            same = all(first.get(c) == rec.get(c) for c in table.columns if c not in ("row", "file"))
            kind = "duplicate" if same else "conflict"
            tail = (
                "with the same label; the repeat is ignored, delete it"
                if same
                else "but with a different label or values; both rows are left out. Keep one correct row"
            )
            issues.append(
                LabelIssue(
                    row, given, kind,
                    f"{where}file {given!r} is the same file on disk ({rels[hit]}) as row "
                    f"{first_row}, {tail}",
                    label=row_label if first.get("label") == rec.get("label") else "",
                )
            )
            if not same:
                dropped.add(hit)
            continue
        out = dict(rec)
        out["path"] = abs_paths[hit]
        owner[hit] = rec
        out["_idx"] = hit
        matched.append(out)

    matched = [m for m in matched if m["_idx"] not in dropped]
    labelled = set(owner)
    for i, rel in enumerate(rels):
        if i not in labelled:
            issues.append(
                LabelIssue(
                    None, rel, "unlabelled_file",
                    f"file without a label: {rel!r} is on disk but no row of the label table "
                    "names it; add a row for it or move it out of the image folder",
                )
            )
    columns = list(table.columns) + ["path"]
    frame = pd.DataFrame([{k: v for k, v in m.items() if k != "_idx"} for m in matched], columns=columns)
    if has_row and len(frame):
        frame["row"] = frame["row"].astype(int)
    logger.info("matched %d of %d label rows to files; %d issue(s)", len(frame), len(table), len(issues))
    return frame, issues


def labels_from_folders(root: str | Path, classes: list[str]) -> pd.DataFrame:
    """Label images by the folder they sit in: ``root/<class>/<file>``.

    Parameters
    ----------
    root : str or Path
        Folder with one sub-folder per class. Files further down (``root/<class>/a/b.jpg``)
        belong to that class too. Hidden files and ``Thumbs.db``/``desktop.ini`` are skipped.
    classes : list of str
        Declared class names; folder names are matched case-insensitively and the
        output uses the declared spelling.

    Returns
    -------
    pd.DataFrame
        Columns ``file`` (path relative to ``root``, ``/``-separated), ``label`` and
        ``path`` (absolute), sorted by ``file``. Folders that are not a declared class,
        and files lying directly in ``root``, are left out, counted in a warning, and
        listed as :class:`LabelIssue` records (kind ``unknown_folder`` /
        ``unlabelled_file``) in ``frame.attrs["issues"]``.

    Raises
    ------
    CohortError
        ``root`` is not a folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise CohortError(f"image folder not found: {root}; check the cohort file's root")
    canon = _class_lookup(classes)
    rows: list[dict[str, str]] = []
    issues: list[LabelIssue] = []
    seen: set[str] = set()
    # links are followed only inside root (medxcept.io.walk_files); ingestion excludes the others
    from medxcept.io import walk_files

    inside, _ = walk_files(root, skip=_skipped)
    by_folder: dict[str, list[Path]] = {}
    for f in inside:
        parts = f.relative_to(root).parts
        if len(parts) > 1:
            by_folder.setdefault(parts[0], []).append(f)
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        if _skipped(entry.name):
            continue
        if entry.is_file():
            issues.append(
                LabelIssue(
                    None, entry.name, "unlabelled_file",
                    f"file without a label: {entry.name!r} lies directly in the image root, not in "
                    "a class folder; move it into one of the class folders",
                )
            )
            continue
        if not entry.is_dir():
            continue
        label = canon.get(entry.name.strip().casefold())
        if label is None:
            issues.append(
                LabelIssue(
                    None, entry.name, "unknown_folder",
                    f"folder {entry.name!r} is not one of the declared classes "
                    f"[{', '.join(repr(c) for c in classes)}]; its images are left out. Rename "
                    "the folder or declare the class",
                )
            )
            continue
        seen.add(label)
        for f in sorted(by_folder.get(entry.name, [])):
            rel = f.relative_to(root).as_posix()
            rows.append({"file": rel, "label": label, "path": os.path.abspath(f)})
    if issues:  # the names are in the exclusion log (private); a shared log gets the count only
        logger.warning("%d file(s) or folder(s) lie outside the class folders and are left out (see the "
                       "exclusion log)", len(issues))
    missing = [c for c in classes if c not in seen]
    if missing:
        logger.warning("no folder found in the image root for class(es) %s", missing)
    frame = pd.DataFrame(rows, columns=["file", "label", "path"]).sort_values("file", ignore_index=True)
    frame.attrs["issues"] = issues
    return frame


def _skipped(name: str) -> bool:
    return name.startswith(".") or name.casefold() in _JUNK_FILES
