"""Run configuration: one frozen dataclass per stage, nested in :class:`RunConfig`.

Precedence (lowest to highest): the dataclass defaults, the cohort file's ``defaults:`` section,
a ``--config run.yaml`` file, then command-line flags. The resolved configuration is written to
every run directory as ``config.yaml``; :func:`config_hash` identifies it.

Stage configs that belong to one module live there (``SplitConfig`` in :mod:`medxcept.integrity.splits`,
``PreprocessConfig`` in :mod:`medxcept.images.preprocess`, ``AugmentConfig`` in :mod:`medxcept.images.augment`)
and are re-exported here; the model, training and evaluation configs are defined here.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medxcept.errors import ConfigError
from medxcept.images.augment import AugmentConfig
from medxcept.images.preprocess import PreprocessConfig
from medxcept.integrity.splits import SplitConfig, resolve_user_split
from medxcept.models.backbones import DEFAULT as DEFAULT_BACKBONE
from medxcept.models.backbones import get_backbone

__all__ = [
    "ModelConfig",
    "TrainConfig",
    "EvalConfig",
    "AuditConfig",
    "RunConfig",
    "SplitConfig",
    "PreprocessConfig",
    "AugmentConfig",
    "load_config",
    "config_to_dict",
    "config_hash",
    "apply_overrides",
    "build_config",
]


def _choice(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not one of {list(allowed)}")


@dataclass(frozen=True)
class ModelConfig:
    """The classifier: an ImageNet backbone + global average pooling + dropout + dense head.

    Args:
        backbone: the network under the head, a name of :data:`medxcept.models.backbones.BACKBONES`:
            ``"xception"`` (default; a run saved without this field is Xception), ``"densenet121"``,
            ``"efficientnetv2b0"``, ``"resnet50"``.
        weights: ``"imagenet"`` (Keras' published file for the backbone, downloaded into its cache once),
            ``"none"`` (random initialization, marked loudly in console and report) or a path to a weights file.
        dropout: dropout rate before the dense head (regularization for small cohorts).
        mixed_precision: ``"auto"`` (bfloat16 on a GPU, float32 on CPU), ``"off"``, ``"bfloat16"``, ``"float16"``.
    """

    weights: str = "none"
    dropout: float = 0.3
    mixed_precision: str = "auto"
    backbone: str = DEFAULT_BACKBONE

    def __post_init__(self) -> None:
        get_backbone(self.backbone)  # raises ConfigError naming the registered ones
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout!r} must be in [0, 1)")
        _choice("model.mixed_precision", self.mixed_precision, ("auto", "off", "bfloat16", "float16"))


@dataclass(frozen=True)
class TrainConfig:
    """The fine-tuning recipe.

    Args:
        recipe: ``"default"`` (limited-data recipe: frozen-base head training, then gradual
            unfreezing with AdamW, warm-up + cosine decay, label smoothing and early stopping on
            validation AUC) or ``"baseline"`` (the common tutorial recipe: frozen base, Adam at
            ``baseline_lr``, fixed epochs, no early stopping), for comparison.
        batch_size: images per step.
        head_epochs: stage 1 epochs (frozen base, head only).
        finetune_epochs: stage 2 epochs (top blocks unfrozen); the maximum when early stopping.
        head_lr: stage 1 learning rate.
        finetune_lr: stage 2 peak learning rate.
        unfreeze_blocks: backbone blocks unfrozen in stage 2, counted from the top: the last units of
            the network (:mod:`medxcept.models.backbones`; Xception: exit flow = blocks 13-14, middle
            flow = 5-12, ``14`` means all; the largest value is the backbone's ``n_blocks``, checked by
            :class:`RunConfig`). Ignored without pretrained weights, where the whole network trains
            from the start (a random base is not worth freezing).
        weight_decay: AdamW decoupled weight decay.
        label_smoothing: for the cross-entropy loss.
        warmup_epochs: linear warm-up of the stage 2 learning rate.
        patience: early-stopping patience in epochs (validation patient-level AUC).
        workers: input-pipeline worker threads (``keras.utils.PyDataset``).
        baseline_lr, baseline_epochs: the tutorial recipe's Adam learning rate and epoch count.
        bn_recalibration: without pretrained weights, recompute BatchNormalization's moving
            statistics at the end of every epoch from clean training images with the epoch's final
            weights ("precise BN"), so that inference mode matches what training saw. Without it,
            the moving averages lag behind weights that change fast from random initialization and
            the validation outputs can be constant (a collapse). Ignored with pretrained weights,
            whose BN layers stay frozen.
        ordinal_loss: for ordinal (graded) cohorts: ``"softmax"`` (plain k-class cross-entropy) or
            ``"coral"`` (cumulative-link head and loss, :mod:`medxcept.models.ordinal`). Other tasks need
            ``"softmax"``.
    """

    recipe: str = "default"
    batch_size: int = 16
    head_epochs: int = 2
    finetune_epochs: int = 8
    head_lr: float = 1e-3
    finetune_lr: float = 1e-4
    unfreeze_blocks: int = 2
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    warmup_epochs: int = 1
    patience: int = 3
    workers: int = 2
    baseline_lr: float = 0.01
    baseline_epochs: int = 10
    bn_recalibration: bool = True
    ordinal_loss: str = "softmax"

    def __post_init__(self) -> None:
        _choice("train.recipe", self.recipe, ("default", "baseline"))
        _choice("train.ordinal_loss", self.ordinal_loss, ("softmax", "coral"))
        for name in ("batch_size", "workers"):
            if getattr(self, name) < 1:
                raise ConfigError(f"train.{name}={getattr(self, name)!r} must be >= 1")
        for name in ("head_epochs", "finetune_epochs", "warmup_epochs", "patience", "baseline_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}={getattr(self, name)!r} must be >= 0")
        if self.head_epochs + self.finetune_epochs == 0 and self.recipe == "default":
            raise ConfigError("train.head_epochs + train.finetune_epochs is 0: nothing would be trained")
        if self.unfreeze_blocks < 1:
            raise ConfigError(f"train.unfreeze_blocks={self.unfreeze_blocks!r} must be >= 1")
        if not 0.0 <= self.label_smoothing < 0.5:
            raise ConfigError(f"train.label_smoothing={self.label_smoothing!r} must be in [0, 0.5)")


@dataclass(frozen=True)
class EvalConfig:
    """Evaluation: operating threshold, calibration, confidence intervals.

    Args:
        threshold: ``"youden"`` (maximize sensitivity + specificity - 1 on validation) or
            ``"sensitivity"`` (the highest threshold reaching ``target_sensitivity`` on validation).
            Either way it is chosen on the validation split and applied unchanged to test.
        target_sensitivity: for ``threshold="sensitivity"`` (e.g. 0.90 for screening).
        calibration: recalibration fitted on validation: ``"temperature"``, ``"platt"``,
            ``"isotonic"`` or ``"none"``.
        patient_aggregation: how the images' probabilities of an evaluation unit (a patient, or a
            patient's visit: ``unit``) combine into its score: ``"max"`` (default) or ``"mean"``.
            The unit's label is always the maximum of its images' labels ("any image positive"),
            which ``"max"`` matches; ``"mean"`` fits labels given to the patient and copied onto
            every image. A cohort states which it has (``label_rule``), which sets this default.
            Early stopping, the threshold, the headline, the references, k-fold pooling, external
            validation and ``pipelines.compare`` all use it.
        unit: the evaluation unit: ``"visit"`` (default: one unit per patient and visit, i.e. per
            study, when the cohort records one in ``study_id`` (DICOM StudyInstanceUID, a label
            table's visit column); per patient otherwise) or ``"patient"`` (all visits together).
            Bootstrap intervals resample patients either way (all visits of a patient together),
            and splits are by patient.
        n_bootstrap: patient-level bootstrap resamples for 95 % confidence intervals.
        n_bins: calibration bins (ECE, reliability diagram).
        tta: test-time augmentation passes: ``0`` (default) predicts each image once; ``n > 0``
            averages the logits of the image and ``n`` augmented copies ("light" policy:
            flips, small rotations and shifts), for validation (calibration, threshold) and test
            alike, so the threshold is chosen on the same kind of prediction it is applied to.
        prevalence: the prevalence of the condition where the model would be used (e.g. ``0.05``), when
            the cohort's is not the clinic's (a case-control cohort): the "Clinical reading" restates
            PPV and NPV of its operating points at it. ``None`` (default): the cohort's own.
        decision_thresholds: ``(lowest, highest)`` threshold probability of the decision curve (net
            benefit, drawn in steps of 0.01), within (0, 1).
    """

    threshold: str = "youden"
    target_sensitivity: float = 0.9
    calibration: str = "temperature"
    patient_aggregation: str = "max"
    unit: str = "visit"
    n_bootstrap: int = 1000
    n_bins: int = 10
    tta: int = 0
    prevalence: float | None = None
    decision_thresholds: tuple[float, float] = (0.05, 0.50)

    def __post_init__(self) -> None:
        _choice("eval.threshold", self.threshold, ("youden", "sensitivity"))
        _choice("eval.calibration", self.calibration, ("temperature", "platt", "isotonic", "none"))
        _choice("eval.patient_aggregation", self.patient_aggregation, ("mean", "max"))
        _choice("eval.unit", self.unit, ("visit", "patient"))
        if not 0.0 < self.target_sensitivity < 1.0:
            raise ConfigError(f"eval.target_sensitivity={self.target_sensitivity!r} must be in (0, 1)")
        if self.tta < 0:
            raise ConfigError(f"eval.tta={self.tta} must be >= 0 (0 = no test-time augmentation)")
        if self.n_bootstrap < 0 or self.n_bins < 2:
            raise ConfigError("eval.n_bootstrap must be >= 0 and eval.n_bins >= 2")
        if self.prevalence is not None and not 0.0 < self.prevalence < 1.0:
            raise ConfigError(f"eval.prevalence={self.prevalence!r} must be in (0, 1), e.g. 0.05 for 5 %, "
                              "or left unset to use the cohort's")
        low_high = tuple(self.decision_thresholds)
        if len(low_high) != 2 or not 0.0 < low_high[0] < low_high[1] < 1.0:
            raise ConfigError(f"eval.decision_thresholds={list(self.decision_thresholds)!r} must be "
                              "[lowest, highest] with 0 < lowest < highest < 1, e.g. [0.05, 0.5]")


@dataclass(frozen=True)
class AuditConfig:
    """The pre-training integrity audit (see :mod:`medxcept.integrity.audit`).

    Args:
        on_leak: ``"error"`` (default: cross-split duplicates and patient overlap stop the run
            before training), ``"warn"`` (reported, run continues) or ``"fix"`` (near-duplicate
            images are regrouped into one group before splitting, so they land together).
        hamming_threshold: near-duplicate threshold on 64-bit perceptual hashes.
        max_images_per_patient: more images than this for one patient is an audit warning
            (a file-name pattern that took a class name for the patient identifier).
    """

    on_leak: str = "error"
    hamming_threshold: int = 10
    max_images_per_patient: int = 20

    def __post_init__(self) -> None:
        _choice("audit.on_leak", self.on_leak, ("error", "warn", "fix"))
        if not 0 <= self.hamming_threshold <= 32:
            raise ConfigError(f"audit.hamming_threshold={self.hamming_threshold!r} must be in 0..32")
        if not isinstance(self.max_images_per_patient, int) or self.max_images_per_patient < 1:
            raise ConfigError(f"audit.max_images_per_patient={self.max_images_per_patient!r} must be a "
                              "positive integer")


@dataclass(frozen=True)
class RunConfig:
    """Everything that determines a run. ``seed`` seeds Python, NumPy, the backend and the splits."""

    cohort: str = "cohorts/demo.yaml"
    out_dir: str = "reports"
    seed: int = 0
    split: SplitConfig = field(default_factory=SplitConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        backbone = get_backbone(self.model.backbone)
        if not 1 <= self.train.unfreeze_blocks <= backbone.n_blocks:
            raise ConfigError(f"train.unfreeze_blocks={self.train.unfreeze_blocks!r} must be in 1..{backbone.n_blocks} "
                              f"for model.backbone={backbone.name} ({backbone.n_blocks} blocks)")
        if self.preprocess.image_px < backbone.min_px:
            raise ConfigError(f"preprocess.image_px={self.preprocess.image_px} is below {backbone.min_px}, the "
                              f"smallest input {backbone.label} accepts (model.backbone={backbone.name}); use "
                              f"{backbone.default_px} (native) or at least {backbone.min_px}")
        if self.split.user_split is not None and self.audit.on_leak == "fix":
            raise ConfigError(f"split.user_split={self.split.user_split!r} with audit.on_leak='fix': a user-supplied "
                              "split is audited, never re-grouped: fix the split file or use on_leak: warn or error")


def build_config(cls: type, data: dict[str, Any], where: str) -> Any:
    """Instantiate a (nested) dataclass from a dict, naming unknown keys and bad types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(f"unknown option(s) {[f'{where}{k}' for k in unknown]}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build_config(hint, value, f"{where}{name}.")
        else:
            kwargs[name] = _coerce(value, hint, f"{where}{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where or 'config'}: {exc}") from None


def _coerce(value: Any, hint: Any, name: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if value is None:
        return None
    if hint in (int, float, str, bool):
        if hint is bool and isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
            raise ConfigError(f"{name}={value!r} is not a boolean")
        try:
            return hint(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r} is not a valid {hint.__name__}") from None
    if origin in (tuple, list) and isinstance(value, (list, tuple)):
        return tuple(value) if origin is tuple else list(value)
    if origin is typing.Union or origin is types.UnionType:  # Optional[X] and X | None alike
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, name)
            except ConfigError:
                continue
        raise ConfigError(f"{name}={value!r} does not match {hint}")
    return value


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (tuples as lists) suitable for YAML/JSON."""
    return json.loads(json.dumps(dataclasses.asdict(cfg), default=list))


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Merge dotted overrides (``{"train.batch_size": 8}``) into a nested dict."""
    out = dict(data)
    for dotted, value in overrides.items():
        node = out
        parts = dotted.split(".")
        for p in parts[:-1]:
            node[p] = dict(node.get(p) or {})
            node = node[p]
        node[parts[-1]] = value
    return out


def load_config(*, cohort_defaults: dict | None = None, config_file: str | Path | None = None,
                overrides: dict[str, Any] | None = None, cohort_dir: str | Path | None = None) -> RunConfig:
    """Resolve a :class:`RunConfig` from defaults < cohort defaults < config file < overrides.

    ``cohort_dir`` is the cohort file's folder (``CohortSpec.base_dir``): a relative
    ``split.user_split`` file, wherever it was set, is resolved against it, as source roots
    are (:func:`medxcept.integrity.splits.resolve_user_split`). Without it a relative path means the
    working directory.
    """
    data: dict[str, Any] = {}
    if cohort_defaults:
        data = _merge(data, cohort_defaults)
    if config_file:
        path = Path(config_file)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        data = _merge(data, loaded)
    if overrides:
        data = apply_overrides(data, overrides)
    cfg = build_config(RunConfig, data, "")
    if cohort_dir is not None and cfg.split.user_split is not None:
        cfg = dataclasses.replace(cfg, split=resolve_user_split(cfg.split, cohort_dir))
    return cfg


#: Fields added after configurations were stored whose unset value (None) is fully given by other
#: fields: left out of the hash while None, so that older configurations (and the run and CV
#: directories named after them) keep their hash.
_HASHED_WHEN_SET = (("split", "inner_val_fraction"),)
#: The same for fields whose value before they existed is their default: hashed only when it differs.
_HASHED_UNLESS = ((("model", "backbone"), DEFAULT_BACKBONE),)


def config_hash(cfg: RunConfig) -> str:
    """Short stable hash of a resolved configuration."""
    data = config_to_dict(cfg)
    for section, name in _HASHED_WHEN_SET:
        if data[section].get(name) is None:
            data[section].pop(name, None)
    for (section, name), old in _HASHED_UNLESS:
        if data[section].get(name) == old:
            data[section].pop(name, None)
    blob = json.dumps(data, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:8]
