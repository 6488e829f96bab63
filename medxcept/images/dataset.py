"""The input pipeline: preprocessed images in memory, augmented per batch, fed by a ``PyDataset``.

``keras.utils.PyDataset`` works under every Keras backend (no ``tf.data`` in the training path).
Images arrive already preprocessed (uint8, model size, from :class:`medxcept.images.cache.PreprocessCache`),
so a batch costs one fancy-index into an in-memory array plus augmentation: decoding and resizing
happened once, at ingestion, not every epoch.

Randomness is owned by the dataset and derived from ``(seed, epoch, position)``: the same seed
gives the same batches whichever worker thread builds them, so runs are reproducible.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Sequence

import keras
import numpy as np

from medxcept.images.augment import AugmentConfig, augment_batch, balanced_epoch_indices, class_weights

__all__ = ["CohortDataset", "sample_weights_for"]


def sample_weights_for(y: np.ndarray, n_classes: int, aug: AugmentConfig) -> np.ndarray | None:
    """Per-image loss weights for ``balance="weights"`` (balanced class weights), else ``None``."""
    if aug.balance != "weights":
        return None
    weights = class_weights(y, n_classes)
    return np.array([weights[int(c)] for c in y], dtype=np.float32)


class CohortDataset(keras.utils.PyDataset):
    """Batches of ``(pixels, labels[, sample_weights])`` for Keras ``fit``/``predict``.

    Args:
        images: uint8 array (N, px, px, 3), preprocessed.
        y: integer class indices (N,).
        n_classes: number of classes; binary targets are shaped (N, 1) float, multi-class one-hot.
        batch_size: images per batch.
        augment: an albumentations ``Compose`` applied to training batches only, or ``None``.
        shuffle: reshuffle every epoch (training).
        balance: ``"sampling"`` draws classes equally every epoch (minority images repeat, each
            time augmented differently); ``"weights"`` and ``"none"`` keep the natural order.
        sample_weights: optional per-image loss weights (class weighting).
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        **kwargs: ``workers``, ``use_multiprocessing``, ``max_queue_size`` for ``PyDataset``.
    """

    def __init__(self, images: np.ndarray, y: np.ndarray, *, n_classes: int, batch_size: int,
                 augment: object | None = None, shuffle: bool = False, balance: str = "none",
                 sample_weights: np.ndarray | None = None, seed: int = 0, with_labels: bool = True,
                 **kwargs: object) -> None:
        super().__init__(**kwargs)
        if len(images) != len(y):
            raise ValueError(f"{len(images)} images but {len(y)} labels")
        self.images = images
        self.y = np.asarray(y, dtype=np.int64)
        self.n_classes = n_classes
        self.batch_size = batch_size
        self.augment = augment
        self.shuffle = shuffle
        self.balance = balance
        self.sample_weights = sample_weights
        self.seed = seed
        self.with_labels = with_labels
        self.epoch = 0
        self._order = self._epoch_order()
        self._local = threading.local()  # one augmentation pipeline per worker thread

    def set_epoch(self, epoch: int) -> None:
        """Continue as epoch ``epoch`` (0-based) would: used when a training run resumes."""
        self.epoch = int(epoch)
        self._order = self._epoch_order()

    def _augment(self) -> object:
        # albumentations pipelines are re-seeded per image (augment_batch): sharing one between
        # worker threads would let one thread's seed leak into another's image.
        aug = getattr(self._local, "augment", None)
        if aug is None:
            aug = self.augment if threading.current_thread() is threading.main_thread() else copy.deepcopy(self.augment)
            self._local.augment = aug
        return aug

    def _epoch_order(self) -> np.ndarray:
        if self.balance == "sampling":
            return balanced_epoch_indices(self.y, seed=self.seed, epoch=self.epoch)
        order = np.arange(len(self.y))
        if self.shuffle:
            np.random.default_rng([self.seed, self.epoch]).shuffle(order)
        return order

    def __len__(self) -> int:
        return math.ceil(len(self._order) / self.batch_size)

    def targets(self, idx: Sequence[int] | np.ndarray) -> np.ndarray:
        y = self.y[idx]
        if self.n_classes == 2:
            return y.astype(np.float32)[:, None]
        return np.eye(self.n_classes, dtype=np.float32)[y]

    def __getitem__(self, i: int) -> tuple:
        idx = self._order[i * self.batch_size:(i + 1) * self.batch_size]
        x = self.images[idx]
        if self.augment is not None:
            rng = np.random.default_rng([self.seed, self.epoch, i])
            x = augment_batch(self._augment(), x, rng=rng)
        # uint8 stays uint8 (a quarter of the bytes to move to an accelerator); the model casts it
        # and its Rescaling layer maps [0, 255] to Xception's [-1, 1]
        if not self.with_labels:
            return (x,)
        if self.sample_weights is not None:
            return x, self.targets(idx), self.sample_weights[idx]
        return x, self.targets(idx)

    def on_epoch_end(self) -> None:
        self.epoch += 1
        if self.shuffle or self.balance == "sampling":
            self._order = self._epoch_order()
