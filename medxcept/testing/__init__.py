"""Fixtures and generators for tests and benchmarks: never imported by production code.

* :mod:`medxcept.testing.corpus`: the mixed ingestion corpus (every DICOM / photograph case, with
  the expected outcome and pixels; includes a JPEG-lossless encoder), ``python -m
  medxcept.testing.corpus OUT_DIR [--ingest]``;
* :mod:`medxcept.testing.traps`: a cohort with every leakage trap planted, ``python -m
  medxcept.testing.traps OUT_DIR [--clean]``;
* :mod:`medxcept.testing.screening`: screening-style photographs of many different people (each eye
  its own vessel tree, both eyes of each person; the camera's chords, vignette, dim exposures, 400-px
  JPEG), the look-alikes of the near-duplicate benchmark.

``tests/test_architecture.py`` fails if a module outside this package imports it.
"""
