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
``sha256#frame`` of every image of the group (:func:`~medxcept.integrity.split_keys.group_order_keys`). Neither the
pseudonym ``patient_key`` (keyed with a per-machine secret) nor ``image_id`` decides
anything, so the same files, labels and patients give the same split on any machine, and
also after the patient IDs are pseudonymized again. The digest is computed in memory and
never written out. A table without ``sha256`` (hand-made tables) falls back to the raw
``patient_id``, then to ``patient_key``. :func:`~medxcept.integrity.split_keys.split_hash` fingerprints the result for
the run record, also by content (so two machines' hashes compare).
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from medxcept.errors import ConfigError, SplitError
from medxcept.integrity.split_keys import SPLITS, group_keys, group_order_keys, split_hash
from medxcept.integrity.user_split import USER_SPLIT_REGROUP_MESSAGE, is_split_file, read_user_split

__all__ = [
    "SplitConfig",
    "assign_splits",
    "assign_folds",
    "check_feasible",
    "resolve_user_split",
    "user_split_agreement",
]

logger = logging.getLogger(__name__)

PATIENT_LABEL_RULES = ("max", "mode")


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
        (see :func:`~medxcept.integrity.user_split.read_user_split`). A value ending in ``.csv``, ``.tsv`` or ``.txt``, or
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
        :func:`~medxcept.integrity.user_split.read_user_split`), or ``merge`` is given (``audit.on_leak: fix``): a
        user-supplied split is audited, never re-grouped.

    Notes
    -----
    With ``cfg.user_split`` set, the user's split is read (:func:`~medxcept.integrity.user_split.read_user_split`) and
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


# ------------------------------------------------------------------ user splits


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
        (see :func:`~medxcept.integrity.user_split.is_split_file`) joined to ``base_dir``, as source roots are. Column
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
