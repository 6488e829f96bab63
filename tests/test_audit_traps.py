"""The trap cohort (medxcept.testing.traps) through ingestion, the user's split and the audit.

Each planted trap must be found, with its severity and count, and nothing else; the clean twin
must raise no error and no warning. The stages run as in ``medxcept.workflows.single.run_pipeline``:
``prepare_cohort`` -> preprocessed images -> ``fingerprints`` -> ``assign_splits`` (here: the
user's ``split.csv``) -> ``audit_cohort``. The images are read from the preprocessing cache as
``medxcept.images.cache.load_images`` does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from medxcept.cohort.table import load_cohort_spec  # noqa: E402
from medxcept.config import RunConfig, load_config  # noqa: E402
from medxcept.errors import ConfigError, LeakageError  # noqa: E402
from medxcept.integrity.audit import (  # noqa: E402
    DETAIL_THRESHOLD,
    AuditReport,
    audit_cohort,
    detail_similarity,
    duplicate_groups,
    fingerprints,
    near_duplicate_pairs,
    verified_near_pairs,
)
from medxcept.integrity.duplicates import MIN_INLIERS  # noqa: E402
from medxcept.integrity.splits import assign_splits  # noqa: E402
from medxcept.integrity.user_split import USER_SPLIT_REGROUP_MESSAGE  # noqa: E402
from medxcept.testing.traps import (  # noqa: E402
    JPEG_QUALITY,
    RESCALE_FACTOR,
    TRAP_NAMES,
    main,
    trap_patient_key,
    write_trap_cohort,
)
from medxcept.workflows.steps import prepare_cohort  # noqa: E402

CANON = "Canon CR-2 (synthetic)"

# ingesting both cohorts takes ~40 s on two shared cores
slow = pytest.mark.slow


def _load_images(table: pd.DataFrame, cache, cfg: RunConfig) -> np.ndarray:
    """What ``medxcept.images.cache.load_images`` does."""
    return np.stack([cache.get(sha, int(frame), cfg.preprocess) for sha, frame in zip(table["sha256"], table["frame"], strict=False)])


class Audited:
    """One cohort taken through ingestion, the user's split and the audit."""

    def __init__(self, root: Path, clean: bool) -> None:
        self.root = root
        self.traps = write_trap_cohort(root, clean=clean)
        self.spec = load_cohort_spec(root / "cohort.yaml")
        self.cfg = load_config(cohort_defaults=self.spec.defaults, cohort_dir=self.spec.base_dir)
        self.ing, self.cache = prepare_cohort(self.spec, self.cfg)
        self.images = _load_images(self.ing.table, self.cache, self.cfg)
        self.fp = fingerprints(self.images)
        self.table = assign_splits(self.ing.table, self.cfg.split)
        self.report: AuditReport = audit_cohort(
            self.table, fp=self.fp, policy=self.cfg.audit.on_leak, hamming_threshold=self.cfg.audit.hamming_threshold
        )
        names = self.table["path"].map(lambda p: Path(p).name)
        self.image_id = dict(zip(names, self.table["image_id"], strict=False))

    def ids(self, trap: str) -> set[str]:
        return {self.image_id[f] for f in self.traps[trap]}


@pytest.fixture(scope="module")
def trapped(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Audited:
    return Audited(tmp_path_factory.mktemp("traps"), clean=False)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> Audited:
    return Audited(tmp_path_factory.mktemp("traps-clean"), clean=True)


def _pairs(finding) -> set[frozenset[str]]:
    return {frozenset((d["image_id_a"], d["image_id_b"])) for d in finding.details}


def _one(report: AuditReport, kind: str):
    found = report.by_kind(kind)
    assert len(found) == 1, f"{kind}: {len(found)} finding(s)"
    return found[0]


# ------------------------------------------------------------------ the trap cohort


@slow
def test_cohort_as_written(trapped):
    """Every file is used, and the user's split is the one in split.csv (nothing re-split)."""
    assert trapped.ing.files_found == trapped.ing.files_used == len(trapped.table) == 55
    assert trapped.ing.files_excluded == 0
    assert list(trapped.traps) == list(TRAP_NAMES)
    assert trapped.cfg.split.user_split == str(trapped.root.resolve() / "split.csv")
    user = pd.read_csv(trapped.root / "split.csv")
    want = dict(zip(user["file"], user["split"], strict=False))
    got = dict(zip(trapped.table["path"].map(lambda p: Path(p).name), trapped.table["split"], strict=False))
    assert got == want


@slow
def test_exactly_the_planted_findings(trapped):
    """Hand count of the planted traps (seed 0, 96 px): every error and warning, and nothing else.

    duplicate pairs across splits (and across patients): the exact two-ID copy, the mirrored
    copy, the rescaled copy and the JPEG copy (4).
    """
    got = sorted(
        (f.kind, f.severity, int(f.count), f.details[0].get("column", "") if f.kind.startswith("confounding") else "")
        for f in trapped.report.findings
    )
    assert got == sorted(
        [
            ("patient_overlap", "error", 1, ""),
            ("duplicate_across_splits", "error", 4, ""),
            ("duplicate_across_patients", "warning", 4, ""),
            ("duplicate_within_split", "info", 1, ""),
            ("label_conflict", "error", 1, ""),
            # the label conflict's patient holds two classes on one eye at one visit (issue 18)
            ("patient_mixed_classes", "warning", 1, ""),
            ("confounding", "warning", 1, "source"),
            ("confounding", "warning", 1, "size"),  # the camera's canvas size goes with it
            # and so do its file format and JPEG settings: the label is predictable from acquisition
            ("acquisition_shortcut", "warning", 1, ""),
            ("laterality_missing", "info", 2, ""),
            ("laterality_excess", "warning", 1, ""),
        ]
    )


@slow
def test_patient_overlap_named_by_pseudonym(trapped):
    f = _one(trapped.report, "patient_overlap")
    assert f.severity == "error"
    assert [d["patient_key"] for d in f.details] == trapped.traps["patient_overlap"]
    assert f.details[0]["partitions"] == ["split=test", "split=train"] and f.details[0]["n_images"] == 2


@slow
def test_no_raw_patient_id_or_file_name_in_the_audit(trapped):
    text = json.dumps(trapped.report.to_dict())
    assert "TRAP-" not in text  # raw patient IDs and file names both start with it
    assert trapped.traps["patient_overlap"][0] in text
    for raw, key in trapped.ing.patient_map.itertuples(index=False):
        assert raw not in text and key == trap_patient_key(raw)


@slow
def test_exact_duplicate_under_two_ids(trapped):
    pair = frozenset(trapped.ids("two_ids_exact_duplicate"))
    across = _one(trapped.report, "duplicate_across_splits")
    patients = _one(trapped.report, "duplicate_across_patients")
    assert pair in _pairs(across) and pair in _pairs(patients)
    d = next(d for d in across.details if frozenset((d["image_id_a"], d["image_id_b"])) == pair)
    assert d["match"] == "sha256" and d["patient_key_a"] != d["patient_key_b"]
    assert {d["partition_a"], d["partition_b"]} == {"split=val", "split=test"}


@slow
@pytest.mark.parametrize(
    "trap, flipped", [("flipped_copy", True), ("jpeg_copy", False), ("rescaled_copy", False)]
)
def test_near_duplicate_copies_across_splits(trapped, trap, flipped):
    """Mirrored, JPEG re-compressed and rescaled copies: confirmed by geometry or by strong detail agreement."""
    pair = frozenset(trapped.ids(trap))
    across = _one(trapped.report, "duplicate_across_splits")
    assert pair in _pairs(across) and pair in _pairs(_one(trapped.report, "duplicate_across_patients"))
    d = next(d for d in across.details if frozenset((d["image_id_a"], d["image_id_b"])) == pair)
    assert d["match"] == "near" and d["flipped"] is flipped and d["partition_a"] != d["partition_b"]
    if d["method"] == "geometry":  # one transform: the identity, or a mirror image
        assert d["inliers"] >= MIN_INLIERS and d["transform"]["flip"] is flipped
        assert abs(d["transform"]["rotation_deg"]) < 5 and 0.85 < d["transform"]["scale"] < 1.15
    else:  # well clear of the threshold (copies of the demo cohort: >= 0.57 even at JPEG quality 60)
        assert d["method"] == "detail" and d["detail_similarity"] >= DETAIL_THRESHOLD + 0.1


@slow
def test_rescaled_copy_is_a_near_copy_of_its_original(trapped):
    """The 0.9x copy (issue #5: "slightly rescaled copies must be found"), as its own check."""
    assert RESCALE_FACTOR == 0.9
    pair = frozenset(trapped.ids("rescaled_copy"))
    assert pair in _pairs(_one(trapped.report, "duplicate_across_splits"))
    groups = duplicate_groups(trapped.table, trapped.fp)
    a, b = pair
    assert groups[a] == groups[b]


@slow
def test_label_conflict_is_an_exact_copy_within_one_patient(trapped):
    pair = frozenset(trapped.ids("label_conflict"))
    conflict = _one(trapped.report, "label_conflict")
    assert conflict.severity == "error" and _pairs(conflict) == {pair}
    d = conflict.details[0]
    assert {d["label_a"], d["label_b"]} == {"non_referable", "referable"} and d["patient_key_a"] == d["patient_key_b"]
    assert _pairs(_one(trapped.report, "duplicate_within_split")) == {pair}


@slow
def test_confounded_class(trapped):
    cls, camera = trapped.traps["confounded_class"]
    assert (cls, camera) == ("referable", CANON)
    t = trapped.table
    share = float((t.loc[t["label"] == cls, "source"] == camera).mean())
    source = next(f for f in trapped.report.by_kind("confounding") if f.details[0]["column"] == "source")
    assert source.severity == "warning" and source.count == 1
    d = source.details[0]
    assert (d["label"], d["value"]) == (cls, camera) and d["share"] == round(share, 3) and share >= 0.9
    assert d["cramers_v"] >= 0.5
    assert list(trapped.report.tables["confounding_source"].index) == ["non_referable", "referable"]


@slow
def test_laterality_traps(trapped):
    excess = _one(trapped.report, "laterality_excess")
    assert [d["patient_key"] for d in excess.details] == trapped.traps["laterality_excess"]
    assert excess.details[0]["n_images"] == 3 and excess.details[0]["laterality"] == "R"
    missing = _one(trapped.report, "laterality_missing")
    assert missing.severity == "info" and missing.count == 2
    na = set(trapped.table.loc[trapped.table["laterality"] == "NA", "image_id"])
    assert na == trapped.ids("laterality_missing")


@slow
def test_policies_on_the_trap_cohort(trapped):
    with pytest.raises(LeakageError, match="patient overlap: 1.*label conflict: 1"):
        trapped.report.raise_if_errors()
    warned = audit_cohort(trapped.table, fp=trapped.fp, policy="warn")
    assert warned.errors == []
    assert {f.kind for f in warned.warnings} >= {"patient_overlap", "duplicate_across_splits", "label_conflict"}
    warned.raise_if_errors()  # the run may go on, at the user's risk


@slow
def test_fix_is_refused_for_a_user_split(trapped):
    """on_leak: fix would regroup duplicates, i.e. move the user's images: refused, before any move.

    The configuration refuses the combination when it is loaded; ``assign_splits`` refuses it
    again if a merge reaches it anyway (a caller that builds the configs itself).
    """
    with pytest.raises(ConfigError, match="never re-grouped: fix the split file or use on_leak: warn"):
        load_config(cohort_defaults=trapped.spec.defaults, cohort_dir=trapped.spec.base_dir,
                    overrides={"audit.on_leak": "fix"})
    # as run_pipeline would build it
    merge = duplicate_groups(trapped.ing.table, trapped.fp, trapped.cfg.audit.hamming_threshold)
    assert merge.nunique() == len(trapped.ing.table) - 5  # the five planted copies, each merged
    with pytest.raises(ConfigError) as exc:
        assign_splits(trapped.ing.table, trapped.cfg.split, merge=merge)
    assert str(exc.value) == USER_SPLIT_REGROUP_MESSAGE


# ------------------------------------------------------------------ the clean twin


@slow
def test_clean_cohort_raises_no_alarm(clean):
    assert clean.traps == {}
    assert len(clean.table) == 48 and clean.ing.files_excluded == 0
    assert clean.report.errors == [] and clean.report.warnings == []
    # the clean twin's cameras are balanced across classes: the acquisition probe stays quiet
    assert {f.kind for f in clean.report.findings} == {"confounding_checked", "acquisition_checked"}
    assert clean.table.groupby("patient_key")["split"].nunique().max() == 1
    per_split = clean.table.groupby("split")["patient_key"].nunique().to_dict()
    assert per_split == {"train": 16, "val": 4, "test": 4}
    assert (clean.table["laterality"] != "NA").all()


@slow
def test_clean_cohort_look_alikes_are_rejected_with_a_margin(clean):
    """Distinct synthetic eyes share their layout (many pHash/dHash candidates) but not their detail."""
    cand = near_duplicate_pairs(clean.fp, detail_threshold=None)
    assert len(cand) >= 20  # the hashes alone would raise alarms here
    sim = detail_similarity(clean.fp, cand["i"], cand["j"], cand["flipped"].to_numpy())
    assert np.nanmax(sim) < DETAIL_THRESHOLD - 0.05
    assert near_duplicate_pairs(clean.fp).empty
    assert verified_near_pairs(clean.fp).empty  # nor does the geometric verification pair them


# ------------------------------------------------------------------ the writer


def test_writer_cli_and_refusal(tmp_path, capsys):
    assert main([str(tmp_path / "c"), "--clean"]) == 0
    assert capsys.readouterr().out.strip() == str((tmp_path / "c" / "cohort.yaml").resolve())
    again = write_trap_cohort(tmp_path / "c")  # an earlier trap cohort is replaced
    assert again["jpeg_copy"][1].endswith(".jpg") and len(list((tmp_path / "c" / "photos").iterdir())) == 56
    assert json.loads((tmp_path / "c" / "traps.json").read_text())["traps"] == again
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "mine.txt").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        write_trap_cohort(tmp_path / "other")
    assert main([str(tmp_path / "other")]) == 2
    assert JPEG_QUALITY == 85


def test_check_page_pictures_the_flagged_pairs_only_in_the_private_copy(trapped, tmp_path):
    """Issue 16 x 14: the pair thumbnails are patient images: in private/check.html, never in check.html."""
    from medxcept.workflows.check import check_cohort

    html = check_cohort(trapped.spec, trapped.cfg, out_dir=tmp_path, run_name="check")
    shared = html.read_text(encoding="utf-8")
    private = (html.parent / "private" / "check.html").read_text(encoding="utf-8")
    assert 'id="dup-pair-table"' in shared and 'id="dup-pair-table"' in private
    assert "data:image/png" not in shared.split('id="dup-pair-table"')[1].split("</table>")[0]
    table = private.split('id="dup-pair-table"')[1].split("</table>")[0]
    assert table.count('<img src="data:image/png;base64,') >= 2
    assert "keypoint inliers" in shared and "local document" in private
