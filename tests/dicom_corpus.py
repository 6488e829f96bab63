"""Builders of small DICOM test files with known pixels (importable by any test).

The builders live in :mod:`medxcept.testing.corpus` (the mixed ingestion corpus uses them at run
time); this module re-exports them so tests keep writing ``corpus.write_gray(...)``.
"""

from __future__ import annotations

from medxcept.testing.corpus import (  # noqa: F401 - re-exported for the tests
    _TRANSFER,
    COMPREHENSIVE_SR,
    CT_IMAGE,
    GRAYSCALE_PRESENTATION_STATE,
    SECONDARY_CAPTURE,
    bundled_test_file,
    encode_jpeg_lossless,
    encoder_unavailable,
    frames_functional_groups,
    image_dataset,
    save,
    write_compressed,
    write_dicomdir,
    write_gray,
    write_jpeg_baseline,
    write_jpeg_cut_frame,
    write_jpeg_lossless,
    write_op_dicom,
    write_presentation_state,
    write_rgb,
    write_sr,
    write_trailing_padding,
    write_voi_lut8,
    ybr_full_from_rgb,
)
