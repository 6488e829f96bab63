"""Near-duplicate pairs and copy groups from the per-image fingerprints of
:mod:`medxcept.integrity.fingerprints`: the hash-and-detail rule (:func:`near_duplicate_pairs`), the
keypoint verification (:func:`verified_near_pairs`), the checks that keep generic look-alikes and a
person's two eyes out of the findings (hubs, other-eye pairs), and the groups of copies
(:func:`duplicate_pairs`, :func:`duplicate_groups`). Why the rules are what they are, with the
measurements behind each threshold: the module notes of :mod:`medxcept.integrity.fingerprints`.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from medxcept.integrity.duplicates import (
    MIN_KEYPOINTS,
    geometric_pairs,
    n_keypoints,
)
from medxcept.integrity.fingerprints import check_fingerprints, hamming, popcount
from medxcept.integrity.split_keys import content_ids

__all__ = [
    "DEFAULT_HAMMING_THRESHOLD",
    "DETAIL_THRESHOLD",
    "DETAIL_LAYOUT_MARGIN",
    "HUB_PATIENTS",
    "detail_similarity",
    "near_duplicate_pairs",
    "verified_near_pairs",
    "duplicate_groups",
    "duplicate_pairs",
    "components",
    "canonical_rows",
    "input_order_groups",
]

logger = logging.getLogger("medxcept.integrity.audit")  # the log lines keep their logger name

DEFAULT_HAMMING_THRESHOLD = 10
"""Bits (out of 64) within which two pHashes *and* dHashes mark a near-duplicate."""

DETAIL_THRESHOLD = 0.46
"""Detail similarity (in [-1, 1]) from which a hash candidate is a near-duplicate.

Why a second stage: pHash and dHash see the global layout, and every fundus photograph has the
same layout (an orange disc on black, the optic disc on one side, vignetting): on the demo
cohort 12 % of all pairs of *distinct* images lie within 10 bits on both hashes. What tells one
retina from another is its fine detail (vessel branching, texture, lesions), so each hash
candidate is verified on its two detail bit-maps (:func:`fingerprints`): the share of pixels, of
those inside both images, where the two agree on the sign of the fine detail, as
``2 * share - 1`` (:func:`detail_similarity`; 0 for unrelated images, 1 for identical ones),
in the orientation the hashes matched. Measured on the demo cohort preprocessed at 96 px (71 px
in brackets), ``benchmarks/near_duplicates.py``: distinct hash candidates at most 0.35 (0.36);
copies at least 0.65 (0.67) after JPEG quality 75, 0.57 (0.58) after quality 60, 0.67 (0.71)
after 0.8-1.1x rescaling, 1.0 when mirrored. 0.46 sits in the middle of the gap.
"""

DETAIL_LAYOUT_MARGIN = 0.15
"""How much more than the cohort's shared layout a hash candidate's detail must agree (see :func:`near_duplicate_pairs`).

Images judged by the hash rule (no keypoints to fit) are the least structured; what their hashes and
detail share with each other is mostly what every photograph of the camera shares (the circle, the
chords, the vignette, the bright disc on one side). So a candidate ``(i, j)`` must agree more than
``i`` agrees with the cohort in general: its similarity minus the 75th percentile of ``i``'s
similarity with about :data:`N_LAYOUT_REFS` images spread over the cohort (in the same orientation)
must reach this margin (the same rule as the keypoint engine's :data:`medxcept.integrity.duplicates.MIN_AGREEMENT_MARGIN`)."""

N_LAYOUT_REFS = 16

_MIN_OVERLAP = 256  # fewer pixels inside both images than this: nothing to compare




def detail_similarity(
    fp: dict[str, np.ndarray], i: np.ndarray, j: np.ndarray, flipped: np.ndarray | bool = False,
    *, chunk: int = 1 << 16,
) -> np.ndarray:
    """How far the fine detail of image pairs ``(i[k], j[k])`` agrees, in [-1, 1].

    Parameters
    ----------
    fp : dict
        :func:`fingerprints` (``detail`` and ``detail_flip``).
    i, j : array of int
        Row positions of the pairs.
    flipped : bool or array of bool, default False
        Compare ``i`` with the mirror image of ``j`` (per pair).
    chunk : int, default 65536
        Pairs per numpy block (memory ~ 2 KB each).

    Returns
    -------
    numpy.ndarray
        ``2 * share - 1`` per pair, ``share`` being the share of the pixels inside both
        images where both details have the same sign: 1 for the same picture, about 0 for
        unrelated ones. NaN where fewer than 256 pixels lie inside both images (a black
        or flat image): nothing to compare.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a, b = rng.random((64, 64, 3)), rng.random((64, 64, 3))
    >>> fp = fingerprints([a, b, a[:, ::-1]])
    >>> s = detail_similarity(fp, [0, 0, 0], [1, 2, 2], [False, False, True])
    >>> bool(abs(s[0]) < 0.1 and abs(s[1]) < 0.1 and s[2] == 1.0)
    True
    """
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    flip = np.broadcast_to(np.asarray(flipped, dtype=bool), i.shape)
    det = np.asarray(fp["detail"], dtype=np.uint64)
    det_flip = np.asarray(fp["detail_flip"], dtype=np.uint64)
    out = np.empty(len(i), dtype=np.float64)
    for a in range(0, len(i), chunk):
        ii, jj, ff = i[a:a + chunk], j[a:a + chunk], flip[a:a + chunk]
        x = det[ii]
        y = det[jj]
        y[ff] = det_flip[jj[ff]]
        both = x[:, 1] & y[:, 1]
        n_both = popcount(both).sum(axis=1, dtype=np.int64)
        n_agree = popcount(~(x[:, 0] ^ y[:, 0]) & both).sum(axis=1, dtype=np.int64)
        with np.errstate(invalid="ignore", divide="ignore"):
            out[a:a + chunk] = np.where(n_both >= _MIN_OVERLAP, 2.0 * n_agree / n_both - 1.0, np.nan)
    return out


def near_duplicate_pairs(
    fp: dict[str, np.ndarray],
    hamming_threshold: int = DEFAULT_HAMMING_THRESHOLD,
    *,
    detail_threshold: float | None = DETAIL_THRESHOLD,
    layout_margin: float | None = DETAIL_LAYOUT_MARGIN,
    block_elements: int = 1 << 22,
) -> pd.DataFrame:
    """All pairs of images whose pHash and dHash lie within ``hamming_threshold`` and whose detail agrees.

    Parameters
    ----------
    fp : dict
        Output of :func:`fingerprints` (row order = image order).
    hamming_threshold : int, default 10
        Largest Hamming distance (bits out of 64) on both hashes.
    detail_threshold : float or None, default :data:`DETAIL_THRESHOLD`
        Smallest :func:`detail_similarity` of a hash candidate, in the orientation its
        hashes matched. ``None``, or a ``fp`` without ``detail``, keeps every hash candidate.
    layout_margin : float or None, default :data:`DETAIL_LAYOUT_MARGIN`
        How much more than ``i``'s agreement with the cohort's other images (:func:`_layout_similarity`)
        a candidate's detail similarity must be; ``None``: no such check.
    block_elements : int, default 2**22
        Pairs compared per numpy block (memory ~ 9 bytes each).

    Returns
    -------
    pandas.DataFrame
        Columns ``i < j`` (row positions), ``phash_distance``, ``dhash_distance``,
        ``flipped`` (True when ``j`` matches the mirror image of ``i``) and
        ``detail_similarity`` (NaN when not computed). A pair that matches both ways is
        reported once, unflipped.

    Notes
    -----
    Exhaustive and exact: pHashes of each block of rows are XOR-ed against all later
    rows (and against their mirror hashes) and popcounted in numpy, about n^2 popcounts
    in all; the pHash candidates are then checked on dHash, and the survivors on their
    detail bit-maps (:func:`detail_similarity`: 192 word operations a pair). An image
    without detail to compare (NaN similarity) is judged on its hashes alone.
    """
    ph = np.asarray(fp["phash"], dtype=np.uint64)
    phf = np.asarray(fp["phash_flip"], dtype=np.uint64)
    dh = np.asarray(fp["dhash"], dtype=np.uint64)
    dhf = np.asarray(fp["dhash_flip"], dtype=np.uint64)
    check = detail_threshold is not None and "detail" in fp and "detail_flip" in fp
    n = len(ph)
    t = int(hamming_threshold)
    rows = max(1, block_elements // max(n, 1))
    found: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool, np.ndarray]] = []
    for flipped, other_p, other_d in ((False, ph, dh), (True, phf, dhf)):
        for a in range(0, n, rows):
            b = min(n, a + rows)
            d = popcount(ph[a:b, None] ^ other_p[None, a:])
            hit = d <= t
            # keep j > i only (the diagonal block holds i == j and both orders)
            hit[:, : b - a] &= np.triu(np.ones((b - a, b - a), dtype=bool), k=1)
            ii, jj = np.nonzero(hit)
            if not len(ii):
                continue
            i, j = ii + a, jj + a
            dp = d[ii, jj]
            dd = hamming(dh[i], other_d[j])
            ok = dd <= t
            i, j, dp, dd = i[ok], j[ok], dp[ok], dd[ok]
            sim = np.full(len(i), np.nan)
            if check and len(i):
                sim = detail_similarity(fp, i, j, flipped)
                ok = ~(sim < detail_threshold)  # NaN (no detail to compare) keeps the hash verdict
                i, j, dp, dd, sim = i[ok], j[ok], dp[ok], dd[ok], sim[ok]
                if layout_margin is not None and len(i):
                    ok = ~(sim - _layout_similarity(fp, i, j, flipped) < layout_margin)
                    i, j, dp, dd, sim = i[ok], j[ok], dp[ok], dd[ok], sim[ok]
            found.append((i, j, dp, dd, flipped, sim))
    names = ("i", "j", "phash_distance", "dhash_distance", "flipped", "detail_similarity")
    cols: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for i, j, dp, dd, flipped, sim in found:
        cols["i"].append(i.astype(np.int64))
        cols["j"].append(j.astype(np.int64))
        cols["phash_distance"].append(dp.astype(np.int64))
        cols["dhash_distance"].append(dd.astype(np.int64))
        cols["flipped"].append(np.full(len(i), flipped))
        cols["detail_similarity"].append(sim.astype(np.float64))
    if not found:
        dtypes = (np.int64, np.int64, np.int64, np.int64, bool, np.float64)
        return pd.DataFrame({k: np.zeros(0, dt) for k, dt in zip(names, dtypes, strict=True)})
    out = pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})
    out = out.sort_values(["i", "j", "flipped"], kind="stable")
    return out.drop_duplicates(["i", "j"], keep="first").reset_index(drop=True)


def _layout_similarity(fp: dict[str, np.ndarray], i: np.ndarray, j: np.ndarray, flipped: bool) -> np.ndarray:
    """What the cohort's shared layout alone gives each pair: ``i``'s detail similarity with other images.

    The 75th percentile of :func:`detail_similarity` of ``i`` with the images at ``N_LAYOUT_REFS + 2``
    positions spread evenly over the cohort, less ``i`` and ``j`` (:data:`N_LAYOUT_REFS` or more), in
    the pair's orientation; 0 where the cohort has no other image with detail to compare. A few copies of ``i`` among them do not
    show; a camera shared by a quarter of the cohort does.
    """
    n = len(np.asarray(fp["phash"]))
    refs = np.unique(np.linspace(0, n - 1, N_LAYOUT_REFS + 2).round().astype(np.int64))
    k = len(i)
    ii = np.repeat(i, len(refs))
    rr = np.tile(refs, k)
    sim = detail_similarity(fp, ii, rr, flipped).reshape(k, len(refs))
    sim[(rr.reshape(k, -1) == i[:, None]) | (rr.reshape(k, -1) == j[:, None])] = np.nan
    out = np.zeros(k)
    has = np.isfinite(sim).any(axis=1)
    if has.any():
        out[has] = np.nanpercentile(sim[has], 75, axis=1)
    return out


def _blank(fp: dict[str, np.ndarray]) -> np.ndarray:
    """Images without a picture to compare: no keypoint at all, or fewer than ``_MIN_OVERLAP`` pixels of image area.

    All surround, nothing SIFT finds anywhere even at its lowest contrast (a photograph darkened to
    black by an augmentation; a flat picture), or too little image area left in the 64-px detail
    bit-map to compare. Two such images have only their hashes in common, and the hashes see the
    frame. On the screening-style set (``benchmarks/near_duplicates.py --screening``, the engine
    before this rule), all 8 false pairs among 3,000 eyes were between such copies of different
    people's eyes, by the hash rule with no detail to compare: 5 between copies darkened to black
    (99th percentile of luma 0-1 of 255, no keypoint) and 3 between washed-out, zoomed copies with
    24-29 keypoints and 111-144 pixels of image area.
    """
    area = np.asarray(fp["detail"], dtype=np.uint64)[:, 1]
    return (popcount(area).sum(axis=1, dtype=np.int64) < _MIN_OVERLAP) | (n_keypoints(fp) == 0)


_GEOMETRY_COLS = ["method", "inliers", "aligned_agreement", "rotation_deg", "scale", "shear_rad",
                  "shift_x", "shift_y"]


def verified_near_pairs(
    fp: dict[str, np.ndarray], hamming_threshold: int = DEFAULT_HAMMING_THRESHOLD
) -> pd.DataFrame:
    """Near-duplicate pairs, each confirmed by geometry (or, for structureless images, by detail).

    Pairs of images that both carry at least :data:`medxcept.integrity.duplicates.MIN_KEYPOINTS` keypoints
    are found and decided by :func:`medxcept.integrity.duplicates.geometric_pairs` (one affine transform
    with enough consistent keypoint matches, and the fine detail agreeing once aligned):
    ``method="geometry"``, with the transform and inlier count. A pair involving an image with
    fewer keypoints (a flat or smooth picture) is decided by :func:`near_duplicate_pairs` (hashes
    and detail sign agreement): ``method="detail"``; not a pair of two images without a picture
    (:func:`_blank`: no keypoint or no image area; pixel-identical ones are exact matches elsewhere). ``fp`` without keypoints (built with
    ``keypoints=False``): :func:`near_duplicate_pairs` for every pair.

    Returns
    -------
    pandas.DataFrame
        ``i < j``, ``phash_distance``, ``dhash_distance``, ``flipped``, ``detail_similarity``,
        ``method``, ``inliers``, ``aligned_agreement``, ``rotation_deg``, ``scale``, ``shear_rad``,
        ``shift_x``, ``shift_y`` (the transform placing ``j``, mirrored when ``flipped``, on ``i``;
        shifts as a share of the side; NaN for ``method="detail"``).
    """
    cols = ["i", "j", "phash_distance", "dhash_distance", "flipped", "detail_similarity"] + _GEOMETRY_COLS
    if "kp_desc" not in fp:
        return near_duplicate_pairs(fp, hamming_threshold).assign(method="detail").reindex(columns=cols)
    poor = n_keypoints(fp) < MIN_KEYPOINTS
    geo = geometric_pairs(fp)
    geo = geo[geo["confirmed"].to_numpy(bool)]
    if len(geo):
        gi, gj = geo["i"].to_numpy(np.int64), geo["j"].to_numpy(np.int64)
        geo = geo[~poor[gi] & ~poor[gj]]
    ph = np.asarray(fp["phash"], dtype=np.uint64)
    dh = np.asarray(fp["dhash"], dtype=np.uint64)
    gi, gj = geo["i"].to_numpy(np.int64), geo["j"].to_numpy(np.int64)
    fl = geo["flipped"].to_numpy(bool)
    other_p = np.where(fl, np.asarray(fp["phash_flip"], dtype=np.uint64)[gj], ph[gj])
    other_d = np.where(fl, np.asarray(fp["dhash_flip"], dtype=np.uint64)[gj], dh[gj])
    geo = geo.assign(method="geometry", phash_distance=hamming(ph[gi], other_p).astype(np.int64),
                     dhash_distance=hamming(dh[gi], other_d).astype(np.int64), detail_similarity=np.nan)
    # a pair confirmed both ways keeps its geometric evidence (transform, inliers)
    parts = [geo.reindex(columns=cols)]
    # the former rule decides only pairs with a structureless image (and costs nothing when there is
    # none: on 20,000 look-alikes its detail check of every hash candidate took 16 s)
    if poor.any():
        old = near_duplicate_pairs(fp, hamming_threshold)
        oi, oj = old["i"].to_numpy(np.int64), old["j"].to_numpy(np.int64)
        # two images with no picture (all surround: a copy darkened to black) share their hashes and
        # nothing else: no one's retina is in them (identical ones are still exact pixel matches)
        blank = _blank(fp)
        old = old[(poor[oi] | poor[oj]) & ~(blank[oi] & blank[oj])]
        parts.append(old.assign(method="detail").reindex(columns=cols))
    out = pd.concat(parts, ignore_index=True)
    out = out.sort_values(["i", "j"], kind="stable").drop_duplicates(["i", "j"])
    return out.reset_index(drop=True)


def _group_pairs(keys: pd.Series, max_clique: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of row positions sharing a key: all pairs of a small group, a star for large ones."""
    pos = pd.Series(np.arange(len(keys)), index=keys.index)
    valid = keys.notna() & (keys.astype(str) != "") & keys.duplicated(keep=False)
    grouped = pos[valid.to_numpy()].groupby(keys[valid].to_numpy(), sort=True)
    ii: list[np.ndarray] = []
    jj: list[np.ndarray] = []
    for _, members in grouped:
        m = np.sort(members.to_numpy())
        if len(m) < 2:
            continue
        if len(m) <= max_clique:
            a, b = np.triu_indices(len(m), k=1)
            ii.append(m[a])
            jj.append(m[b])
        else:  # a star keeps the same connected component without m^2 pairs
            ii.append(np.full(len(m) - 1, m[0]))
            jj.append(m[1:])
    if not ii:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    return np.concatenate(ii).astype(np.int64), np.concatenate(jj).astype(np.int64)


_MATCH_RANK = {"sha256": 0, "pixel": 1, "near": 2}

HUB_PATIENTS = 3
"""An image near-paired with images of this many other patients or more is a hub, checked by :func:`_hub_pairs`."""
HUB_COHESION = 0.5
"""Share of a hub's other partners a partner must itself be near-paired with for its pair to the hub to stand."""


def _patients(df: pd.DataFrame) -> np.ndarray:
    """The patient of each row (``patient_key``, else ``patient_id``; else each row its own)."""
    for col in ("patient_key", "patient_id"):
        if col in df.columns:
            return df[col].astype(str).to_numpy()
    return np.arange(len(df)).astype(str)


def _other_eye_pairs(df: pd.DataFrame, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Pairs of the left and the right eye of one patient (both lateralities known and different)."""
    if "laterality" not in df.columns or not len(i):
        return np.zeros(len(i), bool)
    pat = _patients(df)
    lat = df["laterality"].astype(str).str.upper().to_numpy()
    known = np.isin(lat[i], ("L", "R")) & np.isin(lat[j], ("L", "R"))
    return (pat[i] == pat[j]) & known & (lat[i] != lat[j])


def _hub_pairs(pat: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Near pairs through a hub that its partners do not share: a generic match, not a copy group.

    A copy group is small and closed: copies of one photograph are near-duplicates of the
    original and of each other. A photograph "matching" the images of many different people
    whose images do not match each other says that the rule matched something every picture
    has (the camera's frame, a dim featureless retina). For each hub (an image paired with images
    of :data:`HUB_PATIENTS` or more other patients), a pair to partner ``p`` stands when ``p`` is
    itself paired with at least :data:`HUB_COHESION` of the hub's other partners; the others are
    returned (True). A guard: on the screening-style look-alikes of ``benchmarks/near_duplicates.py`` the
    former engine's false pairs reached a hub of 5 patients at 300 eyes; the current one leaves no
    false pair there for it to drop.
    """
    drop = np.zeros(len(i), bool)
    if len(i) < HUB_PATIENTS:
        return drop
    edges = set(zip(i.tolist(), j.tolist(), strict=True)) | set(zip(j.tolist(), i.tolist(), strict=True))
    nodes = np.r_[i, j]
    other = np.r_[j, i]
    k = np.r_[np.arange(len(i)), np.arange(len(i))]
    order = np.argsort(nodes, kind="stable")
    bounds = np.r_[0, np.nonzero(np.diff(nodes[order]))[0] + 1, len(order)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        idx = order[a:b]
        h = int(nodes[idx[0]])
        partners = other[idx]
        if len(set(pat[partners].tolist()) - {pat[h]}) < HUB_PATIENTS:
            continue
        for e, p in zip(k[idx].tolist(), partners.tolist(), strict=True):
            rest = [q for q in partners.tolist() if q != p]
            shared = sum((p, q) in edges for q in rest)
            if shared < HUB_COHESION * len(rest):
                drop[e] = True
    return drop


def duplicate_pairs(df: pd.DataFrame, fp: dict[str, np.ndarray] | None, hamming_threshold: int) -> pd.DataFrame:
    """Every duplicate pair (row positions i < j) with its strongest kind of match."""
    parts: list[pd.DataFrame] = []
    if "sha256" in df.columns:
        # frames of one multi-frame DICOM share the file hash: key on (sha256, frame)
        frame = df["frame"].astype(str) if "frame" in df.columns else pd.Series("0", index=df.index)
        sha = df["sha256"].astype("string")
        key = (sha + "#" + frame).where(sha.notna() & (sha != ""))
        i, j = _group_pairs(key)
        parts.append(pd.DataFrame({"i": i, "j": j, "match": "sha256"}))
    if fp is not None:
        i, j = _group_pairs(pd.Series(fp["pixel_hash"], index=df.index))
        parts.append(pd.DataFrame({"i": i, "j": j, "match": "pixel"}))
        near = verified_near_pairs(fp, hamming_threshold)
        ni, nj = near["i"].to_numpy(np.int64), near["j"].to_numpy(np.int64)
        # the left and the right eye of one patient are two eyes, however alike their photographs
        other_eye = _other_eye_pairs(df, ni, nj)
        near = near[~other_eye]
        ni, nj = ni[~other_eye], nj[~other_eye]
        hub = _hub_pairs(_patients(df), ni, nj)
        if hub.any():
            logger.warning("near-duplicates: %d pair(s) dropped, each through a photograph paired with %d or more "
                           "other patients whose photographs do not match each other (a generic match: the "
                           "camera's frame or a featureless picture, not a copy)", int(hub.sum()), HUB_PATIENTS)
        parts.append(near[~hub].assign(match="near"))
    cols = ["i", "j", "match", "phash_distance", "dhash_distance", "flipped", "detail_similarity"]
    cols += _GEOMETRY_COLS
    if not parts:
        return pd.DataFrame(columns=cols)
    pairs = pd.concat(parts, ignore_index=True).reindex(columns=cols)
    pairs["rank"] = pairs["match"].map(_MATCH_RANK)
    pairs = pairs.sort_values(["i", "j", "rank"], kind="stable").drop_duplicates(["i", "j"])
    return pairs.drop(columns="rank").reset_index(drop=True)


def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Connected-component label of each of ``n`` nodes joined by edges ``i - j``."""
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # renumber by first member so ids follow row order
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(np.argsort(first))
    return order[labels]


def duplicate_groups(
    df: pd.DataFrame,
    fp: dict[str, np.ndarray] | None = None,
    threshold: int = DEFAULT_HAMMING_THRESHOLD,
) -> pd.Series:
    """Group id of every image, where exact and near duplicates share one group.

    Pass the result to :func:`medxcept.integrity.splits.assign_splits` (``merge=``) so that every
    copy of an image, and every patient holding one, lands in the same split.

    Parameters
    ----------
    df : pandas.DataFrame
        Cohort table (``image_id``, ``sha256``, ``frame``).
    fp : dict, optional
        :func:`fingerprints` of the rows of ``df``, in order; without it only
        identical files (``sha256``) are grouped.
    threshold : int, default 10
        Hamming threshold for near-duplicates.

    Returns
    -------
    pandas.Series
        Integer group id, indexed by ``image_id``, named ``dup_group``. Singletons get
        their own id; ids are numbered in row order.
    """
    if fp is not None:
        check_fingerprints(fp, len(df))
    given_ids = df["image_id"]
    canon, fp, order = canonical_rows(df.reset_index(drop=True), fp)  # groups independent of row order
    pairs = duplicate_pairs(canon, fp, threshold)
    labels = components(len(canon), pairs["i"].to_numpy(np.int64), pairs["j"].to_numpy(np.int64))
    return input_order_groups(labels, order, given_ids)


def canonical_rows(
    df: pd.DataFrame, fp: dict[str, np.ndarray] | None
) -> tuple[pd.DataFrame, dict[str, np.ndarray] | None, np.ndarray]:
    """``df`` and ``fp`` in a canonical row order, so the findings do not depend on the table's order.

    The pair search is not symmetric in its two images (``i < j`` compares ``i`` with the
    mirror of ``j``, and a large group of copies is joined as a star around its first row),
    and the cohort table's order follows the per-machine pseudonyms; sorting rows by content
    (``sha256#frame``, then the decoded-pixel hash, then the raw ``patient_id`` held in
    memory) first makes the same images give the same findings on any machine and cache.
    Also returns ``order`` (canonical position -> input row).
    """
    keys: list[np.ndarray] = [df["image_id"].astype(str).to_numpy()]  # last resort
    for col in ("patient_key", "patient_id"):
        if col in df.columns:
            keys.insert(0, df[col].astype(str).to_numpy())
    if fp is not None:
        keys.insert(0, np.asarray(fp["pixel_hash"]).astype(str))
    keys.insert(0, content_ids(df).astype(str).to_numpy())
    order = np.lexsort(keys[::-1])  # lexsort: the last key is the primary one
    if (order == np.arange(len(df))).all():
        return df, fp, order
    out = df.iloc[order].reset_index(drop=True)
    if fp is None:
        return out, None, order
    return out, {k: (np.asarray(v)[order] if len(v) == len(df) else v) for k, v in fp.items()}, order


def input_order_groups(labels: np.ndarray, order: np.ndarray, image_ids: pd.Series) -> pd.Series:
    """Component labels computed in canonical order, back in input row order, numbered by first row."""
    back = np.empty(len(labels), dtype=np.int64)
    back[order] = labels
    _, first = np.unique(back, return_index=True)
    rank = np.argsort(np.argsort(first))
    return pd.Series(rank[back], index=pd.Index(image_ids.astype(str), name="image_id"), name="dup_group")


