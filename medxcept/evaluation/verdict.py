"""The training verdict: did the network learn, collapse, underfit, overfit, or train fine?

A reviewer reads the verdict before any number, so it must name the case that happened, with the
numbers behind it. The cases, checked in this order (the first that applies is the verdict):

``collapsed``
    The validation outputs were constant in every epoch (:attr:`medxcept.models.train.TrainResult.collapse`,
    or the history's ``collapsed`` column): the model gives every image the same answer.
``did not learn``
    The training metric never left chance: the best clean training patient AUC over all epochs is
    below :data:`CHANCE_AUC`. The network did not fit even its own training images, so nothing about
    the test set reflects learned signal (and a falling validation AUC is noise, not overfitting).
``underfitting``
    It learned something, but at the kept epoch the training AUC is below :data:`FIT_AUC` and the
    validation AUC is not far behind it: the model has not fitted its training data.
``overfitting``
    The training AUC exceeds the validation AUC by more than :data:`OVERFIT_GAP` at the kept epoch.
``fine``
    None of the above: training and validation agree and the training data is fitted.

**The training metric** is ``train_patient_auc`` (:mod:`medxcept.models.epoch_eval`): patient-level AUC on clean,
unaugmented training images in inference mode (no dropout), aggregated like the validation one, so
the two are comparable. Histories of older runs lack it; the verdict then falls back to Keras'
running ``auc`` over augmented, class-weighted batches and says so (``train_metric_note``).

:func:`chance_statement` adds the test-level sentence "test AUC not distinguishable from chance" when
the test AUC's confidence interval contains 0.5.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["CASES", "CHANCE_AUC", "FIT_AUC", "OVERFIT_GAP", "MILD_GAP", "training_verdict",
           "chance_statement", "summary_items"]

#: The verdict cases, in the order they are checked.
CASES = ("collapsed", "did not learn", "underfitting", "overfitting", "fine")
#: Best training patient AUC below this: the network did not learn (chance is 0.5).
CHANCE_AUC = 0.60
#: Training patient AUC at the kept epoch below this (with a small gap): underfitting.
FIT_AUC = 0.80
#: Train-validation AUC gap at the kept epoch above this: overfitting.
OVERFIT_GAP = 0.10
#: Gap above this (and at most :data:`OVERFIT_GAP`) is mentioned as mild.
MILD_GAP = 0.03

FALLBACK_NOTE = ("the history has no clean training patient AUC (train_patient_auc; an older run), so "
                 "the training side is Keras' running AUC over augmented, class-weighted batches with "
                 "dropout: it understates the fit and is not measured like the validation AUC")


def _f(v: Any) -> float:
    try:
        out = float(v)
    except (TypeError, ValueError):
        return math.nan
    return out


def _val_column(history: pd.DataFrame) -> str | None:
    for c in ("val_patient_auc", "val_auc"):
        if c in history and history[c].notna().any():
            return c
    return None


def _train_column(history: pd.DataFrame) -> tuple[str | None, str | None]:
    if "train_patient_auc" in history and history["train_patient_auc"].notna().any():
        return "train_patient_auc", None
    if "auc" in history and history["auc"].notna().any():
        return "auc", FALLBACK_NOTE
    return None, "the history has no training AUC at all: the verdict reads the validation side only"


def _collapse_info(history: pd.DataFrame, collapse: dict | None) -> dict[str, Any]:
    epochs: list[int] = []
    all_epochs = False
    message = advice = None
    if collapse:
        epochs = [int(e) for e in collapse.get("epochs", [])]
        all_epochs = bool(collapse.get("all", False))
        message, advice = collapse.get("message"), collapse.get("advice")
    elif "collapsed" in history and len(history):
        flags = history["collapsed"].astype(str).str.lower().isin(("true", "1", "1.0"))
        epochs = [int(e) for e in history.loc[flags, "epoch"]]
        all_epochs = bool(flags.all())
    return {"epochs": epochs, "all": all_epochs, "message": message, "advice": advice}


def training_verdict(history: pd.DataFrame, best_epoch: int, *,
                     collapse: dict | None = None) -> dict[str, Any]:
    """Name the training case from the per-epoch history, with the numbers behind it.

    Parameters
    ----------
    history : pandas.DataFrame
        One row per epoch: ``epoch`` and, when available, ``train_patient_auc`` (else Keras'
        ``auc``), ``val_patient_auc`` (else ``val_auc``), ``loss``, ``val_loss``, ``val_prob_sd``
        and ``collapsed``.
    best_epoch : int
        The epoch whose weights were kept.
    collapse : dict or None
        :attr:`medxcept.models.train.TrainResult.collapse` (``epochs``, ``all``, ``message``); None reads
        the history's ``collapsed`` column if any.

    Returns
    -------
    dict
        ``case`` (one of :data:`CASES`), ``headline`` (the case in one plain sentence with its
        numbers), ``verdict`` (headline plus the epoch-by-epoch detail), ``evidence`` (the numbers),
        ``train_metric`` (the column read), ``train_metric_note`` (None, or why the fallback is
        weaker), and the keys of the former verdict: ``best_epoch``, ``epochs_run``,
        ``train_auc_at_best``, ``val_auc_at_best``, ``gap_at_best``, ``overfitting_seen``,
        ``final_train_auc``, ``final_val_auc``; ``gap_validation_selected`` (True when the gap's
        validation AUC is the epoch chosen for having the best one: optimistic) and ``gap_note`` (the
        sentence the verdict ends with then, else None).
    """
    if history is None or history.empty:
        return {"case": None, "headline": "no training epochs ran", "verdict": "no training epochs ran",
                "best_epoch": int(best_epoch or 0), "epochs_run": 0, "evidence": {}, "train_metric": None,
                "train_metric_note": None, "overfitting_seen": False}
    history = history.reset_index(drop=True)
    tcol, tnote = _train_column(history)
    vcol = _val_column(history)
    n = int(history["epoch"].max())
    best_rows = history[history["epoch"] == best_epoch]
    best = best_rows.iloc[0] if len(best_rows) else history.iloc[-1]
    last = history.iloc[-1]
    tr = history[tcol].astype(float) if tcol else pd.Series(np.nan, index=history.index)
    va = history[vcol].astype(float) if vcol else pd.Series(np.nan, index=history.index)
    train_best, val_best = _f(best.get(tcol)) if tcol else math.nan, _f(best.get(vcol)) if vcol else math.nan
    gap = train_best - val_best
    ev: dict[str, Any] = {
        "train_metric": tcol, "val_metric": vcol, "epochs_run": n, "kept_epoch": int(best_epoch),
        "train_auc_at_kept": train_best, "val_auc_at_kept": val_best, "gap_at_kept": gap,
        "train_auc_min": float(tr.min()) if tr.notna().any() else math.nan,
        "train_auc_max": float(tr.max()) if tr.notna().any() else math.nan,
        "val_auc_max": float(va.max()) if va.notna().any() else math.nan,
        "train_auc_last": _f(last.get(tcol)) if tcol else math.nan,
        "val_auc_last": _f(last.get(vcol)) if vcol else math.nan,
    }
    if "val_prob_sd" in history:
        ev["val_prob_sd_at_kept"] = _f(best.get("val_prob_sd"))
    coll = _collapse_info(history, collapse)
    ev["collapsed_epochs"] = coll["epochs"]

    # --- the epoch-by-epoch detail (what the former verdict said, minus its overfitting claims)
    detail: list[str] = []
    later_overfit = False
    if va.notna().any():
        top = float(va.max())
        first = int(history.loc[va.idxmax(), "epoch"])
        tied = history.loc[np.isclose(va, top, atol=1e-6), "epoch"].tolist()
        if len(tied) > 1:
            detail.append(f"validation AUC reached its best ({top:.3f}) at epoch {first} of {n} and "
                          f"matched it in {len(tied)} epochs; among those, epoch {best_epoch} had the lowest "
                          "validation loss")
        else:
            detail.append(f"validation AUC peaked at epoch {first} of {n} ({top:.3f})")
        if top >= 0.999:
            detail.append("a validation AUC of 1 cannot rank epochs any further: the validation patients are "
                          "perfectly separated, so the loss decides")
        after = history[history["epoch"] > max(tied)]
        if len(after) and tcol and float(va.iloc[-1]) < top - 0.02 and float(tr.iloc[-1]) > float(
                tr.loc[va.idxmax()]) and float(tr.iloc[-1]) - float(va.iloc[-1]) > OVERFIT_GAP:
            later_overfit = True
            detail.append(f"after epoch {max(tied)} training AUC rose to {float(tr.iloc[-1]):.3f} while "
                          f"validation AUC fell to {float(va.iloc[-1]):.3f}: those later epochs overfit")
    detail.append(f"weights of epoch {best_epoch} kept")
    if coll["epochs"] and not coll["all"]:
        detail.append(f"validation outputs were constant (collapsed) in epoch(s) "
                      f"{', '.join(map(str, coll['epochs']))}")
    ev["later_epochs_overfit"] = later_overfit

    # --- the case
    fitted = "clean training patient AUC" if tcol == "train_patient_auc" else "training AUC (Keras, running)"
    if coll["all"] or (coll["epochs"] and int(best_epoch) in coll["epochs"]):
        case = "collapsed"
        sd = ev.get("val_prob_sd_at_kept")
        headline = ("Collapsed: the validation outputs were constant in "
                    + ("every epoch" if coll["all"] else f"the kept epoch {best_epoch}")
                    + (f" (SD of the validation probabilities {sd:.1e})"
                       if sd is not None and math.isfinite(sd) else "")
                    + "; the model gives every image the same answer, so its AUC measures nothing")
        # the collapse message restates the headline; only its cause and remedy are added
        extra = coll.get("advice") or coll["message"]
        if extra:
            headline += f". {extra.rstrip('.')}"
    elif tcol and math.isfinite(ev["train_auc_max"]) and ev["train_auc_max"] < CHANCE_AUC:
        case = "did not learn"
        headline = (f"Did not learn: the {fitted} stayed between {ev['train_auc_min']:.2f} and "
                    f"{ev['train_auc_max']:.2f} over {n} epoch(s) (chance is 0.5, learning starts at about "
                    f"{CHANCE_AUC:.2f}); the network never fitted its own training images, so any validation "
                    "or test result reflects chance, not learned signal")
    elif tcol and math.isfinite(train_best) and train_best < FIT_AUC and not (
            math.isfinite(gap) and gap > OVERFIT_GAP):
        case = "underfitting"
        rising = len(tr) > 1 and float(tr.iloc[-1]) > float(tr.iloc[:-1].max()) + 1e-9
        headline = (f"Underfitting: the {fitted} reached only {train_best:.2f} at the kept epoch "
                    f"{best_epoch} (validation {val_best:.2f}, gap {gap:+.2f}); the model has not fitted its "
                    "training data"
                    + ("; it was still rising at the last epoch, so more epochs may help" if rising else
                       "; a higher learning rate, pretrained weights or more data may help"))
    elif math.isfinite(gap) and gap > OVERFIT_GAP:
        case = "overfitting"
        headline = (f"Overfitting: the {fitted} is {train_best:.2f} against a validation AUC of "
                    f"{val_best:.2f} at the kept epoch {best_epoch} (gap {gap:.2f}, above "
                    f"{OVERFIT_GAP:.2f}); the model fits its training patients better than new ones")
    else:
        case = "fine"
        if not tcol:
            headline = (f"No training-side metric: validation patient AUC {val_best:.2f} at the kept epoch "
                        f"{best_epoch}; overfitting and underfitting cannot be told apart")
        else:
            mild = math.isfinite(gap) and gap > MILD_GAP
            headline = (f"Fine: the {fitted} is {train_best:.2f} and the validation AUC {val_best:.2f} at "
                        f"the kept epoch {best_epoch} (gap {gap:+.2f}"
                        + (", a mild gap" if mild else "") + "); no sign of underfitting or overfitting")
    # the kept epoch was chosen for its validation AUC (early stopping), so that AUC is the best of
    # the epochs on this validation split: optimistic, the more so the smaller the split and the
    # more epochs ran; a gap computed from it leans towards "fine" or "underfitting"
    selected = bool(vcol and math.isfinite(val_best) and va.notna().any() and np.isclose(val_best, float(va.max()),
                                                                                        atol=1e-6))
    gap_note = None
    if selected and tcol and math.isfinite(gap):
        gap_note = (f"The gap uses the validation AUC of epoch {best_epoch}, the epoch kept for having the best "
                    f"validation AUC of {n}: chosen for being highest, it is optimistic on a small validation "
                    "split, which leans the verdict towards fine or underfitting")
    ev["gap_validation_auc"] = ("the kept epoch's, which was selected as the best validation AUC" if selected
                                else "the kept epoch's")
    verdict = headline + ". " + "; ".join(detail) + "."
    if gap_note:
        verdict += f" {gap_note}."
    if tnote:
        verdict += f" Note: {tnote}."
    return {
        "gap_validation_selected": selected, "gap_note": gap_note,
        "case": case, "headline": headline + ".", "verdict": verdict, "evidence": ev,
        "train_metric": tcol, "train_metric_note": tnote, "collapse": coll if coll["epochs"] else None,
        "best_epoch": int(best_epoch), "epochs_run": n,
        "train_auc_at_best": train_best, "val_auc_at_best": val_best, "gap_at_best": gap,
        "overfitting_seen": case == "overfitting" or later_overfit,
        "final_train_auc": ev["train_auc_last"], "final_val_auc": ev["val_auc_last"],
    }


def chance_statement(auc: float | None, ci: Any, *, level: str = "patient") -> dict[str, Any]:
    """Whether the test AUC is distinguishable from chance, in words.

    Parameters
    ----------
    auc : float or None
        Test AUC (point estimate).
    ci : (low, high), a dict with ``low``/``high`` or ``ci``, or None
        Its confidence interval (the patient bootstrap).
    level : str
        "patient" or "image", named in the sentence.

    Returns
    -------
    dict
        ``chance`` (True when the interval contains 0.5, None when unknown), ``severity``
        ("red" when chance), ``message``.
    """
    low = high = None
    if isinstance(ci, dict):
        if "ci" in ci and ci["ci"] is not None:
            low, high = ci["ci"][0], ci["ci"][1]
        else:
            low, high = ci.get("low"), ci.get("high")
    elif ci is not None and len(ci) >= 2:
        low, high = (ci[-2], ci[-1]) if len(ci) == 3 else (ci[0], ci[1])
    if auc is None or low is None or high is None or not all(math.isfinite(_f(v)) for v in (auc, low, high)):
        return {"chance": None, "severity": None,
                "message": f"test {level} AUC has no confidence interval: chance cannot be ruled out or in"}
    if low <= 0.5 <= high:
        return {"chance": True, "severity": "red",
                "message": f"Test {level} AUC {auc:.3f} is not distinguishable from chance: its 95 % CI "
                           f"{low:.3f}–{high:.3f} contains 0.5"}
    side = "above" if low > 0.5 else "below"
    return {"chance": False, "severity": None,
            "message": f"Test {level} AUC {auc:.3f} (95 % CI {low:.3f}–{high:.3f}) lies {side} chance "
                       "(0.5)"}


def summary_items(*, training: dict[str, Any] | None = None, references: dict[str, Any] | None = None,
                  chance: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The lines of the report's summary card, in the order a reviewer must read them.

    1. When the deep model is not better than the classical reference, that comes first
       (:func:`medxcept.evaluation.references.reference_sentences`; ``severity`` "warn").
    2. "Test AUC not distinguishable from chance" (``severity`` "red") when the CI contains 0.5.
    3. The training verdict's headline (``severity`` "warn" unless the case is "fine").
    4. The remaining comparisons with the references ("info").

    Parameters
    ----------
    training : :func:`training_verdict` output, or None.
    references : :func:`medxcept.evaluation.references.compare_with_references` output, or None.
    chance : :func:`chance_statement` output, or None.

    Returns
    -------
    list of dict
        ``text``, ``severity`` ("red", "warn" or "info") and ``kind`` ("references", "chance",
        "verdict").
    """
    from medxcept.evaluation.references import reference_sentences

    items: list[dict[str, Any]] = []
    lines = reference_sentences(references) if references else []
    rest = lines
    if references and references.get("classical_not_better") and lines:
        items.append({"text": lines[0], "severity": "warn", "kind": "references"})
        rest = lines[1:]
    if chance and chance.get("chance"):
        items.append({"text": chance["message"] + ".", "severity": "red", "kind": "chance"})
    if training and training.get("headline"):
        items.append({"text": training["headline"], "kind": "verdict",
                      "severity": "info" if training.get("case") == "fine" else "warn"})
    if chance and chance.get("chance") is False:
        items.append({"text": chance["message"] + ".", "severity": "info", "kind": "chance"})
    items += [{"text": t, "severity": "info", "kind": "references"} for t in rest]
    return items
