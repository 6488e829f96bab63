"""The cohort table: one row per image, the single data structure every stage passes on.

Schema (``COLUMNS``; checked by :func:`validate_cohort` at stage boundaries)

============  =======  ==============================================================
column        dtype    meaning
============  =======  ==============================================================
image_id      str      id of the image: ``I-`` + 10 hex of a keyed hash of its position
                       in the cohort (source, relative path, frame), ``-f<frame>``
                       appended for frames > 0; not enumerable without the key
path          str      absolute path of the source file (in memory and ``private/`` only)
frame         int      frame index inside a multi-frame DICOM, else 0
patient_id    str      the *raw* patient identifier. In memory only: never written to
                       a report, a log or ``cohort.csv`` (see :func:`public_view`)
patient_key   str      pseudonym of ``patient_id`` (``P-`` + 10 hex of a keyed hash);
                       the only patient identifier ever displayed or saved
study_id      str      pseudonym (``S-`` + 10 hex, keyed) of the StudyInstanceUID or visit
                       identifier ("" when unknown); the raw value is ``study_uid``
laterality    str      ``L``, ``R`` or ``NA``
label         str      class name, one of the cohort's declared classes
y             int      class index (position of ``label`` in the class list)
source        str      site / camera / dataset, used in confounding checks
modality      str      ``fundus`` (colour photograph) or ``gray`` (radiograph-like)
width         int      decoded width in pixels
height        int      decoded height in pixels
channels      int      decoded channels (1 or 3)
sha256        str      hash of the file's bytes
============  =======  ==============================================================

Optional columns kept when present: ``sex``, ``age``, ``acquisition_date``,
``study_uid``, ``series_uid``, ``sop_uid``, ``visit``, ``group`` (an extra grouping key for
splits), ``split`` / ``fold`` (added by :mod:`medxcept.integrity.splits`).

What may be shared (:func:`public_view`): raw identifiers (``patient_id``, ``path``, the UIDs,
``visit``) are dropped, ``acquisition_date`` is coarsened to its year and ``age`` to a 5-year band
with everyone 90 or older in one ``90+`` band (the HIPAA Safe Harbor rules for dates and ages).
The raw values stay in memory and in ``private/image_paths.csv``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from medxcept.errors import CohortError, ConfigError

__all__ = [
    "COLUMNS",
    "OPTIONAL_COLUMNS",
    "validate_cohort",
    "pseudonymize",
    "keyed_id",
    "age_band",
    "public_view",
    "PRIVATE_COLUMNS",
    "SourceSpec",
    "CohortSpec",
    "Endpoint",
    "TASKS",
    "parse_endpoint",
    "load_cohort_spec",
]

COLUMNS: dict[str, str] = {
    "image_id": "str",
    "path": "str",
    "frame": "int",
    "patient_id": "str",
    "patient_key": "str",
    "study_id": "str",
    "laterality": "str",
    "label": "str",
    "y": "int",
    "source": "str",
    "modality": "str",
    "width": "int",
    "height": "int",
    "channels": "int",
    "sha256": "str",
}

OPTIONAL_COLUMNS = (
    "sex",
    "age",
    "acquisition_date",
    "study_uid",
    "series_uid",
    "sop_uid",
    "visit",
    "group",
    "split",
    "fold",
)

LATERALITIES = ("L", "R", "NA")


def pseudonymize(patient_id: str, salt: str) -> str:
    """Keyed, one-way pseudonym of a patient identifier.

    HMAC-SHA256 with a per-cohort secret ``salt``: without the salt the pseudonym
    cannot be reversed by hashing candidate IDs (a plain hash of a medical record
    number can). The same salt always gives the same pseudonym, so runs agree.

    >>> pseudonymize("12345", "s") == pseudonymize("12345", "s")
    True
    >>> pseudonymize("12345", "s").startswith("P-")
    True
    """
    digest = hmac.new(salt.encode(), str(patient_id).encode(), hashlib.sha256).hexdigest()
    return "P-" + digest[:10]


def keyed_id(prefix: str, domain: str, value: str, salt: str) -> str:
    """``prefix`` + 10 hex of HMAC-SHA256(``salt``, ``domain`` NUL ``value``): a keyed, one-way id.

    The same key as :func:`pseudonymize`, with a domain prefix so an image id, a study key and a
    file id of the same string never coincide (nor with a patient key). Without the key the ids
    cannot be recomputed from guessed file names or record numbers.

    >>> keyed_id("I-", "image", "photos/a.jpg#0", "s") == keyed_id("I-", "image", "photos/a.jpg#0", "s")
    True
    >>> keyed_id("I-", "image", "x", "s") != keyed_id("I-", "file", "x", "s")
    True
    """
    msg = f"medxcept-{domain}\x00{value}".encode()
    return prefix + hmac.new(salt.encode(), msg, hashlib.sha256).hexdigest()[:10]


def age_band(age: Any, width: int = 5, top: int = 90) -> str:
    """A shareable age: the ``width``-year band (``"45-49"``), ``"90+"`` from ``top`` on, ``""`` if unknown.

    >>> age_band(47.5), age_band(93), age_band(float("nan")), age_band(None)
    ('45-49', '90+', '', '')
    """
    try:
        a = float(age)
    except (TypeError, ValueError):
        return ""
    if a != a or a < 0:  # NaN or impossible
        return ""
    if a >= top:
        return f"{top}+"
    lo = int(a // width) * width
    return f"{lo}-{lo + width - 1}"


def validate_cohort(df: pd.DataFrame, *, where: str = "cohort") -> pd.DataFrame:
    """Check that ``df`` follows the schema; raise :class:`CohortError` naming what is wrong."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise CohortError(f"{where}: cohort table lacks column(s) {missing}")
    if df.empty:
        raise CohortError(f"{where}: the cohort table has no images")
    dup = df["image_id"][df["image_id"].duplicated()]
    if len(dup):
        raise CohortError(f"{where}: duplicate image_id values, e.g. {dup.iloc[0]!r}")
    bad = sorted(set(df["laterality"]) - set(LATERALITIES))
    if bad:
        raise CohortError(f"{where}: laterality must be one of {LATERALITIES}, found {bad}")
    return df


#: Columns that identify a person or a file: never saved outside ``private/``.
PRIVATE_COLUMNS = ("patient_id", "path", "study_uid", "series_uid", "sop_uid", "visit")


def public_view(df: pd.DataFrame) -> pd.DataFrame:
    """The cohort table as it may be saved or shown: no raw identifier, no exact date or age.

    Raw patient IDs, file paths (file names often carry the patient identifier,
    ``12345_OD.jpg``), DICOM UIDs and visit identifiers are dropped; ``image_id`` and
    ``study_id`` (keyed pseudonyms) link rows to ``private/image_paths.csv``.
    ``acquisition_date`` keeps its year only and ``age`` becomes a 5-year band (``90+`` on top).
    """
    out = df.drop(columns=[c for c in PRIVATE_COLUMNS if c in df.columns])
    if "acquisition_date" in out:
        out["acquisition_date"] = out["acquisition_date"].map(_year)
    if "age" in out:
        out["age"] = out["age"].map(age_band)
    return out


def _year(value: Any) -> str:
    """The 4-digit year of a date (``"2019-03-04"`` -> ``"2019"``), or ``""``."""
    text = "" if value is None else str(value)
    return text[:4] if len(text) >= 4 and text[:4].isdigit() else ""


# --------------------------------------------------------------------------- cohort files

SOURCE_KINDS = ("photos", "dicom", "folders")
#: ``generator:`` values: the binary demo (:mod:`medxcept.cohort.demo`) and its graded variant
#: (:mod:`medxcept.cohort.demo_graded`).
GENERATORS = (None, "demo", "demo_graded")


@dataclass(frozen=True)
class SourceSpec:
    """One folder of images inside a cohort, and how to find each image's label and patient.

    Args:
        name: a short name for this source (shown in the report).
        kind: ``photos`` (JPEG/PNG/TIFF/BMP with a label table), ``dicom`` (DICOM files with a
            label table; patient, laterality, study come from the header) or ``folders``
            (folder-per-class photographs, ``root/<class>/<file>``).
        root: the folder, relative to the cohort file (or to the generated data for ``generator``).
        labels: the label table (CSV/TSV), relative like ``root``; required for photos and dicom.
        file_column, label_column: columns of the label table.
        patient_column, laterality_column, visit_column: optional columns of the label table.
        filename_pattern: e.g. ``"{patient}_{eye}.jpg"``: patient (and eye, visit) parsed from
            file names, so both eyes of one person are known to be one patient.
        columns: extra label-table columns to keep, ``{table column: cohort column}``, e.g.
            ``{camera: source, sex: sex, age: age}``.
        source: a fixed ``source`` value for every image (site, camera, dataset).
        one_patient_per_file: explicit opt-in when the data truly has one image per patient and no
            patient identifier; never assumed silently.
    """

    name: str
    kind: str
    root: str
    labels: str | None = None
    file_column: str = "file"
    label_column: str = "label"
    patient_column: str | None = None
    laterality_column: str | None = None
    visit_column: str | None = None
    filename_pattern: str | None = None
    columns: dict[str, str] = field(default_factory=dict)
    source: str | None = None
    one_patient_per_file: bool = False


#: Task kinds a cohort can declare (``task:``): two classes are ``binary``; more are ``nominal``
#: (unordered: several diseases) or ``ordinal`` (ordered grades, class index = grade).
TASKS = ("binary", "nominal", "ordinal")

_ENDPOINT_RULE = re.compile(r"^\s*(?:grade\s*)?(>=|>|<=|<|==)\s*(.+?)\s*$", re.IGNORECASE)


@dataclass(frozen=True)
class Endpoint:
    """A binary endpoint derived from a k-class task, e.g. ``referable: grade >= 2``.

    Args:
        name: the endpoint's name (``referable``).
        positive: indices of the classes counted positive (the rest are negative).
        rule: the rule as declared, for the report.
    """

    name: str
    positive: tuple[int, ...]
    rule: str

    def positive_names(self, classes: tuple[str, ...]) -> list[str]:
        return [classes[i] for i in self.positive]


def parse_endpoint(name: str, rule: Any, classes: tuple[str, ...], task: str, *, where: str = "cohort") -> Endpoint:
    """Turn one ``endpoints:`` entry into an :class:`Endpoint`; errors name the entry and the value.

    ``rule`` is either a list of class names (any task: ``[cataract, glaucoma]``) or, for an
    ordinal task, a comparison with a grade: ``grade >= 2``, ``>= moderate``, ``grade > 0``,
    ``grade == 4`` (the grade is a class name or its index in ``classes``).
    """
    label = f"{where}: endpoints.{name}"
    lookup = {c.casefold(): i for i, c in enumerate(classes)}
    if isinstance(rule, (list, tuple)):
        unknown = [v for v in rule if str(v).strip().casefold() not in lookup]
        if unknown:
            raise ConfigError(f"{label}: {unknown} not among classes {list(classes)}")
        positive = sorted({lookup[str(v).strip().casefold()] for v in rule})
    elif isinstance(rule, str) and (m := _ENDPOINT_RULE.match(rule)):
        if task != "ordinal":
            raise ConfigError(f"{label}: {rule!r} compares grades, but the task is {task!r}; declare "
                              "'task: ordinal' or list the positive classes ([a, b])")
        op, value = m.group(1), m.group(2).strip().strip("'\"")
        if value.casefold() in lookup:
            grade = lookup[value.casefold()]
        elif value.isdigit() and int(value) < len(classes):
            grade = int(value)
        else:
            raise ConfigError(f"{label}: {value!r} in {rule!r} is neither a class of {list(classes)} nor a grade "
                              f"0..{len(classes) - 1}")
        test = {">=": grade.__le__, ">": grade.__lt__, "<=": grade.__ge__, "<": grade.__gt__, "==": grade.__eq__}[op]
        positive = [g for g in range(len(classes)) if test(g)]
    else:
        raise ConfigError(f"{label}={rule!r}: write a list of positive classes ([a, b]) or, for an ordinal task, "
                          "a rule such as 'grade >= 2'")
    if not positive or len(positive) == len(classes):
        raise ConfigError(f"{label}={rule!r} makes {'no' if not positive else 'every'} class positive: an endpoint "
                          "needs both positive and negative classes")
    return Endpoint(name=str(name), positive=tuple(positive), rule=str(rule))


@dataclass(frozen=True)
class CohortSpec:
    """A declarative cohort definition, loaded from ``cohorts/<name>.yaml``.

    Args:
        name: cohort name (used in run directory names).
        classes: the declared class list; label values are matched to it (trimmed, case-insensitive).
        positive_class: for binary tasks, the class whose probability is reported (default: last).
        modality: ``fundus`` (colour photographs) or ``gray`` (radiographs).
        sources: one or more :class:`SourceSpec`.
        base_dir: the directory relative paths are resolved against.
        generator: ``"demo"`` to generate the embedded synthetic cohort on first use
            (``"demo_graded"``: its graded variant, :mod:`medxcept.cohort.demo_graded`).
        generator_options: arguments of :class:`medxcept.cohort.demo.DemoSpec`
            (:class:`medxcept.cohort.demo_graded.GradedDemoSpec`).
        on_label_issue: ``exclude`` (row/file goes to the exclusion log) or ``error`` (stop the run).
        max_pixels: images with more pixels are refused before decoding.
        frames: multi-frame DICOM policy: ``"all"`` (each frame a row) or a frame index.
        window_index: which DICOM window (WindowCenter/Width pair) to apply.
        pseudonym_salt: the secret for every keyed id (patient, study, image, file); by default a
            random key kept in ``$MEDXCEPT_CACHE/pseudonym.key`` on this machine (created atomically,
            owner-only; a key file under 32 characters is refused). Set it to get the same ids on
            several machines, and keep it as secret as the data.
        description: free text for the report.
        defaults: run-configuration defaults for this cohort (see :mod:`medxcept.config`).
        task: ``binary`` (two classes), ``nominal`` (unordered classes: several diseases) or
            ``ordinal`` (ordered grades, listed from the mildest: class index = grade). Default:
            binary for two classes, nominal for more.
        endpoints: binary endpoints derived from a nominal or ordinal task, each reported with the
            full binary report, e.g. ``{referable: "grade >= 2"}`` (:func:`parse_endpoint`).
        label_rule: how the label of a patient (or of a patient's visit) relates to its images'
            labels (:data:`LABEL_RULES`): ``any_image`` (default: positive when any image is, e.g.
            "any eye positive"; the unit's score is the maximum of its images') or ``per_patient``
            (one label given to the patient and copied onto every image; the score is the mean).
            It sets the default of ``eval.patient_aggregation``; a cohort's ``defaults:`` may not
            contradict it.
    """

    name: str
    classes: tuple[str, ...]
    sources: tuple[SourceSpec, ...]
    base_dir: str
    positive_class: str | None = None
    modality: str = "fundus"
    generator: str | None = None
    generator_options: dict[str, Any] = field(default_factory=dict)
    on_label_issue: str = "exclude"
    max_pixels: int = 100_000_000
    frames: str = "all"
    window_index: int = 0
    pseudonym_salt: str | None = None
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    task: str = "binary"
    endpoints: tuple[Endpoint, ...] = ()
    label_rule: str = "any_image"

    @property
    def n_classes(self) -> int:
        return len(self.classes)


#: A cohort's ``label_rule`` -> the patient aggregation (``eval.patient_aggregation``) that matches it.
LABEL_RULES: dict[str, str] = {"any_image": "max", "per_patient": "mean"}


def _label_rule_defaults(path: Path, rule: str, defaults: Any) -> dict[str, Any]:
    """The cohort's ``defaults:`` with ``eval.patient_aggregation`` set from ``label_rule``."""
    if rule not in LABEL_RULES:
        raise ConfigError(f"{path}: label_rule={rule!r} is not one of {list(LABEL_RULES)} (any_image: a patient "
                          "is positive when any image is; per_patient: one label copied onto every image)")
    if defaults is not None and not isinstance(defaults, dict):
        raise ConfigError(f"{path}: 'defaults' must be a mapping of configuration sections, got {defaults!r}")
    defaults = dict(defaults or {})
    ev = dict(defaults.get("eval") or {})
    stated = ev.get("patient_aggregation")
    if stated is not None and stated != LABEL_RULES[rule]:
        raise ConfigError(f"{path}: defaults eval.patient_aggregation={stated!r} contradicts label_rule={rule!r} "
                          f"(which scores a patient by the {LABEL_RULES[rule]} of their images); change one of them")
    ev["patient_aggregation"] = LABEL_RULES[rule]
    defaults["eval"] = ev
    return defaults


def load_cohort_spec(path: str | Path) -> CohortSpec:
    """Read and validate a cohort file; every error names the file, the field and the value."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"cohort file not found: {path} (see cohorts/ for examples)")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a cohort file is a mapping of fields, got {type(raw).__name__}")
    known = {f.name for f in dataclasses.fields(CohortSpec)} - {"base_dir"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown field(s) {unknown}; known: {sorted(known)}")
    for req in ("name", "classes", "sources"):
        if req not in raw:
            raise ConfigError(f"{path}: field '{req}' is required")
    classes = raw["classes"]
    if not isinstance(classes, list) or len(classes) < 2 or len({str(c).strip().lower() for c in classes}) != len(classes):
        raise ConfigError(f"{path}: 'classes' must list at least two distinct class names, got {classes!r}")
    sources = []
    source_fields = {f.name for f in dataclasses.fields(SourceSpec)}
    for i, s in enumerate(raw["sources"] or []):
        if not isinstance(s, dict):
            raise ConfigError(f"{path}: sources[{i}] must be a mapping")
        bad = sorted(set(s) - source_fields)
        if bad:
            raise ConfigError(f"{path}: sources[{i}] has unknown field(s) {bad}; known: {sorted(source_fields)}")
        s = {"name": s.get("name", f"source{i + 1}"), **s}
        if s.get("kind") not in SOURCE_KINDS:
            raise ConfigError(f"{path}: sources[{i}].kind={s.get('kind')!r} is not one of {list(SOURCE_KINDS)}")
        if "root" not in s:
            raise ConfigError(f"{path}: sources[{i}].root is required")
        if s["kind"] in ("photos", "dicom") and not s.get("labels"):
            raise ConfigError(f"{path}: sources[{i}] ({s['kind']}) needs a 'labels' table")
        if s["kind"] != "dicom" and not (s.get("patient_column") or s.get("filename_pattern")
                                          or s.get("one_patient_per_file")):
            raise ConfigError(
                f"{path}: sources[{i}] gives no way to know patients: set patient_column or "
                f"filename_pattern (e.g. '{{patient}}_{{eye}}.jpg'), or one_patient_per_file: true if each "
                f"file really is a different person")
        sources.append(SourceSpec(**s))
    if not sources:
        raise ConfigError(f"{path}: 'sources' is empty")
    data = {k: v for k, v in raw.items() if k not in ("classes", "sources", "task", "endpoints")}
    data["classes"] = tuple(str(c).strip() for c in classes)
    task = raw.get("task") or ("binary" if len(classes) == 2 else "nominal")
    if task not in TASKS:
        raise ConfigError(f"{path}: task={task!r} is not one of {list(TASKS)}")
    if (task == "binary") != (len(classes) == 2):
        raise ConfigError(f"{path}: task={task!r} with {len(classes)} classes {data['classes']}: two classes are "
                          "'binary'; three or more are 'nominal' or 'ordinal' (ordered grades)")
    data["task"] = task
    endpoints = raw.get("endpoints") or {}
    if not isinstance(endpoints, dict):
        raise ConfigError(f"{path}: 'endpoints' must be a mapping (name: rule), got {endpoints!r}")
    if endpoints and task == "binary":
        raise ConfigError(f"{path}: endpoints {sorted(endpoints)} need a nominal or ordinal task; a binary task "
                          "is its own endpoint")
    data["endpoints"] = tuple(parse_endpoint(str(n), r, data["classes"], task, where=str(path))
                              for n, r in endpoints.items())
    positive = raw.get("positive_class")
    if len(classes) == 2 and positive is not None and positive in data["classes"]:
        # binary models predict P(positive): the positive class is always index 1
        data["classes"] = tuple(sorted(data["classes"], key=lambda c: c == positive))
    data["sources"] = tuple(sources)
    data["base_dir"] = str(path.resolve().parent)
    data["label_rule"] = str(raw.get("label_rule") or "any_image")
    data["defaults"] = _label_rule_defaults(path, data["label_rule"], raw.get("defaults"))
    spec = CohortSpec(**data)
    if spec.modality not in ("fundus", "gray"):
        raise ConfigError(f"{path}: modality={spec.modality!r} is not one of ['fundus', 'gray']")
    if spec.on_label_issue not in ("exclude", "error"):
        raise ConfigError(f"{path}: on_label_issue={spec.on_label_issue!r} is not one of ['exclude', 'error']")
    if spec.positive_class is not None and spec.positive_class not in spec.classes:
        raise ConfigError(f"{path}: positive_class={spec.positive_class!r} is not among classes {list(spec.classes)}")
    if spec.frames != "all" and not str(spec.frames).isdigit():
        raise ConfigError(f"{path}: frames={spec.frames!r} must be 'all' or a frame index")
    if spec.generator not in GENERATORS:
        raise ConfigError(f"{path}: generator={spec.generator!r} is not one of {[g for g in GENERATORS if g]}")
    return spec
