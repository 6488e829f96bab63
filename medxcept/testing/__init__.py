"""Fixtures and generators for tests and benchmarks: never imported by production code.

* :mod:`medxcept.testing.corpus`: the mixed ingestion corpus (every DICOM / photograph case, with
  the expected outcome and pixels; includes a JPEG-lossless encoder), ``python -m
  medxcept.testing.corpus OUT_DIR [--ingest]``;
* :mod:`medxcept.testing.traps`: a cohort with every leakage trap planted, ``python -m
  medxcept.testing.traps OUT_DIR [--clean]``;
* :mod:`medxcept.testing.camera`: camera-size fundus JPEGs (4288 x 2848, 3410 x 2848) and the
  full-resolution reference preprocessing that reduced-size ingestion is checked against.
* :mod:`medxcept.testing.canary`: a cohort with a unique marker in every identifying field, and the
  scanner of everything outside ``private/`` (``tests/test_canary.py``);
* :mod:`medxcept.testing.copies`: altered copies (crop, resize, JPEG) of a run's training images as an
  "external" cohort (``tests/test_external.py``, ``benchmarks/external_copies.py``).
* :mod:`medxcept.testing.screening`: screening-style photographs of many different people (each eye
  its own vessel tree, both eyes of each person; the camera's chords, vignette, dim exposures, 400-px
  JPEG), the look-alikes of the near-duplicate benchmark.

``tests/test_architecture.py`` fails if a module outside this package imports it.
"""
