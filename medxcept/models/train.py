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
interrupted run can resume. Keras' training ``auc`` is measured on augmented images, with dropout
on, averaged over an epoch whose weights kept changing: it is not comparable with the validation
AUC. So every epoch also records ``train_patient_auc``, measured exactly like the validation one
(clean images, inference mode, the same patient aggregation) on a fixed, patient-stratified
subset of at most :data:`TRAIN_AUC_MAX_IMAGES` training images, and ``val_prob_sd`` and
``collapsed``: a model whose validation outputs are constant (the SD of its validation
probabilities below :data:`COLLAPSE_SD`; for several classes also: every image predicted the same
class) has not learned anything usable in inference mode, whatever its training AUC says. Early
stopping never keeps such an epoch when another exists, and :attr:`TrainResult.collapse` says
which epochs collapsed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medxcept.config import RunConfig, config_hash
from medxcept.errors import ConfigError
from medxcept.evaluation.multiclass import unit_macro_auc

# the one patient aggregation and probability transform (kept under their old names here)
from medxcept.evaluation.units import patient_auc
from medxcept.evaluation.units import probabilities as _probs
from medxcept.faults import fault_point
from medxcept.images.augment import AugmentConfig, augment_batch, build_augment
from medxcept.images.dataset import CohortDataset, sample_weights_for
from medxcept.models.network import (
    WeightsInfo,
    build_model,
    count_trainable,
    data_parallel,
    freeze_base,
    precision_policy,
    unfreeze_top_blocks,
)

__all__ = ["TrainResult", "fit", "predict_logits", "predict_logits_tta", "PatientAUC", "BestEpoch", "set_seeds",
           "weights_checksum", "save_weights_atomic", "save_inference_model", "check_resumable",
           "TrainPatientAUC", "train_auc_subset", "is_collapsed", "collapse_summary", "TRAIN_AUC_MAX_IMAGES",
           "COLLAPSE_SD", "recalibrate_batchnorm", "RecalibrateBN", "EpochEvaluation", "inference_batch_size",
           "recalibrate_and_predict", "build_optimizer"]

log = logging.getLogger(__name__)

#: At most this many training images are predicted per epoch for ``train_patient_auc``.
TRAIN_AUC_MAX_IMAGES = 128
#: Pixels per inference batch (:func:`inference_batch_size`): 64 images at 96 px.
INFERENCE_PIXELS = 64 * 96 * 96
#: Precise BN runs as one batch (:func:`recalibrate_and_predict`) up to this many pixels (32 images
#: at 96 px); a larger subset is recalibrated in training-size batches and then predicted. Measured
#: peak memory at 96 px (Xception, from scratch): batched recalibration of 128 images 1.32 GB; one
#: batch of 32 images 1.67 GB; one batch of 128 images 3.85 GB, too much for a laptop.
RECALIBRATE_PIXELS = 32 * 96 * 96
#: Validation probabilities with a smaller SD than this are "constant" (a collapsed epoch).
COLLAPSE_SD = 1e-4


def set_seeds(seed: int) -> None:
    """Seed Python, NumPy and the Keras backend."""
    keras.utils.set_random_seed(seed)


def weights_checksum(model: keras.Model) -> str:
    """SHA-256 of every weight of ``model`` (trainable and not, e.g. BatchNormalization statistics).

    Recorded when training ends and checked when a resumed run restores the weights, so an
    untrained (freshly built) model can never be reported as the trained one.
    """
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def save_weights_atomic(model: keras.Model, path: Path) -> None:
    """``model.save_weights(path)`` through a temporary file and ``os.replace``: a crash mid-write
    leaves the previous file intact, never a torn one."""
    _save_atomic(path, model.save_weights)


def _save_atomic(path: Path, save: Callable[[Path], object]) -> None:
    """``save(tmp)`` into a temporary file beside ``path`` (same suffix, which Keras requires),
    then ``os.replace`` it onto ``path``; the temporary file never outlives a failure."""
    path = Path(path)
    tmp = path.with_name(f".{os.getpid()}.{path.name}")
    try:
        save(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _seed_variables(model: keras.Model) -> list:
    """The random-seed state of every layer (Dropout's ``SeedGenerator``): in ``model.variables``
    but not in ``model.weights``, so ``save_weights`` does not keep it."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _seed_states(model: keras.Model) -> list[list[int]]:
    return [np.asarray(keras.ops.convert_to_numpy(v)).astype(np.int64).ravel().tolist()
            for v in _seed_variables(model)]


def _set_seed_states(model: keras.Model, states: list[list[int]] | None) -> None:
    variables = _seed_variables(model)
    if states is None:
        log.warning("! the checkpoint holds no random-seed state (older medxcept): the resumed epochs' dropout "
                    "draws differ from an uninterrupted run's")
        return
    if len(states) != len(variables):
        raise ConfigError(f"the checkpoint holds {len(states)} random-seed state(s) but this model has "
                          f"{len(variables)}; start a new run instead of resuming this one")
    for v, s in zip(variables, states):
        v.assign(np.asarray(s).astype(keras.backend.standardize_dtype(v.dtype)).reshape(tuple(v.shape)))


@dataclass
class TrainResult:
    """A trained model, its per-epoch history and what happened."""

    model: keras.Model
    history: pd.DataFrame
    best_epoch: int
    stages: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    precision: str = "float32"
    n_devices: int = 1
    weights_sha256: str = ""
    resumed_after_training: bool = False
    #: ``None``, or ``{"epochs": [global epoch numbers whose validation outputs were constant],
    #: "all": every epoch collapsed, "message": a sentence in plain words}`` (:func:`collapse_summary`).
    collapse: dict | None = None


def predict_logits(model: keras.Model, images: np.ndarray, *, batch_size: int = 32) -> np.ndarray:
    """Logits for uint8-range images: shape (N,) for binary models, (N, k) otherwise."""
    ds = CohortDataset(images, np.zeros(len(images), dtype=np.int64), n_classes=2,
                       batch_size=batch_size, with_labels=False)
    out = model.predict(ds, verbose=0)
    return out[:, 0] if out.shape[-1] == 1 else out


def predict_logits_tta(model: keras.Model, images: np.ndarray, *, passes: int, seed: int, policy: str = "fundus",
                       batch_size: int = 32, keys: Sequence[int] | None = None) -> np.ndarray:
    """Test-time augmentation: the mean logit over the image and ``passes`` augmented copies.

    Copies use the ``light`` strength of the training policy (flips, small rotations and shifts,
    no colour change), seeded by ``seed`` so evaluation is reproducible. ``passes=0`` is
    :func:`predict_logits`. ``keys``: one non-negative integer per image (from its ``image_id``:
    :func:`medxcept.evaluation.assess.predict_units`); image ``i``'s copy ``k`` is then drawn from
    ``(seed, 7919, k, keys[i])``, so an image gets the same copies, hence the same logit, in any
    batch, split, fold or cohort. Without ``keys`` the copies of pass ``k`` are drawn in array
    order from ``(seed, 7919, k)``.
    """
    total = predict_logits(model, images, batch_size=batch_size)
    if passes <= 0:
        return total
    aug = build_augment(AugmentConfig(strength="light", policy=policy, balance="none"), seed=seed)
    if keys is not None and len(keys) != len(images):
        raise ValueError(f"{len(keys)} keys for {len(images)} images")
    for k in range(passes):
        if keys is None:
            copies = augment_batch(aug, images, rng=np.random.default_rng([seed, 7919, k]))
        else:
            copies = np.empty_like(images)
            for i, key in enumerate(keys):
                copies[i] = augment_batch(aug, images[i:i + 1], rng=np.random.default_rng([seed, 7919, k, int(key)]))[0]
        total = total + predict_logits(model, copies, batch_size=batch_size)
    return total / (passes + 1)


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


def inference_batch_size(image_px: int, train_batch: int) -> int:
    """Images per inference batch: about :data:`INFERENCE_PIXELS` pixels (64 images at 96 px, 6 at
    299 px), never fewer than the training batch. Inference keeps no activations for a backward pass,
    so a larger batch than training's fits, and fewer, larger calls cost less per image on a CPU
    (``benchmarks/train_throughput.py``)."""
    return max(int(train_batch), int(INFERENCE_PIXELS // (image_px * image_px)))


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
        for metric in _metrics(self.model, self.n_classes):
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
    """:attr:`TrainResult.collapse` from a history with a ``collapsed`` column (``None``: no epoch
    collapsed, or a history written before the column existed)."""
    if "collapsed" not in history or not len(history):
        return None
    flags = history["collapsed"].fillna(False).astype(bool)
    epochs = [int(e) for e in history.loc[flags, "epoch"]]
    if not epochs:
        return None
    every = len(epochs) == len(history)
    which = _epoch_list(epochs)
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


def _epoch_list(epochs: list[int]) -> str:
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
            (:meth:`_Checkpoint.save`), instead of writing the same 250 MB twice; ``pending_best``
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


class _History(keras.callbacks.Callback):
    """Collects every epoch of every stage, with the learning rate, and checkpoints each epoch.

    The checkpoint (``last.weights.h5`` with the optimizer state, then ``state.json``, atomically)
    holds everything :func:`fit` needs to continue after the last completed epoch.
    """

    def __init__(self, stage: str, rows: list[dict], checkpoint: _Checkpoint | None, offset: int,
                 save_state: object) -> None:
        super().__init__()
        self.stage, self.rows, self.checkpoint, self.offset = stage, rows, checkpoint, offset
        self.save_state = save_state
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
        if self.checkpoint is not None:
            self.save_state(epoch + 1, finished=False)
        fault_point("epoch_end", self.offset + epoch + 1)  # test hook (medxcept.faults)


class _Progress(keras.callbacks.Callback):
    """A tqdm bar over the steps of a stage and one log line per epoch."""

    def __init__(self, stage: str, epochs: int, steps: int, initial_epoch: int, offset: int) -> None:
        super().__init__()
        self.stage, self.epochs, self.steps, self.offset = stage, epochs, steps, offset
        self.bar = tqdm(total=(epochs - initial_epoch) * steps, desc=f"training ({stage.split(' (')[0]})",
                        unit="step", leave=False, dynamic_ncols=True, mininterval=2.0)

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch = self.offset + epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
        self.bar.update(1)
        if batch == 0:
            fault_point("epoch_batch", getattr(self, "_epoch", None))  # test hook: killed mid-epoch

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        logs = logs or {}
        log.info("epoch %d (%s %d/%d): loss %.4f, val loss %.4f, patient AUC train %.3f / val %.3f%s",
                 self.offset + epoch + 1, self.stage.split(" (")[0], epoch + 1, self.epochs,
                 logs.get("loss", float("nan")), logs.get("val_loss", float("nan")),
                 logs.get("train_patient_auc", float("nan")), logs.get("val_patient_auc", float("nan")),
                 " (validation outputs constant)" if logs.get("collapsed") else "")

    def on_train_end(self, logs: dict | None = None) -> None:
        self.bar.close()


class _Checkpoint:
    """Per-epoch checkpoint files in ``<run>/checkpoints``: weights, optimizer state, bookkeeping."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def state_file(self) -> Path:
        return self.path / "state.json"

    def read_state(self) -> dict | None:
        if not self.state_file.is_file():
            return None
        return json.loads(self.state_file.read_text())

    def save(self, model: keras.Model, state: dict, *, best: bool = False) -> None:
        """Weights (with the optimizer's variables) to a temporary file renamed over ``last.weights.h5``,
        then ``state.json`` (also atomically) with the weights' checksum and the random-seed states:
        ``state.json`` always describes a complete weights file. With ``best``, ``best.weights.h5``
        becomes a hard link to that same file (the same weights, written once; a later
        ``last.weights.h5`` replaces the name, not the linked file), before ``state.json`` names the
        epoch as the best one."""
        self.path.mkdir(parents=True, exist_ok=True)
        save_weights_atomic(model, self.path / "last.weights.h5")  # Keras 3 stores the optimizer's variables too
        if best:
            tmp = self.path / f".best.{os.getpid()}.h5"
            try:
                os.link(self.path / "last.weights.h5", tmp)
            except OSError:  # no hard links on this file system: a copy
                import shutil

                shutil.copyfile(self.path / "last.weights.h5", tmp)
            os.replace(tmp, self.path / "best.weights.h5")
        state = {**state, "weights_sha256": weights_checksum(model), "seed_states": _seed_states(model)}
        tmp = self.state_file.with_name(f".state.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(state, indent=1, default=float))
        os.replace(tmp, self.state_file)  # written last: a state file means the weights file is complete

    def restore(self, model: keras.Model, state: dict, *, optimizer: bool = True) -> None:
        """Load the last weights; with ``optimizer``, its state too (moments, step count, schedule).

        The random-seed states (dropout) are restored too, so the next epochs draw what the
        uninterrupted run drew. The loaded weights must have the checksum ``state`` recorded.
        """
        if optimizer:
            model.optimizer.build(model.trainable_variables)  # so that load_weights fills it
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.load_weights(self.path / "last.weights.h5")
        skipped = [str(w.message) for w in caught if "Skipping variable loading for optimizer" in str(w.message)]
        if optimizer and skipped:
            raise ConfigError(f"the optimizer state in {self.path} does not match this model ({skipped[0]}); "
                              "start a new run instead of resuming this one")
        _set_seed_states(model, state.get("seed_states"))
        self.verify(model, state)

    def verify(self, model: keras.Model, state: dict) -> None:
        """Refuse weights that are not the ones the checkpoint recorded (torn file, untrained model)."""
        expected, got = state.get("weights_sha256"), weights_checksum(model)
        if expected != got:
            raise ConfigError(
                f"the weights in {self.path / 'last.weights.h5'} (checksum {got[:12]}) are not the ones "
                f"state.json recorded ({str(expected)[:12]}): the checkpoint is damaged. Start a new run; "
                "this one cannot be completed honestly.")


def _fingerprint(cfg: RunConfig, train_y: np.ndarray, n_val: int) -> dict:
    """What a checkpoint must have been written with to be continued."""
    return {"config_hash": config_hash(cfg), "n_train": int(len(train_y)), "n_val": int(n_val),
            "train_labels": hashlib.sha256(np.asarray(train_y, dtype=np.int64).tobytes()).hexdigest()[:16]}


def _check_fingerprint(ckpt: _Checkpoint, state: dict, fingerprint: dict) -> None:
    if state.get("fingerprint") != fingerprint:
        raise ConfigError(
            f"cannot resume from {ckpt.path}: it was written with another configuration or other data "
            f"(checkpoint {state.get('fingerprint')}, this run {fingerprint}). Start a new run instead.")


def check_resumable(run_dir: Path, *, cfg: RunConfig, train_y: np.ndarray, n_val: int) -> dict | None:
    """Check, before anything is written, that ``fit(resume=True)`` would accept the checkpoint in
    ``run_dir/checkpoints``; return its state (``None`` when there is none).

    Raises:
        ConfigError: the checkpoint was written with another configuration or other data.
    """
    ckpt = _Checkpoint(Path(run_dir) / "checkpoints")
    try:
        state = ckpt.read_state()
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{ckpt.state_file} cannot be read ({exc}); start a new run") from None
    if state is not None:
        _check_fingerprint(ckpt, state, _fingerprint(cfg, train_y, n_val))
    return state


def save_inference_model(model: keras.Model, path: Path) -> int:
    """Save what inference needs (architecture and weights, no optimizer state) atomically; return its size.

    Keras 3's ``Model.save`` has no ``include_optimizer``: a compiled model carries the
    optimizer's moments (two more copies of every trainable weight). A model rebuilt from its
    configuration (``from_config``: uncompiled; ``keras.models.clone_model`` would compile the copy
    with the *same*, built optimizer) with the same weights holds only what :func:`predict_logits`
    needs; it loads with ``keras.models.load_model`` and predicts identically (``tests/test_faults.py``).
    """
    path = Path(path)
    clone = model.__class__.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    _save_atomic(path, clone.save)
    return path.stat().st_size


def _compile(model: keras.Model, optimizer: keras.optimizers.Optimizer, n_classes: int,
             label_smoothing: float) -> None:
    if n_classes == 2:
        loss = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing)
    else:
        from medxcept.models.ordinal import CumulativeLinkLoss, is_ordinal_model

        loss = (CumulativeLinkLoss(label_smoothing) if is_ordinal_model(model)  # outputs: class log-probabilities
                else keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing))
    model.compile(optimizer=optimizer, loss=loss, metrics=_metrics(model, n_classes))


def build_optimizer(model: keras.Model) -> bool:
    """Create the compiled optimizer's variables (moments, one per trainable weight) now; return
    whether it built them.

    Without this, the TensorFlow backend creates them lazily inside the first trace of the train
    step, and ``tf.function`` then traces the step a second time (a trace that created variables
    cannot be reused). Building them first, from the same trainable variables and with the same
    zero initial values Keras would use, makes the first epoch trace the step once: measured with
    the suite's tiny test network, 2 traces and 14.8 CPU-s for a 2-epoch fit before, 1 trace and
    7.8 CPU-s after; with Xception the trace is most of the first epoch's extra cost
    (``benchmarks/train_throughput.py``). Skipped under a ``tf.distribute`` strategy (Keras builds
    inside its scope) and when already built (a resumed stage builds it to load the checkpoint).
    """
    opt = getattr(model, "optimizer", None)
    if opt is None or opt.built or getattr(model, "_distribute_strategy", None) is not None:
        return False
    opt.build(model.trainable_variables)
    return True


def _metrics(model: keras.Model, n_classes: int) -> list[keras.metrics.Metric]:
    """Fresh instances of the compiled metrics (training logs ``auc``, ``accuracy``; :class:`EpochEvaluation`
    computes their ``val_`` twins from its single inference pass)."""
    if n_classes == 2:
        return [keras.metrics.AUC(from_logits=True, name="auc"),
                keras.metrics.BinaryAccuracy(threshold=0.0, name="accuracy")]
    return [keras.metrics.AUC(from_logits=True, name="auc"), keras.metrics.CategoricalAccuracy(name="accuracy")]


def _schedule(peak_lr: float, steps_per_epoch: int, epochs: int, warmup_epochs: int) -> object:
    """Linear warm-up to ``peak_lr`` then cosine decay to 1 % of it."""
    warmup = min(warmup_epochs, max(epochs - 1, 0)) * steps_per_epoch
    total = max(epochs * steps_per_epoch - warmup, 1)
    if warmup == 0:
        return keras.optimizers.schedules.CosineDecay(peak_lr, total, alpha=0.01)
    return keras.optimizers.schedules.CosineDecay(
        peak_lr * 0.1, total, alpha=0.01, warmup_target=peak_lr, warmup_steps=warmup)


def _adamw(schedule: object, weight_decay: float) -> keras.optimizers.AdamW:
    """AdamW whose weight decay reads the scheduled learning rate once per step, not once per variable.

    Keras' ``_apply_weight_decay`` evaluates ``self.learning_rate`` (the whole warm-up/cosine
    schedule, with its conditional) for every decayed variable: ~300 copies in Xception's traced train
    step, about a sixth of a small fit's CPU time on the TensorFlow backend. The update is the same
    (``v <- v - v * wd * lr``); the override lives on the instance, so checkpoints and saved models
    still name a plain AdamW.
    """
    opt = keras.optimizers.AdamW(schedule, weight_decay=weight_decay)

    def apply_weight_decay(variables: list) -> None:
        if opt.weight_decay is None:
            return
        lr = opt.learning_rate
        for variable in variables:
            if opt._use_weight_decay(variable):
                wd = keras.ops.cast(opt.weight_decay, variable.dtype)
                variable.assign(variable - variable * wd * keras.ops.cast(lr, variable.dtype))

    opt._apply_weight_decay = apply_weight_decay
    return opt


@dataclass
class _Stage:
    name: str
    epochs: int
    early_stop: bool
    prepare: Callable[[], None]  # sets trainable flags and compiles


def fit(train_images: np.ndarray, train_y: np.ndarray, val_images: np.ndarray, val_y: np.ndarray,
        val_groups: np.ndarray, *, cfg: RunConfig, weights: WeightsInfo, n_classes: int,
        run_dir: Path | None = None, resume: bool = False, train_groups: np.ndarray | None = None,
        task: str | None = None) -> TrainResult:
    """Train a model with the configured recipe; return it with the best epoch's weights.

    Args:
        train_images, val_images: uint8 arrays (N, px, px, 3), preprocessed.
        train_y, val_y: integer class indices.
        val_groups: patient keys of the validation images (for patient-level AUC).
        train_groups: patient keys of the training images, for ``train_patient_auc``; without
            them each training image counts as its own patient.
        cfg: the resolved run configuration (``cfg.train`` holds the recipe).
        weights: from :func:`medxcept.models.network.resolve_weights`.
        n_classes: number of classes.
        task: the cohort's task (``nominal`` or ``ordinal``) when ``n_classes > 2``: early stopping then
            ranks epochs by the graded evaluation's patient rule (worst eye for ordinal) and macro
            AUC. ``None``: ordinal when ``train.ordinal_loss`` is not softmax, else nominal.
        run_dir: where checkpoints go (``run_dir/checkpoints``); ``None`` disables them.
        resume: continue from the checkpoint in ``run_dir/checkpoints`` after its last completed
            epoch (weights, optimizer state, learning-rate schedule position, early-stopping
            bookkeeping and history are restored; the data order of the next epochs is the one
            the uninterrupted run would have used). Without a checkpoint it starts afresh. A
            checkpoint written with another configuration or other data raises ``ConfigError``.

    A resumed run reaches the same epoch count as an uninterrupted one and continues with the
    same random streams: data order (images and batches: Keras' own batch shuffling, which
    draws from Python's global ``random``, is off) and augmentation are functions of
    ``(seed, epoch, batch)`` and the dropout seed states are restored from the checkpoint, so its weights and losses equal
    the uninterrupted run's up to floating-point summation order (see ``tests/test_train.py``).
    A checkpoint whose stages had all finished is restored (best-epoch weights, checksum
    verified) and nothing trains.
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
    steps = len(train_ds)
    previous_policy = keras.config.dtype_policy().name
    policy = precision_policy(cfg.model.mixed_precision)
    keras.config.set_dtype_policy(policy)  # layers take it when built; restored below
    n_devices = data_parallel()
    try:
        model = build_model(image_px=cfg.preprocess.image_px, n_classes=n_classes, dropout=cfg.model.dropout,
                            weights=weights, seed=cfg.seed, head=cfg.train.ordinal_loss,
                            backbone=cfg.model.backbone)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    log.info("precision %s on %d device(s)", policy, n_devices)
    ckpt = _Checkpoint(run_dir / "checkpoints") if run_dir is not None else None
    fingerprint = _fingerprint(cfg, train_y, len(val_y))
    rows: list[dict] = []
    stages: list[dict] = []

    plan: list[_Stage] = []
    if baseline:
        def prep_baseline() -> None:
            freeze_base(model)
            _compile(model, keras.optimizers.Adam(tc.baseline_lr), n_classes, 0.0)
        plan.append(_Stage("baseline (frozen base, Adam)", tc.baseline_epochs, False, prep_baseline))
    elif weights.pretrained:
        def prep_head() -> None:
            freeze_base(model)
            _compile(model, keras.optimizers.Adam(tc.head_lr), n_classes, tc.label_smoothing)

        def prep_finetune() -> None:
            unfreeze_top_blocks(model, tc.unfreeze_blocks, keep_bn_frozen=True)
            opt = _adamw(_schedule(tc.finetune_lr, steps, tc.finetune_epochs, tc.warmup_epochs), tc.weight_decay)
            _compile(model, opt, n_classes, tc.label_smoothing)  # recompile: trainable flags changed
        plan.append(_Stage("1: head (base frozen)", tc.head_epochs, False, prep_head))
        plan.append(_Stage(f"2: top {tc.unfreeze_blocks} block(s) unfrozen", tc.finetune_epochs, True,
                           prep_finetune))
    else:
        epochs = tc.head_epochs + tc.finetune_epochs

        def prep_scratch() -> None:
            opt = _adamw(_schedule(tc.head_lr, steps, epochs, tc.warmup_epochs), tc.weight_decay)
            _compile(model, opt, n_classes, tc.label_smoothing)
        plan.append(_Stage("from scratch (not pretrained: whole network)", epochs, True, prep_scratch))
    # One inference pass per epoch serves every figure. From random initialization the BN moving
    # averages trail weights that move fast: with train.bn_recalibration they are recomputed from
    # clean training images first, before the model predicts or is checkpointed.
    evaluation = EpochEvaluation(
        val_images, val_y, val_groups, train_images, train_y,
        np.arange(len(train_y)) if train_groups is None else train_groups, n_classes=n_classes,
        batch_size=tc.batch_size, how=cfg.eval.patient_aggregation, seed=cfg.seed,
        kind=None if n_classes <= 2 else (task or ("ordinal" if tc.ordinal_loss != "softmax" else "nominal")),
        recalibrate=tc.bn_recalibration and not baseline and not weights.pretrained)

    # ---- resume: where the checkpoint left off
    start_stage, start_epoch, es_state = 0, 0, None
    state = ckpt.read_state() if (ckpt is not None and resume) else None
    if state is not None:
        _check_fingerprint(ckpt, state, fingerprint)
        rows.extend(state["rows"])
        stages.extend(state["stages"])
        start_stage, start_epoch, es_state = state["stage_index"], state["stage_epochs_done"], state["early_stop"]
        if state["stage_finished"]:
            start_stage, start_epoch, es_state = start_stage + 1, 0, None
        log.info("resuming from %s: %d epoch(s) done", ckpt.path, len(rows))
    elif resume:
        log.warning("--resume: no checkpoint in %s; training from the start", ckpt.path if ckpt else "memory")
    best_epoch: int | None = None

    for index, stage in enumerate(plan):
        if index < start_stage or stage.epochs <= 0:
            continue
        stage.prepare()
        resuming = state is not None and index == state["stage_index"] and not state["stage_finished"]
        if resuming:
            ckpt.restore(model, state)  # weights, optimizer state, schedule position, dropout seeds
        elif state is not None and index == start_stage:
            ckpt.restore(model, state, optimizer=False)  # the previous stage's final (best) weights
        # after the restores (the one without optimizer state loads into an unbuilt optimizer, which
        # skips the previous stage's moments), before fit traces the train step: traced once, not twice
        build_optimizer(model)
        offset = len(rows) - start_epoch if resuming else len(rows)
        train_ds.set_epoch(len(rows))
        chooser = BestEpoch(tc.patience if stage.early_stop else None,
                            checkpoint_dir=ckpt.path if (ckpt and stage.early_stop) else None,
                            state=es_state if resuming else None, epoch_offset=offset, restore=stage.early_stop,
                            deferred_write=True)

        def save_state(done: int, *, finished: bool, _i: int = index, _c: BestEpoch = chooser) -> None:
            ckpt.save(model, {"fingerprint": fingerprint, "stage_index": _i, "stage_epochs_done": done,
                              "stage_finished": finished, "early_stop": _c.state(), "rows": rows,
                              "stages": stages}, best=_c.pending_best)
            _c.pending_best = False

        initial = start_epoch if resuming else 0
        callbacks: list[keras.callbacks.Callback] = [
            evaluation, chooser, _History(stage.name, rows, ckpt, offset, save_state),
            _Progress(stage.name, stage.epochs, steps, initial, offset)]
        if not resuming:
            stages.append({"stage": stage.name, "max_epochs": stage.epochs, "trainable_params": count_trainable(model)})
        log.info("stage %s: %d epoch(s), %d trainable parameters", stage.name, stage.epochs,
                 stages[-1]["trainable_params"])
        if initial < stage.epochs and not chooser.stopped:
            # shuffle=False: the dataset orders each epoch itself from (seed, epoch). Keras would
            # otherwise shuffle the batch order with Python's global `random`, whose state a resumed
            # process cannot know, so a resumed run would see its batches in another order.
            # no validation_data: EpochEvaluation computes val_loss and the validation metrics from
            # the one inference pass that also gives the patient AUCs (each image predicted once)
            model.fit(train_ds, epochs=stage.epochs, initial_epoch=initial,
                      callbacks=callbacks, verbose=0, shuffle=False)
        else:
            callbacks[-1].on_train_end()  # close the progress bar
            chooser.set_model(model)
            chooser.on_train_end()
        if stage.early_stop:
            best_epoch = chooser.best_epoch
        _warn_collapse(stage.name, [r for r in rows if r.get("stage") == stage.name])
        if ckpt is not None:
            save_state(len(rows) - offset, finished=True)  # with the best weights restored

    trained_before = state is not None and not any(
        i >= start_stage and st.epochs > 0 for i, st in enumerate(plan))
    if trained_before:
        # every stage finished before the interruption: nothing trains, but the model must be the
        # trained one. The last checkpoint holds the final (best-epoch) weights; without restoring
        # them the freshly built, untrained model would be evaluated and reported as trained.
        last = plan[state["stage_index"]]
        last.prepare()
        ckpt.restore(model, state, optimizer=False)
        best_epoch = (state.get("early_stop") or {}).get("best_epoch") if last.early_stop else None
        log.info("resuming after training had finished: the weights of epoch %s restored from %s "
                 "(checksum verified)", best_epoch or len(rows), ckpt.path)
    history = pd.DataFrame(rows)
    if "collapsed" in history:
        history["collapsed"] = history["collapsed"].fillna(0.0).astype(bool)
    if best_epoch is None:
        best_epoch = int(history["epoch"].iloc[-1]) if len(history) else 0
    return TrainResult(model=model, history=history, best_epoch=best_epoch, stages=stages,
                       seconds=time.perf_counter() - t0, precision=policy, n_devices=n_devices,
                       weights_sha256=weights_checksum(model), resumed_after_training=trained_before,
                       collapse=collapse_summary(history, best_epoch))


def _warn_collapse(stage: str, rows: list[dict]) -> None:
    """One warning line when epochs of ``stage`` had constant validation outputs."""
    bad = [int(r["epoch"]) for r in rows if r.get("collapsed")]
    if not bad:
        return
    if len(bad) == len(rows):
        log.warning("! stage %s collapsed: the validation outputs were constant in every epoch (%s); the model "
                    "predicts nothing in inference mode (BatchNormalization statistics not settled?)",
                    stage, _epoch_list(bad))
    else:
        log.warning("! stage %s: the validation outputs were constant in %s; those epochs are never chosen",
                    stage, _epoch_list(bad))


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    return math.ceil(n_images / batch_size)
