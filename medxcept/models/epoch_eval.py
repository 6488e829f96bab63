"""What is measured at the end of every epoch: validation and clean-training patient AUCs from one
inference pass (:class:`EpochEvaluation`), collapse checks, precise BN (``train.bn_recalibration``)
and the early-stopping choice of the best epoch (:class:`BestEpoch`).

:func:`medxcept.models.train.fit` runs them every epoch; its docstring says why each is measured.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from medxcept.evaluation.class_units import unit_macro_auc

# the one patient aggregation and probability transform (kept under their old names here)
from medxcept.evaluation.units import patient_auc
from medxcept.evaluation.units import probabilities as _probs
from medxcept.models.checkpoint import save_weights_atomic
from medxcept.models.inference import inference_batch_size, predict_logits

__all__ = ["PatientAUC", "BestEpoch", "TrainPatientAUC", "train_auc_subset", "is_collapsed", "collapse_summary",
           "TRAIN_AUC_MAX_IMAGES", "COLLAPSE_SD", "RECALIBRATE_PIXELS", "recalibrate_batchnorm", "RecalibrateBN",
           "EpochEvaluation", "recalibrate_and_predict", "compiled_metrics", "epoch_list"]

log = logging.getLogger(__name__)

#: At most this many training images are predicted per epoch for ``train_patient_auc`` (and, from
#: scratch, give precise BN its statistics). 32 images at 96 px is one pass that both recalibrates and
#: predicts (:data:`RECALIBRATE_PIXELS`); 128 cost a batched recalibration and a second pass. On the
#: demo (7 epochs, 8 December 2026) 128 -> 32 left every training loss, the best epoch (4), the test
#: patient AUC (0.900), sensitivity (0.929), specificity (0.900), their CIs and the references
#: unchanged; validation patient AUC per epoch moved by at most 0.032 (0.974 -> 0.955 at epoch 4);
#: the clean training AUC, now on about 15 patients, reads 1.00 from epoch 4 (0.93 at the kept
#: epoch with 128: the verdict stays "fine", its gap -0.04 -> +0.04); with the ingestion pool rule
#: the demo used 265 -> 206 CPU-s.
TRAIN_AUC_MAX_IMAGES = 32
#: Precise BN runs as one batch (:func:`recalibrate_and_predict`) up to this many pixels (32 images
#: at 96 px); a larger subset is recalibrated in training-size batches and then predicted. Measured
#: peak memory at 96 px (Xception, from scratch): batched recalibration of 128 images 1.32 GB; one
#: batch of 32 images 1.67 GB; one batch of 128 images 3.85 GB, too much for a laptop.
RECALIBRATE_PIXELS = 32 * 96 * 96
#: Validation probabilities with a smaller SD than this are "constant" (a collapsed epoch).
COLLAPSE_SD = 1e-4


def _prob_sd(prob: np.ndarray) -> float:
    """SD of the probabilities (several classes: the mean over classes of each class's SD)."""
    if len(prob) == 0:
        return float("nan")
    return float(np.std(prob)) if prob.ndim == 1 else float(np.mean(np.std(prob, axis=0)))


def is_collapsed(prob: np.ndarray) -> bool:
    """Whether a model's validation outputs are constant: the SD of the probabilities is below
    :data:`COLLAPSE_SD`, or (several classes) every image gets the same most probable class.

    For one sigmoid output, "every image on the same side of 0.5" is *not* a collapse: such a
    model may still rank the images (its AUC is then meaningful) and only its threshold is off.
    """
    if len(prob) == 0:
        return False
    if _prob_sd(prob) < COLLAPSE_SD:
        return True
    return prob.ndim == 2 and len(np.unique(np.argmax(prob, axis=1))) == 1


def train_auc_subset(y: np.ndarray, groups: np.ndarray, *, max_images: int = TRAIN_AUC_MAX_IMAGES,
                     seed: int = 0) -> np.ndarray:
    """Indices of a deterministic, patient-stratified subset of at most ``max_images`` images.

    Whole patients are drawn, in a seeded random order within each class (a patient's class is
    the max of its images'), the classes interleaved in proportion to their patient counts, until
    the next patient would exceed ``max_images``. Every class with a patient that fits keeps at
    least one. Returns sorted indices into ``y`` (all of them when ``len(y) <= max_images``).
    """
    y, groups = np.asarray(y), np.asarray(groups)
    if len(y) <= max_images:
        return np.arange(len(y))
    frame = pd.DataFrame({"g": groups, "y": y, "i": np.arange(len(y))})
    per_patient = frame.groupby("g", sort=True).agg(y=("y", "max"), n=("i", "size"))
    rng = np.random.default_rng([seed, 4099])
    queues, keys = [], []
    for _, part in per_patient.groupby("y", sort=True):
        order = part.index.to_numpy()[rng.permutation(len(part))]
        # the k-th patient of a class of n patients sits at position (k + 0.5) / n of the interleaved list
        keys.extend((k + 0.5) / len(order) for k in range(len(order)))
        queues.extend(order)
    chosen, total = [], 0
    for key in np.asarray(queues, dtype=object)[np.argsort(keys, kind="stable")]:
        n = int(per_patient.at[key, "n"])
        if total + n <= max_images:
            chosen.append(key)
            total += n
    return np.sort(frame.loc[frame["g"].isin(chosen), "i"].to_numpy())


def _patient_auc(groups: np.ndarray, y: np.ndarray, prob: np.ndarray, *, how: str, kind: str | None = None) -> float:
    """The unit AUC early stopping ranks epochs by: binary, :func:`patient_auc`; k classes with the
    task's ``kind``, the graded evaluation's macro AUC (:func:`unit_macro_auc`)."""
    if kind is not None and np.asarray(prob).ndim == 2:
        return unit_macro_auc(groups, y, prob, kind=kind)
    return patient_auc(groups, y, prob, how=how)  # type: ignore[arg-type]


class PatientAUC(keras.callbacks.Callback):
    """Adds ``val_patient_auc``, ``val_prob_sd`` and ``collapsed`` (1.0 or 0.0: :func:`is_collapsed`)
    to the epoch logs, before early stopping reads them.
    ``how``: the run's ``eval.patient_aggregation`` (mean or max), so early stopping ranks epochs
    by the patient-level AUC the run reports.
    """

    def __init__(self, images: np.ndarray, y: np.ndarray, groups: np.ndarray, batch_size: int,
                 how: str = "mean") -> None:
        super().__init__()
        self.images, self.y, self.groups, self.batch_size, self.how = images, y, groups, batch_size, how

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        prob = _probs(predict_logits(self.model, self.images, batch_size=self.batch_size))
        auc = _patient_auc(self.groups, self.y, prob, how=self.how)
        if logs is not None:
            logs["val_patient_auc"] = auc
            logs["val_prob_sd"] = _prob_sd(prob)
            logs["collapsed"] = float(is_collapsed(prob))


class TrainPatientAUC(keras.callbacks.Callback):
    """Adds ``train_patient_auc``: the patient-level AUC on clean training images, measured as the
    validation one is (no augmentation, inference mode: no dropout, BatchNormalization's moving
    statistics; the same patient aggregation), on :func:`train_auc_subset`."""

    def __init__(self, images: np.ndarray, y: np.ndarray, groups: np.ndarray, batch_size: int, *,
                 max_images: int = TRAIN_AUC_MAX_IMAGES, seed: int = 0, how: str = "mean") -> None:
        super().__init__()
        keep = train_auc_subset(y, groups, max_images=max_images, seed=seed)
        self.images, self.y, self.groups = images[keep], np.asarray(y)[keep], np.asarray(groups)[keep]
        self.batch_size, self.how = batch_size, how

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        prob = _probs(predict_logits(self.model, self.images, batch_size=self.batch_size))
        if logs is not None:
            logs["train_patient_auc"] = _patient_auc(self.groups, self.y, prob, how=self.how)


class EpochEvaluation(keras.callbacks.Callback):
    """Everything medxcept measures at the end of an epoch, from **one** inference pass.

    The validation images and the clean training subset (:func:`train_auc_subset`) are predicted
    together, once, in inference mode, with the model's traced predict function (traced once per
    compiled stage, reused every epoch); from those logits come:

    * ``val_loss``, ``val_auc``, ``val_accuracy``: what Keras' ``validation_data`` pass computed
      (the compiled loss and metrics over every validation image; ``tests/test_train.py`` checks
      ``val_loss`` against ``Model.evaluate``), which ``fit`` therefore no longer runs;
    * ``val_patient_auc``, ``val_prob_sd``, ``collapsed`` (:class:`PatientAUC`'s) and
      ``train_patient_auc`` (:class:`TrainPatientAUC`'s).

    Each image is predicted once per epoch instead of the validation images twice. With
    ``recalibrate`` ("precise BN", from random initialization) the clean training subset's one pass
    is the training-mode pass of :func:`recalibrate_and_predict`, which sets BatchNormalization's
    moving statistics and gives the subset's inference-mode logits at once (up to
    :data:`RECALIBRATE_PIXELS`; above it, :func:`recalibrate_batchnorm` in batches and then the
    prediction); the validation images are predicted after it, so every figure sees the
    recalibrated statistics, as the checkpointed model holds them.
    """

    def __init__(self, val_images: np.ndarray, val_y: np.ndarray, val_groups: np.ndarray,
                 train_images: np.ndarray, train_y: np.ndarray, train_groups: np.ndarray, *, n_classes: int,
                 batch_size: int, how: str = "mean", recalibrate: bool = False, seed: int = 0,
                 max_images: int = TRAIN_AUC_MAX_IMAGES, kind: str | None = None) -> None:
        super().__init__()
        self.kind = kind  # k classes: the graded evaluation's unit rule and macro AUC (patient_auc)
        keep = train_auc_subset(train_y, train_groups, max_images=max_images, seed=seed)
        self.train_images = train_images[keep]
        self.train_y, self.train_groups = np.asarray(train_y)[keep], np.asarray(train_groups)[keep]
        self.val_y, self.val_groups = np.asarray(val_y), np.asarray(val_groups)
        self.n_val, self.n_classes, self.how = len(val_images), n_classes, how
        self.images = np.concatenate([val_images, self.train_images])  # one predict call per epoch
        self.batch_size = batch_size
        self.recalibrate, self.bn_batch = recalibrate, batch_size
        self.infer_batch = inference_batch_size(int(val_images.shape[1]), batch_size) if len(val_images) else batch_size

    def validation_logs(self, logits: np.ndarray) -> dict[str, float]:
        """``val_loss`` and ``val_<metric>`` from the validation logits, as ``Model.evaluate`` gives them:
        the compiled loss averaged over every image (plus regularization), the compiled metrics over all."""
        if not self.n_val:
            return {}
        y = _targets(self.val_y, self.n_classes)
        out = keras.ops.convert_to_tensor(logits)
        loss = float(keras.ops.convert_to_numpy(self.model.loss(keras.ops.convert_to_tensor(y), out)))
        loss += sum(float(keras.ops.convert_to_numpy(x)) for x in self.model.losses)
        logs = {"val_loss": loss}
        for metric in compiled_metrics(self.model, self.n_classes):
            metric.update_state(y, out)
            logs[f"val_{metric.name}"] = float(keras.ops.convert_to_numpy(metric.result()))
        return dict(sorted(logs.items()))

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        train = None
        if self.recalibrate:
            px = int(self.train_images.shape[1]) if self.train_images.ndim == 4 else 0
            if len(self.train_images) * px * px <= RECALIBRATE_PIXELS:  # one pass: statistics and logits
                train = recalibrate_and_predict(self.model, self.train_images)
            if train is None:  # too large for one batch: batches, then the subset is predicted below
                recalibrate_batchnorm(self.model, self.train_images, batch_size=self.bn_batch)
        if train is None:
            logits = self.model.predict(self.images, batch_size=self.infer_batch, verbose=0)
            val, train = logits[:self.n_val], logits[self.n_val:]
        else:
            val = self.model.predict(self.images[:self.n_val], batch_size=self.infer_batch, verbose=0)
            logits = val
        new = self.validation_logs(val)
        squeeze = (lambda a: a[:, 0]) if logits.shape[-1] == 1 else (lambda a: a)
        prob = _probs(squeeze(val))
        new["train_patient_auc"] = _patient_auc(self.train_groups, self.train_y, _probs(squeeze(train)), how=self.how,
                                                kind=self.kind)
        new["val_patient_auc"] = _patient_auc(self.val_groups, self.val_y, prob, how=self.how, kind=self.kind)
        new["val_prob_sd"] = _prob_sd(prob)
        new["collapsed"] = float(is_collapsed(prob))
        if logs is not None:
            logs.update(new)


def _targets(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Targets shaped as :meth:`medxcept.images.dataset.CohortDataset.targets` gives them to the loss."""
    y = np.asarray(y, dtype=np.int64)
    return y.astype(np.float32)[:, None] if n_classes == 2 else np.eye(n_classes, dtype=np.float32)[y]


def recalibrate_batchnorm(model: keras.Model, images: np.ndarray, *, batch_size: int) -> int:
    """Set the moving statistics of every trainable BatchNormalization layer to the mean, over
    batches of clean ``images``, of the batch statistics the current weights give ("precise BN",
    Wu & Johnson 2021, "Rethinking 'Batch' in BatchNorm"); return the number of layers updated.

    Each batch runs forward in training mode with the layer's momentum set to ``k / (k + 1)`` for
    the ``k``-th batch, so the moving average becomes the plain average of the batch statistics.
    Only BN layers that are trainable and called in training mode are touched (from random
    initialization); frozen or inference-mode layers (pretrained weights) keep theirs. Nothing
    else changes: no weight, no optimizer state, no random-seed state (dropout is not drawn from).
    """
    layers = [la for la in _all_layers(model) if isinstance(la, keras.layers.BatchNormalization) and la.trainable]
    if not layers or not len(images):
        return 0
    momenta = [layer.momentum for layer in layers]
    # the model without its dropout: a forward pass in training mode would draw dropout masks,
    # advancing the seed state that a resumed run must reproduce
    features = keras.Model(model.inputs, model.get_layer("gap").output) if _has_layer(model, "gap") else model
    try:
        for k, start in enumerate(range(0, len(images), batch_size)):
            for layer in layers:
                layer.momentum = k / (k + 1)
            features(keras.ops.convert_to_tensor(images[start:start + batch_size].astype("float32")), training=True)
    finally:
        for layer, m in zip(layers, momenta, strict=True):
            layer.momentum = m
    return len(layers)


def recalibrate_and_predict(model: keras.Model, images: np.ndarray) -> np.ndarray | None:
    """:func:`recalibrate_batchnorm` over ``images`` taken as **one** batch, returning the logits that
    inference mode gives for those images afterwards, from the same forward pass.

    With a single batch the recalibrated moving statistics *are* that batch's statistics, so the
    training-mode pass that sets them normalizes every layer exactly as inference mode does once
    they are set; only the head after global pooling is left, which runs without its dropout (as
    in inference). One pass instead of two over the clean training subset. Returns ``None`` (and
    changes nothing) when the model has no ``gap`` layer or no trainable BatchNormalization layer.
    The statistics are the subset's own (its variance is the pooled one, not the mean of per-batch
    variances). The caller bounds the batch's size (:data:`RECALIBRATE_PIXELS`).
    """
    layers = [la for la in _all_layers(model) if isinstance(la, keras.layers.BatchNormalization) and la.trainable]
    if not layers or not len(images) or not _has_layer(model, "gap"):
        return None
    gap = model.get_layer("gap")
    head = model.layers[model.layers.index(gap) + 1:]
    features = keras.Model(model.inputs, gap.output)  # no dropout: no seed state is drawn from
    momenta = [layer.momentum for layer in layers]
    try:
        for layer in layers:
            layer.momentum = 0.0  # moving statistics := this batch's
        x = features(keras.ops.convert_to_tensor(images.astype("float32")), training=True)
    finally:
        for layer, m in zip(layers, momenta, strict=True):
            layer.momentum = m
    for layer in head:
        if not isinstance(layer, keras.layers.Dropout):
            x = layer(x)
    return np.asarray(keras.ops.convert_to_numpy(x))


def _all_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    out = []
    for sub in getattr(layer, "layers", []):
        out.append(sub)
        out.extend(_all_layers(sub))
    return out


def _has_layer(model: keras.Model, name: str) -> bool:
    try:
        model.get_layer(name)
    except ValueError:
        return False
    return True


class RecalibrateBN(keras.callbacks.Callback):
    """:func:`recalibrate_batchnorm` at the end of every epoch, before anything predicts."""

    def __init__(self, images: np.ndarray, batch_size: int) -> None:
        super().__init__()
        self.images, self.batch_size = images, batch_size

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        recalibrate_batchnorm(self.model, self.images, batch_size=self.batch_size)


def collapse_summary(history: pd.DataFrame, best_epoch: int | None = None) -> dict | None:
    """:attr:`medxcept.models.train.TrainResult.collapse` from a history with a ``collapsed`` column (``None``: no epoch
    collapsed, or a history written before the column existed)."""
    if "collapsed" not in history or not len(history):
        return None
    flags = history["collapsed"].fillna(False).astype(bool)
    epochs = [int(e) for e in history.loc[flags, "epoch"]]
    if not epochs:
        return None
    every = len(epochs) == len(history)
    which = epoch_list(epochs)
    advice = None
    if every:
        advice = ("This happens when BatchNormalization's moving statistics have not settled (typically "
                  "training from random initialization on few images); train longer, or start from "
                  "pretrained weights (--weights).")
        message = (f"The validation outputs were constant in every epoch ({which}): the model gives every "
                   "image the same probability in inference mode, so no epoch could be chosen and its AUC "
                   f"means nothing. {advice}")
    else:
        kept = f"; early stopping kept epoch {best_epoch}, which was not collapsed" if (
            best_epoch is not None and best_epoch not in epochs) else ""
        message = (f"The validation outputs were constant in {len(epochs)} of {len(history)} epochs ({which}): "
                   f"those epochs were never chosen{kept}.")
    return {"epochs": epochs, "all": every, "message": message, "advice": advice}


def epoch_list(epochs: list[int]) -> str:
    if len(epochs) > 1 and epochs == list(range(epochs[0], epochs[-1] + 1)):
        return f"epochs {epochs[0]}-{epochs[-1]}"
    return ("epoch " if len(epochs) == 1 else "epochs ") + ", ".join(map(str, epochs))


class BestEpoch(keras.callbacks.Callback):
    """Early stopping on validation patient-level AUC, ties broken by the lower validation loss.

    Patient-level AUC on a validation split of a few dozen patients takes few distinct values: it
    often reaches 1.0 in the first epoch, while the probabilities are still near 0.5, and stays
    there. Keras' ``EarlyStopping`` keeps the *first* epoch of a tie, so it would return that
    barely trained model. Here an epoch is better when its AUC is higher (by more than
    ``min_delta``) or equal (within ``min_delta``) with a lower ``val_loss``. Training stops after
    ``patience`` epochs without a better one; the best epoch's weights are restored at the end
    (``restore=True``) and, with a checkpoint directory, kept in ``best.weights.h5`` so a resumed
    run can restore them too.

    A collapsed epoch (``collapsed`` in the logs: constant validation outputs) is never kept when
    a non-collapsed one exists, whatever its AUC or loss; and while every epoch so far has
    collapsed, patience does not run down (a model whose BatchNormalization statistics are still
    settling is given its epochs).

    Args:
        patience: epochs without improvement before stopping; ``None`` never stops (selection only).
        min_delta: AUC differences up to this are ties.
        checkpoint_dir: where ``best.weights.h5`` is written, or ``None``.
        deferred_write: leave writing ``best.weights.h5`` to the per-epoch checkpoint, which
            hard-links it to the ``last.weights.h5`` it has just written for the same weights
            (:meth:`medxcept.models.checkpoint.Checkpoint.save`), instead of writing the same 250 MB twice; ``pending_best``
            says when it must.
        state: the ``state()`` of an interrupted run, to resume its bookkeeping.
        epoch_offset: epochs completed in earlier stages (for the reported global epoch number).
    """

    def __init__(self, patience: int | None, *, min_delta: float = 1e-6, checkpoint_dir: Path | None = None,
                 state: dict | None = None, epoch_offset: int = 0, restore: bool = True,
                 deferred_write: bool = False) -> None:
        super().__init__()
        self.deferred_write, self.pending_best = deferred_write, False
        self.patience, self.min_delta, self.checkpoint_dir = patience, min_delta, checkpoint_dir
        self.epoch_offset, self.restore = epoch_offset, restore
        state = state or {}
        self.best_auc: float = state.get("best_auc", -math.inf)
        self.best_loss: float = state.get("best_loss", math.inf)
        self.best_epoch: int | None = state.get("best_epoch")
        self.wait: int = state.get("wait", 0)
        self.stopped: bool = state.get("stopped", False)
        # True while no epoch is kept or the kept one collapsed (older checkpoints: not collapsed)
        self.best_collapsed: bool = state.get("best_collapsed", self.best_epoch is None)
        self._best_weights: list[np.ndarray] | None = None

    def state(self) -> dict:
        return {"best_auc": self.best_auc, "best_loss": self.best_loss, "best_epoch": self.best_epoch,
                "wait": self.wait, "stopped": self.stopped, "best_collapsed": self.best_collapsed}

    def is_better(self, auc: float, loss: float, collapsed: bool = False) -> bool:
        if collapsed != self.best_collapsed and self.best_epoch is not None:
            return not collapsed  # a non-collapsed epoch beats a collapsed one, never the reverse
        auc = -math.inf if auc is None or math.isnan(auc) else auc
        loss = math.inf if loss is None or math.isnan(loss) else loss
        if auc > self.best_auc + self.min_delta:
            return True
        return auc >= self.best_auc - self.min_delta and loss < self.best_loss

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        auc, loss = logs.get("val_patient_auc", float("nan")), logs.get("val_loss", float("nan"))
        collapsed = bool(logs.get("collapsed", 0.0))
        if self.is_better(auc, loss, collapsed):
            self.best_auc = -math.inf if math.isnan(auc) else float(auc)
            self.best_loss = math.inf if math.isnan(loss) else float(loss)
            self.best_epoch = self.epoch_offset + epoch + 1
            self.best_collapsed = collapsed
            self.wait = 0
            self._best_weights = self.model.get_weights()
            if self.checkpoint_dir is not None and self.deferred_write:
                self.pending_best = True
            elif self.checkpoint_dir is not None:
                self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                save_weights_atomic(self.model, self.checkpoint_dir / "best.weights.h5")
        elif not self.best_collapsed:  # patience runs from the first epoch that did not collapse
            self.wait += 1
            if self.patience is not None and self.wait >= self.patience:
                self.stopped = True
                self.model.stop_training = True

    def on_train_end(self, logs: dict | None = None) -> None:
        if not self.restore or self.best_epoch is None:
            return
        if self._best_weights is not None:
            self.model.set_weights(self._best_weights)
        elif self.checkpoint_dir is not None and (self.checkpoint_dir / "best.weights.h5").is_file():
            self.model.load_weights(self.checkpoint_dir / "best.weights.h5")  # best epoch was before a resume
        log.info("restored the weights of epoch %d (validation patient AUC %.3f, loss %.4f)",
                 self.best_epoch, self.best_auc, self.best_loss)


def compiled_metrics(model: keras.Model, n_classes: int) -> list[keras.metrics.Metric]:
    """Fresh instances of the compiled metrics (training logs ``auc``, ``accuracy``; :class:`EpochEvaluation`
    computes their ``val_`` twins from its single inference pass)."""
    if n_classes == 2:
        return [keras.metrics.AUC(from_logits=True, name="auc"),
                keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]
    return [keras.metrics.AUC(from_logits=True, name="auc"), keras.metrics.CategoricalAccuracy(name="accuracy")]

