"""Pyro settings under which every pyrovae module is built and run.

pyrovae keeps each model's parameters in its own modules (Pyro's ``module_local_params``) rather
than in Pyro's global parameter store, where two fitted models with the same parameter names
(``decoder.out.weight``, ``prior.inv_dispersion`` …) would overwrite each other. To run a fitted
``model_``/``guide_`` with Pyro tools yourself (``Predictive``, ``poutine.trace``,
``render_model``), do it inside :func:`pyro_context`.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import pyro
import torch
from torch import nn

__all__ = ["pyro_context", "evaluating", "direct_parameters", "submodule"]

_DIRECT_PARAMETERS = contextvars.ContextVar("pyrovae_direct_parameters", default=False)


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


@contextlib.contextmanager
def direct_parameters():
    """Inside pyrovae's own optimisation loop: read the networks' layers without Pyro's
    ``param`` statements (see :func:`submodule`)."""
    token = _DIRECT_PARAMETERS.set(True)
    try:
        yield
    finally:
        _DIRECT_PARAMETERS.reset(token)


def submodule(module: nn.Module, name: str) -> nn.Module:
    """The child ``name`` of ``module``.

    Reading a plain ``nn.Module`` attribute of a :class:`~pyro.nn.PyroModule` makes Pyro emit one
    ``param`` statement per parameter of that child (with ``module_local_params``: a message
    through the whole handler stack, recorded in every trace), which is how Pyro's tools see the
    parameters (``poutine.trace``, ``render_model(render_params=True)``). pyrovae's loop hands the
    module's parameters to its torch optimizer directly, so inside :func:`direct_parameters` the
    child is read from ``_modules`` without those statements (about 1 ms of a training step:
    issue 10); the loss and its gradients are the same (tested). Everywhere else the statements
    are emitted as usual.
    """
    if _DIRECT_PARAMETERS.get():
        return module._modules[name]
    return getattr(module, name)
