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
    for opt in ("--cohort", "--backbone", "--weights", "--recipe", "--image-px", "--on-leak", "--set", "--seed",
                "--config"):
        assert opt in res.stdout, opt


def test_missing_cohort_file_is_one_clear_line(tmp_path):
    res = _run("--cohort", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2
    assert "cohort file not found" in res.stderr and "nope.yaml" in res.stderr
    assert "Traceback" not in res.stderr


def _main(capsys, *args: str) -> tuple[int, str, str]:
    """``pipelines.retina.main`` in this process (the Python, TensorFlow and medxcept imports are
    already paid: a subprocess costs about 8 CPU-seconds before it parses its first option).
    Returns the exit status, stdout and stderr. The tests above run the real ``python -m`` entry
    point; an exception escaping ``main`` fails the test, as a traceback would."""
    from pipelines.retina import main

    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_imagenet_weights_missing_fail_early_naming_the_path(tmp_path, capsys, monkeypatch):
    # --offline: never the internet in tests (the download itself: tests/test_weights_download.py)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "k"))
    code, _, err = _main(capsys, "--weights", "imagenet", "--offline", "--out-dir", str(tmp_path / "r"))
    assert code == 2, err[-2000:]
    assert "xception_weights_tf_dim_ordering_tf_kernels_notop.h5" in err
    assert str(tmp_path / "k" / "models") in err
    assert "Traceback" not in err
    assert not (tmp_path / "r").exists(), "no run directory for a run that cannot start"


def test_backbone_weights_are_that_backbones_file_and_too_small_an_image_is_refused(tmp_path):
    res = _run("--backbone", "densenet121", "--weights", "imagenet", "--offline", "--out-dir", str(tmp_path / "r"),
               env={"KERAS_HOME": str(tmp_path / "k")})
    assert res.returncode == 2, res.stderr[-2000:]
    line = [x for x in res.stderr.splitlines() if x.startswith("medxcept: error:")]
    assert len(line) == 1 and "DenseNet121" in line[0]
    assert str(tmp_path / "k" / "models" / "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5") in line[0]
    assert not (tmp_path / "r").exists()
    res = _run("--image-px", "64", "--out-dir", str(tmp_path / "r"))  # Xception's minimum is 71, DenseNet's 32
    assert res.returncode == 2 and "below 71, the smallest input Xception accepts" in res.stderr


def test_bad_option_value_names_field_and_value(tmp_path, capsys):
    code, _, err = _main(capsys, "--set", "train.recipe=magic", "--out-dir", str(tmp_path))
    assert code == 2 and "train.recipe='magic'" in err


def test_resume_refuses_other_options_and_complete_or_foreign_directories(tmp_path, capsys):
    code, _, err = _main(capsys, "--resume", str(tmp_path), "--image-px", "80")
    assert code == 2 and "do not combine it with --image-px" in err
    code, _, err = _main(capsys, "--resume", str(tmp_path / "missing"))
    assert code == 2 and "not a medxcept run directory" in err


def test_reproduce_refuses_other_options_and_incomplete_directories(tmp_path, capsys):
    """`--reproduce` takes everything from the run directory; an unfinished run cannot be reproduced."""
    from pipelines.retina import main

    assert main(["--reproduce", str(tmp_path), "--image-px", "80", "--run-name", "x"]) == 2
    assert "--reproduce takes the configuration saved in the run directory" in capsys.readouterr().err
    assert main(["--reproduce", str(tmp_path / "missing")]) == 2
    assert "not a medxcept run directory" in capsys.readouterr().err
    (tmp_path / "config.yaml").write_text("seed: 0\n", encoding="utf-8")  # interrupted: no metrics.json
    assert main(["--reproduce", str(tmp_path)]) == 2
    assert "it has no versions.json (only a complete run can be reproduced)" in capsys.readouterr().err
    assert main(["--tolerance", "0.1", "--out-dir", str(tmp_path)]) == 2
    assert "--tolerance applies to --reproduce RUN_DIR only" in capsys.readouterr().err


def test_check_subcommand_exits_2_on_a_trap_cohort_and_0_on_a_clean_one(tmp_path, session_cache, capsys):
    """`check` ingests, splits and audits without training; planted leakage makes it fail loudly."""
    from medxcept.testing.traps import write_trap_cohort

    traps, clean = tmp_path / "traps", tmp_path / "clean"
    write_trap_cohort(traps, seed=0, size_scale=0.5)
    write_trap_cohort(clean, seed=0, clean=True, size_scale=0.5)
    out = tmp_path / "reports"
    code, _, err = _main(capsys, "check", "--cohort", str(traps / "cohort.yaml"), "--out-dir", str(out),
                         "--run-name", "t")
    assert code == 2, err[-2000:]
    assert "the audit found" in err and str(out / "t" / "check.html") in err
    assert "Traceback" not in err
    page = (out / "t" / "check.html").read_text(encoding="utf-8")
    assert "TRAP-" not in page  # raw patient IDs never reach the page
    code, stdout, err = _main(capsys, "check", "--cohort", str(clean / "cohort.yaml"), "--out-dir", str(out),
                              "--run-name", "c")
    assert code == 0, err[-2000:]
    assert stdout.strip().endswith("check.html")
