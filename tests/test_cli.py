"""The command line: help, one-line errors with exit status 2, loud weights errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "pipelines.retina", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=full_env)


def test_help_exits_zero_and_explains_every_option():
    res = _run("--help")
    assert res.returncode == 0
    for opt in ("--cohort", "--weights", "--recipe", "--image-px", "--on-leak", "--set", "--seed", "--config"):
        assert opt in res.stdout, opt


def test_missing_cohort_file_is_one_clear_line(tmp_path):
    res = _run("--cohort", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2
    assert "cohort file not found" in res.stderr and "nope.yaml" in res.stderr
    assert "Traceback" not in res.stderr


def test_imagenet_weights_missing_fail_early_naming_the_path(tmp_path):
    res = _run("--weights", "imagenet", "--out-dir", str(tmp_path / "r"), env={"KERAS_HOME": str(tmp_path / "k")})
    assert res.returncode == 2, res.stderr[-2000:]
    assert "xception_weights_tf_dim_ordering_tf_kernels_notop.h5" in res.stderr
    assert str(tmp_path / "k" / "models") in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "r").exists(), "no run directory for a run that cannot start"


def test_bad_option_value_names_field_and_value(tmp_path):
    res = _run("--set", "train.recipe=magic", "--out-dir", str(tmp_path))
    assert res.returncode == 2 and "train.recipe='magic'" in res.stderr
