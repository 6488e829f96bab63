"""Cohort task declarations (nominal / ordinal, derived endpoints) and the graded demo generator."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest

from medxcept.cohort.demo_graded import GradedDemoSpec, _plan, paint_graded
from medxcept.cohort.table import load_cohort_spec, parse_endpoint
from medxcept.errors import ConfigError

GRADES = ("none", "mild", "moderate", "severe", "proliferative")


def _cohort(tmp_path, extra: str, classes: str = "[none, mild, moderate, severe, proliferative]"):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: t
        classes: {classes}
        sources: [{{kind: folders, root: x, one_patient_per_file: true}}]
        """) + textwrap.dedent(extra))
    return path


def test_ordinal_task_and_endpoints_parse(tmp_path):
    spec = load_cohort_spec(_cohort(tmp_path, """\
        task: ordinal
        endpoints: {referable: grade >= moderate, any_dr: "> 0", sight: [severe, Proliferative], top: grade == 4}
        """))
    assert spec.task == "ordinal" and spec.classes == GRADES  # the grade order is kept
    got = {e.name: e.positive for e in spec.endpoints}
    assert got == {"referable": (2, 3, 4), "any_dr": (1, 2, 3, 4), "sight": (3, 4), "top": (4,)}
    assert spec.endpoints[0].positive_names(spec.classes) == ["moderate", "severe", "proliferative"]


def test_task_defaults(tmp_path):
    assert load_cohort_spec(_cohort(tmp_path, "")).task == "nominal"
    assert load_cohort_spec(_cohort(tmp_path, "", classes="[a, b]")).task == "binary"
    assert load_cohort_spec(_cohort(tmp_path, "", classes="[a, b]")).endpoints == ()


@pytest.mark.parametrize("extra, match", [
    ("task: graded\n", "task='graded' is not one of"),
    ("task: ordinal\nendpoints: {referable: grade >= severest}\n", "'severest' in 'grade >= severest' is neither"),
    ("task: ordinal\nendpoints: {referable: grade >= 9}\n", "grade 0..4"),
    ("task: nominal\nendpoints: {referable: grade >= 2}\n", "compares grades, but the task is 'nominal'"),
    ("task: ordinal\nendpoints: {x: [mild, cataract]}\n", r"\['cataract'\] not among classes"),
    ("task: ordinal\nendpoints: {x: grade >= 0}\n", "makes every class positive"),
    ("task: ordinal\nendpoints: {x: grade > 4}\n", "makes no class positive"),
    ("task: ordinal\nendpoints: [referable]\n", "'endpoints' must be a mapping"),
    ("task: ordinal\nendpoints: {x: 3}\n", "endpoints.x=3: write a list"),
])
def test_bad_declarations_name_the_value(tmp_path, extra, match):
    with pytest.raises(ConfigError, match=match):
        load_cohort_spec(_cohort(tmp_path, extra))


def test_binary_and_ordinal_class_counts_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="two classes are 'binary'"):
        load_cohort_spec(_cohort(tmp_path, "task: ordinal\n", classes="[a, b]"))
    with pytest.raises(ConfigError, match="need a nominal or ordinal task"):
        load_cohort_spec(_cohort(tmp_path, "endpoints: {x: [b]}\n", classes="[a, b]"))


def test_example_cohort_files_parse():
    spec = load_cohort_spec("cohorts/example_grades_csv.yaml")
    assert spec.task == "ordinal" and {e.name: e.positive for e in spec.endpoints}["referable"] == (2, 3, 4)
    graded = load_cohort_spec("cohorts/demo_graded.yaml")
    assert graded.generator == "demo_graded" and graded.endpoints[0].positive == (2,)
    assert parse_endpoint("r", "grade >= 1", ("a", "b", "c"), "ordinal").positive == (1, 2)


def test_graded_demo_plants_more_lesion_pixels_per_grade():
    """Lesion extent grows with the grade (median over eyes, every grade strictly above the last)."""
    areas = {g: [] for g in range(5)}
    for g in range(5):
        for i in range(4):
            rng = np.random.default_rng([3, g, i])
            rgb, mask = paint_graded(rng, i % 2, laterality="LR"[i % 2], grade=g, scale=0.35)
            assert rgb.dtype == np.uint8 and rgb.shape[2] == 3
            areas[g].append(int(mask.sum()))
    med = [np.median(areas[g]) for g in range(5)]
    assert med[0] == 0 and all(b > a for a, b in zip(med, med[1:], strict=False))


def test_graded_demo_plan_has_two_eyes_and_worst_grade_structure():
    spec = GradedDemoSpec(n_patients=60, n_grades=3, seed=2)
    plan = _plan(spec)
    patients = {r["patient"] for r in plan}
    assert len(patients) == 60 and len(plan) > 1.8 * 60
    grades = {}
    for r in plan:
        grades.setdefault(r["patient"], []).append(r["grade"])
    assert {g for gs in grades.values() for g in gs} == {0, 1, 2}
    assert any(len(set(gs)) > 1 for gs in grades.values())  # discordant eyes exist
    with pytest.raises(ValueError, match="n_grades=7"):
        GradedDemoSpec(n_grades=7)
