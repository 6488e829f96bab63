"""Writing a file so that a reader never sees half of it (run-wide plumbing, below every stage).

:func:`write_atomic` lives here, not in :mod:`medxcept.run`, so that the report (which imports no
stage) can write its page the same way; :mod:`medxcept.run` re-exports it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_atomic"]


def write_atomic(path: str | Path, data: str | bytes, *, mode: int | None = None) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``.

    A reader (or a resumed run) sees the old file or the new one, never half of one; a crash
    mid-write leaves the old file untouched. ``mode``: permissions set on the temporary file
    before any byte is written (e.g. ``0o600`` for identifiers).
    """
    path = Path(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    return path
