"""The pages beside a run's report: ``check.html`` (:func:`medxcept.workflows.check.check_cohort`) and
the private page of external near-copies (:func:`copies_page`). They render what they are given:
the pairs and rows come from the stages (:func:`medxcept.integrity.check.duplicate_pairs_shown`,
:func:`medxcept.evaluation.external.copies_rows`), the images from the workflow."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from medxcept.report import environment
from medxcept.report.figures import thumbnail_uri

__all__ = ["pair_thumbnails", "render_check_page", "copies_page"]


def pair_thumbnails(pairs: Sequence[dict[str, Any]], images: np.ndarray, px: int = 128) -> list[dict[str, Any]]:
    """Each duplicate pair with the thumbnails of its two images (``thumb_a``, ``thumb_b``: PNG data
    URIs of ``images[pos_a]``, ``images[pos_b]`` shrunk to at most ``px`` px)."""
    return [{**p, "thumb_a": thumbnail_uri(images[p["pos_a"]], px), "thumb_b": thumbnail_uri(images[p["pos_b"]], px)}
            for p in pairs]


def render_check_page(context: dict[str, Any]) -> str:
    """``check.html`` from its context (:func:`medxcept.workflows.check.check_cohort` builds it)."""
    return environment().get_template("check.html.j2").render(**context)


def copies_page(rows: Sequence[dict[str, Any]], source_thumbs: Sequence[np.ndarray], images: np.ndarray, *,
                total: int, run_id: str, source_id: str, finding: Any, px: int = 128) -> str:
    """``private/external_copies.html``: each confirmed pair side by side (thumbnails, file path).

    ``rows``: :func:`medxcept.evaluation.external.copies_rows` (each with ``source_pos`` into
    ``source_thumbs`` and ``pos`` into ``images``); ``finding``: the audit finding (its ``message``
    and ``severity``). Patient images and file names: for ``private/`` only.
    """
    shown = [{**r, "thumb_source": thumbnail_uri(source_thumbs[r["source_pos"]], px=px),
              "thumb": thumbnail_uri(images[r["pos"]], px=px)} for r in rows]
    return environment().get_template("external_copies.html.j2").render(
        pairs=shown, total=total, run_id=run_id, source_id=source_id, message=finding.message,
        severity=finding.severity)
