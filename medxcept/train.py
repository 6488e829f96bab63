"""Fine-tuning Xception on a small cohort without fooling oneself.

Why this recipe (``recipe="default"``). With a few hundred images, a network of 20 M parameters
memorizes the training set within a few epochs. Everything here limits that or makes it visible:

1. **Stage 1, frozen base.** With pretrained weights, only the new head trains first (higher
   learning rate, few epochs), so large random-head gradients do not wreck the pretrained features.
2. **Stage 2, top blocks unfrozen.** The top ``unfreeze_blocks`` Xception blocks train at a low
   learning rate with linear warm-up and cosine decay, AdamW weight decay and label smoothing.
   BatchNormalization layers stay in inference mode (``training=False`` on the base, BN layers
   frozen), as Keras' transfer-learning guide prescribes: small batches would otherwise replace
   the pretrained statistics with noisy ones.
3. **Early stopping on validation AUC**, computed at the **patient** level (a patient's images
   averaged) with patience, restoring the best epoch's weights. Accuracy is a poor guide on
   imbalanced data; validation loss alone rewards over-confident models.

Without pretrained weights (``--weights none``) there is nothing to protect: freezing a random
base only wastes epochs. The whole network then trains from the start (BN in training mode) for
``head_epochs + finetune_epochs`` epochs with the same schedule, early stopping and checkpoints;
the run is marked "not pretrained" everywhere.

``recipe="baseline"`` is the common tutorial recipe, for comparison on the same split: frozen
base, global average pooling + dense head, Adam at 0.01, a fixed number of epochs, accuracy as the
only metric, flips and small rotations only, no early stopping.

Every epoch appends to the history (train and validation loss, AUC, accuracy, patient-level
validation AUC, learning rate) and writes a checkpoint, so overfitting is visible and an
interrupted run can resume.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from medxcept.augment import AugmentConfig, build_augment
from medxcept.config import RunConfig
from medxcept.data import CohortDataset, sample_weights_for
from medxcept.model import (
    WeightsInfo,
    build_model,
    count_trainable,
    freeze_base,
    unfreeze_top_blocks,
)

__all__ = ["TrainResult", "fit", "predict_logits", "PatientAUC", "set_seeds"]

log = logging.getLogger(__name__)


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and the Keras backend."""
    keras.utils.set_random_seed(seed)


@dataclass
class TrainResult:
    """A trained model, its per-epoch history and what happened."""

    model: keras.Model
    history: pd.DataFrame
    best_epoch: int
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0


def predict_logits(model: keras.Model, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Logits for uint8-range images: shape (N,) for binary models, (N, k) otherwise."""
    ds = CohortDataset(images, np.zeros(len(images), dtype=np.int64), n_classes=2,
                       batch_size=batch_size, with_labels=False)
    out = model.predict(ds, verbose=0)
    return out[:, 0] if out.shape[-1] == 1 else out


def _probs(logits: np.ndarray) -> np.ndarray:
    if logits.ndim == 1:
        return 1.0 / (1.0 + np.exp(-logits))
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _patient_auc(groups: np.ndarray, y: np.ndarray, prob: np.ndarray) -> float:
    """AUC after averaging each patient's probabilities (patient label = max of its images)."""
    frame = pd.DataFrame({"g": groups, "y": y})
    if prob.ndim == 1:
        frame["p"] = prob
        agg = frame.groupby("g").agg(y=("y", "max"), p=("p", "mean"))
        if agg["y"].nunique() < 2:
            return float("nan")
        return float(roc_auc_score(agg["y"], agg["p"]))
    cols = [f"p{i}" for i in range(prob.shape[1])]
    frame[cols] = prob
    agg = frame.groupby("g").agg({"y": "max", **{c: "mean" for c in cols}})
    if agg["y"].nunique() < 2:
        return float("nan")
    p = agg[cols].to_numpy()
    p = p / p.sum(axis=1, keepdims=True)
    return float(roc_auc_score(agg["y"], p, multi_class="ovr", average="macro",
                               labels=list(range(prob.shape[1]))))


class PatientAUC(keras.callbacks.Callback):
    """Adds ``val_patient_auc`` to the epoch logs (before early stopping reads it)."""

    def __init__(self, images: np.ndarray, y: np.ndarray, groups: np.ndarray, batch_size: int) -> None:
        super().__init__()
        self.images, self.y, self.groups, self.batch_size = images, y, groups, batch_size

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logits = predict_logits(self.model, self.images, batch_size=self.batch_size)
        auc = _patient_auc(self.groups, self.y, _probs(logits))
        if logs is not None:
            logs["val_patient_auc"] = auc


class _History(keras.callbacks.Callback):
    """Collects every epoch of every stage, with the learning rate, and checkpoints each epoch."""

    def __init__(self, stage: str, rows: list[dict], checkpoint_dir: Path | None, offset: int) -> None:
        super().__init__()
        self.stage, self.rows, self.checkpoint_dir, self.offset = stage, rows, checkpoint_dir, offset
        self._t0 = 0.0

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._t0 = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = dict(logs or {})
        lr = self.model.optimizer.learning_rate
        row = {"epoch": self.offset + epoch + 1, "stage": self.stage,
               "seconds": round(time.perf_counter() - self._t0, 2),
               "lr": float(keras.ops.convert_to_numpy(lr))}
        row.update({k: float(v) for k, v in logs.items() if k != "learning_rate"})
        self.rows.append(row)
        if self.checkpoint_dir is not None:
            self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
            self.model.save_weights(self.checkpoint_dir / "last.weights.h5")
            (self.checkpoint_dir / "state.json").write_text(json.dumps(
                {"stage": self.stage, "epoch": row["epoch"]}))


def _compile(model: keras.Model, optimizer: keras.optimizers.Optimizer, n_classes: int,
             label_smoothing: float) -> None:
    if n_classes == 2:
        loss = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing)
        metrics = [keras.metrics.AUC(from_logits=True, name="auc"),
                   keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]
    else:
        loss = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing)
        metrics = [keras.metrics.AUC(from_logits=True, name="auc"),
                   keras.metrics.CategoricalAccuracy(name="accuracy")]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)


def _schedule(peak_lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: int) -> object:
    """Linear warm-up to ``peak_lr`` then cosine decay to 1 % of it."""
    warmup = min(warmup_epochs, max(epochs - 1, 0)) * steps_per_epoch
    total = max(epochs * steps_per_epoch - warmup, 1)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(peak_lr, total, alpha=0.01)
    return keras.optimizers.schedules.CosineDecay(
        peak_lr * 0.1, total, alpha=0.01, warmup_target=peak_lr, warmup_steps=warmup)


def fit(train_images: np.ndarray, train_y: np.ndarray, val_images: np.ndarray, val_y: np.ndarray,
        val_groups: np.ndarray, *, cfg: RunConfig, weights: WeightsInfo, n_classes: int,
        run_dir: Path | None = None) -> TrainResult:
    """Train a model with the configured recipe; return it with the best epoch's weights.

    Args:
        train_images, val_images: uint8 arrays (N, px, px, 3), preprocessed.
        train_y, val_y: integer class indices.
        val_groups: patient keys of the validation images (for patient-level AUC).
        cfg: the resolved run configuration (``cfg.train`` holds the recipe).
        weights: from :func:`medxcept.model.resolve_weights`.
        n_classes: number of classes.
        run_dir: where checkpoints go (``run_dir/checkpoints``); ``None`` disables them.
    """
    t0 = time.perf_counter()
    tc = cfg.train
    set_seeds(cfg.seed)
    baseline = tc.recipe == "baseline"
    aug_cfg = AugmentConfig(strength="light", policy=cfg.augment.policy, balance="none") if baseline else cfg.augment
    augment = build_augment(aug_cfg, seed=cfg.seed)
    train_ds = CohortDataset(
        train_images, train_y, n_classes=n_classes, batch_size=tc.batch_size, augment=augment,
        shuffle=True, balance=aug_cfg.balance, sample_weights=sample_weights_for(train_y, n_classes, aug_cfg),
        seed=cfg.seed, workers=tc.workers, use_multiprocessing=False)
    val_ds = CohortDataset(val_images, val_y, n_classes=n_classes, batch_size=tc.batch_size, workers=1)
    steps = len(train_ds)
    model = build_model(image_px=cfg.preprocess.image_px, n_classes=n_classes, dropout=cfg.model.dropout,
                        weights=weights, seed=cfg.seed)
    ckpt = run_dir / "checkpoints" if run_dir is not None else None
    rows: list[dict] = []
    stages: list[dict] = []
    patient_auc = PatientAUC(val_images, val_y, val_groups, tc.batch_size)

    def run_stage(name: str, epochs: int, early_stop: bool) -> None:
        if epochs <= 0:
            return
        callbacks: list[keras.callbacks.Callback] = [patient_auc]
        if early_stop:
            callbacks.append(keras.callbacks.EarlyStopping(
                monitor="val_patient_auc", mode="max", patience=tc.patience, restore_best_weights=True,
                verbose=0))
        callbacks.append(_History(name, rows, ckpt, offset=len(rows)))
        stages.append({"stage": name, "max_epochs": epochs, "trainable_params": count_trainable(model)})
        log.info("stage %s: %d epoch(s), %d trainable parameters", name, epochs, stages[-1]["trainable_params"])
        model.fit(train_ds, validation_data=val_ds, epochs=epochs, callbacks=callbacks, verbose=0)

    if baseline:
        freeze_base(model)
        _compile(model, keras.optimizers.Adam(tc.baseline_lr), n_classes, 0.0)
        run_stage("baseline (frozen base, Adam)", tc.baseline_epochs, early_stop=False)
    elif weights.pretrained:
        freeze_base(model)
        _compile(model, keras.optimizers.Adam(tc.head_lr), n_classes, tc.label_smoothing)
        run_stage("1: head (base frozen)", tc.head_epochs, early_stop=False)
        unfreeze_top_blocks(model, tc.unfreeze_blocks, keep_bn_frozen=True)
        opt = keras.optimizers.AdamW(_schedule(tc.finetune_lr, steps, tc.finetune_epochs, tc.warmup_epochs),
                                     weight_decay=tc.weight_decay)
        _compile(model, opt, n_classes, tc.label_smoothing)  # recompile: trainable flags changed
        run_stage(f"2: top {tc.unfreeze_blocks} block(s) unfrozen", tc.finetune_epochs, early_stop=True)
    else:
        epochs = tc.head_epochs + tc.finetune_epochs
        opt = keras.optimizers.AdamW(_schedule(tc.head_lr, steps, epochs, tc.warmup_epochs),
                                     weight_decay=tc.weight_decay)
        _compile(model, opt, n_classes, tc.label_smoothing)
        run_stage("from scratch (not pretrained: whole network)", epochs, early_stop=True)

    history = pd.DataFrame(rows)
    best_epoch = int(history["epoch"].iloc[-1]) if len(history) else 0
    if len(history) and not baseline and history["val_patient_auc"].notna().any():
        last_stage = history[history["stage"] == history["stage"].iloc[-1]]
        if len(last_stage) and last_stage["val_patient_auc"].notna().any():
            best_epoch = int(last_stage.loc[last_stage["val_patient_auc"].idxmax(), "epoch"])
    return TrainResult(model=model, history=history, best_epoch=best_epoch, stages=stages,
                       seconds=time.perf_counter() - t0)


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    return math.ceil(n_images / batch_size)
