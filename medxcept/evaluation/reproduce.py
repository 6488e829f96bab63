"""Re-run a finished run from its directory and say, side by side, whether it reproduced.

``python -m pipelines.retina --reproduce RUN_DIR`` calls :func:`medxcept.workflows.reproduce.reproduce_run`. It reads the run's
saved configuration (``config.yaml``, whose ``cohort`` names the cohort file) and its
``versions.json``, runs the same pipeline into a new directory next to it
(``<RUN_DIR>-reproduced``), and compares:

* **data**: the data hash (file contents, frames, labels, lateralities, sources and which files
  belong to one patient; :func:`medxcept.run.data_hash`). If it differs the re-run stops *before
  training*: the same configuration cannot reproduce a run on other data.
* **split**: the split hash (by content, so it compares across machines), and how many images
  moved;
* **audit**: every finding's kind, severity, count and message, the audit tables, and the pairs
  named in the findings (images compared by content, not by ``image_id``);
* **predictions**: per test image, every ``prob``/``logit`` column: the largest absolute
  difference, against ``tolerance``;
* **metrics**: every number of ``metrics.json`` (timings and the run's id aside): the largest
  absolute difference, against ``tolerance``.

The comparison is written to ``reproduce.json`` in the new run directory and shown as a table;
the last line reads, for instance, ``same data, same split, same audit, predictions within tolerance
0.0001 (max |Δp| = 0), metrics within tolerance 0.0001 (max |Δ| = 0)``. :class:`NotReproducedError`
(exit status 2, one line, after the table) when anything differs. The learning curve (``--learning-curve``)
is not re-run, and package or code versions that changed are reported, not judged.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medxcept.errors import ConfigError, MedxceptError

__all__ = ["DEFAULT_TOLERANCE", "NotReproducedError", "Reproduction", "compare_runs", "read_json", "rerun_path",
           "cohort_path"]

log = logging.getLogger(__name__)

DEFAULT_TOLERANCE = 1e-4
"""Largest absolute difference of a probability (or a metric) still counted as reproduced.

TensorFlow on CPU repeats bitwise on the same machine (difference 0); 1e-4 leaves room for another
CPU's rounding, and is far below any difference that would change a reported number at 3 decimals.
"""

_SKIP_METRIC_KEYS = ("timings", "seconds", "run", "hashes", "learning_curve")  # and keys ending in "_s"


class NotReproducedError(MedxceptError):
    """The re-run did not reproduce the run (data changed, or results differ beyond the tolerance).

    ``table`` holds the side-by-side comparison (:meth:`Reproduction.table`) for the caller to show.
    """

    def __init__(self, message: str, table: str = "") -> None:
        super().__init__(message)
        self.table = table


@dataclass
class Reproduction:
    """The outcome of :func:`compare_runs` (also the content of ``reproduce.json``)."""

    original: str
    rerun: str
    tolerance: float
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def reproduced(self) -> bool:
        return all(c["same"] for c in self.checks.values())

    def verdict(self) -> str:
        """One line: what matched and what did not."""
        parts = []
        for name in ("data", "split", "audit"):
            c = self.checks.get(name)
            if c is not None:
                parts.append(f"{'same' if c['same'] else 'DIFFERENT'} {name}")
        for name, sym in (("predictions", "Δp"), ("metrics", "Δ")):
            c = self.checks.get(name)
            if c is None:
                continue
            within = "within" if c["same"] else "NOT within"
            worst = c["max_abs_diff"]
            parts.append(f"{name} {within} tolerance {self.tolerance:g} (max |{sym}| = {worst:.3g})")
        return ", ".join(parts)

    def table(self) -> str:
        """The side-by-side comparison, one row per check."""
        rows = [("check", "original", "re-run", "verdict")]
        for name, c in self.checks.items():
            note = f" ({c['note']})" if c.get("note") else ""
            rows.append((name, str(c.get("original", "")), str(c.get("rerun", "")),
                         ("same" if c["same"] else "DIFFERENT") + note))
        w = [max(len(r[k]) for r in rows) for k in range(3)]
        return "\n".join(f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}" for r in rows)

    def to_dict(self) -> dict[str, Any]:
        """``reproduce.json``: the two runs by directory name (siblings), never by absolute path."""
        return {"original": Path(self.original).name, "rerun": Path(self.rerun).name, "tolerance": self.tolerance,
                "reproduced": self.reproduced, "verdict": self.verdict(), "checks": self.checks}


# ------------------------------------------------------------------ reading a run


def read_json(path: Path) -> dict[str, Any]:
    """A run's JSON record; a missing or broken file is a clear error naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None


def _content_map(run_dir: Path) -> pd.Series | None:
    """``image_id -> sha256#frame`` from the run's ``cohort.csv`` (None without it)."""
    p = run_dir / "cohort.csv"
    if not p.is_file():
        return None
    t = pd.read_csv(p, dtype=str, keep_default_na=False)
    if not {"image_id", "sha256"} <= set(t.columns):
        return None
    frame = t["frame"] if "frame" in t.columns else "0"
    return pd.Series((t["sha256"] + "#" + frame).to_numpy(), index=t["image_id"].to_numpy())


def _by_content(ids: pd.Series, cmap: pd.Series | None) -> pd.Series:
    return ids.astype(str).map(cmap).fillna(ids.astype(str)) if cmap is not None else ids.astype(str)


# ------------------------------------------------------------------ comparisons


def _compare_split(a: Path, b: Path, va: dict, vb: dict) -> dict[str, Any]:
    ha, hb = va.get("split_hash"), vb.get("split_hash")
    out: dict[str, Any] = {"original": str(ha)[:12], "rerun": str(hb)[:12], "same": ha == hb}
    try:
        sa, sb = pd.read_csv(a / "split.csv", dtype=str), pd.read_csv(b / "split.csv", dtype=str)
    except OSError:
        return out
    ka = _by_content(sa["image_id"], _content_map(a))
    kb = _by_content(sb["image_id"], _content_map(b))
    left = pd.Series(sa["split"].to_numpy(), index=ka.to_numpy())
    right = pd.Series(sb["split"].to_numpy(), index=kb.to_numpy())
    if left.index.is_unique and right.index.is_unique:
        joined = pd.concat([left.rename("a"), right.rename("b")], axis=1)
        moved = int((joined["a"] != joined["b"]).sum())
        out["n_images_moved"] = moved
        if moved:
            out["note"] = f"{moved} image(s) in another split"
    return out


def _audit_canonical(run_dir: Path) -> dict[str, Any]:
    audit = read_json(run_dir / "audit.json")
    cmap = _content_map(run_dir)
    findings = []
    for f in audit.get("findings", []):
        details = []
        for d in f.get("details", []):
            if not isinstance(d, dict):
                details.append(d)
                continue
            # pseudonyms and image ids differ between machines; images are compared by content
            dd = {k: v for k, v in d.items() if not k.startswith("patient_key")}
            for k in [k for k in dd if k.startswith("image_id")]:
                dd[k] = _by_content(pd.Series([dd[k]]), cmap).iloc[0]
            details.append(dd)
        findings.append({"kind": f.get("kind"), "severity": f.get("severity"), "count": f.get("count"),
                         "message": f.get("message"), "details": details})
    return {"summary": audit.get("summary"), "findings": findings, "tables": audit.get("tables")}


def _compare_audit(a: Path, b: Path) -> dict[str, Any]:
    ca, cb = _audit_canonical(a), _audit_canonical(b)
    same = ca == cb
    out: dict[str, Any] = {"original": f"{len(ca['findings'])} finding(s)",
                           "rerun": f"{len(cb['findings'])} finding(s)", "same": same}
    if not same:
        ka = [(f["kind"], f["severity"], f["count"]) for f in ca["findings"]]
        kb = [(f["kind"], f["severity"], f["count"]) for f in cb["findings"]]
        diff = sorted(set(map(str, ka)) ^ set(map(str, kb)))
        out["note"] = f"differing findings: {'; '.join(diff)}" if diff else "same counts, different details"
    return out


def _compare_predictions(a: Path, b: Path, tol: float) -> dict[str, Any]:
    pa, pb = pd.read_csv(a / "predictions.csv"), pd.read_csv(b / "predictions.csv")
    cols = [c for c in pa.columns if c.startswith(("prob", "logit", "patient_prob")) and c in pb.columns]
    ka = _by_content(pa["image_id"], _content_map(a))
    kb = _by_content(pb["image_id"], _content_map(b))
    if set(ka) != set(kb) or not ka.is_unique:
        return {"original": f"{len(pa)} image(s)", "rerun": f"{len(pb)} image(s)", "same": False,
                "max_abs_diff": math.inf, "note": "not the same test images"}
    pb = pb.set_index(kb.to_numpy()).loc[ka.to_numpy()]
    diffs = {c: float(np.nanmax(np.abs(pa[c].to_numpy(float) - pb[c].to_numpy(float)))) if len(pa) else 0.0
             for c in cols}
    prob_cols = [c for c in cols if c.startswith("prob")]
    worst = max((diffs[c] for c in prob_cols), default=0.0)
    return {"original": f"{len(pa)} test image(s)", "rerun": f"{len(pb)} test image(s)", "same": worst <= tol,
            "max_abs_diff": worst, "max_abs_diff_per_column": diffs,
            "note": f"max |Δp| = {worst:.3g}"}


def _numbers(x: Any, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(x, dict):
        for k, v in x.items():
            if str(k) in _SKIP_METRIC_KEYS or str(k).endswith("_s"):
                continue
            out.update(_numbers(v, f"{prefix}{k}."))
    elif isinstance(x, list):
        for i, v in enumerate(x):
            out.update(_numbers(v, f"{prefix}{i}."))
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        out[prefix.rstrip(".")] = float(x)
    return out


def _compare_metrics(a: Path, b: Path, tol: float) -> dict[str, Any]:
    ma, mb = read_json(a / "metrics.json"), read_json(b / "metrics.json")
    na, nb = _numbers(ma), _numbers(mb)
    common = sorted(set(na) & set(nb))
    worst, where = 0.0, ""
    for k in common:
        x, y = na[k], nb[k]
        if math.isnan(x) and math.isnan(y):
            continue
        d = abs(x - y) if not (math.isnan(x) or math.isnan(y)) else math.inf
        if d > worst:
            worst, where = d, k
    auc = "test_patient.roc_auc"
    out: dict[str, Any] = {"original": f"AUC {na[auc]:.4f}" if auc in na else f"{len(na)} numbers",
                           "rerun": f"AUC {nb[auc]:.4f}" if auc in nb else f"{len(nb)} numbers",
                           "same": worst <= tol and set(na) == set(nb), "max_abs_diff": worst,
                           "n_compared": len(common)}
    if worst:
        out["note"] = f"max |Δ| = {worst:.3g} at {where}"
    if set(na) != set(nb):
        out["note"] = f"{len(set(na) ^ set(nb))} number(s) in only one run"
    return out


def compare_runs(original: str | Path, rerun: str | Path, *, tolerance: float = DEFAULT_TOLERANCE,
                 data_only: bool = False) -> Reproduction:
    """Compare two run directories of the same configuration, side by side.

    Parameters
    ----------
    original, rerun : path
        Run directories (``rerun`` may have stopped before training: pass ``data_only``).
    tolerance : float, default :data:`DEFAULT_TOLERANCE`
        Largest absolute difference of a probability or a metric still counted as equal.
    data_only : bool, default False
        Compare data, configuration, split and audit only (no predictions, no metrics).

    Returns
    -------
    Reproduction
    """
    a, b = Path(original), Path(rerun)
    va, vb = read_json(a / "versions.json"), read_json(b / "versions.json")
    rep = Reproduction(original=str(a), rerun=str(b), tolerance=float(tolerance))
    for key, name in (("config_hash", "config"), ("data_hash", "data")):
        rep.checks[name] = {"original": str(va.get(key))[:12], "rerun": str(vb.get(key))[:12],
                            "same": va.get(key) == vb.get(key)}
    rep.checks["split"] = _compare_split(a, b, va, vb)
    rep.checks["audit"] = _compare_audit(a, b)
    if not data_only:
        rep.checks["predictions"] = _compare_predictions(a, b, tolerance)
        rep.checks["metrics"] = _compare_metrics(a, b, tolerance)
    ca, cb = va.get("code", {}), vb.get("code", {})
    pa, pb = va.get("packages", {}), vb.get("packages", {})
    changed = sorted(k for k in set(pa) | set(pb) if pa.get(k) != pb.get(k))
    moved = ", ".join(f"{k} {pa.get(k)} -> {pb.get(k)}" for k in changed)
    rep.checks["packages"] = {"original": "", "rerun": "", "same": True,  # informative, not judged
                              "note": f"informative: {moved}" if changed else "same versions"}
    if ca.get("git_commit") != cb.get("git_commit"):
        rep.checks["packages"]["note"] += (f"; code {str(ca.get('git_commit'))[:10]} -> "
                                           f"{str(cb.get('git_commit'))[:10]}")
    return rep


# ------------------------------------------------------------------ the command


def rerun_path(run_dir: Path) -> Path:
    """Where the re-run goes: ``<run>-reproduced``, numbered when taken."""
    base = run_dir.parent / f"{run_dir.name}-reproduced"
    path, i = base, 1
    while path.exists():
        i += 1
        path = base.with_name(f"{base.name}-{i}")
    return path


def cohort_path(cfg: Any, run_dir: Path) -> Path:
    """The cohort file the run was made from; a clear error when it is gone."""
    path = Path(cfg.cohort).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"cannot reproduce {run_dir}: its cohort file {cfg.cohort!r} (config.yaml 'cohort') is not found"
            + ("; restore the cohort file and its data" if path.is_absolute() else
               " from this directory; a relative path means the directory the run was started from: run "
               "--reproduce from there"))
    return path
