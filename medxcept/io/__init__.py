"""Readers (DICOM, photographs, label tables) and what they share: how files are named in logs,
and how a source folder is walked.

File names often carry patient identifiers (``12345_OD.jpg``) and logs end up in shared places
(a cluster job's ``.out`` file), so a reader never logs a path: it logs :func:`log_name`, which
is the keyed file id that ingestion sets for the file being decoded (``F-3fa9c01b2e``), and the
bare file name only when a reader is called directly, outside ingestion (a notebook).
"""

from __future__ import annotations

import contextvars
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["log_name", "file_label", "walk_files"]

_LABEL: contextvars.ContextVar[str | None] = contextvars.ContextVar("medxcept_file_label", default=None)


@contextmanager
def file_label(label: str) -> Iterator[None]:
    """Within the block, readers name the file they log about ``label`` (a keyed file id)."""
    token = _LABEL.set(label)
    try:
        yield
    finally:
        _LABEL.reset(token)


def log_name(path: object) -> str:
    """How a log line names ``path``: the keyed id set by :func:`file_label`, else the file's name."""
    label = _LABEL.get()
    if label is not None:
        return label
    return Path(str(path)).name


def _inside(path: Path, root_real: Path) -> bool:
    real = Path(os.path.realpath(path))
    return real == root_real or root_real in real.parents


def walk_files(root: str | os.PathLike[str], *, skip=None) -> tuple[list[Path], list[Path]]:
    """Every file under ``root`` (sorted walk; hidden folders skipped) and the refused links.

    Symbolic links, to files or to folders, are followed only when they resolve inside ``root``;
    the others are returned in the second list, unfollowed (a link out of the cohort folder can
    reach anything the user can read). A folder reached twice (a second link to it, a loop) is
    walked once. ``skip(name) -> bool``: file and folder names to leave out.
    """
    root = Path(root)
    root_real = Path(os.path.realpath(root))
    seen = {root_real}
    files: list[Path] = []
    refused: list[Path] = []
    skip = skip or (lambda name: name.startswith("."))
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            if skip(d):
                continue
            p = Path(dirpath) / d
            real = Path(os.path.realpath(p))
            if not _inside(p, root_real):
                refused.append(p)
            elif real not in seen:
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        for name in sorted(filenames):
            if skip(name):
                continue
            p = Path(dirpath) / name
            (files if _inside(p, root_real) else refused).append(p)
    return files, refused
