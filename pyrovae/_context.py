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
from pyro.nn import PyroModule
from pyro.nn.module import _Context

__all__ = ["pyro_context", "localize", "evaluating"]


def pyro_context() -> contextlib.AbstractContextManager:
    """Context manager enabling ``pyro.settings`` ``module_local_params=True``."""
    return pyro.settings.context(module_local_params=True)


def localize(module: torch.nn.Module) -> torch.nn.Module:
    """Give every :class:`~pyro.nn.PyroModule` in ``module`` a fresh module-local context.

    Needed for modules built outside :func:`pyro_context` (e.g. a prior the user constructed):
    Pyro sets up a module's local parameter state when the module is created.
    """
    with pyro_context():
        for m in module.modules():
            if isinstance(m, PyroModule):
                m._pyro_context = _Context()
    return module


def evaluating(fn):
    """Decorator: run ``fn`` without gradients, inside :func:`pyro_context`, with distribution
    validation off (the estimator validates its inputs at the boundary, and non-integer counts
    the caller allowed must reach ``log_prob``)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.no_grad(), pyro_context(), pyro.validation_enabled(False):
            return fn(*args, **kwargs)

    return wrapper
