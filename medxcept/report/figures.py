"""Figures for the report, rendered with matplotlib (Agg) to inline base64 PNG.

Each function takes plain arrays or frames and returns a ``data:image/png;base64,...`` URI, so
the HTML stays one self-contained file that opens offline.
"""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

__all__ = ["to_data_uri", "thumbnail_uri", "roc_pr_figure", "reliability_figure", "training_figure", "training_auc_curves", "confusion_figure",
           "examples_figure", "image_grid_figure", "clinical_figure", "learning_curve_figure",
           "fold_curves_figure"]

BLUE, ORANGE, GREY = "#1f5fa8", "#d9822b", "#888888"


def to_data_uri(fig: plt.Figure, dpi: int = 110) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def thumbnail_uri(img: np.ndarray, px: int = 128) -> str:
    """A PNG data URI of ``img`` (uint8, or float in [0, 1]; gray or RGB) shrunk to at most ``px`` px."""
    from PIL import Image

    a = np.asarray(img)
    if a.dtype != np.uint8:
        a = np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    im = Image.fromarray(a)
    im.thumbnail((px, px))
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def roc_pr_figure(y: np.ndarray, p: np.ndarray, threshold: float, *, title_suffix: str = "",
                  operating: np.ndarray | None = None) -> str | None:
    """ROC and precision-recall curves with the operating point chosen on validation.

    ``operating``: the scores the threshold applies to (the calibrated probabilities) when the
    curves are drawn from other scores ``p`` (the uncalibrated ones); default ``p``.
    """
    y = np.asarray(y)
    if len(np.unique(y)) < 2:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    fpr, tpr, _ = roc_curve(y, p)
    pred = (p if operating is None else np.asarray(operating)) >= threshold
    sens = (pred & (y == 1)).sum() / max((y == 1).sum(), 1)
    spec = (~pred & (y == 0)).sum() / max((y == 0).sum(), 1)
    ax = axes[0]
    ax.plot(fpr, tpr, color=BLUE, lw=2)
    ax.plot([0, 1], [0, 1], color=GREY, ls="--", lw=1)
    ax.scatter([1 - spec], [sens], color=ORANGE, zorder=3, label=f"threshold {threshold:.3f}")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=f"ROC{title_suffix}", xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower right", fontsize=8)
    prec, rec, _ = precision_recall_curve(y, p)
    ax = axes[1]
    ax.plot(rec, prec, color=BLUE, lw=2)
    ax.axhline(y.mean(), color=GREY, ls="--", lw=1, label=f"prevalence {y.mean():.2f}")
    ppv = (pred & (y == 1)).sum() / max(pred.sum(), 1)
    ax.scatter([sens], [ppv], color=ORANGE, zorder=3)
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=f"Precision-recall{title_suffix}",
           xlim=(0, 1), ylim=(0, 1.02))
    ax.legend(loc="lower left", fontsize=8)
    return to_data_uri(fig)


def reliability_figure(before: list[dict[str, Any]], after: list[dict[str, Any]], *, labels: tuple[str, str]) -> str:
    """Reliability diagrams before and after recalibration, with bin counts."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 4), sharey=True)
    for ax, rows, label in zip(axes, (before, after), labels, strict=False):
        t = pd.DataFrame(rows)
        ax.plot([0, 1], [0, 1], color=GREY, ls="--", lw=1)
        conf_col = next((c for c in ("mean_confidence", "confidence", "mean_prob") if c in t), None)
        freq_col = next((c for c in ("observed_frequency", "frequency", "accuracy", "observed") if c in t), None)
        if conf_col and freq_col and len(t):
            t = t[t["count"] > 0]
            ax.plot(t[conf_col], t[freq_col], marker="o", color=BLUE)
            for _, r in t.iterrows():
                ax.annotate(str(int(r["count"])), (r[conf_col], r[freq_col]), textcoords="offset points",
                            xytext=(4, -10), fontsize=7, color=GREY)
        ax.set(xlabel="predicted probability", title=label, xlim=(0, 1), ylim=(0, 1))
    axes[0].set_ylabel("observed frequency")
    return to_data_uri(fig)


def training_auc_curves(history: pd.DataFrame) -> dict[str, Any]:
    """The AUC series the training figure plots: the ones the training verdict reads.

    ``train``: the clean training patient AUC (``train_patient_auc``) when the history has it, else
    Keras' running image AUC (``auc``); ``val``: ``val_patient_auc`` (else ``val_auc``); ``gap``:
    ``train - val`` per epoch (None without a validation series); ``train_label``, ``val_label``.
    """
    def has(c: str) -> bool:
        return c in history and history[c].notna().any()

    tcol = "train_patient_auc" if has("train_patient_auc") else ("auc" if has("auc") else None)
    vcol = "val_patient_auc" if has("val_patient_auc") else ("val_auc" if has("val_auc") else None)
    train = None if tcol is None else history[tcol].astype(float)
    val = None if vcol is None else history[vcol].astype(float)
    return {"train": train, "val": val, "gap": None if train is None or val is None else train - val,
            "train_label": "train (patients, clean)" if tcol == "train_patient_auc" else "train (images, running)",
            "val_label": "validation (patients)" if vcol == "val_patient_auc" else "validation (images)"}


def training_figure(history: pd.DataFrame, best_epoch: int) -> str | None:
    """Train and validation loss and AUC per epoch, with the train-validation gap and the kept epoch
    (the AUCs of :func:`training_auc_curves`: those the training verdict beside it states)."""
    if history.empty:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    e = history["epoch"]
    axes[0].plot(e, history["loss"], color=BLUE, marker=".", label="train")
    if "val_loss" in history:
        axes[0].plot(e, history["val_loss"], color=ORANGE, marker=".", label="validation")
    axes[0].set(title="loss", xlabel="epoch")
    curves = training_auc_curves(history)
    if curves["train"] is not None:
        axes[1].plot(e, curves["train"], color=BLUE, marker=".", label=curves["train_label"])
    if curves["val"] is not None:
        axes[1].plot(e, curves["val"], color=ORANGE, marker=".", label=curves["val_label"])
    axes[1].set(title="ROC-AUC", xlabel="epoch", ylim=(0.4, 1.01))
    if curves["gap"] is not None:
        axes[2].bar(e, curves["gap"], color=GREY)
    axes[2].axhline(0, color="black", lw=0.8)
    axes[2].set(title="train - validation AUC gap", xlabel="epoch")
    for ax in axes:
        ax.axvline(best_epoch, color="green", ls=":", lw=1)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8, loc="lower right")
    stages = history["stage"].tolist()
    for i in range(1, len(stages)):
        if stages[i] != stages[i - 1]:
            for ax in axes:
                ax.axvline(e.iloc[i] - 0.5, color=GREY, ls="--", lw=0.8)
    return to_data_uri(fig)


def confusion_figure(y: np.ndarray, pred: np.ndarray, classes: list[str]) -> str:
    """Confusion matrix with counts."""
    k = len(classes)
    cm = np.zeros((k, k), dtype=int)
    for t, p in zip(y, pred, strict=False):
        cm[int(t), int(p)] += 1
    fig, ax = plt.subplots(figsize=(3.2 + 0.5 * k, 2.8 + 0.5 * k))
    ax.imshow(cm, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(k), classes, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(k), classes, fontsize=8)
    ax.set(xlabel="predicted", ylabel="true")
    return to_data_uri(fig)


def image_grid_figure(rows: list[tuple[str, list[tuple[str, np.ndarray | None]]]]) -> str:
    """A grid of images: one row per (row title, [(column title, image or None: a blank cell), ...])."""
    ncols = max(len(r[1]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.1 * ncols, 2.2 * len(rows)), squeeze=False)
    for i, (title, cells) in enumerate(rows):
        for j in range(ncols):
            ax = axes[i][j]
            ax.axis("off")
            if j < len(cells):
                name, img = cells[j]
                if img is None:  # withheld (e.g. text burned into the raw frame): the title says why
                    ax.add_patch(plt.Rectangle((0, 0), 1, 1, transform=ax.transAxes, color="#eeeeee"))
                else:
                    ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0,
                              vmax=255 if img.dtype == np.uint8 else 1)
                ax.set_title(name, fontsize=7)
        axes[i][0].text(-0.08, 0.5, title, transform=axes[i][0].transAxes, rotation=90, va="center", ha="right",
                        fontsize=8)
    fig.tight_layout()
    return to_data_uri(fig, dpi=90)


def examples_figure(examples: list[tuple[str, tuple[str, np.ndarray | None], np.ndarray, list[np.ndarray]]]) -> str:
    """Raw vs preprocessed vs augmented examples: ``(row title, (raw title, raw or None), preprocessed,
    [augmented...])``; the raw cell comes from :func:`medxcept.images.preview.raw_preview`."""
    rows = []
    for title, (raw_title, raw), pre, augs in examples:
        cells = [(raw_title, raw), ("preprocessed", pre)]
        cells += [(f"augmented #{i + 1}", a) for i, a in enumerate(augs)]
        rows.append((title, cells))
    return image_grid_figure(rows)


def _arr(values: list[float | None] | None) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in (values or [])], dtype=float)


def clinical_figure(clinical: dict[str, Any], *, title_suffix: str = "") -> str | None:
    """The clinical reading's two panels (:func:`medxcept.evaluation.clinical.clinical_reading`): the smoothed
    calibration curve with its patient-bootstrap band, before and after recalibration; and the decision
    curve (net benefit of the model before and after, of referring all and none), the model's band after."""
    cal, dca = clinical.get("calibration"), clinical.get("decision_curve")
    if not cal or not dca:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    ax = axes[0]
    ax.plot([0, 1], [0, 1], color=GREY, ls="--", lw=1, label="ideal")
    for key, color, label in (("before", ORANGE, "before recalibration"), ("after", BLUE, "after")):
        sm = cal[key]["smoothed"]
        grid, obs = np.asarray(sm["grid"], dtype=float), _arr(sm["observed"])
        slope = cal[key]["slope"]["point"]
        text = f"{label} (slope {slope:.2f})" if slope is not None else label
        ax.plot(grid, obs, color=color, lw=2, label=text)
        if sm.get("low") is not None:
            ax.fill_between(grid, _arr(sm["low"]), _arr(sm["high"]), color=color, alpha=0.15, lw=0)
    ax.set(xlabel="predicted probability", ylabel="observed frequency (LOWESS)",
           title=f"Smoothed calibration{title_suffix}", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[1]
    t = np.asarray(dca["after"]["thresholds"], dtype=float)
    ax.axhline(0.0, color="black", lw=1, label="refer none")
    ax.plot(t, dca["after"]["refer_all"], color=GREY, lw=1.5, ls="--", label="refer all")
    ax.plot(t, dca["before"]["model"], color=ORANGE, lw=1.5, label="model, before recalibration")
    ax.plot(t, dca["after"]["model"], color=BLUE, lw=2, label="model, after")
    if dca["after"].get("model_low") is not None:
        ax.fill_between(t, _arr(dca["after"]["model_low"]), _arr(dca["after"]["model_high"]), color=BLUE,
                        alpha=0.15, lw=0)
    prev = dca["after"]["prevalence"]
    top = max(prev, float(np.nanmax(_arr(dca["after"].get("model_high")) if dca["after"].get("model_high")
                                    else np.asarray(dca["after"]["model"]))))
    ax.set(xlabel="threshold probability", ylabel="net benefit",
           title=f"Decision curve (prevalence {prev:.2f}){title_suffix}", xlim=(t.min(), t.max()),
           ylim=(-0.05, max(0.05, top * 1.1)))
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return to_data_uri(fig)


def learning_curve_figure(rows: pd.DataFrame) -> str | None:
    """Validation and test patient-level AUC (and training AUC) against training patients."""
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    x = rows["train_patients"]
    ax.plot(x, rows["train_auc_at_best"], "o--", color=GREY, label="training AUC (kept epoch)")
    ax.plot(x, rows["val_patient_auc"], "o-", color=BLUE, label="validation AUC (patients)")
    ax.plot(x, rows["test_patient_auc"], "s-", color=ORANGE, label="test AUC (patients)")
    for xi, f in zip(x, rows["fraction"], strict=True):
        ax.annotate(f"{f:.0%}", (xi, 0.02), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=7,
                    xycoords=("data", "axes fraction"))
    ax.set_xlabel("training patients")
    ax.set_ylabel("ROC-AUC")
    ax.set_ylim(0.4, 1.02)
    ax.axhline(0.5, color=GREY, lw=0.6, ls=":")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("Learning curve", fontsize=10)
    return to_data_uri(fig)


def fold_curves_figure(histories: list[tuple[str, pd.DataFrame, int]], per_row: int = 5) -> str | None:
    """Small multiples: loss (top) and ROC-AUC (bottom) per fold, shared axes."""
    histories = [h for h in histories if not h[1].empty]
    if not histories:
        return None
    ncols = min(per_row, len(histories))
    blocks = math.ceil(len(histories) / ncols)
    fig, axes = plt.subplots(2 * blocks, ncols, figsize=(2.6 * ncols, 4.4 * blocks), squeeze=False,
                             sharex=True, sharey="row")
    for ax in axes.ravel():
        ax.set_visible(False)
    for n, (name, h, best) in enumerate(histories):
        b, c = divmod(n, ncols)
        top, bottom = axes[2 * b][c], axes[2 * b + 1][c]
        for ax in (top, bottom):
            ax.set_visible(True)
            ax.axvline(best, color="green", ls=":", lw=1)
        e = h["epoch"]
        top.plot(e, h["loss"], color=BLUE, marker=".", label="train")
        if "val_loss" in h:
            top.plot(e, h["val_loss"], color=ORANGE, marker=".", label="validation")
        top.set_title(name, fontsize=9)
        bottom.plot(e, h["auc"], color=BLUE, marker=".", label="train (images)")
        if "val_patient_auc" in h:
            bottom.plot(e, h["val_patient_auc"], color=ORANGE, marker=".", label="validation (patients)")
        bottom.set_ylim(0.0, 1.02)
        bottom.axhline(0.5, color=GREY, lw=0.6, ls="--")
        bottom.set_xlabel("epoch", fontsize=8)
        bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
        if c == 0:
            top.set_ylabel("loss", fontsize=8)
            bottom.set_ylabel("ROC-AUC", fontsize=8)
        if n == 0:
            top.legend(fontsize=7)
            bottom.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return to_data_uri(fig, dpi=90)
