"""Runnable pipelines: ``python -m pipelines.retina`` (single run) and friends."""
