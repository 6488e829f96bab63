"""The self-contained HTML report of a run.

One file, ``report.html``: figures inlined as base64 PNG, styles inline, no script, font or
network request, so it renders anywhere offline and can be attached to an e-mail. Every string
that comes from the user's data (labels, cohort names, sources, file names) goes through Jinja2
autoescaping; patients appear only as pseudonyms.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import html
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from medxcept.files import write_atomic
from medxcept.report.figures import (
    clinical_figure,
    confusion_figure,
    examples_figure,
    reliability_figure,
    roc_pr_figure,
    training_figure,
)

__all__ = ["ReportInputs", "render_report", "environment", "fmt", "checklist"]

TEMPLATES = Path(__file__).parent / "templates"


def fmt(x: Any, digits: int = 3) -> str:
    """Numbers as the report shows them (``metrics.json`` holds the same values unrounded)."""
    if x is None:
        return "not defined"
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if isinstance(x, (float, np.floating)):
        if math.isnan(float(x)):
            return "not defined"
        return f"{float(x):.{digits}f}"
    return str(x)


def _ci(ci: dict[str, Any] | None) -> str:
    if not ci or ci.get("low") is None or ci.get("high") is None:
        return ""
    return f"{fmt(ci['low'])}–{fmt(ci['high'])}"


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The one Jinja2 environment of every page (run, CV, comparison, check).

    Autoescaped (every string from the user's data is escaped), strict about undefined
    names, with the ``fmt`` and ``ci`` filters.
    """
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["ci"] = _ci
    return env


def checklist(metrics: dict[str, Any]) -> list[dict[str, str]]:
    """TRIPOD+AI / CLAIM items the pipeline can answer from the run; the rest marked for the author."""
    run, cohort = metrics["run"], metrics["cohort"]
    t = metrics.get("threshold") or {}
    author = "to be completed by the author"
    return [
        {"item": "Data source and eligibility (TRIPOD+AI 5a/5b; CLAIM 7-8)",
         "answer": f"cohort '{run['cohort']}': {cohort['files_found']} files found, {cohort['files_excluded']} excluded "
                   f"with reasons (exclusions.csv)", "status": "auto"},
        {"item": "Participants: numbers, outcome events (TRIPOD+AI 20a; CLAIM 33)",
         "answer": f"{cohort['n_patients']} patients, {cohort['n_images']} images; per class "
                   f"{cohort['images_per_class']}", "status": "auto"},
        ({"item": "Data partitions at patient level (CLAIM 21; TRIPOD+AI 10)",
          "answer": "stratified patient-level split, integrity audit before training (audit.json)", "status": "auto"}
         if not (metrics.get("audit") or {}).get("let_through") else
         {"item": "Data partitions at patient level (CLAIM 21; TRIPOD+AI 10)",
          "answer": f"stratified patient-level split; the audit before training found "
                    f"{len(metrics['audit']['let_through'])} leakage finding(s) that --on-leak warn let through "
                    "(see the banner and audit.json): the partition is NOT clean", "status": "partial"}),
        {"item": "Reference standard / ground truth (CLAIM 14-18)", "answer": author, "status": "author"},
        {"item": "Preprocessing (CLAIM 11)", "answer": f"resize to {run['image_px']} px; see config.yaml",
         "status": "auto"},
        {"item": "Model, initialization, training (TRIPOD+AI 12; CLAIM 22-25)",
         "answer": f"{run.get('network', 'Xception')} (keras.applications, ImageNet architecture), weights: "
                   f"{run['weights_description']}; recipe '{run['recipe']}'", "status": "auto"},
        {"item": "Operating threshold (TRIPOD+AI 12e)",
         "answer": _operating_point(metrics, t), "status": "auto"},
        {"item": "Performance with CIs, discrimination and calibration (TRIPOD+AI 23a; CLAIM 29-30)",
         "answer": _performance_answer(metrics), "status": "auto"},
        *_clinical_rows(metrics.get("clinical")),
        {"item": "Subgroup / fairness analysis (TRIPOD+AI 23b)", "answer": "subgroup table (source, laterality, "
         "sex, age band where recorded)", "status": "auto"},
        {"item": "External validation (CLAIM 32)", "answer": "yes" if run.get("external_validation") else
         "not performed in this run (use `pipelines.retina evaluate`)", "status": "auto"},
        {"item": "Intended use, clinical role, limitations (TRIPOD+AI 3, 27)", "answer": author, "status": "author"},
        {"item": "Code and data availability (TRIPOD+AI 18)", "answer": "versions.json holds code, data and split "
         "hashes; data availability: " + author, "status": "partial"},
        {"item": "Ethics approval, consent (TRIPOD+AI 4)", "answer": author, "status": "author"},
    ]


def _operating_point(metrics: dict[str, Any], t: dict[str, Any]) -> str:
    graded = metrics.get("graded")
    if graded:
        rule = graded["decision_rule"]
        text = f"decision rule: {rule['description']} (chosen on {rule['chosen_on']})"
        for name, e in graded.get("endpoints", {}).items():
            text += f"; endpoint {name}: threshold {fmt(e['threshold']['value'])} ({e['threshold']['method']} on " \
                    f"{e['threshold']['chosen_on']})"
        return text
    return (f"{t.get('method', 'n/a')} on the {t.get('chosen_on', 'validation')} split"
            + (f", value {fmt(t.get('value'))}" if t else ""))


def _runs(runs: list[list[float]]) -> str:
    return ", ".join(fmt(a, 2) if a == b else f"{fmt(a, 2)}–{fmt(b, 2)}" for a, b in runs)


def _clinical_rows(clin: dict[str, Any] | None) -> list[dict[str, str]]:
    """The checklist rows for calibration, clinical utility and study size, filled from the clinical
    reading (:func:`medxcept.evaluation.clinical.clinical_reading`); ``[]`` without one (k classes: see each endpoint)."""
    if not clin:
        return []

    def est(d: dict[str, Any]) -> str:
        return fmt(d.get("point"), 2) + (f" (95 % CI {_ci(d)})" if _ci(d) else "")

    cb, ca = clin["calibration"]["before"], clin["calibration"]["after"]
    unit = clin.get("unit", "unit")
    dca = clin["decision_curve"]["after"]
    useful = dca.get("useful_ranges") or []
    clear = dca.get("clearly_useful_ranges")
    ss = clin["sample_size"]
    return [
        {"item": "Calibration: intercept, slope, calibration plot (TRIPOD+AI 12g, 23a; CLAIM 29)",
         "answer": f"{unit} level, patient-bootstrap CIs: calibration-in-the-large {est(cb['intercept'])} before "
                   f"and {est(ca['intercept'])} after recalibration ({clin.get('calibration_method', '')}); "
                   f"slope {est(cb['slope'])} before and {est(ca['slope'])} after; smoothed (LOWESS) calibration "
                   "curve with 95 % band (Clinical reading)", "status": "auto"},
        {"item": "Clinical utility: decision curve analysis (TRIPOD+AI 12g, 23a)",
         "answer": f"net benefit vs refer all / refer none over thresholds {fmt(clin['threshold_range'][0], 2)}–"
                   f"{fmt(clin['threshold_range'][1], 2)}, at the test prevalence {fmt(dca['prevalence'], 2)}; the "
                   "recalibrated model beats both "
                   + (f"at thresholds {_runs(useful)}" if useful else "at no threshold")
                   + ("" if clear is None else f" (95 % interval of the advantage excluding 0: "
                      f"{_runs(clear) if clear else 'at no threshold'})")
                   + "; sensitivity / specificity at fixed specificity / sensitivity (thresholds from validation)",
         "status": "auto"},
        {"item": "Study size: precision of the test set (TRIPOD+AI 8; CLAIM 19)",
         "answer": ss["sentence"], "status": "partial" if ss.get("too_small") else "auto"},
    ]


def _performance_answer(metrics: dict[str, Any]) -> str:
    """What the run really reports: never "bootstrap CIs (0 resamples)"."""
    graded = metrics.get("graded")
    n = int((graded or metrics).get("n_bootstrap", 0) or 0)
    cal = "top-label and class-wise ECE, Brier" if graded else "ECE, Brier"
    if not n:
        return f"point estimates only, no confidence intervals (eval.n_bootstrap is 0); {cal}"
    what = "quadratic kappa, per-class and macro AUCs" if graded and graded.get("task") == "ordinal" else (
        "per-class and macro AUCs" if graded else "")
    return f"patient-level bootstrap CIs ({n} resamples){' of ' + what if what else ''}, {cal}"


@dataclasses.dataclass(frozen=True)
class ReportInputs:
    """What the run's report shows besides ``metrics.json``, computed by the stages for it
    (:func:`medxcept.workflows.steps.report_inputs` builds it): the report computes nothing and reads no file.

    Attributes
    ----------
    config_yaml : str
        The run's ``config.yaml``, shown verbatim.
    ci_metrics : tuple of str
        The metrics given a CI (:func:`medxcept.evaluation.metrics.metric_names`), in the table's order.
    subgroups : list of dict
        The subgroup table's rows (:func:`medxcept.evaluation.subgroups.subgroup_rows`); ``[]`` for k classes.
    unit_scores : dict or None
        Binary runs: per headline unit, ``y`` (0/1), ``raw`` (the uncalibrated scores the headline AUC
        ranks, the unit's logit: the curves) and
        ``calibrated`` (what the threshold applies to: the operating point, the confusion matrix).
    """

    config_yaml: str
    ci_metrics: tuple[str, ...]
    subgroups: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    unit_scores: dict[str, np.ndarray] | None = None


def render_report(run_dir: Path, *, metrics: dict[str, Any], history: pd.DataFrame, audit: Any,
                  versions: dict[str, Any], spec: Any, frames: dict[str, pd.DataFrame], inputs: ReportInputs,
                  extra_figs: dict[str, str | None] | None = None,
                  examples: list[tuple[Any, ...]] | None = None) -> Path:
    """Write ``report.html`` into ``run_dir`` and return its path.

    The report renders what it is given; it reads no file, computes no metric and augments nothing.

    ``inputs``: the config text, subgroup rows and unit-level scores (:class:`ReportInputs`).
    ``extra_figs``: figures made elsewhere (data URIs), e.g. ``{"cam": ...}`` for the
    class-activation gallery of :func:`medxcept.report.cam.cam_gallery`. ``examples``: the rows of
    :func:`~medxcept.report.figures.examples_figure` (raw preview, preprocessed, augmented per
    class), made by :func:`medxcept.workflows.steps.report_examples`; ``None``: no example panel.
    """
    env = environment()
    classes = list(spec.classes)
    test = frames["test"]
    figs: dict[str, str | None] = {}
    threshold = (metrics.get("threshold") or {}).get("value")
    # the headline's unit: "visit" (patient and visit) when the run measured per visit
    unit = (metrics.get("evaluation_unit") or {}).get("unit", "patient")
    levels = {"roc_pr": "patient", "confusion": "image", "reliability": "image", "training": "patient",
              "cam": "image", "examples": "image", "learning_curve": "patient"}
    if len(classes) == 2:
        # the headline's unit: one score per patient; curves from the uncalibrated scores, the
        # operating point (and the confusion matrix) from the calibrated ones at the threshold
        s = inputs.unit_scores
        figs["roc_pr"] = roc_pr_figure(s["y"], s["raw"], threshold, operating=s["calibrated"],
                                       title_suffix=" (patient level, uncalibrated scores)")
        figs["confusion"] = confusion_figure(s["y"], (s["calibrated"] >= threshold).astype(int), classes)
        levels["confusion"] = "patient"
    else:
        P = test[[f"prob_{c}" for c in classes]].to_numpy()
        figs["roc_pr"] = None
        figs["confusion"] = confusion_figure(test["y"].to_numpy(), P.argmax(axis=1), classes)
    cal = metrics["calibration_test"]
    figs["reliability"] = reliability_figure(
        cal["before"]["reliability"], cal["after"]["reliability"],
        labels=("before recalibration (image level)",
                f"after ({metrics['calibration_method']}, image level)"))
    if metrics.get("clinical"):
        figs["clinical"] = clinical_figure(metrics["clinical"], title_suffix=f" ({unit}s)")
        levels["clinical"] = unit
    figs["training"] = training_figure(history, metrics["training"]["best_epoch"])
    figs["examples"] = examples_figure(examples) if examples else None
    figs.update(extra_figs or {})
    figs.setdefault("cam", None)
    audit_dict = audit.to_dict() if hasattr(audit, "to_dict") else audit
    context = {
        "m": metrics, "figs": figs, "classes": classes,
        "created": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "subgroups": inputs.subgroups if len(classes) == 2 else [],
        "fig_levels": levels,
        "checklist": checklist(metrics), "audit": audit_dict, "versions": versions,
        "config_yaml": inputs.config_yaml,
        "history": history.to_dict("records"),
        "ci_metrics": list(inputs.ci_metrics),
    }
    out = run_dir / "report.html"
    write_atomic(out, env.get_template("report.html.j2").render(**context))
    return out


def escape(text: str) -> str:
    """HTML-escape a string (for callers writing HTML outside the template)."""
    return html.escape(text, quote=True)
