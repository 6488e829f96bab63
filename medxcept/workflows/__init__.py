"""Workflows: what a command does, composed from the stages below.

The package is the top layer of medxcept. Stage modules (``medxcept.cohort.table``, ``io/``,
``ingest``, ``splits``, ``audit``, ``preprocess``, ``augment``, ``data``, ``model``, ``train``,
``evaluate``, ``calibrate``, ``report`` ...) each do one job and never import a workflow; each
workflow here is a short composition of the shared steps in :mod:`medxcept.workflows.steps`
(ingest into a run, split and audit, train, assess, write provenance, render).
``tests/test_architecture.py`` keeps it so: no import cycle, no stage importing a workflow.

=====================  =======================================  ================================
workflow               function                                 command
=====================  =======================================  ================================
single run             :func:`~.single.run_pipeline`            ``pipelines.retina run``
check                  :func:`~.check.check_cohort`             ``pipelines.retina check``
external validation    :func:`~.external.evaluate_run`          ``pipelines.retina evaluate``
reproduce              :func:`~.reproduce.reproduce_run`        ``pipelines.retina --reproduce``
learning curve         :func:`~.learning_curve.learning_curve_rows`  ``--learning-curve``
cross-validation       :func:`~.cv.run_cv`                      ``pipelines.kfold``
compare                :func:`~.compare.run_comparison`         ``pipelines.compare``
=====================  =======================================  ================================

Import a workflow from its module (``from medxcept.workflows.single import run_pipeline``):
importing this package does not import Keras.
"""
