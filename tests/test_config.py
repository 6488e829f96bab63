"""Configuration: precedence, validation that names field and value, cohort files."""

from __future__ import annotations

import pytest

from medxcept.cohort.table import load_cohort_spec
from medxcept.config import RunConfig, config_hash, load_config
from medxcept.errors import ConfigError


def test_precedence_defaults_cohort_file_flags(tmp_path):
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text("train: {batch_size: 4, patience: 7}\n")
    cfg = load_config(cohort_defaults={"train": {"batch_size": 32, "head_epochs": 5}}, config_file=run_yaml,
                      overrides={"train.patience": 9})
    assert cfg.train.head_epochs == 5      # cohort default
    assert cfg.train.batch_size == 4       # config file beats cohort default
    assert cfg.train.patience == 9         # flag beats config file
    assert cfg.train.finetune_lr == RunConfig().train.finetune_lr  # untouched default


def test_unknown_key_and_bad_values_are_named():
    with pytest.raises(ConfigError, match="train.bogus"):
        load_config(overrides={"train.bogus": 1})
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(overrides={"train.batch_size": 0})
    with pytest.raises(ConfigError, match="image_px"):
        load_config(overrides={"preprocess.image_px": 40})
    with pytest.raises(ConfigError, match="not a valid int"):
        load_config(overrides={"train.batch_size": "many"})


def test_config_hash_changes_with_any_field():
    assert config_hash(load_config()) == config_hash(load_config())
    assert config_hash(load_config()) != config_hash(load_config(overrides={"seed": 1}))


def test_cohort_file_errors_name_the_field(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nclasses: [a]\nsources: []\n")
    with pytest.raises(ConfigError, match="at least two distinct"):
        load_cohort_spec(p)
    p.write_text("name: x\nclasses: [a, b]\nsources: [{kind: photos, root: ., labels: l.csv}]\n")
    with pytest.raises(ConfigError, match="no way to know patients"):
        load_cohort_spec(p)
    p.write_text("name: x\nclasses: [a, b]\nfrobnicate: 1\nsources: [{kind: dicom, root: ., labels: l.csv}]\n")
    with pytest.raises(ConfigError, match="frobnicate"):
        load_cohort_spec(p)


def test_positive_class_is_index_one(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("name: x\nclasses: [disease, healthy]\npositive_class: disease\n"
                 "sources: [{kind: dicom, root: ., labels: l.csv}]\n")
    assert load_cohort_spec(p).classes == ("healthy", "disease")


def test_shipped_cohort_files_load():
    from pathlib import Path

    for f in sorted((Path(__file__).parent.parent / "cohorts").glob("*.yaml")):
        spec = load_cohort_spec(f)
        load_config(cohort_defaults=spec.defaults)


def test_user_split_cannot_be_regrouped_before_any_work():
    from medxcept.config import load_config
    from medxcept.errors import ConfigError

    with pytest.raises(ConfigError, match="never re-grouped"):
        load_config(overrides={"split.user_split": "split", "audit.on_leak": "fix"})


def test_optional_fields_coerce_strings_like_plain_ones():
    # ``X | None`` hints coerce a string value like ``X`` does (the hint's origin is types.UnionType;
    # before the fix the string passed through unchanged and failed later, far from the option)
    cfg = load_config(overrides={"split.inner_val_fraction": "0.25", "eval.prevalence": "0.1"})
    assert cfg.split.inner_val_fraction == 0.25 and isinstance(cfg.split.inner_val_fraction, float)
    assert cfg.eval.prevalence == 0.1
    with pytest.raises(ConfigError, match="inner_val_fraction"):
        load_config(overrides={"split.inner_val_fraction": "a quarter"})
    assert load_config(overrides={"split.inner_val_fraction": None}).split.inner_val_fraction is None
