"""Checkpoint persistence: per-epoch checkpoints a run can resume from, their fingerprint, atomic weight
files, weight checksums and the random-seed states, and the saved inference model.

:func:`medxcept.models.train.fit` writes and restores these files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np

from medxcept.config import RunConfig, config_hash
from medxcept.errors import ConfigError

__all__ = ["Checkpoint", "weights_checksum", "save_weights_atomic", "save_inference_model", "check_resumable",
           "checkpoint_fingerprint", "check_fingerprint"]

log = logging.getLogger(__name__)


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


class Checkpoint:
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


def checkpoint_fingerprint(cfg: RunConfig, train_y: np.ndarray, n_val: int) -> dict:
    """What a checkpoint must have been written with to be continued."""
    return {"config_hash": config_hash(cfg), "n_train": int(len(train_y)), "n_val": int(n_val),
            "train_labels": hashlib.sha256(np.asarray(train_y, dtype=np.int64).tobytes()).hexdigest()[:16]}


def check_fingerprint(ckpt: Checkpoint, state: dict, fingerprint: dict) -> None:
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
    ckpt = Checkpoint(Path(run_dir) / "checkpoints")
    try:
        state = ckpt.read_state()
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{ckpt.state_file} cannot be read ({exc}); start a new run") from None
    if state is not None:
        check_fingerprint(ckpt, state, checkpoint_fingerprint(cfg, train_y, n_val))
    return state


def save_inference_model(model: keras.Model, path: Path) -> int:
    """Save what inference needs (architecture and weights, no optimizer state) atomically; return its size.

    Keras 3's ``Model.save`` has no ``include_optimizer``: a compiled model carries the
    optimizer's moments (two more copies of every trainable weight). A model rebuilt from its
    configuration (``from_config``: uncompiled; ``keras.models.clone_model`` would compile the copy
    with the *same*, built optimizer) with the same weights holds only what :func:`~medxcept.models.inference.predict_logits`
    needs; it loads with ``keras.models.load_model`` and predicts identically (``tests/test_faults.py``).
    """
    path = Path(path)
    clone = model.__class__.from_config(model.get_config())
    clone.set_weights(model.get_weights())
    _save_atomic(path, clone.save)
    return path.stat().st_size

