"""Integrity of a cohort before training: patient-level splits, fingerprints, near-duplicates, acquisition shortcuts, the audit and its check page."""
