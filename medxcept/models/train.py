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
subset of at most :data:`~medxcept.models.epoch_eval.TRAIN_AUC_MAX_IMAGES` training images, and ``val_prob_sd`` and
``collapsed``: a model whose validation outputs are constant (the SD of its validation
probabilities below :data:`~medxcept.models.epoch_eval.COLLAPSE_SD`; for several classes also: every image predicted the same
class) has not learned anything usable in inference mode, whatever its training AUC says. Early
stopping never keeps such an epoch when another exists, and :attr:`TrainResult.collapse` says
which epochs collapsed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from medxcept.config import RunConfig
from medxcept.faults import fault_point
from medxcept.images.augment import AugmentConfig, build_augment
from medxcept.images.dataset import CohortDataset, sample_weights_for
from medxcept.models.checkpoint import Checkpoint, check_fingerprint, checkpoint_fingerprint, weights_checksum
from medxcept.models.epoch_eval import (
    BestEpoch,
    EpochEvaluation,
    collapse_summary,
    compiled_metrics,
    epoch_list,
)
from medxcept.models.network import (
    WeightsInfo,
    build_model,
    count_trainable,
    data_parallel,
    freeze_base,
    precision_policy,
    unfreeze_top_blocks,
)

__all__ = ["TrainResult", "fit", "set_seeds", "build_optimizer", "steps_per_epoch"]

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
    precision: str = "float32"
    n_devices: int = 1
    weights_sha256: str = ""
    resumed_after_training: bool = False
    #: ``None``, or ``{"epochs": [global epoch numbers whose validation outputs were constant],
    #: "all": every epoch collapsed, "message": a sentence in plain words}`` (:func:`~medxcept.models.epoch_eval.collapse_summary`).
    collapse: dict | None = None


class _History(keras.callbacks.Callback):
    """Collects every epoch of every stage, with the learning rate, and checkpoints each epoch.

    The checkpoint (``last.weights.h5`` with the optimizer state, then ``state.json``, atomically)
    holds everything :func:`fit` needs to continue after the last completed epoch.
    """

    def __init__(self, stage: str, rows: list[dict], checkpoint: Checkpoint | None, offset: int,
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


def _compile(model: keras.Model, optimizer: keras.optimizers.Optimizer, n_classes: int,
             label_smoothing: float) -> None:
    if n_classes == 2:
        loss = keras.losses.BinaryCrossentropy(from_logits=True, label_smoothing=label_smoothing)
    else:
        from medxcept.models.ordinal import CumulativeLinkLoss, is_ordinal_model

        loss = (CumulativeLinkLoss(label_smoothing) if is_ordinal_model(model)  # outputs: class log-probabilities
                else keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=label_smoothing))
    model.compile(optimizer=optimizer, loss=loss, metrics=compiled_metrics(model, n_classes))


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
    ckpt = Checkpoint(run_dir / "checkpoints") if run_dir is not None else None
    fingerprint = checkpoint_fingerprint(cfg, train_y, len(val_y))
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
        check_fingerprint(ckpt, state, fingerprint)
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
                    stage, epoch_list(bad))
    else:
        log.warning("! stage %s: the validation outputs were constant in %s; those epochs are never chosen",
                    stage, epoch_list(bad))


def steps_per_epoch(n_images: int, batch_size: int) -> int:
    return math.ceil(n_images / batch_size)
