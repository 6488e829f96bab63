"""Tests of medxcept.integrity.splits: patient-level, stratified, feasible-or-SplitError."""

from __future__ import annotations

import hashlib
import itertools
import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from medxcept.config import load_config
from medxcept.errors import ConfigError, SplitError
from medxcept.integrity.audit import audit_cohort
from medxcept.integrity.split_keys import group_keys, split_hash, split_table
from medxcept.integrity.splits import (
    SplitConfig,
    assign_folds,
    assign_splits,
    check_feasible,
    resolve_user_split,
)
from medxcept.integrity.user_split import USER_SPLIT_REGROUP_MESSAGE, is_split_file, read_user_split

CLASSES = ["normal", "mild", "severe"]


def cohort(labels_per_patient: list[list[int]], *, prefix: str = "P-") -> pd.DataFrame:
    """One row per image; patient ``p`` holds images with the given class indices."""
    rows = []
    for p, ys in enumerate(labels_per_patient):
        for k, y in enumerate(ys):
            rows.append(
                {
                    "image_id": f"img{p:03d}_{k}",
                    "path": f"/data/site/{p:03d}_{k}.png",
                    "patient_id": f"MRN{9000 + p}",
                    "patient_key": f"{prefix}{p:04d}",
                    "study_id": "S1",
                    "laterality": "LR"[k % 2],
                    "label": CLASSES[y],
                    "y": y,
                }
            )
    return pd.DataFrame(rows)


def simple_cohort(n_per_class: tuple[int, ...], images: int = 2, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    pats = [[c] * int(rng.integers(1, images + 1)) for c, n in enumerate(n_per_class) for _ in range(n)]
    order = rng.permutation(len(pats))
    return cohort([pats[i] for i in order])


def assert_folds_valid(out: pd.DataFrame, k: int) -> None:
    classes = set(out["y"])
    cv = out[out["fold"] >= 0]
    assert set(cv["fold"]) == set(range(k))
    assert (cv.groupby("patient_key")["fold"].nunique() == 1).all(), "a patient spans folds"
    for i in range(k):
        assert set(cv.loc[cv["fold"] == i, "y"]) == classes, f"fold {i} validation lacks a class"
        assert set(cv.loc[cv["fold"] != i, "y"]) == classes, f"fold {i} training lacks a class"


# ------------------------------------------------------------------ config


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"test_fraction": 0.5, "val_fraction": 0.5}, "test_fraction + split.val_fraction"),
        ({"n_folds": 1}, "n_folds"),
        ({"n_folds": 2.5}, "n_folds"),
        ({"n_folds": True}, "n_folds"),
        ({"seed": -1}, "seed"),
        ({"group_column": ""}, "group_column"),
        ({"patient_label": "min"}, "patient_label"),
        ({"user_split": ""}, "user_split"),
        ({"user_split": 3}, "user_split"),
        ({"inner_val_fraction": 0.0}, "inner_val_fraction"),
        ({"inner_val_fraction": 1.0}, "inner_val_fraction"),
        ({"inner_val_fraction": True}, "inner_val_fraction"),
    ],
)
def test_config_errors_name_field_and_value(kwargs, field):
    with pytest.raises(ConfigError) as exc:
        SplitConfig(**kwargs)
    msg = str(exc.value)
    assert field in msg
    assert repr(next(iter(kwargs.values()))) in msg


# ------------------------------------------------------------------ splits


def test_assign_splits_patient_level_stratified_and_fractions():
    df = simple_cohort((30, 20, 10), images=4)
    out = assign_splits(df, SplitConfig(test_fraction=0.2, val_fraction=0.2, seed=3))
    assert out is not df and "split" not in df.columns  # input untouched
    assert (out.groupby("patient_key")["split"].nunique() == 1).all()
    pat = out.drop_duplicates("patient_key")
    counts = pd.crosstab(pat["label"], pat["split"])
    # exact stratification: 20 % of 30/20/10 patients in val and in test
    assert counts.loc["normal"].to_dict() == {"test": 6, "train": 18, "val": 6}
    assert counts.loc["mild"].to_dict() == {"test": 4, "train": 12, "val": 4}
    assert counts.loc["severe"].to_dict() == {"test": 2, "train": 6, "val": 2}


def test_assign_splits_deterministic_and_row_order_free():
    df = simple_cohort((15, 12), images=3)
    cfg = SplitConfig(seed=7)
    a = assign_splits(df, cfg).set_index("image_id")["split"]
    b = assign_splits(df.sample(frac=1.0, random_state=1), cfg).set_index("image_id")["split"]
    assert a.sort_index().equals(b.sort_index())
    c = assign_splits(df, SplitConfig(seed=8)).set_index("image_id")["split"]
    assert not a.sort_index().equals(c.sort_index())


@pytest.mark.filterwarnings("ignore:The (val|test) split holds a single")
def test_patient_label_max_puts_mixed_patient_in_severe_stratum():
    # 5 patients with one normal and one severe eye: by "max" they are severe patients
    df = cohort([[0, 2]] * 5 + [[0, 0]] * 5)
    cfg = SplitConfig(test_fraction=0.2, val_fraction=0.2)
    out = assign_splits(df, cfg)
    pat = out.drop_duplicates("patient_key")
    mixed = pat[pat["patient_key"] < "P-0005"]
    assert (mixed["split"].value_counts().sort_index() == pd.Series({"test": 1, "train": 3, "val": 1})).all()


@pytest.mark.filterwarnings("ignore:The (val|test) split holds a single")
def test_split_error_names_classes_and_counts():
    df = simple_cohort((10, 2))
    with pytest.raises(SplitError) as exc:
        assign_splits(df, SplitConfig())
    msg = str(exc.value)
    assert "'mild'" in msg and "'normal': 10 patient(s)" in msg and "'mild': 2 patient(s)" in msg
    # without a validation split two patients suffice
    out = assign_splits(df, SplitConfig(val_fraction=0.0))
    assert set(out["split"]) == {"train", "test"}


def test_single_patient_in_val_warns():
    df = simple_cohort((20, 3))
    with pytest.warns(UserWarning, match="single patient"):
        assign_splits(df, SplitConfig())


def test_group_column_union_find_is_transitive():
    # P0 and P1 share site A; P1 and P2 share family F: all three must stay together
    df = simple_cohort((12, 12), images=1)
    df["group"] = [f"g{i}" for i in range(len(df))]
    keys = df["patient_key"].tolist()
    df.loc[0, "group"] = "A"
    df.loc[1, "group"] = "A"
    extra = df.iloc[[1, 2]].copy()
    extra["image_id"] = ["x1", "x2"]
    extra["group"] = "F"
    df = pd.concat([df, extra], ignore_index=True)
    g = group_keys(df, "group")
    assert g[df["patient_key"].isin(keys[:3])].nunique() == 1
    assert g[df["patient_key"].isin(keys[:3])].iloc[0] == min(keys[:3])
    assert g.nunique() == 24 - 2
    for seed in range(5):
        out = assign_splits(df, SplitConfig(group_column="group", seed=seed))
        assert out.loc[df["patient_key"].isin(keys[:3]), "split"].nunique() == 1


def test_merge_groups_keep_duplicates_together():
    df = simple_cohort((12, 12), images=1)
    merge = pd.Series(np.arange(len(df)), index=df["image_id"])
    merge.iloc[5] = merge.iloc[17]  # image 5 duplicates image 17 (another patient)
    for seed in range(6):
        out = assign_splits(df, SplitConfig(seed=seed), merge=merge)
        assert out.loc[5, "split"] == out.loc[17, "split"]
        folds = assign_folds(out, SplitConfig(seed=seed, n_folds=3), merge=merge)
        assert folds.loc[5, "fold"] == folds.loc[17, "fold"]


# ------------------------------------------------------------------ folds


def test_assign_folds_excludes_test_and_balances():
    df = assign_splits(simple_cohort((25, 15)), SplitConfig(seed=1))
    out = assign_folds(df, SplitConfig(n_folds=5, seed=1))
    assert ((out["fold"] == -1) == (out["split"] == "test")).all()
    assert out["fold"].dtype.kind == "i"
    assert_folds_valid(out, 5)
    pat = out[out["fold"] >= 0].drop_duplicates("patient_key")
    per_fold = pd.crosstab(pat["label"], pat["fold"])
    assert (per_fold.max(axis=1) - per_fold.min(axis=1) <= 1).all()  # classes spread within one patient
    # all rows folded when the test split is not excluded
    assert (assign_folds(df, SplitConfig(n_folds=5), exclude_test=False)["fold"] >= 0).all()


def test_infeasible_folds_raise_split_error_with_largest_k():
    df = simple_cohort((20, 3))
    with pytest.raises(SplitError) as exc:
        check_feasible(df, 5)
    msg = str(exc.value)
    assert "'mild': 3 patient(s)" in msg and "'normal': 20 patient(s)" in msg
    assert "largest number of folds that works is 3" in msg
    with pytest.raises(SplitError):
        assign_folds(df, SplitConfig(n_folds=5))
    # scikit-learn's splitter accepts this cohort silently and yields a fold without 'mild'
    from sklearn.model_selection import StratifiedGroupKFold

    lacking = [
        len(set(df["y"].iloc[va])) < 2
        for _, va in StratifiedGroupKFold(5, shuffle=True, random_state=0).split(df, df["y"], df["patient_key"])
    ]
    assert any(lacking)


def test_one_patient_class_has_no_feasible_k():
    with pytest.raises(SplitError, match="No cross-validation is possible"):
        check_feasible(simple_cohort((10, 1)), 2)


def test_thin_but_feasible_warns_and_returns_counts():
    df = simple_cohort((20, 6))
    with pytest.warns(UserWarning, match="single patient"):
        counts = check_feasible(df, 5)
    assert counts == {"normal": 20, "mild": 6}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_feasible(simple_cohort((20, 10)), 5)


@st.composite
def cohorts(draw, mixed: bool = False):
    n_classes = draw(st.integers(2, 3))
    n_pat = draw(st.integers(2, 7 if mixed else 30))
    pats = []
    for _ in range(n_pat):
        n_img = draw(st.integers(1, 4 if not mixed else 3))
        if mixed:
            pats.append(draw(st.lists(st.integers(0, n_classes - 1), min_size=n_img, max_size=n_img)))
        else:
            pats.append([draw(st.integers(0, n_classes - 1))] * n_img)
    k = draw(st.integers(2, 3 if mixed else 6))
    seed = draw(st.integers(0, 2**16))
    return cohort(pats), k, seed


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts())
def test_property_folds_valid_or_truly_infeasible(case):
    df, k, seed = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = assign_folds(df, SplitConfig(n_folds=k, seed=seed))
        except SplitError:
            # one class per patient: infeasible exactly when a present class has < k patients
            assert df.drop_duplicates("patient_key")["y"].value_counts().min() < k
            return
    assert df.drop_duplicates("patient_key")["y"].value_counts().min() >= k
    assert_folds_valid(out, k)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts())
def test_property_splits_patient_level_every_class(case):
    df, _, seed = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = assign_splits(df, SplitConfig(seed=seed))
        except SplitError:
            assert df.drop_duplicates("patient_key")["y"].value_counts().min() < 3
            return
    assert (out.groupby("patient_key")["split"].nunique() == 1).all()
    for s in ("train", "val", "test"):
        assert set(out.loc[out["split"] == s, "y"]) == set(df["y"])


def brute_force_feasible(df: pd.DataFrame, k: int) -> bool:
    pats = sorted(df["patient_key"].unique())
    classes = set(df["y"])
    sets = [set(df.loc[df["patient_key"] == p, "y"]) for p in pats]
    for assign in itertools.product(range(k), repeat=len(pats)):
        val = [set().union(*[s for s, a in zip(sets, assign, strict=False) if a == f]) for f in range(k)]
        if all(v == classes for v in val):  # with k >= 2 the training parts then hold every class too
            return True
    return False


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cohorts(mixed=True))
def test_property_mixed_patients_error_only_when_infeasible(case):
    df, k, seed = case
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            out = assign_folds(df, SplitConfig(n_folds=k, seed=seed))
        except SplitError:
            assert not brute_force_feasible(df, k)
            return
    assert_folds_valid(out, k)


# ------------------------------------------------------------------ records


def test_split_table_and_hash_known_value():
    df = pd.DataFrame(
        {"image_id": ["b", "a"], "patient_key": ["P-2", "P-1"], "split": ["test", "train"], "fold": [-1, 0]}
    )
    table = split_table(df)
    assert table["image_id"].tolist() == ["a", "b"]
    expected = "image_id,patient_key,split,fold\na,P-1,train,0\nb,P-2,test,-1\n"
    assert split_hash(df) == hashlib.sha256(expected.encode()).hexdigest()
    assert split_hash(df.iloc[::-1]) == split_hash(df)
    changed = df.assign(split=["train", "train"])
    assert split_hash(changed) != split_hash(df)
    # fold-less tables hash with an empty fold
    only = df.drop(columns="fold")
    assert split_hash(only) == hashlib.sha256(
        b"image_id,patient_key,split,fold\na,P-1,train,\nb,P-2,test,\n"
    ).hexdigest()


def test_split_hash_stable_across_runs():
    df = simple_cohort((15, 15))
    cfg = SplitConfig(seed=11, n_folds=3)
    h1 = split_hash(assign_folds(assign_splits(df, cfg), cfg))
    h2 = split_hash(assign_folds(assign_splits(df.copy(), cfg), cfg))
    assert h1 == h2 and len(h1) == 64


def test_read_user_split_column_and_bad_value():
    df = simple_cohort((4, 4), images=1)
    df["my_split"] = ["Train", "validation", "test", "train"] * 2
    out = read_user_split(df, "my_split")
    assert out["split"].tolist()[:4] == ["train", "val", "test", "train"]
    df.loc[2, "my_split"] = "tset"
    with pytest.raises(ConfigError, match=r"row 3 .*'tset'"):
        read_user_split(df, "my_split")


def test_read_user_split_csv(tmp_path):
    df = simple_cohort((3, 3), images=1)
    f = tmp_path / "split.csv"
    pd.DataFrame(
        {"file": [p.split("/")[-1] for p in df["path"]], "split": ["train", "val", "test"] * 2,
         "fold": ["0", "1", "", "1", "0", "-1"]}
    ).to_csv(f, index=False)
    out = read_user_split(df, f)
    assert out["split"].tolist() == ["train", "val", "test"] * 2
    assert out["fold"].tolist() == [0, 1, -1, 1, 0, -1]

    pd.DataFrame({"image_id": df["image_id"], "split": ["train", "val", "test", "train", "oops", "test"]}).to_csv(
        f, index=False
    )
    with pytest.raises(ConfigError, match=r"row 5 .*'oops'"):
        read_user_split(df, f)
    pd.DataFrame({"image_id": list(df["image_id"][:5]) + ["ghost"], "split": ["train"] * 6}).to_csv(f, index=False)
    with pytest.raises(ConfigError, match=r"row 6 names image 'ghost'"):
        read_user_split(df, f)
    pd.DataFrame({"image_id": df["image_id"][:5], "split": ["train"] * 5}).to_csv(f, index=False)
    with pytest.raises(ConfigError, match="1 cohort image"):
        read_user_split(df, f)
    with pytest.raises(ConfigError, match="neither a column"):
        read_user_split(df, tmp_path / "missing.csv")


# ------------------------------------------------------------------ user-supplied split wired in


def _user_split_file(df: pd.DataFrame, path, splits: list[str]) -> None:
    pd.DataFrame({"file": [p.split("/")[-1] for p in df["path"]], "split": splits}).to_csv(path, index=False)


def test_assign_splits_uses_the_user_split_and_does_not_resplit(tmp_path):
    df = simple_cohort((4, 4), images=2, seed=1)
    # a deliberately odd split that assign_splits would never make: patient 0's images apart
    splits = ["test" if k % 3 == 0 else "train" if k % 3 == 1 else "val" for k in range(len(df))]
    f = tmp_path / "split.csv"
    _user_split_file(df, f, splits)
    for cfg in (SplitConfig(user_split=str(f)), SplitConfig(user_split=str(f), seed=5, test_fraction=0.5)):
        out = assign_splits(df, cfg)
        assert out["split"].tolist() == splits  # fractions and seed play no part
    df["my_split"] = splits
    assert assign_splits(df, SplitConfig(user_split="my_split"))["split"].tolist() == splits
    # the audit then catches the split's patient overlap, by pseudonym only
    out = assign_splits(df, SplitConfig(user_split="my_split"))
    overlap = audit_cohort(out).by_kind("patient_overlap")[0]
    spread = out.groupby("patient_key")["split"].nunique()
    assert overlap.severity == "error" and overlap.count == int((spread > 1).sum())
    assert {d["patient_key"] for d in overlap.details} == set(spread[spread > 1].index)
    assert "MRN" not in str(overlap.to_dict())


def test_user_split_refuses_regrouping():
    df = simple_cohort((3, 3), images=1)
    df["s"] = ["train", "val", "test"] * 2
    merge = pd.Series(np.arange(len(df)), index=df["image_id"])
    with pytest.raises(ConfigError) as exc:
        assign_splits(df, SplitConfig(user_split="s"), merge=merge)
    assert str(exc.value).startswith(
        "a user-supplied split is audited, never re-grouped: fix the split file or use on_leak: warn"
    )
    assert str(exc.value) == USER_SPLIT_REGROUP_MESSAGE


def test_user_split_file_or_column_and_resolution(tmp_path):
    assert [is_split_file(v) for v in ("split", "fold_a", "s.csv", "S.TSV", "x.txt", "lists/s", r"a\\b")] == [
        False, False, True, True, True, True, True]
    cfg = SplitConfig(user_split="lists/split.csv")
    assert resolve_user_split(cfg, tmp_path).user_split == str(tmp_path / "lists" / "split.csv")
    assert resolve_user_split(cfg, None) is cfg
    assert resolve_user_split(SplitConfig(user_split="split"), tmp_path).user_split == "split"  # a column
    absolute = SplitConfig(user_split=str(tmp_path / "s.csv"))
    assert resolve_user_split(absolute, "/elsewhere") == absolute
    # load_config resolves against the cohort folder wherever the option was set
    run = tmp_path / "run.yaml"
    run.write_text("split: {user_split: other.csv}\n", encoding="utf-8")
    for kwargs, want in (
        ({"cohort_defaults": {"split": {"user_split": "split.csv"}}}, "split.csv"),
        ({"config_file": run}, "other.csv"),
        ({"overrides": {"split.user_split": "cli.csv"}}, "cli.csv"),
    ):
        assert load_config(cohort_dir=tmp_path / "cohort", **kwargs).split.user_split == str(tmp_path / "cohort" / want)
    assert load_config(overrides={"split.user_split": "cli.csv"}).split.user_split == "cli.csv"


def test_user_split_tsv_and_missing_file_named(tmp_path):
    df = simple_cohort((3, 3), images=1)
    f = tmp_path / "split.tsv"
    pd.DataFrame({"image_id": df["image_id"], "split": ["train", "val", "test"] * 2}).to_csv(f, sep="\t", index=False)
    assert assign_splits(df, SplitConfig(user_split=str(f)))["split"].tolist() == ["train", "val", "test"] * 2
    cfg = resolve_user_split(SplitConfig(user_split="nope.csv"), tmp_path)
    with pytest.raises(ConfigError, match=str(tmp_path / "nope.csv")):
        assign_splits(df, cfg)


# ------------------------------------------------------------------ machine independence (issue 21)


def _with_content(df: pd.DataFrame, salt: str = "") -> pd.DataFrame:
    """Give every image a file hash (its content) and re-key the patients with ``salt``."""
    out = df.copy()
    out["sha256"] = [hashlib.sha256(f"img-{i}".encode()).hexdigest() for i in out["image_id"]]
    out["frame"] = 0
    out["patient_id"] = out["patient_key"].str.replace("P-", "MRN-")
    out["patient_key"] = [f"P-{hashlib.sha256((salt + p).encode()).hexdigest()[:10]}" for p in out["patient_id"]]
    out["image_id"] = [f"I-{hashlib.sha256((salt + i).encode()).hexdigest()[:10]}" for i in out["image_id"]]
    return out.sort_values("patient_key", kind="stable").reset_index(drop=True)  # as ingestion orders it


@pytest.mark.filterwarnings("ignore:With 3 folds")
def test_split_and_folds_independent_of_pseudonyms_and_image_ids():
    """Re-keying patients and image ids (another machine's key) moves nobody; the split hash is equal."""
    base = simple_cohort((16, 12, 10), images=3, seed=5)
    a, b = _with_content(base, "key-A"), _with_content(base, "key-B")
    assert not set(a["patient_key"]) & set(b["patient_key"])
    cfg = SplitConfig(seed=4, n_folds=3)
    sa, sb = (assign_folds(assign_splits(t, cfg), cfg) for t in (a, b))
    by_raw = [t.set_index("sha256")[["patient_id", "split", "fold"]].sort_index() for t in (sa, sb)]
    assert by_raw[0].equals(by_raw[1])
    assert split_hash(sa) == split_hash(sb)
    moved = assign_splits(a, SplitConfig(seed=5)).set_index("sha256")["split"].sort_index()
    assert not moved.equals(by_raw[0]["split"])  # the seed, not the key, decides


def test_user_split_agreement_says_whether_the_seed_gives_the_same_split(tmp_path, caplog):
    import logging

    from medxcept.integrity.splits import user_split_agreement

    df = _with_content(simple_cohort((12, 10), images=2, seed=2), "here")
    cfg = SplitConfig(seed=3)
    # the split another machine (other pseudonym key, other image ids) computed with the same seed
    there = assign_splits(_with_content(simple_cohort((12, 10), images=2, seed=2), "there"), cfg)
    path = tmp_path / "split.csv"
    by_content = there.set_index("sha256")["split"]
    pd.DataFrame({"image_id": df["image_id"], "split": df["sha256"].map(by_content)}).to_csv(path, index=False)
    user_cfg = SplitConfig(seed=3, user_split=str(path))
    with caplog.at_level(logging.INFO, logger="medxcept.integrity.splits"):
        got = user_split_agreement(assign_splits(df, user_cfg), user_cfg)
    assert got["equals_seeded_split"] is True and got["n_images_differ"] == 0
    assert got["user_split_hash"] == got["seeded_split_hash"] == split_hash(there)
    assert "equals the split seed 3 gives" in caplog.text
    # one patient moved to another split by hand
    table = pd.read_csv(path)
    pk = df.set_index("image_id")["patient_key"]
    first = pk[table["image_id"].iloc[0]]
    rows = table["image_id"].map(pk) == first
    table.loc[rows, "split"] = table.loc[rows, "split"].map({"train": "test", "val": "train", "test": "train"})
    table.to_csv(path, index=False)
    with caplog.at_level(logging.INFO, logger="medxcept.integrity.splits"):
        got = user_split_agreement(assign_splits(df, user_cfg), user_cfg)
    assert got["equals_seeded_split"] is False and got["user_split_hash"] != got["seeded_split_hash"]
    assert got["n_images_differ"] == int(rows.sum()) and got["n_patients_differ"] == 1
    assert "differs from the split seed 3 gives on this data" in caplog.text


@pytest.mark.slow
def test_demo_split_and_folds_same_under_two_pseudonym_keys(tmp_path, session_cache, monkeypatch):
    """The demo cohort (cohorts/demo.yaml: 110 patients; images generated at half size to save test
    time) checked (ingest, split, audit; no training) as on two machines: two MEDXCEPT_CACHE folders,
    so two random pseudonym keys, two data folders and a cold then a warm preprocessing cache. The
    patients' splits and folds, compared through the raw IDs of private/patient_map.csv, are the
    same; so are the data hash, the split hash and the audit findings."""
    import dataclasses
    import json
    import shutil
    from pathlib import Path

    from medxcept.cohort.ingest import data_root
    from medxcept.cohort.table import load_cohort_spec
    from medxcept.evaluation.reproduce import compare_runs
    from medxcept.workflows.check import check_cohort
    from medxcept.workflows.steps import materialize

    repo = Path(__file__).resolve().parent.parent
    spec = load_cohort_spec(repo / "cohorts" / "demo.yaml")
    spec = dataclasses.replace(spec, pseudonym_salt=None,  # the per-machine random key
                               generator_options={**spec.generator_options, "size_scale": 0.5})
    cfg = load_config(cohort_defaults=spec.defaults, overrides={"preprocess.image_px": 71})
    # decode in this process: a spawned pool's start-up (about 7 CPU s a run) tests nothing here; the
    # pool gives the same table (tests/test_ingest_mixed.py::test_a_process_pool_ingests_the_corpus_exactly_as_one_process)
    monkeypatch.setattr("medxcept.cohort.ingest.POOL_MIN_SECONDS", float("inf"))
    runs = []
    for name in ("a", "b"):
        monkeypatch.setenv("MEDXCEPT_CACHE", str(tmp_path / f"cache-{name}"))
        if name == "b":  # the same files (the generator is deterministic), in another folder
            shutil.copytree(first_root, tmp_path / "cache-b" / first_root.relative_to(tmp_path / "cache-a"))
        first_root = data_root(materialize(spec))
        runs.append(check_cohort(spec, cfg, out_dir=tmp_path / "reports", run_name=name).parent)

    def by_patient(run: Path) -> tuple[pd.DataFrame, pd.Series]:
        pmap = pd.read_csv(run / "private" / "patient_map.csv", dtype=str)
        table = pd.read_csv(run / "cohort.csv", keep_default_na=False, dtype={"sha256": str})
        raw = table["patient_key"].map(pmap.set_index("patient_key")["patient_id"])
        assert raw.notna().all()
        return table, pd.Series(table["split"].to_numpy(), index=raw.to_numpy()).groupby(level=0).first()

    (ta, split_a), (tb, split_b) = by_patient(runs[0]), by_patient(runs[1])
    keys_a, keys_b = set(ta["patient_key"]), set(tb["patient_key"])
    assert len(keys_a) == 110 and not keys_a & keys_b  # two different pseudonym keys
    assert split_a.sort_index().equals(split_b.sort_index())
    assert split_a.value_counts().to_dict()["test"] >= 15
    va, vb = (json.loads((r / "versions.json").read_text()) for r in runs)
    assert va["data_hash"] == vb["data_hash"] and va["split_hash"] == vb["split_hash"]
    rep = compare_runs(runs[0], runs[1], data_only=True)  # audit findings, pairs compared by content
    assert rep.reproduced, rep.table()

    # k-fold assignment (the function pipelines.kfold uses), from each machine's saved table
    def folds_by_raw(run: Path, table: pd.DataFrame, seed: int) -> pd.Series:
        pmap = pd.read_csv(run / "private" / "patient_map.csv", dtype=str).set_index("patient_key")["patient_id"]
        out = assign_folds(table, SplitConfig(n_folds=5, seed=seed))
        return pd.Series(out["fold"].to_numpy(), index=table["patient_key"].map(pmap).to_numpy()) \
            .groupby(level=0).first().sort_index()

    fa, fb = folds_by_raw(runs[0], ta, 0), folds_by_raw(runs[1], tb, 0)
    assert fa.equals(fb) and set(fa) == {-1, 0, 1, 2, 3, 4}
    assert not fa.equals(folds_by_raw(runs[0], ta, 1))  # the seed does move the folds
