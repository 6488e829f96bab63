"""A split the user supplies (``split.user_split``): a cohort table column or a split file
(``file``/``image_id``, ``split``, optional ``fold``), read and checked against the cohort
(:func:`read_user_split`). :func:`medxcept.integrity.splits.assign_splits` uses it instead of
computing a split; :func:`medxcept.integrity.splits.user_split_agreement` compares it with the
seeded split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from medxcept.errors import ConfigError
from medxcept.integrity.split_keys import SPLITS

__all__ = ["is_split_file", "read_user_split", "USER_SPLIT_REGROUP_MESSAGE"]

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


def is_split_file(value: str | Path) -> bool:
    """Whether a ``split.user_split`` value names a file rather than a cohort column.

    A file ends in ``.csv``, ``.tsv`` or ``.txt`` (any case) or holds a path separator;
    anything else is a column name.

    >>> [is_split_file(v) for v in ("split", "split.csv", "lists/fold1", "Split.TSV")]
    [False, True, True, True]
    """
    text = str(value)
    return text.lower().endswith(_SPLIT_FILE_SUFFIXES) or "/" in text or "\\" in text or isinstance(value, Path)


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

