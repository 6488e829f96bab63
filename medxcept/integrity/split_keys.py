"""The keys a split is made and recorded by: which rows must stay together (:func:`group_keys`: patients
joined through shared keys and duplicate groups), the machine-independent identity of rows and groups
(:func:`content_ids`, :func:`group_order_keys`), the split names (:data:`SPLITS`) and the split record by
content (:func:`split_table`, :func:`split_hash`).

:mod:`medxcept.integrity.splits` assigns splits and folds over these groups; see its docstring for why
groups are ordered by content, never by pseudonyms.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from medxcept.errors import ConfigError

__all__ = ["SPLITS", "group_keys", "content_ids", "group_order_keys", "split_table", "split_hash"]

SPLITS = ("train", "val", "test")


def group_keys(
    df: pd.DataFrame,
    group_column: str | None = None,
    *,
    merge: pd.Series | None = None,
) -> pd.Series:
    """Split group of every row: patients joined through shared keys.

    Parameters
    ----------
    df : pandas.DataFrame
        Cohort table with ``patient_key`` (and ``image_id`` when ``merge`` is given).
    group_column : str, optional
        Extra column whose equal values must stay together (missing values join nothing).
    merge : pandas.Series, optional
        Group id per ``image_id`` (:func:`medxcept.integrity.audit.duplicate_groups`): images with
        the same id, and so their patients, are joined.

    Returns
    -------
    pandas.Series
        Group name per row (index of ``df``): the smallest ``patient_key`` of the
        group, so names do not depend on row order.

    Notes
    -----
    Rows and key values form a bipartite graph; its connected components are the
    groups (the result of a union-find over all keys, computed with scipy in one pass).
    A patient seen at two sites joins both sites' groups, and so on transitively.
    """
    if "patient_key" not in df.columns:
        raise ConfigError("the cohort table lacks column 'patient_key' needed to split by patient")
    pk = df["patient_key"]
    if pk.isna().any() or (pk.astype(str) == "").any():
        raise ConfigError(
            f"{int(pk.isna().sum() + (pk.astype(str) == '').sum())} image(s) have no patient_key; "
            "every image needs a patient before splitting"
        )
    key_cols: list[pd.Series] = [pk.astype(str)]
    if group_column is not None:
        if group_column not in df.columns:
            raise ConfigError(f"split.group_column {group_column!r} is not a column of the cohort table")
        key_cols.append(df[group_column].astype("string"))
    if merge is not None:
        if "image_id" not in df.columns:
            raise ConfigError("merge groups need the cohort column 'image_id'")
        m = merge.copy()
        m.index = m.index.astype(str)
        key_cols.append(df["image_id"].astype(str).map(m).astype("string"))
    n = len(df)
    src: list[np.ndarray] = []
    dst: list[np.ndarray] = []
    offset = n
    for col in key_cols:
        codes, uniques = pd.factorize(col, use_na_sentinel=True)
        ok = codes >= 0
        src.append(np.nonzero(ok)[0])
        dst.append(codes[ok] + offset)
        offset += len(uniques)
    s = np.concatenate(src)
    d = np.concatenate(dst)
    graph = coo_matrix((np.ones(len(s), dtype=np.int8), (s, d)), shape=(offset, offset))
    _, comp = connected_components(graph, directed=False)
    row_comp = pd.Series(comp[:n], index=df.index)
    name = pk.astype(str).groupby(row_comp).transform("min")
    return name.rename("split_group")


def content_ids(df: pd.DataFrame) -> pd.Series:
    """Machine-independent identity of every row: ``"<file sha256>#<frame>"``.

    Falls back, for tables without a ``sha256`` column (or rows with an empty one), to the
    raw ``patient_id`` (in memory only) and then to ``patient_key`` + ``image_id``; those
    fallbacks are only as stable as the identifiers they use.
    """
    fallback = (
        "id:" + df["patient_id"].astype(str)
        if "patient_id" in df.columns
        else "key:" + df["patient_key"].astype(str) + "/" + (
            df["image_id"].astype(str) if "image_id" in df.columns else pd.Series("", index=df.index))
    )
    if "sha256" not in df.columns:
        return fallback.rename("content_id")
    sha = df["sha256"].astype("string").fillna("")
    frame = pd.to_numeric(df["frame"], errors="coerce").fillna(0).astype(int).astype(str) if "frame" in df.columns \
        else pd.Series("0", index=df.index)
    out = (sha + "#" + frame).astype(object)
    return out.where(sha != "", fallback).rename("content_id")


def group_order_keys(df: pd.DataFrame, row_group: np.ndarray, n_groups: int) -> np.ndarray:
    """Canonical rank of each group, from content only (never from pseudonyms or image ids).

    Parameters
    ----------
    df : pandas.DataFrame
        The rows (``sha256``/``frame``; see :func:`content_ids` for the fallbacks).
    row_group : numpy.ndarray
        Group index (0..n_groups-1) of every row.
    n_groups : int
        Number of groups.

    Returns
    -------
    numpy.ndarray
        ``order`` such that ``order[r]`` is the group at canonical position ``r``: groups
        sorted by the sha256 of their sorted row identities; ties (groups holding exactly
        the same images) by their smallest raw ``patient_id`` when the table has it.
    """
    ids = content_ids(df).to_numpy()
    members: list[list[str]] = [[] for _ in range(n_groups)]
    for g, ident in zip(row_group.tolist(), ids.tolist(), strict=True):
        members[g].append(str(ident))
    digest = np.array(
        [hashlib.sha256("\n".join(sorted(m)).encode("utf-8")).hexdigest() for m in members], dtype=object
    )
    if "patient_id" in df.columns:
        tie = pd.Series(df["patient_id"].astype(str).to_numpy()).groupby(row_group).min()
        tie_arr = tie.reindex(range(n_groups)).fillna("").to_numpy(dtype=object)
    else:
        tie_arr = np.full(n_groups, "", dtype=object)
    return np.lexsort((tie_arr.astype(str), digest.astype(str)))


def split_table(df: pd.DataFrame) -> pd.DataFrame:
    """The split record: ``image_id, patient_key, split, fold``, sorted by ``image_id``.

    A missing ``split`` becomes ``""`` and a missing ``fold`` is left empty (NA), so the
    table (and :func:`split_hash`) is defined for split-only or fold-only cohorts.
    """
    for c in ("image_id", "patient_key"):
        if c not in df.columns:
            raise ConfigError(f"split_table: the cohort table lacks column {c!r}")
    if "split" not in df.columns and "fold" not in df.columns:
        raise ConfigError("split_table: the cohort has neither 'split' nor 'fold'; assign them first")
    out = pd.DataFrame(
        {
            "image_id": df["image_id"].astype(str).to_numpy(),
            "patient_key": df["patient_key"].astype(str).to_numpy(),
            "split": df["split"].astype(str).to_numpy() if "split" in df.columns else "",
            "fold": (
                pd.to_numeric(df["fold"], errors="coerce").astype("Int64").to_numpy()
                if "fold" in df.columns
                else pd.array([pd.NA] * len(df), dtype="Int64")
            ),
        }
    )
    return out.sort_values("image_id", kind="stable").reset_index(drop=True)


def split_hash(df: pd.DataFrame) -> str:
    """sha256 (hex) of the split by content; equal splits, equal hash, on any machine.

    With a ``sha256`` column: the hash of the sorted ``sha256#frame,split,fold`` lines
    (:func:`content_ids`), so it names neither pseudonyms nor ``image_id`` and two machines
    (with different pseudonym keys or data folders) get the same hash for the same split.
    Without one (hand-made tables): the canonical CSV of :func:`split_table`.
    """
    if "sha256" not in df.columns:
        csv = split_table(df).to_csv(index=False, lineterminator="\n")
        return hashlib.sha256(csv.encode("utf-8")).hexdigest()
    if "split" not in df.columns and "fold" not in df.columns:
        raise ConfigError("split_hash: the cohort has neither 'split' nor 'fold'; assign them first")
    split = df["split"].astype(str).to_numpy() if "split" in df.columns else np.full(len(df), "", dtype=object)
    fold = (
        pd.to_numeric(df["fold"], errors="coerce").astype("Int64").astype(str).replace("<NA>", "").to_numpy()
        if "fold" in df.columns
        else np.full(len(df), "", dtype=object)
    )
    lines = sorted(f"{c},{s},{f}" for c, s, f in zip(content_ids(df).to_numpy(), split, fold, strict=True))
    return hashlib.sha256(("content_id,split,fold\n" + "\n".join(lines) + "\n").encode("utf-8")).hexdigest()

