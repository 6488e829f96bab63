"""One exception hierarchy for medxcept.

Two kinds of failure, handled differently:

* A **per-file** problem (a truncated DICOM, an unreadable JPEG, a label row whose
  file is missing) raises :class:`ReadError`. Ingestion catches it and writes a
  row of the exclusion log (path, stage, reason: ``private/exclusions.csv``; ``exclusions.csv``
  without the path); the run goes on.
* A **whole-run** problem (an empty cohort, a fold without positives, missing
  pretrained weights) raises one of the other subclasses. The CLI prints the
  message on one line and exits with status 2 — no traceback, because the message
  already says what to do.

Anything that is not a :class:`MedxceptError` is a bug and keeps its traceback.
"""

from __future__ import annotations

__all__ = [
    "MedxceptError",
    "ConfigError",
    "CohortError",
    "ReadError",
    "MissingDecoderError",
    "WeightsError",
    "LeakageError",
    "SplitError",
]


class MedxceptError(Exception):
    """Base class: a problem the user can fix, described in plain words."""


class ConfigError(MedxceptError):
    """An invalid option or cohort-file value (the message names field and value)."""


class CohortError(MedxceptError):
    """The cohort as a whole cannot be used (empty, a missing class, bad label file)."""


class SplitError(MedxceptError):
    """The requested split cannot be made (too few patients of a class for k folds)."""


class LeakageError(MedxceptError):
    """The integrity audit found leakage that the chosen policy treats as an error."""


class WeightsError(MedxceptError):
    """Pretrained weights were asked for but cannot be loaded."""


class MissingDecoderError(MedxceptError):
    """An installation problem: a pixel-data decoder plugin is not installed.

    Raised once per run, not per file: every file of that transfer syntax would fail
    the same way, so it is an install problem, not an exclusion.
    """


class ReadError(MedxceptError):
    """A single file could not be used; becomes one row of ``exclusions.csv``.

    Parameters
    ----------
    path : str
        The file concerned.
    reason : str
        A human-readable reason ("truncated pixel data: expected 196608 bytes, found 1000").
    stage : str
        The pipeline stage that refused it ("ingest", "decode", "label", "quality").
    """

    def __init__(self, path: object, reason: str, stage: str = "decode") -> None:
        self.path = str(path)
        self.reason = reason
        self.stage = stage
        super().__init__(f"{self.path}: {reason}")
