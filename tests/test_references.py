"""Reference models (issue 17): fitted on training + validation, scored on the same test patients,
compared with the deep model at the patient level with paired tests, in plain words."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from medxcept.evaluation.intervals import delong_test
from medxcept.evaluation.references import (
    CLASSICAL,
    REFERENCES,
    compare_with_references,
    fit_references,
    image_statistics,
    reference_sentences,
)
from medxcept.evaluation.units import aggregate_by_patient


def _fundus(rng: np.random.Generator, positive: bool, px: int = 32) -> np.ndarray:
    """A disc-shaped field of view on black; positive eyes carry a few yellow spots."""
    yy, xx = np.mgrid[0:px, 0:px]
    fov = np.hypot(yy - px / 2, xx - px / 2) < px / 2 - 1
    img = np.zeros((px, px, 3), dtype=np.float64)
    img[fov] = np.array([170, 80, 40]) * rng.uniform(0.8, 1.2) + rng.normal(0, 8, (fov.sum(), 3))
    if positive:
        for _ in range(3):
            r, c = rng.integers(px // 4, 3 * px // 4, 2)
            img[r:r + 3, c:c + 3] = [240, 220, 110]
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def cohort():
    """60 patients with two eyes each; the label is in the pixels (spots) and, for the acquisition
    reference, the file format follows the label in 90 % of patients."""
    rng = np.random.default_rng(0)
    rows, images = [], []
    for p in range(60):
        y = int(p % 3 == 0)
        fmt = ("png" if y else "jpeg") if rng.random() < 0.9 else ("jpeg" if y else "png")
        for eye in "LR":
            images.append(_fundus(rng, bool(y)))
            rows.append({"patient_key": f"p{p:02d}", "y": y, "laterality": eye, "acq_format": fmt,
                         "acq_mode": "RGB", "width": 320, "height": 320})
    table = pd.DataFrame(rows)
    split = np.where(np.arange(60) < 40, "fit", "test")[np.arange(len(table)) // 2]
    return table, np.stack(images), np.flatnonzero(split == "fit"), np.flatnonzero(split == "test")


@pytest.fixture(scope="module")
def refs(cohort):
    table, images, fit, test = cohort
    return fit_references(table, images, fit, test, seed=0)


def test_image_statistics_are_computed_inside_the_field_of_view(cohort):
    _, images, _, _ = cohort
    x = image_statistics(images[:4])
    assert x.shape == (4, 62) and np.isfinite(x).all()
    img = images[0].astype(np.float64)
    fov = img.max(axis=2) > 8
    # red channel: 8-bin histogram shares, then mean / SD / percentiles, of the field-of-view pixels only
    np.testing.assert_allclose(x[0, :8], np.histogram(img[..., 0][fov], bins=8, range=(0, 256))[0] / fov.sum())
    assert x[0, 8] == pytest.approx(img[..., 0][fov].mean() / 255)
    assert x[0, 57] == pytest.approx(fov.mean())  # the field-of-view share
    with pytest.raises(ValueError, match=r"shape \(n, h, w, 3\)"):
        image_statistics(images[..., 0])


def test_references_fitted_on_training_rows_and_scored_on_test(cohort, refs):
    table, images, fit, test = cohort
    assert list(refs) == list(REFERENCES)
    yt = table["y"].to_numpy()[test]
    for name, ref in refs.items():
        assert ref["scores"].shape == (len(test),), name
    # prevalence: the positive share of the fitting images, for everyone
    assert np.all(refs["prevalence"]["scores"] == pytest.approx(table["y"].to_numpy()[fit].mean()))
    assert roc_auc_score(yt, refs[CLASSICAL]["scores"]) > 0.95  # the spots are in the statistics
    # the format follows the label in 9 of 10 patients: the fingerprint model finds it
    assert roc_auc_score(yt, refs["acquisition"]["scores"]) > 0.75
    assert "acq_format" in refs["acquisition"]["detail"] and "acq_mode" not in refs["acquisition"]["detail"]
    # scored rows never enter the fit: changing the test images' labels changes no score
    flipped = table.copy()
    flipped.loc[flipped.index[test], "y"] = 1 - flipped.loc[flipped.index[test], "y"]
    again = fit_references(flipped, images, fit, test, seed=0, features=image_statistics(images))
    for name in refs:
        np.testing.assert_allclose(again[name]["scores"], refs[name]["scores"])


def test_comparison_matches_hand_computation_and_says_not_better_first(cohort, refs):
    table, _, _, test = cohort
    rng = np.random.default_rng(1)
    y, keys = table["y"].to_numpy()[test], table["patient_key"].to_numpy()[test]
    deep = np.clip(0.5 + 0.1 * (y - 0.5) + rng.normal(0, 0.25, len(y)), 0, 1)  # a weak deep model
    cmp = compare_with_references(y, deep, refs, keys, how="max", n_resamples=300, seed=0)
    _, yp, dp = aggregate_by_patient(keys, y, deep, how="max")
    _, _, cp = aggregate_by_patient(keys, y, refs[CLASSICAL]["scores"], how="max")
    assert cmp["n_patients"] == 20 and cmp["level"] == "patient"
    assert cmp["deep"]["auc"] == pytest.approx(roc_auc_score(yp, dp))
    row = cmp["references"][CLASSICAL]
    assert row["auc"] == pytest.approx(roc_auc_score(yp, cp))
    assert row["diff"] == pytest.approx(roc_auc_score(yp, dp) - roc_auc_score(yp, cp))
    assert row["delong_p"] == pytest.approx(delong_test(yp, dp, cp)["p_value"])
    assert row["diff_ci"][0] <= row["diff"] <= row["diff_ci"][1]
    assert cmp["references"]["prevalence"]["auc"] == pytest.approx(0.5)
    assert row["better"] == "no" and cmp["classical_not_better"] is True
    lines = reference_sentences(cmp)
    assert lines[0].startswith("The deep model is not better than the classical model on image statistics")
    assert f"{row['diff']:+.3f}" in lines[0] and "DeLong p" in lines[0]
    # a deep model that ranks every patient right is better than the constant
    perfect = compare_with_references(y, y + 0.0, refs, keys, n_resamples=300)
    assert perfect["references"]["prevalence"]["better"] == "yes"
    assert reference_sentences(perfect)[1].startswith("The deep model is better than the prevalence")


def test_reference_block_is_json_ready_and_keeps_the_scores(cohort):
    import json

    from medxcept.evaluation.references import reference_block

    table, images, fit, test = cohort
    table = table.assign(image_id=[f"img{i:03d}" for i in range(len(table))])
    deep = table["y"].to_numpy()[test] * 0.5 + 0.25  # ranks every test patient right
    block, scores = reference_block(table, images, fit, test, deep, how="max", n_resamples=100,
                                    features=image_statistics(images))
    again = json.loads(json.dumps(block))
    assert again["deep"]["auc"] == 1.0 and again["sentences"] == reference_sentences(block)
    assert list(scores.columns) == ["image_id", "ref_prevalence", "ref_image_statistics", "ref_acquisition"]
    assert scores["image_id"].tolist() == table["image_id"].iloc[test].tolist()
    _, yp, pp = aggregate_by_patient(table["patient_key"].iloc[test], table["y"].iloc[test],
                                     scores["ref_image_statistics"], how="max")
    assert block["references"][CLASSICAL]["auc"] == pytest.approx(roc_auc_score(yp, pp))


def test_saved_models_score_like_the_fitted_ones_and_a_run_without_them_says_so(cohort, refs, tmp_path):
    """The models an external validation applies (``references.joblib``) give the scores the run
    computed; a source run without the file (made before they were saved) gets a note, no numbers."""
    from types import SimpleNamespace

    from medxcept.config import load_config
    from medxcept.evaluation.external import external_references
    from medxcept.evaluation.references import (
        load_reference_models,
        save_reference_models,
        score_reference_models,
    )

    table, images, fit, test = cohort
    path = save_reference_models(tmp_path / "references.joblib", refs, image_px=images.shape[1])
    payload, why = load_reference_models(path)
    assert why is None and payload["image_px"] == images.shape[1]
    again = score_reference_models(payload, table.iloc[test].reset_index(drop=True), images[test])
    for name in REFERENCES:
        np.testing.assert_allclose(again[name]["scores"], refs[name]["scores"], rtol=1e-12, atol=1e-12)
    frame = table.iloc[test].reset_index(drop=True).assign(image_id=[f"i{i}" for i in range(len(test))],
                                                            prob_raw=np.linspace(0, 1, len(test)))
    block, scores = external_references(SimpleNamespace(path=tmp_path / "old-run"), frame, images[test],
                                        load_config())
    assert scores is None and block["deep"]["auc"] is None
    assert "no saved reference models" in block["sentences"][0]
