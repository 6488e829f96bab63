"""Patient-level train/val/test splits and cross-validation folds.

Images of one person are strongly correlated (both eyes, every visit, repeat shots),
so a split that puts some of them in training and others in testing measures memory,
not diagnosis. Every function here splits **groups**, never images:

* a group is a patient (``patient_key``), merged with every patient that shares a value
  of an optional extra column (``group_column``: a family, a site) and with every
  image the audit found duplicated (``merge=``, from
  :func:`medxcept.integrity.audit.duplicate_groups`); the merging is a connected-components
  (union-find) pass over these keys;
* a group's class is the *patient label*: its most severe class (highest ``y``) by
  default, since a patient with one diseased eye is a diseased patient.

Splits are stratified on the patient label and every split / fold is guaranteed to
hold every class, in its training part and in its validation part, so that AUC is
always defined ("Only one class present in y_true" cannot happen). When that is
impossible, :class:`~medxcept.errors.SplitError` says so *before* training, with the
number of patients per class and the largest number of folds that would work.

The assignment is a function of the data, the configuration and the seed only: it does
not depend on the row order of the cohort table, nor on the machine. Before the seeded
shuffle, groups are put in a canonical order by a digest of their *content*: the sorted
``sha256#frame`` of every image of the group (:func:`group_order_keys`). Neither the
pseudonym ``patient_key`` (keyed with a per-machine secret) nor ``image_id`` decides
anything, so the same files, labels and patients give the same split on any machine, and
also after the patient IDs are pseudonymized again. The digest is computed in memory and
never written out. A table without ``sha256`` (hand-made tables) falls back to the raw
``patient_id``, then to ``patient_key``. :func:`split_hash` fingerprints the result for
the run record, also by content (so two machines' hashes compare).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from medxcept.errors import ConfigError, SplitError

__all__ = [
    "SPLITS",
    "SplitConfig",
    "group_keys",
    "group_order_keys",
    "content_ids",
    "assign_splits",
    "assign_folds",
    "check_feasible",
    "split_table",
    "split_hash",
    "read_user_split",
    "resolve_user_split",
    "user_split_agreement",
    "is_split_file",
    "USER_SPLIT_REGROUP_MESSAGE",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
PATIENT_LABEL_RULES = ("max", "mode")
_SPLIT_FILE_SUFFIXES = (".csv", ".tsv", ".txt")

USER_SPLIT_REGROUP_MESSAGE = (
    "a user-supplied split is audited, never re-grouped: fix the split file or use on_leak: warn "
    "(split.user_split is set and audit.on_leak is 'fix', which would move images between the user's splits)"
)

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "holdout": "test",
}


@dataclass(frozen=True)
class SplitConfig:
    """How the cohort is split.

    Parameters
    ----------
    test_fraction : float, default 0.2
        Share of *patients* held out for the final test, in [0, 1); 0 = no test split.
    val_fraction : float, default 0.2
        Share of patients for validation (early stopping, calibration), in [0, 1).
    n_folds : int, default 5
        Cross-validation folds over the non-test patients (>= 2).
    inner_val_fraction : float, optional
        Cross-validation only: the share of each fold's *training-fold patients* set aside as
        its inner validation split (early stopping, calibration, threshold, decision rule), in
        (0, 1). Patient-grouped and stratified exactly like the single run's validation split
        (:func:`assign_splits`). Default (None): ``val_fraction``; a cross-validation with
        ``val_fraction`` 0 and no ``inner_val_fraction`` is refused. Left out of the
        configuration hash while None (it is then fully given by ``val_fraction``), so
        configurations written before the field existed keep their hash.
    seed : int, default 0
        Seed of the group shuffle; same seed, same data, same split, on any machine (groups
        are ordered by content before the shuffle, never by their pseudonyms).
    group_column : str, optional
        Extra grouping column beyond the patient (``"group"``, ``"site"``): patients
        sharing a value always land in the same split.
    patient_label : {"max", "mode"}, default "max"
        Class of a patient whose images disagree: the most severe (highest ``y``),
        or the most frequent (ties: most severe).
    user_split : str, optional
        Use the user's own split instead of computing one: either the name of a cohort
        table column holding ``train`` / ``val`` / ``test`` (aliases such as
        ``validation`` or ``holdout`` are accepted), or a CSV file with columns
        ``file`` (file name, or path) or ``image_id``, ``split`` and optionally ``fold``
        (see :func:`read_user_split`). A value ending in ``.csv``, ``.tsv`` or ``.txt``, or
        holding a ``/``, is a file; anything else is a column name. A relative file path
        is resolved against the **cohort file's folder** (like a source's ``root``), by
        :func:`resolve_user_split`, which :func:`medxcept.config.load_config` applies when
        given ``cohort_dir``. With a user split, ``test_fraction``, ``val_fraction`` and
        ``seed`` are ignored and nothing is re-split: the split is **audited**
        (:func:`medxcept.integrity.audit.audit_cohort`), and a patient in two splits is an error under
        ``audit.on_leak: error``. ``audit.on_leak: fix`` is refused (a user-supplied split
        is audited, never re-grouped). A training run also says (log line, ``versions.json``
        ``reproduce.user_split``, report) whether the supplied split equals the split ``seed``
        gives on this data (:func:`user_split_agreement`): a split made by medxcept on another
        machine with the same configuration and seed does.

    Notes
    -----
    How to supply a split, from the cohort file (``cohorts/<name>.yaml``)::

        defaults:
          split: {user_split: split.csv}   # next to the cohort file: file,split[,fold]

    or on the command line, ``--set split.user_split=split.csv``. The CSV route is the one
    that works today for every source kind. A split column of a label table would be
    mapped into the cohort table with the source's ``columns: {split: split}`` and then
    named here (``user_split: split``); this needs ingestion to carry such mapped columns
    into the table, which :mod:`medxcept.cohort.ingest` does only for ``source``, ``sex``, ``age``
    and ``visit`` at present.
    """

    test_fraction: float = 0.2
    val_fraction: float = 0.2
    n_folds: int = 5
    seed: int = 0
    group_column: str | None = None
    patient_label: str = "max"
    user_split: str | None = None
    inner_val_fraction: float | None = None

    def __post_init__(self) -> None:
        for name in ("test_fraction", "val_fraction"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v < 1.0:
                raise ConfigError(f"split.{name} must be a number in [0, 1), got {v!r}")
        if self.test_fraction + self.val_fraction >= 1.0:
            raise ConfigError(
                "split.test_fraction + split.val_fraction must be below 1 (training needs patients), "
                f"got {self.test_fraction!r} + {self.val_fraction!r}"
            )
        if isinstance(self.n_folds, bool) or not isinstance(self.n_folds, (int, np.integer)) or self.n_folds < 2:
            raise ConfigError(f"split.n_folds must be an integer >= 2, got {self.n_folds!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ConfigError(f"split.seed must be a non-negative integer, got {self.seed!r}")
        v = self.inner_val_fraction
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 < v < 1.0):
            raise ConfigError(
                f"split.inner_val_fraction must be a number in (0, 1) (a share of the training folds' patients) "
                f"or unset (= split.val_fraction), got {v!r}"
            )
        if self.group_column is not None and (not isinstance(self.group_column, str) or not self.group_column):
            raise ConfigError(f"split.group_column must be a column name or None, got {self.group_column!r}")
        if self.patient_label not in PATIENT_LABEL_RULES:
            raise ConfigError(
                f"split.patient_label must be one of {PATIENT_LABEL_RULES}, got {self.patient_label!r}"
            )
        if self.user_split is not None and (not isinstance(self.user_split, str) or not self.user_split.strip()):
            raise ConfigError(
                f"split.user_split must be a cohort column name or a CSV path, got {self.user_split!r}"
            )


# ------------------------------------------------------------------ groups


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


def _classes(df: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Class index per row and class display names (from ``y`` and ``label``)."""
    if "y" in df.columns:
        y = pd.to_numeric(df["y"], errors="coerce")
        if y.isna().any():
            raise ConfigError(f"{int(y.isna().sum())} image(s) have no class index 'y'")
        y = y.astype(int)
        values = sorted(y.unique())
        names = []
        for v in values:
            lab = df.loc[y == v, "label"].astype(str).iloc[0] if "label" in df.columns else str(v)
            names.append(lab)
        codes = np.searchsorted(values, y.to_numpy())
        return codes, names
    if "label" in df.columns:
        names = sorted(df["label"].astype(str).unique())
        return np.searchsorted(names, df["label"].astype(str).to_numpy()), names
    raise ConfigError("the cohort table lacks both 'y' and 'label'; splits are stratified by class")


@dataclass
class _Groups:
    names: np.ndarray  # (g,) group names, in canonical (content) order
    row_group: np.ndarray  # (n,) group index of each row
    counts: np.ndarray  # (g, c) images per class
    label: np.ndarray  # (g,) patient label (class index)
    n_patients: np.ndarray  # (g,) patients in the group
    class_names: list[str]


def _build_groups(df: pd.DataFrame, group_column: str | None, rule: str, merge: pd.Series | None) -> _Groups:
    gname = group_keys(df, group_column, merge=merge)
    codes, class_names = _classes(df)
    names, row_group = np.unique(gname.to_numpy().astype(str), return_inverse=True)
    # canonical group order from content, so that the seeded shuffle does not depend on the
    # per-machine pseudonyms (names are the smallest patient_key of each group)
    order = group_order_keys(df, row_group, len(names))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    names, row_group = names[order], rank[row_group]
    counts = np.zeros((len(names), len(class_names)), dtype=np.int64)
    np.add.at(counts, (row_group, codes), 1)
    if rule == "max":
        label = (counts > 0).shape[1] - 1 - np.argmax((counts > 0)[:, ::-1], axis=1)
    else:  # mode, ties to the most severe
        label = counts.shape[1] - 1 - np.argmax(counts[:, ::-1], axis=1)
    n_patients = pd.Series(df["patient_key"].astype(str).to_numpy()).groupby(row_group).nunique().to_numpy()
    return _Groups(names, row_group, counts, label, n_patients, class_names)


# ------------------------------------------------------------------ assignment


class _Infeasible(Exception):
    def __init__(self, short: list[int], proven: bool = True) -> None:
        self.short = short  # classes that could not reach every bin
        self.proven = proven  # False: the search budget ran out before a proof
        super().__init__(str(short))


_SEARCH_BUDGET = 20_000  # search nodes; a cohort with one class per patient needs no backtracking


def _cover(groups: _Groups, n_bins: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Phase 1: give every bin at least one group of every class.

    A depth-first search over (bin, class) needs. At each step the class with the
    least slack (unassigned groups holding it minus bins still lacking it) is served
    first and a node with negative slack is pruned; for a bin lacking class ``c`` it
    tries the unassigned groups holding ``c``, best first: the fewest classes the bin
    already has (weighted by their scarcity), then patient label ``c``, then the
    seeded order. With one class per patient the first descent succeeds exactly when
    every class has at least ``n_bins`` patients; patients holding several classes may
    need backtracking, bounded by ``_SEARCH_BUDGET`` nodes.
    """
    has = groups.counts > 0
    n_g, n_c = has.shape
    n_with = has.sum(axis=0)
    perm = rng.permutation(n_g)
    if (n_with < n_bins).any():  # pigeonhole: a class in fewer groups than bins
        raise _Infeasible([int(c) for c in np.nonzero(n_with < n_bins)[0]])
    weight = 1.0 / np.maximum(n_with, 1)
    rank = np.empty(n_g, dtype=np.int64)
    rank[perm] = np.arange(n_g)
    bins = np.full(n_g, -1, dtype=np.int64)
    present = np.zeros((n_bins, n_c), dtype=bool)
    budget = [_SEARCH_BUDGET]
    tight: list[int] = []

    def search() -> bool:
        budget[0] -= 1
        if budget[0] < 0:
            return False
        lacking = (~present).sum(axis=0)  # bins lacking each class
        if not lacking.any():
            return True
        free = bins == -1
        slack = (has & free[:, None]).sum(axis=0) - lacking
        if (slack < 0).any():
            tight.extend(int(c) for c in np.nonzero(slack < 0)[0])
            return False
        need = np.nonzero(lacking > 0)[0]
        c = int(need[np.argmin(slack[need])])
        b = int(np.nonzero(~present[:, c])[0][0])
        cand = np.nonzero(free & has[:, c])[0]
        waste = ((has[cand] & present[b]) * weight).sum(axis=1)  # no BLAS: tiny, hot loop
        other = groups.label[cand] != c
        for g in cand[np.lexsort((rank[cand], other, waste))]:
            saved = present[b].copy()
            bins[g] = b
            present[b] |= has[g]
            if search():
                return True
            bins[g] = -1
            present[b] = saved
            if budget[0] < 0:
                return False
        return False

    if not search():
        short = sorted(set(tight)) or [int(c) for c in np.argsort(n_with, kind="stable")[:1]]
        raise _Infeasible(short, proven=budget[0] >= 0)
    return bins, perm


def _assign(groups: _Groups, fractions: np.ndarray, seed: int) -> np.ndarray:
    """Bin index per group: coverage first, then balance patient labels per bin.

    Phase 2 deals the remaining groups (seeded order) one at a time to the bin with
    the largest shortfall of that group's patient label relative to its target share
    (ties: the bin with the largest overall shortfall, then the first bin).
    """
    rng = np.random.default_rng(seed)
    n_bins = len(fractions)
    bins, perm = _cover(groups, n_bins, rng)
    n_c = groups.counts.shape[1]
    total = np.bincount(groups.label, minlength=n_c).astype(float)
    target = fractions[:, None] * total[None, :]  # (bins, classes) patients
    cur = np.zeros((n_bins, n_c))
    done = bins >= 0
    np.add.at(cur, (bins[done], groups.label[done]), 1)
    size_target = fractions * len(bins)
    for g in perm[~done[perm]]:
        lab = groups.label[g]
        deficit = target[:, lab] - cur[:, lab]
        size_deficit = size_target - cur.sum(axis=1)
        b = int(np.lexsort((np.arange(n_bins), -size_deficit, -deficit))[0])
        bins[g] = b
        cur[b, lab] += 1
    return bins


def _counts_text(groups: _Groups) -> str:
    has = groups.counts > 0
    parts = []
    for c, name in enumerate(groups.class_names):
        n_pat = int(groups.n_patients[has[:, c]].sum())
        n_grp = int(has[:, c].sum())
        extra = f" in {n_grp} group(s)" if n_grp != n_pat else ""
        parts.append(f"'{name}': {n_pat} patient(s){extra}")
    return ", ".join(parts)


def _largest_feasible_k(groups: _Groups, upto: int, seed: int) -> int:
    """Largest k in [2, upto] for which the coverage phase succeeds (0 when none)."""
    for k in range(upto, 1, -1):
        try:
            _cover(groups, k, np.random.default_rng(seed))
        except _Infeasible:
            continue
        return k
    return 0


def _fold_rows(df: pd.DataFrame, exclude_test: bool) -> np.ndarray:
    if exclude_test and "split" in df.columns:
        return (df["split"].astype(str) != "test").to_numpy()
    return np.ones(len(df), dtype=bool)


def _check_folds(groups: _Groups, n_folds: int, seed: int) -> None:
    try:
        _cover(groups, n_folds, np.random.default_rng(seed))
    except _Infeasible as exc:
        k = _largest_feasible_k(groups, n_folds - 1, seed)
        lacking = ", ".join(f"'{groups.class_names[c]}'" for c in sorted(exc.short))
        why = "" if exc.proven else " (the search for an arrangement of patients holding several classes gave up)"
        fix = (
            f"The largest number of folds that works is {k} (set n_folds: {k}), or add patients of {lacking}."
            if k
            else f"No cross-validation is possible: add patients of {lacking}, or merge classes."
        )
        raise SplitError(
            f"Cannot make {n_folds} folds in which every validation and training part holds every class: "
            f"class(es) {lacking} have too few patients (patients are never split across folds){why}. "
            f"Patients per class: {_counts_text(groups)}. {fix}"
        ) from None
    has = groups.counts > 0
    per_class = {groups.class_names[c]: int(groups.n_patients[has[:, c]].sum()) for c in range(has.shape[1])}
    thin = {name: n for name, n in per_class.items() if n < 2 * n_folds}
    if thin:
        warnings.warn(
            f"With {n_folds} folds some validation folds hold a single patient of class(es) "
            f"{sorted(thin)} (patients: {thin}); per-fold metrics will be very noisy. "
            "Report the pooled out-of-fold estimate, or use fewer folds.",
            UserWarning,
            stacklevel=3,
        )


def check_feasible(
    df: pd.DataFrame,
    n_folds: int,
    *,
    group_column: str | None = None,
    patient_label: str = "max",
    merge: pd.Series | None = None,
    exclude_test: bool = True,
    seed: int = 0,
) -> dict[str, int]:
    """Check, before training, that ``n_folds`` folds can each hold every class.

    Parameters
    ----------
    df : pandas.DataFrame
        Cohort table (``patient_key``, ``y``/``label``; ``split`` is honoured).
    n_folds : int
        Requested number of folds.
    group_column, patient_label, merge
        As in :class:`SplitConfig` and :func:`assign_folds`.
    exclude_test : bool, default True
        Leave ``split == "test"`` rows out, as :func:`assign_folds` does.
    seed : int, default 0
        Seed (only matters when patients hold several classes).

    Returns
    -------
    dict of str to int
        Patients per class (a patient counts for every class among its images).

    Raises
    ------
    SplitError
        When some fold would lack a class in its training or validation part; the
        message gives the patients per class and the largest ``k`` that works.

    Warns
    -----
    UserWarning
        Feasible but thin: a class has fewer than ``2 * n_folds`` patients.

    Notes
    -----
    With one class per patient the check is exact: feasible iff every class has
    ``n_folds`` patients. Patients holding several classes are placed greedily; the
    greedy can in rare constructed cases miss an assignment that exists.
    """
    if isinstance(n_folds, bool) or not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ConfigError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if patient_label not in PATIENT_LABEL_RULES:
        raise ConfigError(f"patient_label must be one of {PATIENT_LABEL_RULES}, got {patient_label!r}")
    sub = df[_fold_rows(df, exclude_test)]
    if sub.empty:
        raise SplitError("no images are left for cross-validation (all rows are in the test split)")
    groups = _build_groups(sub, group_column, patient_label, merge)
    _check_folds(groups, int(n_folds), seed)
    has = groups.counts > 0
    return {groups.class_names[c]: int(groups.n_patients[has[:, c]].sum()) for c in range(has.shape[1])}


def assign_splits(df: pd.DataFrame, cfg: SplitConfig, *, merge: pd.Series | None = None) -> pd.DataFrame:
    """Add a patient-level, class-stratified ``split`` column (train / val / test).

    Parameters
    ----------
    df : pandas.DataFrame
        Cohort table (``patient_key``, ``y``/``label``; ``image_id`` with ``merge``).
    cfg : SplitConfig
        Fractions (of patients), seed, extra group column, patient-label rule.
    merge : pandas.Series, optional
        Duplicate groups per ``image_id`` (:func:`medxcept.integrity.audit.duplicate_groups`),
        kept together in one split.

    Returns
    -------
    pandas.DataFrame
        A copy of ``df`` with column ``split``. All images of a group share a split;
        every split holds every class; a split whose fraction is 0 is absent.

    Raises
    ------
    SplitError
        A class has fewer patients than there are splits to fill.
    ConfigError
        With ``cfg.user_split``: the split file or column is unusable (see
        :func:`read_user_split`), or ``merge`` is given (``audit.on_leak: fix``): a
        user-supplied split is audited, never re-grouped.

    Notes
    -----
    With ``cfg.user_split`` set, the user's split is read (:func:`read_user_split`) and
    returned as is, with its ``fold`` column when the file has one; nothing is computed,
    so fractions and seed play no part. Audit the result like any other split.

    Examples
    --------
    >>> df = pd.DataFrame({"image_id": [f"i{k}" for k in range(40)],
    ...                    "patient_key": [f"P-{k // 2:02d}" for k in range(40)],
    ...                    "y": [k // 2 % 2 for k in range(40)]})
    >>> out = assign_splits(df, SplitConfig(test_fraction=0.2, val_fraction=0.2))
    >>> int(out.groupby("patient_key")["split"].nunique().max())
    1
    >>> out.drop_duplicates("patient_key")["split"].value_counts().sort_index().to_dict()
    {'test': 4, 'train': 12, 'val': 4}
    """
    if cfg.user_split is not None:
        if merge is not None:
            raise ConfigError(USER_SPLIT_REGROUP_MESSAGE)
        out = read_user_split(df, cfg.user_split)
        counts = out["split"].value_counts()
        logger.info(
            "using the user-supplied split %r (not re-split; audited next): %s",
            cfg.user_split,
            ", ".join(f"{s}: {int(counts.get(s, 0))} image(s)" for s in SPLITS),
        )
        return out
    bins_names = [s for s, f in (("train", 1.0), ("val", cfg.val_fraction), ("test", cfg.test_fraction)) if f > 0]
    fractions = np.array(
        [{"train": 1.0 - cfg.val_fraction - cfg.test_fraction, "val": cfg.val_fraction, "test": cfg.test_fraction}[b]
         for b in bins_names]
    )
    groups = _build_groups(df, cfg.group_column, cfg.patient_label, merge)
    try:
        bins = _assign(groups, fractions, cfg.seed)
    except _Infeasible as exc:
        lacking = ", ".join(f"'{groups.class_names[c]}'" for c in sorted(exc.short))
        raise SplitError(
            f"Cannot split into {'/'.join(bins_names)} with every class in every split: class(es) {lacking} "
            f"have fewer than {len(bins_names)} patients (patients are never split). Patients per class: "
            f"{_counts_text(groups)}. Add patients of {lacking}, set val_fraction or test_fraction to 0 "
            "(e.g. cross-validation only), or merge classes."
        ) from None
    out = df.copy()
    out["split"] = np.array(bins_names, dtype=object)[bins[groups.row_group]]
    for name in ("val", "test"):
        if name in bins_names:
            b = bins_names.index(name)
            has = groups.counts[bins == b] > 0
            one = [groups.class_names[c] for c in range(has.shape[1]) if has[:, c].sum() == 1]
            if one:
                warnings.warn(
                    f"The {name} split holds a single patient group of class(es) {one}; its metrics for "
                    "those classes rest on one person. Consider cross-validation (val_fraction/test_fraction 0).",
                    UserWarning,
                    stacklevel=2,
                )
    logger.info(
        "split %d patients (%d groups) into %s",
        int(groups.n_patients.sum()),
        len(groups.names),
        ", ".join(f"{s}: {int((bins == b).sum())} groups" for b, s in enumerate(bins_names)),
    )
    return out


def assign_folds(
    df: pd.DataFrame,
    cfg: SplitConfig,
    *,
    exclude_test: bool = True,
    merge: pd.Series | None = None,
) -> pd.DataFrame:
    """Add an int ``fold`` column (0..k-1) of patient-level, stratified CV folds.

    Parameters
    ----------
    df : pandas.DataFrame
        Cohort table; with a ``split`` column and ``exclude_test``, test rows get
        ``fold = -1`` and the folds cover the remaining (train + val) patients.
    cfg : SplitConfig
        ``n_folds``, ``seed``, ``group_column``, ``patient_label``.
    exclude_test : bool, default True
        Keep the test split out of the folds.
    merge : pandas.Series, optional
        Duplicate groups per ``image_id``, kept in one fold.

    Returns
    -------
    pandas.DataFrame
        A copy of ``df`` with ``fold``; for every fold ``i``, rows with ``fold == i``
        (validation) and rows with ``fold not in (i, -1)`` (training) hold every class.

    Raises
    ------
    SplitError
        As :func:`check_feasible`, before anything is assigned.
    """
    rows = _fold_rows(df, exclude_test)
    sub = df[rows]
    if sub.empty:
        raise SplitError("no images are left for cross-validation (all rows are in the test split)")
    groups = _build_groups(sub, cfg.group_column, cfg.patient_label, merge)
    k = int(cfg.n_folds)
    _check_folds(groups, k, cfg.seed)
    bins = _assign(groups, np.full(k, 1.0 / k), cfg.seed)
    fold = np.full(len(df), -1, dtype=np.int64)
    fold[rows] = bins[groups.row_group]
    out = df.copy()
    out["fold"] = fold
    return out


# ------------------------------------------------------------------ records


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


def is_split_file(value: str | Path) -> bool:
    """Whether a ``split.user_split`` value names a file rather than a cohort column.

    A file ends in ``.csv``, ``.tsv`` or ``.txt`` (any case) or holds a path separator;
    anything else is a column name.

    >>> [is_split_file(v) for v in ("split", "split.csv", "lists/fold1", "Split.TSV")]
    [False, True, True, True]
    """
    text = str(value)
    return text.lower().endswith(_SPLIT_FILE_SUFFIXES) or "/" in text or "\\" in text or isinstance(value, Path)


def resolve_user_split(cfg: SplitConfig, base_dir: str | Path | None) -> SplitConfig:
    """Resolve a relative ``user_split`` file against the cohort file's folder.

    Parameters
    ----------
    cfg : SplitConfig
        The split options as configured.
    base_dir : str or pathlib.Path or None
        The cohort file's folder (:attr:`medxcept.cohort.table.CohortSpec.base_dir`); ``None``
        leaves ``cfg`` unchanged (a relative path then means the working directory).

    Returns
    -------
    SplitConfig
        ``cfg``, or a copy whose ``user_split`` is an absolute path: a relative file
        (see :func:`is_split_file`) joined to ``base_dir``, as source roots are. Column
        names and absolute paths are kept; the file need not exist yet (reading it says
        so, naming the resolved path).

    Examples
    --------
    >>> resolve_user_split(SplitConfig(user_split="split.csv"), "/data/cohort").user_split
    '/data/cohort/split.csv'
    >>> resolve_user_split(SplitConfig(user_split="split"), "/data/cohort").user_split
    'split'
    """
    value = cfg.user_split
    if value is None or base_dir is None or not is_split_file(value):
        return cfg
    path = Path(value).expanduser()
    if path.is_absolute():
        return cfg
    return dataclasses.replace(cfg, user_split=str(Path(base_dir) / path))


def _normalize_split(values: pd.Series, where: str, ids: pd.Series) -> pd.Series:
    norm = values.astype("string").str.strip().str.lower().map(_SPLIT_ALIASES)
    bad = norm.isna()
    if bad.any():
        pos = int(np.argmax(bad.to_numpy()))
        raise ConfigError(
            f"{where}: row {pos + 1} (image {ids.iloc[pos]!r}) has split {values.iloc[pos]!r}; "
            f"allowed values are {SPLITS} ({int(bad.sum())} bad row(s) in all)"
        )
    return norm.astype(object)


def read_user_split(df: pd.DataFrame, path_or_column: str | Path) -> pd.DataFrame:
    """Use a split the user supplies, as a cohort column or a CSV file.

    Parameters
    ----------
    df : pandas.DataFrame
        Cohort table.
    path_or_column : str or pathlib.Path
        A column of ``df`` holding ``train``/``val``/``test`` (aliases such as
        ``validation`` are accepted), or a CSV file with a key column ``image_id`` or
        ``file`` (matched against ``path``, or its file name when unique), a ``split``
        column and optionally ``fold`` (integer; empty or -1 for test rows).

    Returns
    -------
    pandas.DataFrame
        A copy of ``df`` with ``split`` (and ``fold``). The split is *not* trusted:
        audit it (:func:`medxcept.integrity.audit.audit_cohort`) like any other.

    Raises
    ------
    ConfigError
        Unknown split values, unknown or duplicate files, cohort images missing from
        the file; the message names the row.
    """
    out = df.copy()
    if isinstance(path_or_column, str) and path_or_column in df.columns:
        ids = df["image_id"].astype(str) if "image_id" in df.columns else pd.Series(df.index.astype(str))
        out["split"] = _normalize_split(
            df[path_or_column].reset_index(drop=True), f"column {path_or_column!r}", ids.reset_index(drop=True)
        ).to_numpy()
        return out
    path = Path(path_or_column)
    if not path.is_file():
        raise ConfigError(
            f"split {str(path_or_column)!r} is neither a column of the cohort table nor an existing CSV file"
        )
    user = pd.read_csv(path, dtype=str, keep_default_na=False, sep="\t" if path.suffix.lower() == ".tsv" else ",")
    user.columns = [c.strip().lower() for c in user.columns]
    if "split" not in user.columns:
        raise ConfigError(f"{path}: needs a 'split' column, found columns {list(user.columns)}")
    if "image_id" in user.columns:
        key = user["image_id"].str.strip()
        lookup = pd.Series(df.index, index=df["image_id"].astype(str))
    elif "file" in user.columns:
        key = user["file"].str.strip()
        paths = df["path"].astype(str)
        names = paths.map(lambda p: Path(p).name)
        lookup = pd.Series(df.index, index=paths)
        unique_names = names[~names.duplicated(keep=False)]
        lookup = pd.concat([lookup, pd.Series(unique_names.index, index=unique_names.to_numpy())])
        lookup = lookup[~lookup.index.duplicated()]
    else:
        raise ConfigError(f"{path}: needs an 'image_id' or 'file' column, found {list(user.columns)}")
    where = str(path)
    dup = key.duplicated()
    if dup.any():
        pos = int(np.argmax(dup.to_numpy()))
        raise ConfigError(f"{where}: row {pos + 1} repeats image {key.iloc[pos]!r}; each image may appear once")
    matched = key.map(lookup)
    if matched.isna().any():
        pos = int(np.argmax(matched.isna().to_numpy()))
        raise ConfigError(
            f"{where}: row {pos + 1} names image {key.iloc[pos]!r}, which is not in the cohort "
            f"({int(matched.isna().sum())} unknown row(s) in all)"
        )
    split = _normalize_split(user["split"], where, key)
    missing = df.index.difference(pd.Index(matched.to_numpy()))
    if len(missing):
        example = df.loc[missing[0], "image_id"] if "image_id" in df.columns else missing[0]
        raise ConfigError(
            f"{where}: {len(missing)} cohort image(s) have no split, e.g. {example!r}; add them to the file "
            "or exclude them from the cohort"
        )
    out["split"] = pd.Series(split.to_numpy(), index=matched.to_numpy()).reindex(df.index).to_numpy()
    if "fold" in user.columns:
        raw = user["fold"].str.strip()
        fold = pd.to_numeric(raw.replace("", "-1"), errors="coerce")
        bad = fold.isna() | (fold < -1) | (fold != fold.round())
        bad |= (fold == -1) & (split != "test")
        if bad.any():
            pos = int(np.argmax(bad.to_numpy()))
            raise ConfigError(
                f"{where}: row {pos + 1} (image {key.iloc[pos]!r}) has fold {user['fold'].iloc[pos]!r}; "
                "folds are integers >= 0, empty or -1 only for test rows"
            )
        out["fold"] = pd.Series(fold.astype(int).to_numpy(), index=matched.to_numpy()).reindex(df.index).to_numpy()
    return out


def user_split_agreement(df: pd.DataFrame, cfg: SplitConfig) -> dict[str, object]:
    """Whether a user-supplied split equals the split ``cfg.seed`` would give on this data.

    A split passed in from another machine (``split.user_split``) is used as it is; this
    says whether it is also the split medxcept computes here from the data, the fractions
    and the seed (:func:`assign_splits` without ``user_split``), which is the same on every
    machine. Logged, and recorded in ``versions.json`` (``reproduce.user_split``).

    Parameters
    ----------
    df : pandas.DataFrame
        The cohort table carrying the user's ``split`` (and ``fold`` when the file had one).
    cfg : SplitConfig
        The split options (``user_split`` set).

    Returns
    -------
    dict
        ``equals_seeded_split`` (bool), ``seed``, ``n_images_differ``, ``n_patients_differ``,
        ``seeded_split_hash``, ``user_split_hash``, and ``folds_equal`` when the user gave folds
        (None otherwise); ``reason`` when the seed cannot split this cohort at all.
    """
    seeded_cfg = dataclasses.replace(cfg, user_split=None)
    base = df.drop(columns=[c for c in ("split", "fold") if c in df.columns])
    out: dict[str, object] = {"seed": int(cfg.seed), "user_split_hash": split_hash(df)}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            seeded = assign_splits(base, seeded_cfg)
            if "fold" in df.columns:
                seeded = assign_folds(seeded, seeded_cfg)
    except (SplitError, ConfigError) as exc:
        out.update(equals_seeded_split=False, reason=f"seed {cfg.seed} cannot split this cohort: {exc}")
        logger.info("the user-supplied split cannot be compared with a seeded split: %s", out["reason"])
        return out
    differ = seeded["split"].astype(str).to_numpy() != df["split"].astype(str).to_numpy()
    folds_equal = None
    if "fold" in df.columns:
        uf = pd.to_numeric(df["fold"], errors="coerce").fillna(-1).astype(int).to_numpy()
        folds_equal = bool((uf == seeded["fold"].to_numpy()).all())
    n_pat = int(df.loc[differ, "patient_key"].nunique()) if "patient_key" in df.columns else 0
    out.update(equals_seeded_split=bool(not differ.any()), n_images_differ=int(differ.sum()),
               n_patients_differ=n_pat, seeded_split_hash=split_hash(seeded), folds_equal=folds_equal)
    if not differ.any():
        logger.info("the user-supplied split equals the split seed %d gives on this data (split hash %s)%s",
                    cfg.seed, str(out["user_split_hash"])[:12],
                    "" if folds_equal is None else (", folds too" if folds_equal else ", but its folds differ"))
    else:
        logger.info("the user-supplied split differs from the split seed %d gives on this data: %d image(s) "
                    "of %d patient(s) are in another split", cfg.seed, int(differ.sum()), n_pat)
    return out
