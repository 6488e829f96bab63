"""The cohort: ingestion of image files and label tables into one cohort table, the demo cohorts, exclusions by class."""
