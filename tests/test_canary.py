"""Nothing identifying leaves ``private/``, on every workflow (issue 33).

A canary cohort (:mod:`medxcept.testing.canary`) plants a unique marker in every identifying field:
file and folder names, label-table patient IDs, DICOM PatientID, PatientName, OtherPatientIDs,
AccessionNumber, InstitutionName, StationName, DeviceSerialNumber, ReferringPhysicianName, every UID,
dates, times, birth date and age, magenta text burned into the pixels outside the field of view, EXIF
serial number and dates. Every workflow then runs on it through its CLI at the default log level:
``check``, a run killed after its first epoch and ``--resume``-d, ``--reproduce``, ``evaluate`` on a
second canary cohort, ``pipelines.kfold`` (2 folds), a second training seed and ``pipelines.compare``. The console and every
file outside ``private/`` are scanned (:func:`medxcept.testing.canary.scan_outputs`): no marker, no
unkeyed MD5/SHA-1/SHA-256 prefix of a marker or a device string, no absolute path, no embedded
image showing the burned-in colour, and no file the scanner cannot read.

Cost: 16 + 8 patients (48 images), 71 px, the frozen-base ``baseline`` recipe for 2 epochs, batch 8.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from medxcept.testing.canary import CanaryCohort, scan_outputs, scan_text, write_canary_cohort

pytestmark = pytest.mark.slow

TRAIN = ["--image-px", "71", "--recipe", "baseline", "--batch-size", "8", "--weights", "none",
         "--set", "train.baseline_epochs=2", "--set", "train.workers=1"]


def _both(a: CanaryCohort, b: CanaryCohort) -> CanaryCohort:
    markers = {k: a.markers.get(k, []) + b.markers.get(k, []) for k in {*a.markers, *b.markers}}
    return CanaryCohort(cohort_file=a.cohort_file, root=a.root, markers=markers, hashed=a.hashed + b.hashed)


@pytest.fixture(scope="module")
def canary(tmp_path_factory: pytest.TempPathFactory, session_cache: Path) -> SimpleNamespace:
    from medxcept.faults import InjectedFault
    from pipelines.compare import main as compare_main
    from pipelines.kfold import main as kfold_main
    from pipelines.retina import main as retina_main

    base = tmp_path_factory.mktemp("canary")
    a = write_canary_cohort(base, tag="A", n_patients=16, seed=0)
    b = write_canary_cohort(base, tag="B", n_patients=8, seed=1)
    out = base / "reports"
    console = io.StringIO()
    logger = logging.getLogger("medxcept")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    codes: dict[str, object] = {}

    def cli(step: str, main, argv: list[str], **env: str) -> None:
        console.write(f"\n===== {step}\n")
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(console), \
                contextlib.redirect_stdout(console):
            for k, v in env.items():
                mp.setenv(k, v)
            try:
                codes[step] = main(argv)
            except InjectedFault:
                codes[step] = "killed"
            finally:
                logger.handlers[:], logger.level, logger.propagate = saved

    run = out / "run1"
    cli("check", retina_main, ["check", "--cohort", str(a.cohort_file), "--out-dir", str(out), "--run-name", "check"])
    cli("run (killed after epoch 1)", retina_main,
        ["run", "--cohort", str(a.cohort_file), "--out-dir", str(out), "--run-name", "run1", *TRAIN],
        MEDXCEPT_FAULT="epoch_end:1", MEDXCEPT_FAULT_ACTION="raise")
    cli("--resume", retina_main, ["--resume", str(run)])
    cli("--reproduce", retina_main, ["--reproduce", str(run)])
    cli("evaluate", retina_main, ["evaluate", "--run", str(run), "--cohort", str(b.cohort_file), "--out-dir",
                                  str(out), "--run-name", "external"])
    cli("kfold", kfold_main, ["--cohort", str(a.cohort_file), "--folds", "2", "--out-dir", str(out),
                              "--cv-name", "cv", "--no-save-models", *TRAIN])
    # compare pairs runs by seed: a second training seed on the same split (1 epoch is enough here)
    cli("run (seed 1)", retina_main,
        ["run", "--cohort", str(a.cohort_file), "--out-dir", str(out), "--run-name", "run2", *TRAIN,
         "--set", "train.baseline_epochs=1", "--seed", "1", "--set", "split.seed=0"])
    reproduced = sorted(p for p in out.iterdir() if p.name.startswith("run1-reproduced"))
    cli("compare", compare_main, [str(run), str(out / "run2"), "--out", str(out / "comparisons"),
                                  "--name", "cmp", "--n-bootstrap", "50"])
    return SimpleNamespace(a=a, b=b, markers=_both(a, b), out=out, base=base, console=console.getvalue(),
                           codes=codes, run=run, reproduced=reproduced)


def test_every_workflow_ran(canary: SimpleNamespace) -> None:
    assert canary.codes == {"check": 0, "run (killed after epoch 1)": "killed", "--resume": 0, "--reproduce": 0,
                            "evaluate": 0, "kfold": 0, "run (seed 1)": 0, "compare": 0}, canary.console[-3000:]
    for d in ("check", "run1", "run2", "external", "cv", "comparisons/cmp"):
        assert (canary.out / d).is_dir(), d
    assert canary.reproduced and (canary.run / "complete.json").is_file()


def test_the_markers_really_reached_the_run(canary: SimpleNamespace) -> None:
    """Meaningful only if ingestion read the identifiers: private/ holds them (a scan of private/ finds
    markers of every planted kind that ingestion keeps), and the run used every image."""
    private = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in (canary.run / "private").rglob("*")
                        if p.is_file())
    for kind in ("PID", "DIR", "FILE", "PDIR", "PFILE", "UID", "DATE"):
        assert any(m in private for m in canary.a.markers[kind]), kind
    assert canary.a.n_markers > 400 and canary.b.n_markers > 200


def test_no_marker_hash_or_path_in_any_shared_file_or_the_console(canary: SimpleNamespace) -> None:
    paths = tuple({str(canary.base), str(canary.base.resolve()), str(Path.home()), os.getcwd()})
    result = scan_outputs(canary.out, canary.markers, paths=paths)
    # the console names the output folders it wrote (the command's answer); nothing else absolute
    console = re.sub(re.escape(str(canary.out)) + r"[^\s'\"]*", "<out>", canary.console)
    findings = result.findings + scan_text(console, canary.markers, "console", paths=paths)
    listing = "\n".join(f"  {k}: {v}" for k, v in sorted(result.checked.items()))
    print(f"canary: {canary.markers.n_markers} markers, {len(canary.markers.hashed)} hashed strings; "
          f"{len(result.checked)} files checked:\n{listing}")
    assert not findings, "\n".join(findings[:40])
    kinds = {v.split(" ")[0] for v in result.checked.values()}
    assert {"html", "json", "csv", "yaml", "keras", "binary"} <= kinds, kinds


def test_the_scanner_finds_what_it_is_meant_to_find(canary: SimpleNamespace, tmp_path: Path) -> None:
    """A planted leak of each kind in a copy of the external run is found: a marker, an unkeyed
    sha256 prefix of a device string, an absolute path, burned-in pixels, an unknown file type."""
    import base64
    import hashlib
    import shutil

    import numpy as np
    from PIL import Image

    copy = tmp_path / "external"
    shutil.copytree(canary.out / "external", copy, ignore=shutil.ignore_patterns("private", "*.keras", "*.h5"))
    assert not scan_outputs(copy, canary.markers).findings
    a = canary.a
    (copy / "metrics.json").write_text(f'{{"x": "{a.markers["STN"][3]}"}}')
    digest = hashlib.sha256(a.hashed[1].encode()).hexdigest()[:8]
    (copy / "cohort.csv").write_text(f"acq_device\nh:{digest}\n")
    (copy / "audit.json").write_text(f'{{"p": "{canary.base}/x"}}')
    png = io.BytesIO()
    rgb = np.zeros((40, 40, 3), np.uint8)
    rgb[5:15, 5:15] = (200, 10, 200)
    Image.fromarray(rgb).save(png, format="PNG")
    (copy / "report.html").write_text(f'<img src="data:image/png;base64,{base64.b64encode(png.getvalue()).decode()}">')
    (copy / "stray.bin").write_bytes(b"\0")
    found = "\n".join(scan_outputs(copy, canary.markers).findings)
    assert f"marker STN '{a.markers['STN'][3]}'" in found
    assert f"unkeyed hash {digest}" in found
    assert "absolute path" in found
    assert "pixels of the burned-in text colour" in found
    assert "stray.bin: a file type the canary scan does not know how to read" in found


def test_burned_in_text_is_counted_but_a_grad_cam_purple_is_not() -> None:
    """The burned-in magenta is found at a third of its size after JPEG 50, over black or a fundus
    orange; the purple of a Grad-CAM overlay on a fundus ((118, 55, 135): 99 such pixels in one
    CAM gallery were once reported as burned-in text) is not counted at all."""
    import numpy as np
    from PIL import Image

    from medxcept.testing.canary import BURN_PIXELS, _burn, _burned_pixels

    yy, xx = np.mgrid[:288, :288]
    for background in ((0, 0, 0), (190, 90, 40)):
        rgb = np.zeros((288, 288, 3), np.uint8)
        rgb[(yy - 144) ** 2 + (xx - 144) ** 2 < 130 ** 2] = background
        small = Image.fromarray(_burn(rgb, "BURN-P0001-DOE-JOHN")).resize((96, 96), Image.BILINEAR)
        jpeg = io.BytesIO()
        small.save(jpeg, format="JPEG", quality=50)
        assert _burned_pixels(np.asarray(Image.open(jpeg).convert("RGB"))) >= BURN_PIXELS, background
    cam = np.zeros((40, 40, 3), np.uint8)
    cam[:] = (118, 55, 135)
    cam[::2] = (119, 56, 138)
    assert _burned_pixels(cam) == 0
    assert _burned_pixels(np.full((40, 40, 3), (200, 10, 200), np.uint8)) == 1600  # the scanner test's planted colour
