"""Test hook: kill the process at a named point, to prove that runs survive interruption.

``MEDXCEPT_FAULT=<point>`` makes the process ``SIGKILL`` itself when it reaches
:func:`fault_point` with that name (no cleanup, no ``finally``: what a cluster time limit or an
out-of-memory kill does). ``MEDXCEPT_FAULT=<point>:<tag>`` fires only where the call passes that
``tag`` (an epoch number, a fold name). ``MEDXCEPT_FAULT_ACTION=raise`` raises
:class:`InjectedFault` instead, and ``exit`` calls ``os._exit(1)`` (a worker that dies without a
Python exception). Several points: a comma-separated list, each optionally with its own action
(``fold_start:fold-1=raise,fold_start:fold-2=exit``). The variable is unset in normal use;
nothing here runs unless it is set.

The points, in the order a run reaches them:

``epoch_batch:<epoch>``  during training, after the first batch of global epoch ``<epoch>``
``epoch_end:<epoch>``    between epochs: after epoch ``<epoch>``'s checkpoint is on disk
``trained``              after training, once ``model.keras`` is saved, before evaluation
``evaluated``            after ``metrics.json`` is written, before the report is rendered
``fold_start:<name>``    k-fold: a fold task starts (before it trains)
"""

from __future__ import annotations

import os
import signal

__all__ = ["fault_point", "InjectedFault"]

ENV = "MEDXCEPT_FAULT"


class InjectedFault(RuntimeError):
    """Raised at a fault point when ``MEDXCEPT_FAULT_ACTION=raise``."""


def fault_point(name: str, tag: object = None) -> None:
    """Die here if ``MEDXCEPT_FAULT`` names this point (and tag); a no-op otherwise."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    here = name if tag is None else f"{name}:{tag}"
    actions = {}
    for item in wanted.split(","):
        point, _, action = item.strip().partition("=")
        actions[point] = action or os.environ.get(f"{ENV}_ACTION", "kill")
    action = actions.get(here, actions.get(name))
    if action is None:
        return
    if action == "raise":
        raise InjectedFault(f"injected fault at {here}")
    if action == "exit":
        os._exit(1)
    os.kill(os.getpid(), signal.SIGKILL)
