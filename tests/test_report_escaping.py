"""Data never becomes markup: class labels, camera/source names and file names are escaped in the report.

A cohort whose positive class is ``<script>alert(1)</script>``, whose source and camera names and
some file names hold ``<b>&"'``, and whose label table also holds an unknown ``<img onerror>``
label is ingested with the real ingestion code (labels.csv, classes from the cohort YAML, the
camera column mapped to ``source``). No model is trained: planted logits go through the real
``evaluate_predictions``, audit and ``render_report``. The report must show every string as text
and hold none of it as a tag or an attribute.

:func:`build_escaping_report` is reused by ``test_report_render.py`` to load this report in Chromium.
"""

from __future__ import annotations

import ast
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

SCRIPT = "<script>alert(1)</script>"
BOLD = "<b>&\"'"
IMG = "<img src=x onerror=alert(3)>"
CLASSES = ("healthy", SCRIPT)
ROOT = Path(__file__).resolve().parent.parent

COHORT_YAML = """
name: "escape {bold} cohort"
description: "description with {script}"
classes: ["healthy", "{script}"]
positive_class: "{script}"
modality: fundus
pseudonym_salt: escape-salt
sources:
  - name: "site {bold}"
    kind: photos
    root: photos
    labels: photos/labels.csv
    patient_column: patient
    laterality_column: eye
    columns: {{camera: source}}
defaults:
  preprocess: {{image_px: 71, quality_policy: "off"}}
  split: {{val_fraction: 0.25, test_fraction: 0.35}}
  eval: {{n_bootstrap: 20}}
  audit: {{on_leak: warn}}
"""


def _yaml_str(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def write_escaping_cohort(d: Path, n_patients: int = 28) -> Path:
    """Photos of ``n_patients`` synthetic patients (one image each) with hostile names and labels."""
    from medxcept.cohort.demo import CAMERAS, paint_fundus

    photos = d / "photos"
    photos.mkdir(parents=True)
    rng = np.random.default_rng(5)
    rows = []
    for i in range(n_patients):
        positive = i % 2 == 1
        rgb, _, _ = paint_fundus(rng, CAMERAS[0], laterality="R", referable=positive, scale=0.35)
        name = f"img{i:02d} {BOLD}.png" if i % 3 == 0 else f"img{i:02d}.png"
        Image.fromarray(rgb).save(photos / name)
        # half of the images name their camera; the rest fall back to the source name
        camera = f"camera {BOLD}" if i % 4 < 2 else ""
        rows.append({"file": name, "label": CLASSES[int(positive)], "patient": f"pat{i:03d}", "eye": "R",
                     "camera": camera})
    # one more file whose label is not a class (an exclusion whose reason quotes the label)
    rgb, _, _ = paint_fundus(rng, CAMERAS[0], laterality="L", referable=False, scale=0.35)
    Image.fromarray(rgb).save(photos / f"odd {BOLD}.png")
    rows.append({"file": f"odd {BOLD}.png", "label": IMG, "patient": "pat999", "eye": "L", "camera": ""})
    pd.DataFrame(rows).to_csv(photos / "labels.csv", index=False)
    path = d / "escape.yaml"
    path.write_text(COHORT_YAML.format(bold=_yaml_str(BOLD), script=_yaml_str(SCRIPT)), encoding="utf-8")
    return path


def build_escaping_report(d: Path, edit=None) -> tuple[Path, dict]:
    """Ingest the hostile cohort and render ``report.html`` as ``run_pipeline`` does, without training.

    The planted logits go through the one assessment (``assess_model`` with saved logits), so
    ``metrics.json["method"]`` is filled as a run fills it; ``edit(metrics)`` may change the metrics
    before rendering. Returns the report path and what went into it (``spec``, ``table``,
    ``exclusions``, ``metrics``).
    """
    from medxcept.cohort.class_exclusions import exclusions_by_class
    from medxcept.cohort.table import load_cohort_spec
    from medxcept.config import config_hash, load_config
    from medxcept.evaluation.assess import TTA, Units, assess_model
    from medxcept.evaluation.verdict import training_verdict
    from medxcept.images.augment import effective_class_frequencies
    from medxcept.integrity.audit import audit_cohort, fingerprints
    from medxcept.integrity.split_keys import split_hash
    from medxcept.integrity.splits import assign_splits
    from medxcept.report import render_report
    from medxcept.run import RunDir, data_hash
    from medxcept.workflows.steps import (
        prepare_cohort,
        reason_counts,
        report_examples,
        report_inputs,
        summary_counts,
    )

    spec = load_cohort_spec(write_escaping_cohort(d))
    cfg = load_config(cohort_defaults=spec.defaults, overrides={"out_dir": str(d / "reports")})
    run = RunDir.create(cfg.out_dir, spec.name, cfg, name="escape")
    run.write_config(cfg, extra={"cohort_name": spec.name, "classes": list(spec.classes)})
    ing, cache = prepare_cohort(spec, cfg)
    table = assign_splits(ing.table, cfg.split)
    images = np.stack([cache.get(s, int(f), cfg.preprocess)
                       for s, f in zip(table["sha256"], table["frame"], strict=True)])
    audit = audit_cohort(table, fp=fingerprints(images), policy="warn")
    parts = {s: np.flatnonzero(table["split"].to_numpy() == s) for s in ("train", "val", "test")}
    tr, va, te = (table.iloc[parts[s]] for s in ("train", "val", "test"))
    rng = np.random.default_rng(0)

    def logits(frame: pd.DataFrame) -> np.ndarray:  # planted signal: positives score higher...
        y = frame["y"].to_numpy()
        z = (2.0 * y - 1.0) + rng.normal(0, 1.0, len(frame))
        z[np.argmax(y == 1)], z[np.argmax(y == 0)] = -2.0, 2.0  # ...but one misranked pair keeps T finite
        return z

    assessed = assess_model(None, val=Units(va, logits=logits(va)), test=Units(te, logits=logits(te)), cfg=cfg,
                            classes=spec.classes, tta=TTA.of(cfg),
                            method={"epoch_chosen_on": "the validation split", "chosen_on": "the validation split"})
    metrics, frames = assessed.metrics, {"val": assessed.val, "test": assessed.test}
    history = pd.DataFrame({"epoch": [1, 2], "stage": ["scratch", "scratch"], "loss": [0.7, 0.6],
                            "val_loss": [0.7, 0.65], "auc": [0.6, 0.7], "val_patient_auc": [0.55, 0.6]})
    versions = {"packages": {"python": "3"}, "code": {"medxcept": "test"}, "device": {
        "backend": "none", "device": "cpu", "detail": ""}, "data_hash": data_hash(table),
        "split_hash": split_hash(table), "config_hash": config_hash(cfg)}
    full = {
        "run": {"id": run.path.name, "cohort": spec.name, "description": spec.description, "weights": "none",
                "weights_description": "random initialization", "pretrained": False, "recipe": "default",
                "image_px": cfg.preprocess.image_px, "seed": cfg.seed, "backend": "none", "device": "cpu",
                "external_validation": False},
        "cohort": {**summary_counts(table), "files_found": ing.files_found, "files_used": ing.files_used,
                   "files_excluded": ing.files_excluded,
                   "exclusions_by_reason": reason_counts(ing.exclusions),
                   "exclusions_by_class": exclusions_by_class(ing.table, ing.exclusions, list(spec.classes))},
        "class_balance": {"method": cfg.augment.balance, **effective_class_frequencies(
            tr["y"].to_numpy(), cfg.augment, n_classes=spec.n_classes)},
        "training": {**training_verdict(history, 2), "stages": [{"stage": "scratch", "max_epochs": 2,
                                                                  "trainable_params": 1}], "seconds": 1.0},
        **metrics,
        "audit": {"errors": len(audit.errors), "n_findings": len(audit.findings)},
        "timings": {"total_s": 1.0},
        "hashes": {k: versions[k] for k in ("data_hash", "split_hash", "config_hash")},
    }
    if edit is not None:
        edit(full)
    report = render_report(run.path, metrics=full, history=history, audit=audit, versions=versions, spec=spec,
                           frames=frames, inputs=report_inputs(run.path, full, frames["test"], cfg, list(spec.classes)),
                             examples=report_examples(table, images, cfg, spec))
    return report, {"spec": spec, "table": table, "exclusions": ing.exclusions, "metrics": full}


class _Tags(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[str] = []
        self.attr_values: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attr_values += [v or "" for _, v in attrs]

    def handle_data(self, data):
        self.text.append(data)


@pytest.fixture(scope="module")
def escaped(tmp_path_factory, session_cache):
    d = tmp_path_factory.mktemp("escape")
    report, info = build_escaping_report(d)
    html = report.read_text(encoding="utf-8")
    parser = _Tags()
    parser.feed(html)
    return {"html": html, "parser": parser, **info}


def test_hostile_strings_reached_the_report_inputs(escaped):
    """The test is only meaningful if the strings really flow through ingestion into the report."""
    spec, table = escaped["spec"], escaped["table"]
    assert spec.classes == CLASSES and spec.name == f"escape {BOLD} cohort"
    assert set(table["label"]) == set(CLASSES)
    assert {f"camera {BOLD}", f"site {BOLD}"} == set(table["source"])
    assert any(BOLD in Path(p).name for p in table["path"])
    reasons = " ".join(escaped["exclusions"]["reason"])
    assert IMG in reasons or "alert(3)" in reasons, reasons
    assert SCRIPT in escaped["metrics"]["cohort"]["images_per_class"]


def test_file_names_stay_out_of_the_report(escaped):
    """File names (often holding patient IDs) are in exclusions.csv and private/, never in report.html:
    the exclusion table groups reasons by their first clause, which names no file."""
    html, text = escaped["html"], "".join(escaped["parser"].text)
    for p in escaped["table"]["path"]:
        assert Path(p).stem not in text
    assert "odd " not in text and "img00" not in html
    assert "file without a label" in text  # the reason is there, without the file name


def test_no_data_string_becomes_a_tag_or_attribute(escaped):
    html, parser = escaped["html"], escaped["parser"]
    assert "script" not in parser.tags and "b" not in parser.tags
    assert parser.tags.count("img") == html.count('<img src="data:image/png;base64,')  # only our figures
    assert not re.search(r"<\s*script", html, re.I)
    assert "<b>" not in html and "<img src=x" not in html
    for value in parser.attr_values:
        assert "alert(" not in value and "<b>" not in value


def test_each_hostile_string_is_shown_as_escaped_text(escaped):
    html = escaped["html"]
    text = "".join(escaped["parser"].text)
    # the reader sees the literal strings...
    assert SCRIPT in text
    assert f"camera {BOLD}" in text and f"site {BOLD}" in text
    assert f"escape {BOLD} cohort" in text and f"description with {SCRIPT}" in text
    # ...because the HTML holds their escaped forms (markupsafe: &#34; for ", &#39; for ')
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "camera &lt;b&gt;&amp;&#34;&#39;" in html
    assert "<title>medxcept report — escape &lt;b&gt;&amp;&#34;&#39; cohort" in html


def test_subgroup_table_and_class_headers_are_escaped(escaped):
    html = escaped["html"]
    subgroups = html[html.index('id="subgroups"'):]
    subgroups = subgroups[:subgroups.index("</section>")]
    assert "<td>camera &lt;b&gt;&amp;&#34;&#39;</td>" in subgroups
    data = html[html.index('id="data"'):]
    assert "<th>&lt;script&gt;alert(1)&lt;/script&gt;</th>" in data[:data.index("</table>")]


def _environment_calls(path: Path) -> list[ast.Call]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and (
        (isinstance(n.func, ast.Attribute) and n.func.attr == "Environment")
        or (isinstance(n.func, ast.Name) and n.func.id == "Environment"))]


def test_every_jinja_environment_autoescapes():
    """One jinja2.Environment renders every page (run, CV, comparison, check): medxcept.report.environment,
    autoescaped."""
    found = {p.relative_to(ROOT).as_posix(): _environment_calls(p) for p in (ROOT / "medxcept").rglob("*.py")}
    found = {m: c for m, c in found.items() if c}
    assert list(found) == ["medxcept/report/__init__.py"] and len(found["medxcept/report/__init__.py"]) == 1, found
    for module, calls in found.items():
        call = calls[0]
        kw = {k.arg: k.value for k in call.keywords}
        assert "autoescape" in kw, f"{module}:{call.lineno} builds a jinja2.Environment without autoescape"
        assert isinstance(kw["autoescape"], ast.Constant) and kw["autoescape"].value is True, (
            f"{module}:{call.lineno}: autoescape must be True for every template, "
            "not a selection by extension")


@pytest.mark.parametrize("template", ["report.html.j2", "cv_report.html.j2"])
def test_templates_never_switch_escaping_off(template):
    text = (ROOT / "medxcept" / "report" / "templates" / template).read_text(encoding="utf-8")
    assert not re.search(r"\|\s*safe\b", text), f"{template} marks a value |safe"
    assert not re.search(r"autoescape\s+false", text, re.I), f"{template} turns autoescape off"
    assert "Markup(" not in text


def test_cv_report_template_escapes_under_the_kfold_environment():
    """Render cv_report.html.j2's title line with kfold's own Environment settings."""
    import jinja2

    from medxcept.report import TEMPLATES

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True)
    source = (TEMPLATES / "cv_report.html.j2").read_text(encoding="utf-8")
    title = re.search(r"<title>.*?</title>", source).group(0)
    out = env.from_string(title).render(r={"cv": {"cohort": SCRIPT, "dir": BOLD}})
    assert "<script>" not in out and "&lt;script&gt;alert(1)&lt;/script&gt;" in out
    assert "&lt;b&gt;&amp;&#34;&#39;" in out


def test_confusion_heading_and_training_verdict_state_their_level(escaped):
    """Issue 30: the binary confusion matrix is drawn for patients, so its heading says patients (it
    said "images" over a "patient level" caption); the training verdict says its gap's validation
    AUC is the epoch selected for being best."""
    import html as html_lib

    text = html_lib.unescape(escaped["html"])
    assert "<h3>Confusion matrix (patients)</h3>" in text and "Confusion matrix (images)" not in text
    assert "Confusion matrix at the patient level." in text
    note = escaped["metrics"]["training"]["gap_note"]
    assert note and note in text
