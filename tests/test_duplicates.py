"""Near-duplicates decided by geometry (medxcept.integrity.duplicates), on a real fundus photograph.

``skimage.data.retina`` is a real photograph: a rotated, sheared, zoomed, mirrored and
re-compressed copy of it must be confirmed with its transform; eyes that share its camera,
colour, disc, vignetting and border but carry another vessel tree must not be paired, and
``--on-leak fix`` must not merge them.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pandas as pd
import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import cv2  # noqa: E402
from PIL import Image  # noqa: E402

from medxcept.integrity import duplicates  # noqa: E402
from medxcept.integrity.audit import audit_cohort, fingerprints, near_duplicate_pairs, verified_near_pairs  # noqa: E402
from medxcept.integrity.check import duplicate_pairs_shown  # noqa: E402
from medxcept.integrity.duplicates import MIN_INLIERS, verify_pairs  # noqa: E402
from medxcept.report.check import pair_thumbnails  # noqa: E402

PX = 256


def _jpeg(a: np.ndarray, q: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="JPEG", quality=q)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _warp(a: np.ndarray, rot_deg: float, zoom: float, shear: float, shift: float) -> np.ndarray:
    h, w = a.shape[:2]
    r = np.deg2rad(rot_deg)
    lin = zoom * np.array([[np.cos(r), -np.sin(r + shear)], [np.sin(r), np.cos(r + shear)]])
    c = np.array([w / 2, h / 2])
    t = c + shift * w - lin @ c
    return cv2.warpAffine(a, np.hstack([lin, t[:, None]]), (w, h), flags=cv2.INTER_LINEAR)


@pytest.fixture(scope="module")
def retina() -> dict[str, np.ndarray]:
    """The real photograph, a heavy copy of it, and two look-alikes on its blurred, vessel-free background."""
    from skimage import data

    rgb = cv2.resize(data.retina(), (PX, PX), interpolation=cv2.INTER_AREA)
    g = rgb[:, :, 1]
    vessels = cv2.morphologyEx(g, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    mask = ((vessels > np.percentile(vessels[g > 15], 80)) & (g > 15)).astype(np.uint8)
    clean = cv2.GaussianBlur(cv2.inpaint(rgb, cv2.dilate(mask, np.ones((3, 3), np.uint8)), 3, cv2.INPAINT_TELEA), (0, 0), 2)
    rng = np.random.default_rng(0)
    disc = np.unravel_index(np.argmax(cv2.GaussianBlur(clean[:, :, 1].astype(np.float32), (0, 0), 8)), g.shape)
    looks = []
    for k in range(2):
        tree = np.zeros((PX, PX), np.float32)
        for _ in range(8):  # a different random vessel tree from the same disc
            x, y, ang = float(disc[1]), float(disc[0]), rng.uniform(0, 2 * np.pi)
            pts = [(x, y)]
            for _ in range(30):
                ang += rng.normal(0, 0.2)
                x, y = x + 4 * np.cos(ang), y + 4 * np.sin(ang)
                pts.append((x, y))
            cv2.polylines(tree, [np.round(np.array(pts)).astype(np.int32)], False, 1.0, 2)
        img = (clean * (1 - 0.5 * cv2.GaussianBlur(tree, (0, 0), 0.8))[..., None]).astype(np.uint8)
        img[g < 10] = 0
        looks.append(img[:, ::-1].copy() if k else img)  # the second as the other (mirrored) eye
    copy = _jpeg(np.ascontiguousarray(_warp(rgb, 30, 0.9, 0.1, 0.1)[:, ::-1]), 60)
    return {"orig": rgb, "copy": copy, "look_a": looks[0], "look_b": looks[1]}


@pytest.fixture(scope="module")
def fp(retina):
    return fingerprints([retina["orig"], retina["copy"], retina["look_a"], retina["look_b"]])


def test_heavy_copy_confirmed_by_one_transform_look_alikes_not(fp):
    pairs = verified_near_pairs(fp)
    assert list(zip(pairs["i"], pairs["j"], strict=True)) == [(0, 1)]
    p = pairs.iloc[0]
    assert p["method"] == "geometry" and bool(p["flipped"]) and p["inliers"] >= 2 * MIN_INLIERS
    # the planted transform: 30 deg (mirrored, so the sign turns), zoom 0.9, shear 0.1
    assert abs(abs(p["rotation_deg"]) - 30) < 6 and abs(p["scale"] - 0.9) < 0.08
    # the look-alikes share disc, colour and border with the photograph, not its vessel geometry
    i, j = np.triu_indices(4, 1)
    others = [(a, b) for a, b in zip(i, j, strict=True) if (a, b) != (0, 1)]
    res = pd.concat([verify_pairs(fp, [a for a, _ in others], [b for _, b in others], [f] * len(others))
                     for f in (False, True)])
    assert not res["confirmed"].any()
    # the two look-alikes are drawn on one pixel-identical background (no two real eyes are): SIFT
    # lines up its faint texture in place, but aligned, their own strongest structures (the vessel
    # trees) disagree, where a copy's agree (structure agreement >= 0.84 for every copy measured)
    shared = res[res["inliers"] >= MIN_INLIERS]
    assert set(zip(shared["i"], shared["j"], strict=True)) <= {(2, 3)}
    assert (shared["structure_agreement"] < duplicates.MIN_STRUCTURE_AGREEMENT).all()
    assert (res["inliers"][res["i"] < 2] < MIN_INLIERS).all()  # the photograph and its copy vs the look-alikes
    copy = verify_pairs(fp, [0], [1], [True]).iloc[0]
    assert copy["confirmed"] and copy["structure_agreement"] >= 0.8 and copy["layout_agreement"] < 0.3


def test_fix_merges_only_confirmed_pairs(fp, retina):
    df = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "patient_key": ["P1", "P2", "P3", "P4"],
                       "label": ["x", "x", "y", "y"]})
    # the look-alikes are candidates of the cheap global signatures (pHash + dHash within 10 bits,
    # left eye vs mirrored right eye): only the verification keeps them apart
    hash_only = near_duplicate_pairs(fp, detail_threshold=None)
    assert (2, 3) in set(zip(hash_only["i"], hash_only["j"], strict=True))
    report = audit_cohort(df, fp=fp, policy="fix")
    g = report.merge_groups
    assert g["a"] == g["b"] and len({g["a"], g["c"], g["d"]}) == 3
    d = report.by_kind("duplicate_across_patients")[0].details[0]
    assert d["method"] == "geometry" and d["inliers"] >= MIN_INLIERS and d["transform"]["flip"] is True


def test_gray_images_copy_found_distinct_not():
    from skimage import data

    cam = data.camera()
    other = cv2.resize(data.moon(), cam.shape[::-1])
    copy = _warp(cv2.resize(cam, (384, 384)), -20, 1.1, 0.0, -0.05)
    pairs = verified_near_pairs(fingerprints([cam, other, copy[::-1].copy()]))  # flipped upside down too
    assert list(zip(pairs["i"], pairs["j"], strict=True)) == [(0, 2)] and pairs["method"].iloc[0] == "geometry"


def test_check_page_pairs_show_the_flagged_images(retina):
    imgs = np.stack([retina["orig"], retina["copy"], retina["look_a"]])
    table = pd.DataFrame({"image_id": ["a", "b", "c"]})
    audit = {"findings": [{"kind": "duplicate_across_splits", "count": 5, "details": [
        {"image_id_a": "a", "image_id_b": "b", "label_a": "x", "label_b": "x", "match": "near",
         "method": "geometry", "inliers": 40, "transform": {"rotation_deg": 30.0}}]}]}
    shown, total = duplicate_pairs_shown(audit, table)
    shown = pair_thumbnails(shown, imgs)
    assert total == 5 and len(shown) == 1 and shown[0]["inliers"] == 40
    for key, img in (("thumb_a", imgs[0]), ("thumb_b", imgs[1])):
        png = base64.b64decode(shown[0][key].split(",", 1)[1])
        got = np.asarray(Image.open(io.BytesIO(png)))
        want = Image.fromarray(img)
        want.thumbnail((128, 128))
        np.testing.assert_array_equal(got, np.asarray(want))


@pytest.mark.parametrize("name,make,rot,scale", [
    ("vflip, rotated 40 deg", lambda a: _warp(a, 40, 1.0, 0.0, 0.0)[::-1], 40, 1.0),
    ("sheared 0.2, zoomed 1.25, JPEG 50", lambda a: _jpeg(np.ascontiguousarray(_warp(a, 0, 1.25, 0.2, 0.0)), 50), 0, 1.25),
    ("resized to 512, brighter and more contrasted 20 %, shifted 15 %",
     lambda a: np.clip((cv2.resize(_warp(a, 0, 1.0, 0.0, 0.15), (512, 512)).astype(np.float32) - 128) * 1.2 + 128 + 51,
                       0, 255).astype(np.uint8), 0, 1.0),
])
def test_real_photo_copies_found_with_their_transform(retina, name, make, rot, scale):
    copy = np.ascontiguousarray(make(retina["orig"]))
    pairs = verified_near_pairs(fingerprints([retina["orig"], retina["look_a"], copy, retina["look_b"]]))
    assert list(zip(pairs["i"], pairs["j"], strict=True)) == [(0, 2)], name  # the look-alikes stay apart
    p = pairs.iloc[0]
    assert p["method"] == "geometry" and p["inliers"] >= MIN_INLIERS
    # the transform found is the one applied: its scale is the zoom
    assert abs(p["scale"] / scale - 1) < 0.1, (name, p["scale"])
    if rot:
        turn = abs(float(p["rotation_deg"])) % 360
        assert min(abs(turn - rot), abs(turn - (180 - rot))) < 6, (name, p["rotation_deg"])


def test_candidate_votes_match_a_naive_count():
    """LSH keys are the chosen code bits; a pair's votes sum 1 / (s - 1) over the shared small buckets."""
    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, (40, duplicates.CODE_BITS // 8), dtype=np.uint8)
    codes = [base[rng.choice(40, 30, replace=False)] for _ in range(6)]  # images sharing descriptors
    # ... and near-copies of them: a few bits flipped, so that only some tables still collide
    noisy = [c ^ (rng.random(c.shape) < 0.02).astype(np.uint8) for c in codes]
    feat = {"kp_code": np.empty(6, object), "kp_code_flip": np.empty(6, object)}
    feat["kp_code"][:] = codes[:3] + noisy[3:]
    feat["kp_code_flip"][:] = [np.zeros((0, duplicates.CODE_BITS // 8), np.uint8)] * 6
    masks = duplicates._lsh_masks()
    assert masks.shape == (duplicates.LSH_TABLES, duplicates.LSH_BITS) and masks.max() < duplicates.CODE_BITS
    # large cohorts get longer keys: one bit per doubling of the descriptors past 2**21 (20,000 images: 26)
    assert [duplicates._lsh_bits(n) for n in (0, 2**21, 2**22, 6_000_000)] == [24, 24, 25, 26]
    allde = np.concatenate(list(feat["kp_code"]))
    img = np.repeat(np.arange(6), 30)
    bits = np.unpackbits(allde, axis=1).astype(np.int64)  # most significant bit first, as the keys read them
    want: dict[tuple[int, int], float] = {}
    for sel in masks:
        key = bits[:, sel] @ (1 << np.arange(len(sel)))
        np.testing.assert_array_equal(duplicates._lsh_keys(allde, sel), key)
        for k in np.unique(key):
            members = np.nonzero(key == k)[0]
            if not 2 <= len(members) <= duplicates.BUCKET_CAP:
                continue
            for a in range(len(members)):
                for b in range(a + 1, len(members)):
                    ia, ib = sorted((int(img[members[a]]), int(img[members[b]])))
                    if ia != ib:
                        want[(ia, ib)] = want.get((ia, ib), 0.0) + 1.0 / (len(members) - 1)
    got = duplicates.candidate_pairs(feat, top_k=10**6, min_votes=0.0)
    assert len(want) > 5
    assert dict(zip(zip(got["i"], got["j"], strict=True), got["votes"], strict=True)) == pytest.approx(want)


def test_mirrored_descriptors_are_the_mirror_images_descriptors(retina):
    """The bin permutation gives the descriptors SIFT computes on the mirror image at the mirrored keypoints."""
    cv2_ = duplicates._cv2()
    g = duplicates._to_u8_gray(retina["orig"])
    d, inner = duplicates._enhance(cv2_, g, duplicates.WORK_PX, 3.0, 5)
    e = np.clip(128 + 40 * d / d[inner > 0].std(), 0, 255).astype(np.uint8)
    sift = cv2_.SIFT_create(200)
    kp, desc = sift.detectAndCompute(e, inner)
    w = duplicates.WORK_PX - 1
    mk = [cv2_.KeyPoint(w - k.pt[0], k.pt[1], k.size, (180.0 - k.angle) % 360.0, k.response, k.octave, k.class_id)
          for k in kp]
    mk, mdesc = sift.compute(np.ascontiguousarray(e[:, ::-1]), mk)
    assert len(mk) == len(kp) > 50
    permuted = duplicates.mirror_descriptors(desc)
    err = np.abs(permuted - mdesc).mean(axis=1)
    unpermuted = np.abs(desc - mdesc).mean(axis=1)
    # what is left is interpolation at the mirrored sub-pixel positions: a sixth of the unpermuted error
    assert np.median(err) < np.median(unpermuted) / 4
    nearest = np.argmin(((permuted[:, None, :] - mdesc[None]) ** 2).sum(-1), axis=1)
    assert np.mean(nearest == np.arange(len(kp))) > 0.9


def test_images_sharing_a_layout_are_not_copies_their_copy_is():
    """One picture with each image's own faint texture (one protocol: ribs, marker, frame): keypoints line
    up in place and the strongest structures agree, but no more than the cohort's shared layout gives;
    a JPEG copy of one of them agrees far more than that."""
    from skimage import data

    base = cv2.resize(data.camera(), (256, 256), interpolation=cv2.INTER_AREA).astype(np.float32)
    rng = np.random.default_rng(0)
    imgs = []
    for _ in range(8):
        tex = cv2.GaussianBlur(rng.standard_normal((256, 256)).astype(np.float32), (0, 0), 1.2)
        imgs.append(np.clip(base + 3 * tex / tex.std(), 0, 255).astype(np.uint8))
    imgs.append(_jpeg(np.repeat(imgs[0][..., None], 3, axis=2), 70)[:, :, 0])
    fp = fingerprints(imgs)
    pairs = verified_near_pairs(fp)
    assert list(zip(pairs["i"], pairs["j"], strict=True)) == [(0, 8)]
    li, lj = np.triu_indices(8, 1)
    looks = verify_pairs(fp, li, lj, np.zeros(len(li), bool))
    assert not looks["confirmed"].any()
    # what stops them is the layout: enough inliers, aligned agreement and shared structures, but
    # agreement at the layout's level (the layout figure is computed only for such pairs)
    stopped = looks[(looks["inliers"] >= MIN_INLIERS)
                    & (looks["aligned_agreement"] >= duplicates.MIN_ALIGNED_AGREEMENT)
                    & (looks["structure_agreement"] >= duplicates.MIN_STRUCTURE_AGREEMENT)]
    assert len(stopped) >= 2
    assert ((stopped["aligned_agreement"] - stopped["layout_agreement"]) < duplicates.MIN_AGREEMENT_MARGIN).all()
    copy = verify_pairs(fp, [0], [8], [False]).iloc[0]
    assert copy["confirmed"] and copy["aligned_agreement"] - copy["layout_agreement"] > 0.3


def test_ratio_matches_agree_with_a_brute_force_ratio_test():
    """One padded matrix product per image gives, for each block, Lowe's ratio test pair by pair (ties: no match)."""
    rng = np.random.default_rng(5)
    da = rng.integers(0, 120, (60, 128)).astype(np.uint8)
    blocks = []
    for size in (150, 37, 1, 0, 90, 2):
        blk = rng.integers(0, 120, (size, 128)).astype(np.uint8)
        k = min(size, 25)
        blk[:k] = np.clip(da[:k].astype(int) + rng.integers(-6, 7, (k, 128)), 0, 255)  # near copies
        blocks.append(blk)
    blocks[4][40] = blocks[4][41] = da[59]  # a tie: two equally near neighbours
    got = duplicates._ratio_matches(da, blocks)
    for blk, (q, t) in zip(blocks, got, strict=True):
        want = set()
        if len(blk) >= 2:
            d = ((da[:, None, :].astype(np.float64) - blk[None].astype(np.float64)) ** 2).sum(-1)
            order = np.sort(d, axis=1)
            for r in range(len(da)):
                if order[r, 0] < duplicates.RATIO ** 2 * order[r, 1]:
                    want.add((r, int(np.argmin(d[r]))))
        assert set(zip(q.tolist(), t.tolist(), strict=True)) == want
    assert 59 not in got[4][0] and len(got[0][0]) >= 20 and len(got[2][0]) == len(got[3][0]) == 0


def test_small_cohorts_verify_every_pair_that_shares_a_bucket():
    """The verification budget: a small cohort keeps all voting partners, a large one its best TOP_K."""
    assert duplicates.partners_per_image(40) == 39
    assert duplicates.partners_per_image(240) == duplicates.PAIR_BUDGET // 240 > duplicates.TOP_K
    assert duplicates.partners_per_image(20_000) == duplicates.TOP_K
    rng = np.random.default_rng(4)
    base = rng.integers(0, 256, (40, duplicates.CODE_BITS // 8), dtype=np.uint8)
    feat = {"kp_code": np.empty(12, object), "kp_code_flip": np.empty(12, object)}
    feat["kp_code"][:] = [base[rng.choice(40, 30, replace=False)] for _ in range(12)]
    feat["kp_code_flip"][:] = [np.zeros((0, duplicates.CODE_BITS // 8), np.uint8)] * 12
    every = duplicates.candidate_pairs(feat, top_k=10**6)
    assert len(every) > 12 * duplicates.TOP_K // 2 + 5  # more voting pairs than TOP_K partners would keep
    pd.testing.assert_frame_equal(duplicates.candidate_pairs(feat), every)
    assert len(duplicates.candidate_pairs(feat, top_k=duplicates.TOP_K)) < len(every)


def test_percentiles_from_the_histogram_are_numpys():
    rng = np.random.default_rng(6)
    for n in (1, 2, 7, 1000, 16384):
        u = np.minimum(rng.poisson(rng.uniform(1, 200), n), 255).astype(np.uint8)
        assert duplicates._percentiles_u8(u, (2, 50, 97.5)) == pytest.approx(np.percentile(u, [2, 50, 97.5]), abs=1e-9)


# ------------------------------------------------------------------ screening-style look-alikes (issue 35)


def _vessel_map(rgb: np.ndarray) -> np.ndarray:
    """The darkest tenth of the green channel's black-hat (vessels), inside the eroded field of view."""
    g = rgb[:, :, 1].astype(np.float32)
    bh = cv2.morphologyEx(g, cv2.MORPH_BLACKHAT, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    fov = cv2.erode((rgb.max(axis=2) > 5).astype(np.uint8), np.ones((25, 25), np.uint8)) > 0
    return (bh > np.percentile(bh[fov], 90)) & fov


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def test_screening_eyes_have_their_own_trees_and_the_cameras_frame():
    """Pixels of the generator: each eye its own vessel tree (another photograph of the same eye shares it),
    the fellow eye mirror-like but not a mirror copy, the disc on the eye's side, chords and a dark ring."""
    from medxcept.testing.screening import screening_eye

    r, left = screening_eye(1, "R"), screening_eye(1, "L")
    again = screening_eye(1, "R", photo_seed=5)  # the same retina, another exposure, blur and JPEG
    other = screening_eye(11, "R")
    assert r.shape == (400, 400, 3) and r.dtype == np.uint8
    assert _iou(_vessel_map(r), _vessel_map(again)) > 0.6  # measured 0.74-0.87
    assert _iou(_vessel_map(r), _vessel_map(other)) < 0.2  # 0.05-0.09
    assert _iou(_vessel_map(r), _vessel_map(np.ascontiguousarray(left[:, ::-1]))) < 0.2  # 0.05-0.08
    disc_x = [np.unravel_index(cv2.GaussianBlur(a.mean(axis=2).astype(np.float32), (0, 0), 8).argmax(), (400, 400))[1]
              for a in (r, left)]
    assert disc_x[0] > 250 and disc_x[1] < 150  # right eye: disc on the right; left eye: on the left
    assert r[:20].max() <= 8 and r[40, 200].max() > 20  # the circle cut by a chord at 0.08 of the side
    yy, xx = np.mgrid[0:400, 0:400]
    rho = np.hypot(xx - 199.5, yy - 199.5) / (0.49 * 400)
    lum = r.mean(axis=2)
    assert lum[(rho > 0.9) & (rho < 0.97)].mean() < 0.6 * lum[rho < 0.5].mean()  # the vignette ring: 0.45-0.48


def _screening_prep(rgb: np.ndarray, px: int = 224) -> np.ndarray:
    from medxcept.images.preprocess import PreprocessConfig, preprocess

    return preprocess(rgb.astype(np.float32) / 255, PreprocessConfig(image_px=px), modality="fundus")


@pytest.fixture(scope="module")
def screening() -> dict[str, object]:
    """Both eyes of 4 people, dim (as many screening photographs are), and a combined copy of the first eye."""
    import dataclasses

    from medxcept.testing.screening import CAMERAS, screening_eye

    dim = dataclasses.replace(CAMERAS[0], exposure=(0.12, 0.2))  # the retina at 10-25 of 255
    raw = [screening_eye(p, e, camera=dim) for p in range(4) for e in "RL"]
    # rotated, zoomed, shifted, mirrored, re-compressed (harsher copies of such smooth, dim eyes can keep
    # too few keypoints in common: benchmarks/near_duplicates.py measures how many)
    copy = _jpeg(np.ascontiguousarray(_warp(raw[0], 20, 1.1, 0.0, 0.05)[:, ::-1]), 75)
    imgs = [_screening_prep(a) for a in raw + [copy]]
    df = pd.DataFrame({"image_id": [f"img{k:02d}" for k in range(9)], "frame": 0,
                       "patient_key": [f"P{k // 2}" for k in range(8)] + ["P9"],
                       "laterality": list("RL" * 4) + ["R"], "label": "normal", "y": 0, "split": "train",
                       "sha256": [f"{k:064x}" for k in range(9)]})
    return {"imgs": imgs, "df": df, "fp": fingerprints(imgs)}


def test_dim_screening_eyes_keep_keypoints_and_only_the_copy_is_paired(screening):
    """Dim photographs keep their keypoints (their luma is stretched from the colour channels), so geometry
    judges them; different people's eyes and one person's two eyes are not paired, the combined copy is."""
    fp, df = screening["fp"], screening["df"]
    assert (duplicates.n_keypoints(fp) >= duplicates.MIN_KEYPOINTS).all()
    pairs = verified_near_pairs(fp)
    assert list(zip(pairs["i"], pairs["j"], pairs["method"], strict=True)) == [(0, 8, "geometry")]
    report = audit_cohort(df, fp=fp, policy="warn")
    assert [(f.kind, f.count) for f in report.findings if f.kind.startswith("duplicate")] == [
        ("duplicate_across_patients", 1)]


def test_left_and_right_eye_of_one_patient_are_not_duplicates(screening):
    """A mirrored, re-compressed copy of a right eye is a near-duplicate (flipped) of it; filed as the same
    patient's *left* eye it is reported no more (two eyes), as the same eye or another patient's it is."""
    from medxcept.integrity.pairs import duplicate_pairs

    imgs = screening["imgs"]
    mirror = _screening_prep(_jpeg(np.ascontiguousarray(imgs[2][:, ::-1]), 80))
    fp = fingerprints([imgs[2], imgs[4], mirror])
    base = pd.DataFrame({"image_id": ["a", "b", "c"], "frame": 0, "sha256": ["1" * 64, "2" * 64, "3" * 64]})

    def near(patients: list[str], eyes: list[str]) -> list[tuple[int, int]]:
        p = duplicate_pairs(base.assign(patient_key=patients, laterality=eyes), fp, 10)
        return list(zip(p["i"], p["j"], strict=True))

    assert near(["P1", "P2", "P1"], ["R", "R", "L"]) == []  # one patient's left and right eye
    assert near(["P1", "P2", "P1"], ["R", "R", "R"]) == [(0, 2)]  # the same eye twice: a repeat or copy
    assert near(["P1", "P2", "P3"], ["R", "R", "L"]) == [(0, 2)]  # another patient's: reported
    assert near(["P1", "P2", "P1"], ["R", "R", "NA"]) == [(0, 2)]  # laterality unknown: reported


def test_hub_pairs_drop_a_generic_star_and_keep_a_copy_group():
    """Hand-made pair graphs: a photograph 'matching' 4 people whose photographs do not match each other is
    generic (its 4 pairs dropped); an original with 4 copies under 4 patients, all matching each other,
    is a copy group (kept); a photograph matching 2 people is too small a star to judge (kept)."""
    from medxcept.integrity.pairs import HUB_PATIENTS, _hub_pairs

    assert HUB_PATIENTS == 3
    pat = np.array([f"P{k}" for k in range(20)])
    star = [(0, 1), (0, 2), (0, 3), (0, 4)]
    group = [(a, b) for a in range(10, 15) for b in range(a + 1, 15)]
    small = [(16, 17), (16, 18)]
    pairs = star + group + small + [(1, 2)]  # two of the star's partners match each other (still generic)
    i, j = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    drop = _hub_pairs(pat, i, j)
    assert [p for p, d in zip(pairs, drop, strict=True) if d] == star
    # one patient's images count once: the star under two patients only is not a hub
    pat2 = pat.copy()
    pat2[[1, 2, 3, 4]] = ["P1", "P1", "P2", "P2"]
    assert not _hub_pairs(pat2, i, j)[:4].any()


@pytest.fixture(scope="module")
def screening_shifted(screening) -> dict[str, object]:
    """Copies of the dim eyes under an additive brightness shift of 20 % (51 levels, surround included, as
    ``benchmarks/near_duplicates.py``'s combined transform and an augmentation's brightness do): eye 2
    brightened (washed out) and rotated, zoomed, re-compressed; eyes 4 and 6 darkened to black."""
    import dataclasses

    from medxcept.testing.screening import CAMERAS, screening_eye

    dim = dataclasses.replace(CAMERAS[0], exposure=(0.12, 0.2))
    raw = {k: screening_eye(k // 2, "RL"[k % 2], camera=dim) for k in (2, 4, 6)}

    def shift(a: np.ndarray, levels: float) -> np.ndarray:
        return np.clip(a.astype(np.float32) + levels, 0, 255).astype(np.uint8)

    bright = _jpeg(shift(_warp(raw[2], -25, 0.9, 0.1, 0.03), 51), 80)
    black = [_jpeg(shift(raw[k], -51), 80) for k in (4, 6)]
    return {"bright": _screening_prep(bright), "black": [_screening_prep(b) for b in black]}


def test_washed_out_copy_of_a_dim_eye_is_judged_as_dim_and_found(screening, screening_shifted):
    """A dim eye brightened by 51 levels is no longer dark, but its retina keeps the few grey levels and the
    noise it had: it is treated as dim (smoothed for SIFT, the dim agreement threshold, more candidates) and
    found by geometry, its original's only pair. (Among 9 images every pair is verified, so this copy is
    found without the dim treatment too; what that changes on 1,600 eyes, ``benchmarks/near_duplicates.py``
    measures.)"""
    imgs = screening["imgs"][:8] + [screening_shifted["bright"]]
    fp = fingerprints(imgs)
    assert fp["kp_dim"][:8].all() and fp["kp_dim"][8]
    assert np.percentile(np.asarray(imgs[8]).mean(axis=2), 99) * 255 > duplicates.DARK_LEVEL  # not lifted
    pairs = verified_near_pairs(fp)
    assert list(zip(pairs["i"], pairs["j"], pairs["method"], strict=True)) == [(2, 8, "geometry")]
    old = duplicates.DIM_RANGE
    try:
        duplicates.DIM_RANGE = 0
        fp0 = fingerprints(imgs)
    finally:
        duplicates.DIM_RANGE = old
    assert fp0["kp_dim"][:8].all() and not fp0["kp_dim"][8]  # dim by its range alone


def test_black_copies_of_different_people_are_not_near_duplicates(screening, screening_shifted):
    """Two eyes darkened to black (no picture, no keypoints) share their hashes and nothing else: the hash rule
    does not pair them; the same black image twice is still an exact (pixel) match."""
    from medxcept.integrity.pairs import duplicate_pairs, near_duplicate_pairs

    black = screening_shifted["black"]
    levels = [np.asarray(b, np.float64) * (1 if np.asarray(b).dtype == np.uint8 else 255) for b in black]
    assert all(np.percentile(v, 99) <= 1 and v.max() <= 4 for v in levels)  # nothing left of the retinas
    imgs = screening["imgs"][:2] + black + [black[0].copy()]
    fp = fingerprints(imgs)
    assert (duplicates.n_keypoints(fp)[2:] == 0).all()
    for key in ("phash", "phash_flip", "dhash", "dhash_flip"):  # hashes alike (0-1 bits apart on the benchmark's)
        fp[key][3] = fp[key][2]
    assert (2, 3) in set(zip(near_duplicate_pairs(fp)["i"], near_duplicate_pairs(fp)["j"], strict=True))
    df = pd.DataFrame({"image_id": list("abcde"), "frame": 0, "patient_key": ["P0", "P0", "P2", "P3", "P4"],
                       "laterality": ["R", "L", "R", "R", "R"], "sha256": [f"{k:064x}" for k in range(5)]})
    p = duplicate_pairs(df, fp, 10)
    assert list(zip(p["i"], p["j"], p["match"], strict=True)) == [(2, 4, "pixel")]


def test_a_dim_copy_outvoted_by_look_alikes_is_proposed_by_its_consistent_rotation():
    """Hand-made descriptor codes: a dim original (image 0) shares 6 descriptors with its copy (image 1),
    rotated by 40 degrees, and 8 with each of 4 look-alikes (images 2-5) at orientation differences spread
    over the circle; the copy shares 8 with each of 4 others (6-9). Each shared descriptor is in a bucket of
    two, so every table votes 1 for it: 6 x 16 = 96 votes for the copy, 128 for each look-alike, and with 4
    partners each the copy is neither image's choice by votes (the engine before). By the votes of one
    orientation difference (two neighbouring 30-degree bins, all 32 tables) the copy has 6 x 32 = 192, a
    look-alike at most 2 x 32: it is proposed. A bright cohort (no image dim) is searched as without angles."""
    rng = np.random.default_rng(11)
    nb = duplicates.CODE_BITS // 8

    def codes(k: int) -> np.ndarray:
        return rng.integers(0, 256, (k, nb), dtype=np.uint8)

    true = codes(6)
    theta = rng.uniform(0, 360, 6).astype(np.float32)
    spread = np.arange(8, dtype=np.float32) * 45.0  # orientation differences 0, 45, ..., 315 degrees
    desc: list[np.ndarray] = [true, true]
    angle: list[np.ndarray] = [theta, np.mod(theta + 40.0, 360.0)]
    extra: list[list[np.ndarray]] = [[], []]
    for m in range(8):  # look-alikes 2-5 share with the original, 6-9 with the copy
        shared, own = codes(8), codes(10)
        a0 = rng.uniform(0, 360, 8).astype(np.float32)
        extra[0 if m < 4 else 1].append((shared, a0))
        desc.append(np.r_[shared, own])
        angle.append(np.r_[np.mod(a0 + spread, 360.0), rng.uniform(0, 360, 10)].astype(np.float32))
    for k in (0, 1):
        desc[k] = np.concatenate([desc[k]] + [c for c, _ in extra[k]])
        angle[k] = np.concatenate([angle[k]] + [a for _, a in extra[k]]).astype(np.float32)
    n = len(desc)

    def obj(v: list[np.ndarray]) -> np.ndarray:
        out = np.empty(n, object)
        out[:] = v
        return out

    feat = {"kp_code": obj(desc), "kp_code_flip": obj([np.zeros((0, nb), np.uint8)] * n),
            "kp_angle": obj(angle), "kp_dim": np.ones(n, bool)}
    before = duplicates.candidate_pairs({k: v for k, v in feat.items() if k != "kp_angle"}, top_k=2, dim_partners=2)
    pairs = set(zip(before["i"], before["j"], strict=True))
    assert (0, 1) not in pairs and {(0, 2), (0, 5), (1, 6), (1, 9)} <= pairs
    after = duplicates.candidate_pairs(feat, top_k=2, dim_partners=2)
    row = after[(after["i"] == 0) & (after["j"] == 1)]
    assert len(row) == 1
    assert row["votes"].iloc[0] == pytest.approx(6 * duplicates.LSH_TABLES)
    assert row["angle_votes"].iloc[0] == pytest.approx(6 * (duplicates.LSH_TABLES + duplicates.DIM_LSH_TABLES))
    look = after[(after["i"] == 0) & (after["j"] == 2)]
    assert look["votes"].iloc[0] == pytest.approx(8 * duplicates.LSH_TABLES)
    assert look["angle_votes"].iloc[0] <= 2 * (duplicates.LSH_TABLES + duplicates.DIM_LSH_TABLES)
    # every pair the votes chose is still proposed
    assert pairs <= set(zip(after["i"], after["j"], strict=True))
    bright = {**feat, "kp_dim": np.zeros(n, bool)}
    pd.testing.assert_frame_equal(duplicates.candidate_pairs(bright, top_k=2, dim_partners=2),
                                  duplicates.candidate_pairs({k: v for k, v in bright.items() if k != "kp_angle"},
                                                             top_k=2, dim_partners=2))


def test_a_dim_copy_with_8_inliers_is_confirmed_by_its_aligned_detail(screening):
    """A dim copy whose noise-limited descriptors match less: the combined copy of the first dim eye keeps
    only 8 of its RANSAC inliers' keypoints (spread over the picture; its other keypoints stay). Fitted,
    it has fewer than ``MIN_INLIERS`` inliers but at least ``MIN_INLIERS_DIM``, and its detail agrees plainly
    once aligned: confirmed, as a dim pair (the same pair judged as bright is not). The 8 different dim
    eyes fitted down to 3 inliers are not (none has ``MIN_INLIERS_DIM`` inliers and the detail to agree)."""
    fp = dict(screening["fp"])
    assert fp["kp_dim"].all()
    (q, t), = duplicates._ratio_matches(fp["kp_desc"][0], [duplicates.mirror_descriptors(fp["kp_desc"][8])])
    cv2.setRNGSeed(0)
    _, inl = cv2.estimateAffine2D(fp["kp_xy"][0][q], fp["kp_xy_flip"][8][t], method=cv2.RANSAC,
                                  ransacReprojThreshold=duplicates.RANSAC_PX, maxIters=2000, confidence=0.999)
    tin = t[inl.ravel() > 0]
    assert len(tin) >= 3 * MIN_INLIERS  # the whole copy: plainly confirmed
    drop = np.setdiff1d(tin, tin[np.linspace(0, len(tin) - 1, 8).round().astype(int)])
    keep = np.setdiff1d(np.arange(len(fp["kp_desc"][8])), drop)
    for k in ("kp_xy", "kp_xy_flip", "kp_desc"):
        fp[k] = fp[k].copy()
        fp[k][8] = fp[k][8][keep]
    row = verify_pairs(fp, [0], [8], [True]).iloc[0]
    assert duplicates.MIN_INLIERS_DIM <= row["inliers"] < MIN_INLIERS
    assert row["aligned_agreement"] >= duplicates.MIN_ALIGNED_AGREEMENT_DIM + 0.1
    assert row["structure_agreement"] >= duplicates.MIN_STRUCTURE_AGREEMENT + 0.1
    assert bool(row["confirmed"])
    bright = dict(fp, kp_dim=np.zeros_like(fp["kp_dim"]))
    assert not bool(verify_pairs(bright, [0], [8], [True]).iloc[0]["confirmed"])
    a, b = np.triu_indices(8, k=1)
    others = verify_pairs(fp, np.r_[a, a], np.r_[b, b], np.r_[np.zeros(len(a), bool), np.ones(len(a), bool)], least=3)
    assert not others["confirmed"].any()


def test_a_dim_image_keeps_at_least_dim_min_partners():
    """Hand-made descriptor codes: a dim image (0) shares 1, 2, ..., 40 descriptors with 40 bright images
    (buckets of two: 16 votes a descriptor), which come in 8 groups of 5 sharing 200 descriptors among them
    (800 votes a pair), so no bright image keeps image 0 among its ``top_k = 4``. Image 0 keeps its own:
    ``DIM_MIN_PARTNERS`` (32; ``top_k * DIM_PARTNERS`` = 16 before), the ones it shares most with, and
    an explicit ``dim_partners`` still sets the number."""
    rng = np.random.default_rng(5)
    nb = duplicates.CODE_BITS // 8
    n = 41
    desc: list[list[np.ndarray]] = [[] for _ in range(n)]
    for k in range(1, n):
        shared = rng.integers(0, 256, (k, nb), dtype=np.uint8)
        desc[0].append(shared)
        desc[k].append(shared)
    for g in range(8):
        group = rng.integers(0, 256, (200, nb), dtype=np.uint8)
        for k in range(1 + 5 * g, 6 + 5 * g):
            desc[k].append(group)
    codes = np.empty(n, object)
    codes[:] = [np.concatenate(d) for d in desc]
    empty = np.empty(n, object)
    empty[:] = [np.zeros((0, nb), np.uint8)] * n
    feat = {"kp_code": codes, "kp_code_flip": empty, "kp_dim": np.r_[True, np.zeros(n - 1, bool)]}

    def partners(**kw: int) -> list[int]:
        c = duplicates.candidate_pairs(feat, top_k=4, **kw)
        return sorted(c["j"][c["i"] == 0].tolist())

    assert duplicates.DIM_MIN_PARTNERS == 32 and 4 * duplicates.DIM_PARTNERS < 32
    assert partners() == list(range(n - 32, n))  # the 32 it shares most with
    assert partners(dim_partners=duplicates.DIM_PARTNERS) == list(range(n - 4 * duplicates.DIM_PARTNERS, n))
