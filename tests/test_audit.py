"""Tests of medxcept.integrity.audit: planted leakage is found, a clean cohort raises no alarm."""

from __future__ import annotations

import hashlib
import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy import ndimage
from scipy.stats.contingency import association

from medxcept.cohort.demo import CAMERAS, DemoSpec, _plan, paint_fundus
from medxcept.errors import ConfigError, LeakageError
from medxcept.images.preprocess import PreprocessConfig, preprocess
from medxcept.integrity.audit import (
    DEFAULT_HAMMING_THRESHOLD,
    DETAIL_PX,
    DETAIL_THRESHOLD,
    AuditReport,
    Finding,
    audit_cohort,
    cramers_v,
    detail_similarity,
    duplicate_groups,
    fingerprints,
    hamming,
    near_duplicate_pairs,
)
from medxcept.integrity.fingerprints import _FOV_ERODE
from medxcept.integrity.splits import SplitConfig, assign_folds, assign_splits

# ------------------------------------------------------------------ synthetic images


def blob_image(rng: np.random.Generator, h: int = 96, w: int = 112) -> np.ndarray:
    """A textured RGB image: random smooth coloured blobs plus smoothed noise, in [0, 1]."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros((h, w, 3))
    for _ in range(int(rng.integers(6, 14))):
        cy, cx, s = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 24)
        img += rng.uniform(-1, 1, 3) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))[..., None]
    img += 0.5 * ndimage.gaussian_filter(rng.normal(size=(h, w, 3)), (2, 2, 0))
    img -= img.min()
    return (img / img.max()).astype(np.float32)


def _to_pil(img: np.ndarray) -> Image.Image:
    return Image.fromarray(np.rint(img * 255).astype(np.uint8))


def rescaled(img: np.ndarray, factor: float) -> np.ndarray:
    p = _to_pil(img)
    p = p.resize((round(p.width * factor), round(p.height * factor)), Image.BICUBIC)
    return np.asarray(p, dtype=np.float32) / 255


def jpeg(img: np.ndarray, quality: int = 60) -> np.ndarray:
    buf = io.BytesIO()
    _to_pil(img).save(buf, format="JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype=np.float32) / 255


def file_hash(img: np.ndarray, salt: str = "") -> str:
    return hashlib.sha256(salt.encode() + img.tobytes()).hexdigest()


def clean_cohort(n_patients: int = 24, seed: int = 0) -> tuple[pd.DataFrame, list[np.ndarray]]:
    """Distinct images: 2 eyes per patient, labels balanced, sources independent of label."""
    rng = np.random.default_rng(seed)
    rows, images = [], []
    for p in range(n_patients):
        y = p % 2
        for eye in "LR":
            img = blob_image(rng)
            images.append(img)
            rows.append(
                {
                    "image_id": f"img{p:02d}{eye}",
                    "path": f"/data/{p:02d}{eye}.png",
                    "frame": 0,
                    "patient_id": f"MRN-{424242 + p}",
                    "patient_key": f"P-{p:010x}",
                    "study_id": "S1",
                    "laterality": eye,
                    "label": ["normal", "dr"][y],
                    "y": y,
                    "source": ["siteA", "siteB"][(p // 2) % 2],
                    "modality": "fundus",
                    "width": img.shape[1],
                    "height": img.shape[0],
                    "channels": 3,
                    "sha256": file_hash(img),
                }
            )
    return pd.DataFrame(rows), images


def add_image(df: pd.DataFrame, images: list, img: np.ndarray, like: int, **changes) -> pd.DataFrame:
    row = df.iloc[like].to_dict()
    row.update(
        image_id=f"extra{len(df)}", path=f"/data/extra{len(df)}.png", width=img.shape[1], height=img.shape[0],
        sha256=file_hash(img, "re-encoded"),
    )
    row.update(changes)
    images.append(img)
    return pd.concat([df, pd.DataFrame([row])], ignore_index=True)


def split(df: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return assign_splits(df, SplitConfig(test_fraction=0.25, val_fraction=0.25, seed=seed))


def other_split_row(df: pd.DataFrame, i: int) -> int:
    return int(np.nonzero((df["split"] != df.loc[i, "split"]).to_numpy())[0][0])


@pytest.fixture(scope="module")
def base():
    df, images = clean_cohort()
    return split(df), images


# ------------------------------------------------------------------ hashing


def test_fingerprints_shapes_types_and_flip():
    rng = np.random.default_rng(0)
    img = blob_image(rng, 50, 70)
    gray = img.mean(axis=2)
    fp = fingerprints([img, img[:, ::-1], gray, gray[:, :, None], img.copy()])
    assert fp["phash"].dtype == np.uint64 and fp["dhash"].dtype == np.uint64 and len(fp["phash"]) == 5
    assert fp["phash_flip"][0] == fp["phash"][1] and fp["dhash_flip"][0] == fp["dhash"][1]
    assert fp["pixel_hash"][0] == fp["pixel_hash"][4] != fp["pixel_hash"][1]
    assert fp["pixel_hash"][2] == fp["pixel_hash"][3] and len(fp["pixel_hash"][0]) == 64
    with pytest.raises(ConfigError, match="image #0"):
        fingerprints([np.zeros((4, 4, 2))])


def test_hamming_known_values():
    assert int(hamming(np.uint64(0), np.uint64(2**64 - 1))) == 64
    assert hamming(np.array([0b1011, 7], dtype=np.uint64), np.uint64(1)).tolist() == [2, 2]


def test_transformed_copies_within_threshold_distinct_far():
    rng = np.random.default_rng(5)
    originals = [blob_image(rng) for _ in range(6)]
    for img in originals:
        fp = fingerprints([img, rescaled(img, 0.9), jpeg(img, 60)])
        for k in (1, 2):
            assert int(hamming(fp["phash"][0], fp["phash"][k])) <= 4
            assert int(hamming(fp["dhash"][0], fp["dhash"][k])) <= 4
    fp = fingerprints(originals)
    iu = np.triu_indices(6, 1)
    assert hamming(fp["phash"][iu[0]], fp["phash"][iu[1]]).min() > DEFAULT_HAMMING_THRESHOLD


def test_near_duplicate_pairs_match_naive_loop():
    rng = np.random.default_rng(1)
    n = 300
    fp = {k: rng.integers(0, 2**63, n, dtype=np.uint64) for k in ("phash", "phash_flip", "dhash", "dhash_flip")}
    fp["pixel_hash"] = np.array([str(i) for i in range(n)], dtype=object)
    for a, b, bits in [(3, 200, 5), (10, 11, 0), (50, 299, 10), (60, 61, 11)]:  # plant near pairs
        flip = np.uint64(sum(1 << int(x) for x in rng.choice(64, bits, replace=False)))
        fp["phash"][b] = fp["phash"][a] ^ flip
        fp["dhash"][b] = fp["dhash"][a] ^ flip
    fp["phash_flip"][120] = fp["phash"][7]  # image 120 is a mirror copy of image 7
    fp["dhash_flip"][120] = fp["dhash"][7]
    got = near_duplicate_pairs(fp, 10, block_elements=1000)
    naive = []
    pc = lambda x, y: bin(int(x) ^ int(y)).count("1")  # noqa: E731
    for i in range(n):
        for j in range(i + 1, n):
            if pc(fp["phash"][i], fp["phash"][j]) <= 10 and pc(fp["dhash"][i], fp["dhash"][j]) <= 10:
                naive.append((i, j, False))
            elif pc(fp["phash"][i], fp["phash_flip"][j]) <= 10 and pc(fp["dhash"][i], fp["dhash_flip"][j]) <= 10:
                naive.append((i, j, True))
    assert list(zip(got["i"], got["j"], got["flipped"], strict=False)) == naive
    assert (3, 200, False) in naive and (7, 120, True) in naive and (60, 61, False) not in naive


# ------------------------------------------------------------------ planted findings


def test_clean_cohort_no_false_alarm(base):
    df, images = base
    df = assign_folds(df, SplitConfig(n_folds=3))
    report = audit_cohort(df, fp=fingerprints(images))
    assert report.errors == [] and report.warnings == [], [f.message for f in report.findings]
    assert {f.kind for f in report.findings} <= {"confounding_checked"}
    assert report.tables["class_balance"].loc["split=test"].sum() == 12
    assert report.tables["patients_per_class"].loc["dr", "n_patients"] == 12
    report.raise_if_errors()  # no exception


def test_exact_duplicate_across_splits_is_error(base):
    df, images = base
    images = list(images)
    j = other_split_row(df, 0)
    dup = add_image(df, images, images[0], like=j, sha256=df.loc[0, "sha256"], label=df.loc[j, "label"])
    dup.loc[len(dup) - 1, "label"] = df.loc[0, "label"]  # same label: a pure leak, no conflict
    dup.loc[len(dup) - 1, "y"] = df.loc[0, "y"]
    report = audit_cohort(dup, fp=fingerprints(images))
    f = report.by_kind("duplicate_across_splits")
    assert len(f) == 1 and f[0].severity == "error" and f[0].count == 1
    assert f[0].details[0]["match"] == "sha256"
    assert {f[0].details[0]["image_id_a"], f[0].details[0]["image_id_b"]} == {"img00L", dup.iloc[-1]["image_id"]}
    with pytest.raises(LeakageError, match="duplicate across splits: 1"):
        report.raise_if_errors()
    # without fingerprints the byte-identical copy is still found
    assert audit_cohort(dup).by_kind("duplicate_across_splits")[0].count == 1


@pytest.mark.parametrize(
    "transform",
    # JPEG at quality 75, a typical re-export (see DETAIL_THRESHOLD)
    [lambda im: im[:, ::-1].copy(), lambda im: rescaled(im, 0.9), lambda im: jpeg(im, 75)],
    ids=["flipped", "rescaled0.9", "jpeg75"],
)
def test_near_duplicate_copies_found(base, transform):
    df, images = base
    images = list(images)
    j = other_split_row(df, 3)
    # the copy is filed under the patient of row j (another patient, another split)
    dup = add_image(df, images, transform(images[3]), like=j)
    dup.loc[len(dup) - 1, ["label", "y"]] = df.loc[3, ["label", "y"]].to_list()
    report = audit_cohort(dup, fp=fingerprints(images))
    cross = report.by_kind("duplicate_across_splits")
    assert len(cross) == 1 and cross[0].count == 1 and cross[0].details[0]["match"] in ("near", "pixel")
    d = cross[0].details[0]
    assert {d["image_id_a"], d["image_id_b"]} == {df.loc[3, "image_id"], dup.iloc[-1]["image_id"]}
    patients = report.by_kind("duplicate_across_patients")
    assert len(patients) == 1 and patients[0].severity == "warning"


def test_two_id_patient_is_warning_and_fix_policy_regroups(base):
    df, images = base
    images = list(images)
    raw = df.drop(columns="split")
    # patient P-...02 was registered again as a new ID; one eye photo re-exported as JPEG
    # a typical re-export (quality 75)
    two = add_image(raw, images, jpeg(images[4], quality=75), like=4, patient_id="NEW-ID",
                    patient_key="P-ffffffffff")
    report = audit_cohort(two, fp=fingerprints(images), policy="fix")
    f = report.by_kind("duplicate_across_patients")
    assert len(f) == 1 and "two IDs" in f[0].message
    assert {f[0].details[0]["patient_key_a"], f[0].details[0]["patient_key_b"]} == {"P-0000000002", "P-ffffffffff"}
    assert report.errors == []
    merge = report.merge_groups
    assert merge is not None and merge["img02L"] == merge[two.iloc[-1]["image_id"]]
    assert merge.nunique() == len(two) - 1
    assert merge.equals(duplicate_groups(two, fingerprints(images)))
    for seed in range(4):
        resplit = assign_splits(two, SplitConfig(test_fraction=0.25, val_fraction=0.25, seed=seed), merge=merge)
        after = audit_cohort(resplit, fp=fingerprints(images))
        assert after.by_kind("duplicate_across_splits") == []
        assert resplit.loc[resplit["patient_key"].isin(["P-0000000002", "P-ffffffffff"]), "split"].nunique() == 1


def test_label_conflict_exact_and_near(base):
    df, images = base
    images = list(images)
    flip = {"normal": "dr", "dr": "normal"}
    j = int(np.nonzero((df["split"] == df.loc[6, "split"]).to_numpy() & (df["patient_key"] != df.loc[6, "patient_key"]).to_numpy())[0][0])
    conflict = add_image(df, images, images[6], like=j, sha256=df.loc[6, "sha256"])
    conflict.loc[len(conflict) - 1, ["label", "y"]] = [flip[df.loc[6, "label"]], 1 - df.loc[6, "y"]]
    conflict = add_image(conflict, images, rescaled(images[8], 0.9), like=8)
    conflict.loc[len(conflict) - 1, ["label", "y"]] = [flip[df.loc[8, "label"]], 1 - df.loc[8, "y"]]
    report = audit_cohort(conflict, fp=fingerprints(images))
    exact = report.by_kind("label_conflict")
    near = report.by_kind("label_conflict_near")
    assert len(exact) == 1 and exact[0].severity == "error" and exact[0].count == 1
    assert len(near) == 1 and near[0].severity == "warning" and near[0].count == 1
    assert exact[0].details[0]["label_a"] != exact[0].details[0]["label_b"]
    warned = audit_cohort(conflict, fp=fingerprints(images), policy="warn")
    assert warned.by_kind("label_conflict")[0].severity == "warning"


def test_patient_overlap_from_user_split(base):
    df, images = base
    bad = df.copy()
    bad.loc[1, "split"] = "test" if bad.loc[0, "split"] != "test" else "train"  # right eye elsewhere
    report = audit_cohort(bad)
    f = report.by_kind("patient_overlap")
    assert len(f) == 1 and f[0].severity == "error" and f[0].count == 1
    assert f[0].details[0]["patient_key"] == bad.loc[0, "patient_key"] and f[0].details[0]["n_images"] == 2
    assert audit_cohort(bad, policy="warn").by_kind("patient_overlap")[0].severity == "warning"
    # folds: a patient whose eyes are in two validation folds
    folds = assign_folds(df, SplitConfig(n_folds=3))
    cv_rows = np.nonzero((folds["fold"] >= 0).to_numpy())[0]
    r = cv_rows[0]
    folds.loc[r, "fold"] = (folds.loc[r, "fold"] + 1) % 3
    assert audit_cohort(folds).by_kind("patient_overlap")[0].details[0]["patient_key"] == folds.loc[r, "patient_key"]


def test_group_column_overlap(base):
    df, _ = base
    df = df.assign(group=["fam0", "fam0"] + [f"f{i}" for i in range(len(df) - 2)])
    j = other_split_row(df, 0)
    df.loc[j, "group"] = "fam0"
    f = audit_cohort(df, group_column="group").by_kind("group_overlap")
    assert len(f) == 1 and f[0].details[0]["group"] == "fam0"


def test_source_confounded_class_warns(base):
    df, _ = base
    conf = df.copy()
    conf["source"] = np.where(conf["label"] == "dr", "siteB", np.where(conf.index % 4 == 0, "siteB", "siteA"))
    report = audit_cohort(conf)
    f = report.by_kind("confounding")
    assert len(f) == 1 and f[0].severity == "warning"
    assert f[0].details[0]["label"] == "dr" and f[0].details[0]["value"] == "siteB" and f[0].details[0]["share"] == 1.0
    assert "siteB" in f[0].message
    table = report.tables["confounding_source"]
    assert table.loc["dr", "siteB"] == 24 and table.loc["normal", "siteB"] == 12
    # image size that gives the class away
    sized = df.copy()
    sized.loc[sized["label"] == "dr", ["width", "height"]] = [2048, 1536]
    f = audit_cohort(sized).by_kind("confounding")
    assert len(f) == 1 and f[0].details[0]["value"] == "2048x1536"
    # one source for everything is not confounding
    assert audit_cohort(df.assign(source="only")).by_kind("confounding") == []


def test_cramers_v_matches_scipy_and_bias_correction():
    table = np.array([[20, 5, 3], [4, 18, 9]])
    assert cramers_v(table, bias_correction=False) == pytest.approx(association(table, method="cramer"))
    assert cramers_v(table) < cramers_v(table, bias_correction=False)
    assert cramers_v(np.array([[10, 0], [0, 10]]), bias_correction=False) == pytest.approx(1.0)
    assert cramers_v(np.array([[5, 5]])) == 0.0


def test_laterality_checks(base):
    df, _ = base
    lat = df.copy()
    extra = lat.iloc[[0, 0]].assign(image_id=["x1", "x2"], sha256=["a" * 64, "b" * 64])
    lat = pd.concat([lat, extra], ignore_index=True)  # 3 left-eye images, one visit
    lat.loc[5, "laterality"] = "NA"
    report = audit_cohort(lat)
    f = report.by_kind("laterality_excess")
    assert len(f) == 1 and f[0].severity == "warning" and f[0].details[0]["n_images"] == 3
    assert report.by_kind("laterality_missing")[0].count == 1


def test_missing_class_in_fold_is_error(base):
    df, _ = base
    folds = assign_folds(df, SplitConfig(n_folds=3))
    folds.loc[(folds["fold"] == 2) & (folds["label"] == "dr"), "fold"] = 1
    f = audit_cohort(folds).by_kind("missing_class")
    assert len(f) == 1 and f[0].severity == "error"
    assert {"partition": "fold=2 val", "missing_classes": ["dr"]} in f[0].details


def test_frames_of_one_file_are_not_duplicates(base):
    df, _ = base
    mf = df.copy()
    mf.loc[1, "sha256"] = mf.loc[0, "sha256"]  # two frames of one multi-frame DICOM
    mf.loc[1, "frame"] = 1
    assert audit_cohort(mf).by_kind("duplicate_within_split") == []
    mf.loc[1, "frame"] = 0  # the same file twice
    assert audit_cohort(mf).by_kind("duplicate_within_split")[0].count == 1


def test_report_json_never_holds_raw_patient_id(base):
    df, images = base
    images = list(images)
    dup = add_image(df, images, images[0], like=other_split_row(df, 0), sha256=df.loc[0, "sha256"])
    report = audit_cohort(dup, fp=fingerprints(images))
    text = json.dumps(report.to_dict())
    assert "MRN-" not in text and "patient_id" not in text
    assert json.loads(text)["summary"]["error"] == len(report.errors) >= 1
    with pytest.raises(LeakageError) as exc:
        report.raise_if_errors()
    assert "MRN-" not in str(exc.value) and "policy 'fix'" in str(exc.value)


def test_bad_arguments():
    df, images = clean_cohort(4)
    with pytest.raises(ConfigError, match="policy"):
        audit_cohort(df, policy="ignore")
    with pytest.raises(ConfigError, match="lengths"):
        audit_cohort(df, fp=fingerprints(images[:3]))
    with pytest.raises(ConfigError, match="severity"):
        Finding("x", "fatal", "m")
    assert isinstance(audit_cohort(df), AuditReport)


def test_fingerprints_of_uint8_equal_those_of_float_images():
    """The pipeline hashes the uint8 preprocessing cache: it must not be clipped to a mask."""
    rng = np.random.default_rng(4)
    imgs = [(rng.random((48, 48, 3)) * 255).astype(np.uint8) for _ in range(3)]
    a = fingerprints(imgs)
    b = fingerprints([i.astype(np.float64) / 255 for i in imgs])
    np.testing.assert_array_equal(a["phash"], b["phash"])
    np.testing.assert_array_equal(a["dhash"], b["dhash"])
    assert len(set(a["phash"].tolist())) == 3


# ------------------------------------------------------------------ detail patches


def _bits(words: np.ndarray) -> np.ndarray:
    """``(..., 64)`` uint64 row words -> ``(..., 64, 64)`` bools (first pixel = most significant bit)."""
    return np.unpackbits(words.astype(">u8").view(np.uint8), axis=-1).reshape(*words.shape, 64).astype(bool)


def test_detail_bitmaps_shape_mirror_and_surround():
    rng = np.random.default_rng(2)
    img = blob_image(rng, 80, 80)
    img[:, :20] = 0.0  # a black surround on the left quarter
    fp = fingerprints([img, img[:, ::-1]])
    det = fp["detail"]
    assert det.dtype == np.uint64 and det.shape == (2, 2, DETAIL_PX)
    np.testing.assert_array_equal(fp["detail_flip"][0], det[1])
    above, area = _bits(det[0, 0]), _bits(det[0, 1])
    np.testing.assert_array_equal(_bits(fp["detail_flip"][0, 0]), above[:, ::-1])
    # 20/80 of 64 columns = 16 black, then _FOV_ERODE (5) eroded (as is the frame): the area is the rest
    e = _FOV_ERODE
    want = np.zeros((64, 64), bool)
    want[e:-e, 16 + e:-e] = True
    assert (area <= want).all() and area[e:-e, 16 + e:-e].mean() > 0.95  # less the blobs' own near-black
    assert not above[~area].any() and 0.45 < above[area].mean() < 0.55  # above the median: half
    s = detail_similarity(fp, [0, 0], [1, 1], [False, True])
    assert s[1] == 1.0 and abs(s[0]) < 0.3


def test_detail_similarity_is_sign_agreement():
    """Hand check: 2 x (share of agreeing pixels inside both images) - 1."""
    rng = np.random.default_rng(8)
    img = blob_image(rng, 64, 64)
    fp = fingerprints([img, blob_image(rng, 64, 64)])
    a, b = _bits(fp["detail"][0]), _bits(fp["detail"][1])
    both = a[1] & b[1]
    want = 2 * ((a[0] == b[0]) & both).sum() / both.sum() - 1
    assert detail_similarity(fp, [0], [1])[0] == pytest.approx(want)
    assert detail_similarity(fp, [1], [0])[0] == pytest.approx(want)  # symmetric


def test_flat_images_have_no_detail_and_keep_the_hash_verdict():
    """Nothing to compare: the similarity is NaN and the hashes alone decide."""
    flat = [np.zeros((40, 40, 3)), np.full((40, 40, 3), 0.02), blob_image(np.random.default_rng(3), 40, 40)]
    fp = fingerprints(flat)
    assert not fp["detail"][:2].any() and fp["detail"][2].any()
    assert np.isnan(detail_similarity(fp, [0, 0], [1, 2])).all()
    for key in ("phash", "phash_flip", "dhash", "dhash_flip"):  # all three alike to the hashes
        fp[key][1:] = fp[key][0]
    pairs = near_duplicate_pairs(fp)
    assert list(zip(pairs["i"], pairs["j"], strict=True)) == [(0, 1), (0, 2), (1, 2)]
    assert pairs["detail_similarity"].isna().all()
    assert len(near_duplicate_pairs(fp, detail_threshold=None)) == 3


# ------------------------------------------------------------------ demo fundus photographs


def _demo_photo(name: str) -> np.ndarray:
    """One photograph of the demo cohort (DemoSpec(): seed 7), as the generator paints it (uint8)."""
    spec = DemoSpec()
    plan = _plan(spec)
    k = next(k for k, r in enumerate(plan) if f"{r['patient']}_v{r['visit']}_{r['eye']}" == name)
    row = plan[k]
    rgb, _, _ = paint_fundus(np.random.default_rng([spec.seed, k]), CAMERAS[row["camera"]],
                             laterality=row["eye"], referable=row["referable"])
    return rgb


def _prep(rgb: np.ndarray) -> np.ndarray:
    """Preprocessed as the demo run ingests it (96 px, FOV crop, uint8)."""
    return preprocess(rgb.astype(np.float32) / 255, PreprocessConfig(image_px=96), modality="fundus")


def _pil(rgb: np.ndarray, factor: float = 1.0, quality: int | None = None) -> np.ndarray:
    im = Image.fromarray(rgb)
    if factor != 1.0:
        im = im.resize((round(im.width * factor), round(im.height * factor)), Image.Resampling.BICUBIC)
    if quality is not None:
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=quality)
        im = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    return np.asarray(im)


@pytest.fixture(scope="module")
def demo_pair() -> dict[str, np.ndarray]:
    """The two demo photographs (different patients, right and left eye) the former detail hash paired,
    and copies of the first: 0.9x rescaled, JPEG quality 75, mirrored and re-compressed."""
    a = _demo_photo("DEMO-00080_v1_R")  # both PNG in the demo: these are the exact pixels
    b = _demo_photo("DEMO-00023_v1_L")
    return {
        "a": _prep(a),
        "b": _prep(b),
        "a_rescaled": _prep(_pil(a, factor=0.9)),
        "a_jpeg75": _prep(_pil(a, quality=75)),
        "a_flip_jpeg75": _prep(_pil(np.ascontiguousarray(a[:, ::-1]), quality=75)),
    }


def test_distinct_demo_look_alikes_are_not_paired(demo_pair):
    """Two patients' eyes, mirror images of each other at coarse scale (pHash 0 bits apart)."""
    fp = fingerprints([demo_pair["a"], demo_pair["b"]])
    cand = near_duplicate_pairs(fp, detail_threshold=None)
    assert len(cand) == 1 and bool(cand["flipped"][0]) and cand["phash_distance"][0] <= 2
    assert detail_similarity(fp, [0], [1], True)[0] < DETAIL_THRESHOLD - 0.1  # 0.28
    assert near_duplicate_pairs(fp).empty
    df, _ = clean_cohort(2)
    report = audit_cohort(df.iloc[[0, 2]].reset_index(drop=True), fp=fp)
    assert report.errors == [] and report.warnings == []


@pytest.mark.parametrize(
    "copy, flipped", [("a_rescaled", False), ("a_jpeg75", False), ("a_flip_jpeg75", True)]
)
def test_demo_fundus_copies_are_found(demo_pair, copy, flipped):
    fp = fingerprints([demo_pair["a"], demo_pair["b"], demo_pair[copy]])
    pairs = near_duplicate_pairs(fp)
    assert list(zip(pairs["i"], pairs["j"], pairs["flipped"], strict=True)) == [(0, 2, flipped)]
    assert pairs["detail_similarity"][0] >= DETAIL_THRESHOLD + 0.1  # the benchmark's copies: >= 0.57
    # filed under another patient in another split: leakage across splits and patients
    df, _ = clean_cohort(3)
    df = df.iloc[[0, 2, 4]].reset_index(drop=True).assign(split=["train", "val", "test"], label="normal", y=0)
    report = audit_cohort(df, fp=fp)
    assert [(f.kind, f.count) for f in report.findings if f.kind.startswith("duplicate")] == [
        ("duplicate_across_splits", 1), ("duplicate_across_patients", 1)]
    d = report.by_kind("duplicate_across_splits")[0].details[0]
    got = (d["image_id_a"], d["image_id_b"], d["match"], d["flipped"])
    assert got == ("img00L", "img02L", "near", flipped)


# ------------------------------------------------------------------ determinism (issue 21)


def _findings(report: AuditReport) -> list[dict]:
    return report.to_dict()["findings"]


def test_findings_do_not_depend_on_row_order_star_group():
    """A large set of identical files is joined as a star around one row; which row must not
    depend on the table's order (it follows the per-machine pseudonyms), or the number of
    cross-patient pairs changes between machines."""
    img = np.zeros((8, 8, 3), dtype=np.float32)
    rows = [{"image_id": f"c{k:02d}", "patient_key": f"P-{'a' if k < 20 else 'b'}", "patient_id": f"MRN-{k < 20}",
             "label": "normal", "y": 0, "sha256": file_hash(img), "frame": 0, "laterality": "L", "study_id": ""}
            for k in range(35)]  # 20 copies of patient a, 15 of patient b: more than the 30 of a clique
    df = pd.DataFrame(rows)
    counts = set()
    reference = None
    for seed in range(6):
        shuffled = df.sample(frac=1.0, random_state=seed)
        # the order ingestion would give on a machine whose key sorts the other patient first
        shuffled = shuffled.sort_values("patient_key", ascending=bool(seed % 2), kind="stable")
        report = audit_cohort(shuffled, policy="warn")
        f = report.by_kind("duplicate_across_patients")
        counts.add(f[0].count)
        reference = reference or _findings(report)
        assert {k: v for k, v in _findings(report)[0].items() if k != "details"} == \
            {k: v for k, v in reference[0].items() if k != "details"}
    assert len(counts) == 1 and counts.pop() in (15, 20)


def test_findings_identical_under_shuffled_rows_with_near_duplicates(base):
    """Mirrored and re-encoded copies across patients and splits: the same findings (pairs named
    by image id) and the same merge groups whatever the row order."""
    df, images = base
    images = list(images)
    two = add_image(df, images, images[4][:, ::-1].copy(), like=4, patient_id="NEW-ID", patient_key="P-ffffffffff")
    two = add_image(two, images, jpeg(images[7], quality=75), like=9)
    fp_all = fingerprints(images)

    def audit(order: np.ndarray) -> tuple[list[dict], pd.Series]:
        fp = {k: np.asarray(v)[order] for k, v in fp_all.items()}
        rep = audit_cohort(two.iloc[order], fp=fp, policy="warn")
        groups = duplicate_groups(two.iloc[order], fp)
        canon = [{**f, "details": sorted(json.dumps(
            {**d, **({"pair": sorted([d["image_id_a"], d["image_id_b"]])} if "image_id_a" in d else {})},
            sort_keys=True, default=str) for d in f["details"])} for f in _findings(rep)]
        # group ids are numbered by first row: compare the partition, not the numbers
        part = groups.groupby(groups).transform(lambda s: ",".join(sorted(s.index))).sort_index()
        return canon, part

    ref, ref_groups = audit(np.arange(len(two)))
    kinds = {f["kind"] for f in ref}
    assert {"duplicate_across_patients", "duplicate_across_splits"} <= kinds
    for seed in range(3):
        order = np.random.default_rng(seed).permutation(len(two))
        got, got_groups = audit(order)
        assert got == ref
        assert got_groups.equals(ref_groups)
