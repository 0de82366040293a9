"""Pyro settings under which every pyrovae module is built and run.

pyrovae keeps each model's parameters in its own modules (Pyro's ``module_local_params``) rather
than in Pyro's global parameter store, where two fitted models with the same parameter names
(``decoder.out.weight``, ``prior.inv_dispersion`` …) would overwrite each other. To run a fitted
``model_``/``guide_`` with Pyro tools yourself (``Predictive``, ``poutine.trace``,
``render_model``), do it inside :func:`pyro_context`.
"""

from __future__ import annotations

import contextlib
import functools

import pyro
import torch

__all__ = ["pyro_context", "evaluating"]


def pyro_context() -> contextlib.AbstractContextManager:
    """Context manager enabling ``pyro.settings`` ``module_local_params=True``."""
    return pyro.settings.context(module_local_params=True)


def evaluating(fn):
    """Decorator: run ``fn`` without gradients, inside :func:`pyro_context`, with distribution
    validation off (the estimator validates its inputs at the boundary, and non-integer counts
    the caller allowed must reach ``log_prob``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad(), pyro_context(), pyro.validation_enabled(False):
            return fn(*args, **kwargs)

    return wrapper
