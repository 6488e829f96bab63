"""Exclusions by class: does leaving files out change the class mix?

An exclusion rule that removes one class more than another biases the cohort silently: a
quality gate that calls blurred fundus photographs ungradable removes the most typical
cataract cases (a cataract *is* a blurred view), so the test metrics describe the easier,
gradable cases only (spectrum bias). :func:`exclusions_by_class` counts every exclusion
whose class is known (the ``label`` column of the exclusion log: decode, quality, label-table
and file-name-pattern exclusions of labelled files) per class and reason, tests whether the
exclusion rate depends on the class, and words a warning when it does. ``check.html`` and
``report.html`` show the table and name the warnings in their summary.

The unit counted is the cohort item: one image row (one frame of a multi-frame file), used or
excluded. A class's denominator is its used items plus its excluded items.

Test of independence, per reason: Fisher's exact test on the 2 x 2 table (excluded or not x
class) for two classes, Pearson's chi-square on the 2 x k table otherwise (scipy). A reason is
flagged when its p-value is below ``alpha`` divided by the number of reasons tested
(Bonferroni) and at least ``min_excluded`` items were excluded for it.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

__all__ = ["exclusions_by_class", "by_class_markdown", "reason_category"]

logger = logging.getLogger(__name__)

_STAGE_WORDS = {
    "quality": "the quality gate",
    "decode": "decoding",
    "ingest": "reading",
    "label": "label-table problems",
    "pattern": "the file-name pattern",
}


def _pct(x: float) -> str:
    """``0.2256 -> '23 %'``, ``0.0012 -> '0.12 %'``: two significant digits."""
    return f"{100 * x:.2g} %" if x > 0 else "0 %"


def _independence(excluded: np.ndarray, totals: np.ndarray) -> tuple[float | None, str]:
    """p-value of "the exclusion rate is the same in every class", and the test's name."""
    keep = totals > 0
    exc, tot = excluded[keep], totals[keep]
    if len(tot) < 2 or exc.sum() == 0 or exc.sum() == tot.sum():
        return None, ""
    table = np.vstack([exc, tot - exc])
    if table.shape[1] == 2:
        return float(stats.fisher_exact(table)[1]), "Fisher exact"
    return float(stats.chi2_contingency(table, correction=False)[1]), "chi-square"


def reason_category(reason: str) -> str:
    """The part of a reason that names the problem, without the row, file, numbers or details.

    ``"row 7: label row whose file is missing: 'x.jpg' was not found..."`` ->
    ``"label row whose file is missing"``; ``"not an image: Comprehensive SR Storage (...)"`` ->
    ``"not an image"``; quoted values and numbers become ``…`` and ``N`` so per-file reasons
    group together.
    """
    text = re.sub(r"^row \d+:\s*", "", str(reason).strip())
    head = re.split(r":\s|;", text, maxsplit=1)[0]
    head = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", head)
    head = re.sub(r"\[[^\]]*\]", "[…]", head)
    head = re.sub(r"\d[\d,.]*", "N", head)
    return head.strip() or "unspecified"


def exclusions_by_class(
    table: pd.DataFrame,
    exclusions: pd.DataFrame,
    classes: list[str],
    *,
    alpha: float = 0.05,
    min_excluded: int = 3,
) -> dict[str, Any]:
    """Exclusion rate per class and reason, with a test of independence and warnings.

    Parameters
    ----------
    table : pandas.DataFrame
        The cohort table (needs ``label``): the items used.
    exclusions : pandas.DataFrame
        The exclusion log (``stage``, ``reason``, ``label``; :data:`medxcept.cohort.ingest.EXCLUSION_COLUMNS`).
        Rows whose ``label`` is not a declared class (unknown, empty, or no column) are not counted.
    classes : list of str
        Declared classes, in order.
    alpha : float, default 0.05
        Family-wise significance level (Bonferroni over the reasons tested).
    min_excluded : int, default 3
        Reasons with fewer excluded items are shown but never flagged.

    Returns
    -------
    dict
        JSON-able: ``classes``; ``totals`` (items per class, used + excluded); ``used`` (items per
        class); ``rows``, one per ``stage: reason`` (largest first) with ``stage``, ``reason``,
        ``excluded`` and ``rates`` (per class, in class order), ``n``, ``p`` (None when
        untestable), ``test`` and ``flag``; under ``quality_policy: flag`` a last row counts the
        images kept with a low-quality flag (``kept: True``); ``unknown`` (exclusion rows without a known class);
        ``warnings`` (sentences, one per flagged reason).

    Examples
    --------
    >>> t = pd.DataFrame({"label": ["a"] * 90 + ["b"] * 99})
    >>> ex = pd.DataFrame({"path": ["x"] * 11, "stage": ["quality"] * 11,
    ...                    "reason": ["quality score 0.1 < 0.5: blurred"] * 11, "label": ["a"] * 10 + ["b"]})
    >>> out = exclusions_by_class(t, ex, ["a", "b"])
    >>> out["rows"][0]["excluded"], out["rows"][0]["flag"]
    ([10, 1], True)
    >>> out["warnings"][0][:62]
    'the quality gate removed 10 % of a (10 of 100) and 1 % of b (1'
    """
    classes = [str(c) for c in classes]
    used = table["label"].astype(str).value_counts() if len(table) else pd.Series(dtype=int)
    labels = exclusions["label"].fillna("").astype(str) if "label" in exclusions else pd.Series(
        "", index=exclusions.index)
    not_image = exclusions["reason"].astype(str).str.startswith("not an image") if len(exclusions) else labels.eq("x")
    known = labels.isin(classes) & ~not_image  # an SR or DICOMDIR is skipped, not an excluded image
    ex = exclusions[known].assign(_label=labels[known])
    ex_counts = ex["_label"].value_counts()
    used_n = np.array([int(used.get(c, 0)) for c in classes])
    totals = used_n + np.array([int(ex_counts.get(c, 0)) for c in classes])
    rows: list[dict[str, Any]] = []
    if len(ex):
        ex = ex.assign(_stage=ex["stage"].astype(str), _reason=ex["reason"].astype(str).map(reason_category))
        for (stage, reason), g in ex.groupby(["_stage", "_reason"], sort=False):
            per = g["_label"].value_counts()
            excluded = np.array([int(per.get(c, 0)) for c in classes])
            p, test = _independence(excluded, totals)
            rows.append({"stage": stage, "reason": reason, "excluded": excluded.tolist(),
                         "rates": [float(e / t) if t else None for e, t in zip(excluded, totals, strict=True)],
                         "n": int(excluded.sum()), "p": p, "test": test, "flag": False})
    rows.sort(key=lambda r: (-r["n"], r["stage"], r["reason"]))
    if "quality_flag" in table.columns and len(table) and bool(table["quality_flag"].astype(bool).any()):
        # quality_policy: flag keeps low-quality images: the same question, asked of the flags
        flagged = table.loc[table["quality_flag"].astype(bool), "label"].astype(str).value_counts()
        excluded = np.array([int(flagged.get(c, 0)) for c in classes])
        p, test = _independence(excluded, totals)
        rows.append({"stage": "quality", "reason": "low quality, kept with a flag (quality_policy: flag)",
                     "excluded": excluded.tolist(), "kept": True,
                     "rates": [float(e / t) if t else None for e, t in zip(excluded, totals, strict=True)],
                     "n": int(excluded.sum()), "p": p, "test": test, "flag": False})
    tested = [r for r in rows if r["p"] is not None]
    cut = alpha / max(len(tested), 1)
    warnings: list[str] = []
    for r in tested:
        if r["p"] < cut and r["n"] >= min_excluded:
            r["flag"] = True
            warnings.append(_warning(r, classes, totals))
    for w in warnings:
        logger.warning("exclusions depend on the class: %s", w)
    return {"classes": classes, "totals": totals.tolist(), "used": used_n.tolist(), "rows": rows,
            "unknown": int((~known & ~not_image).sum()), "warnings": warnings, "alpha": alpha}


def _warning(row: dict[str, Any], classes: list[str], totals: np.ndarray) -> str:
    """``the quality gate removed 23 % of cataract (97 of 430) and 0.1 % of the rest (3 of 2479) ...``."""
    excluded = np.array(row["excluded"])
    rates = np.array([r if r is not None else -1.0 for r in row["rates"]])
    top = int(np.argmax(rates))
    rest_exc, rest_tot = int(excluded.sum() - excluded[top]), int(totals.sum() - totals[top])
    rest = "the rest" if len(classes) > 2 else f"{classes[1 - top]}"
    who = _STAGE_WORDS.get(row["stage"], f"stage '{row['stage']}'")
    text = (f"{who} removed {_pct(rates[top])} of {classes[top]} ({int(excluded[top])} of {int(totals[top])}) and "
            f"{_pct(rest_exc / rest_tot) if rest_tot else '0 %'} of {rest} ({rest_exc} of {rest_tot}) "
            f"[{row['stage']}: {row['reason']}; {row['test']} p = {row['p']:.2g}]")
    if row.get("kept"):
        return (f"{text.replace(' removed ', ' flagged (kept) ', 1)}: low quality is concentrated in "
                f"{classes[top]}; image quality may act as a shortcut for the class")
    if row["stage"] == "quality":
        return text + (": results describe gradable images only; consider `quality_policy: flag` "
                       "(keep the images, record their quality)")
    return text + f": the images used under-represent {classes[top]}; fix or explain these files"


def by_class_markdown(result: dict[str, Any]) -> str:
    """The :func:`exclusions_by_class` table as markdown (for notes and the console)."""
    classes = result["classes"]
    lines = ["| stage | reason | " + " | ".join(classes) + " | test |", "|" + " --- |" * (len(classes) + 3)]
    lines.append("| | items per class (used + excluded) | " + " | ".join(str(n) for n in result["totals"]) + " | |")
    for r in result["rows"]:
        cells = [f"{e} ({_pct(rate)})" if rate is not None else str(e) for e, rate in zip(r["excluded"], r["rates"],
                                                                                           strict=True)]
        test = "not testable" if r["p"] is None else f"{r['test']} p = {r['p']:.2g}" + (
            " **depends on the class**" if r["flag"] else "")
        lines.append(f"| {r['stage']} | {r['reason'].replace('|', '/')} | " + " | ".join(cells) + f" | {test} |")
    if not result["rows"]:
        lines.append("| | no file of a known class was excluded | " + " | ".join("0" for _ in classes) + " | |")
    return "\n".join(lines)
