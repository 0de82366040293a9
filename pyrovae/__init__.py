"""pyrovae: Pyro variational autoencoders for count data with pluggable random-effect priors.

The public names below are imported lazily, so ``import pyrovae.datasets`` (or the CLI's
``--help``) does not pay for importing torch and Pyro.
"""

from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "VAE": "estimator",
    "PVAE": "reference",
    "NBVAE": "reference",
    "ZINBVAE": "reference",
    "NotFittedError": "estimator",
    "FitDivergedError": "fit",
    "UPrior": "priors",
    "PointMass": "priors",
    "Gamma": "priors",
    "ZeroInflatedGamma": "priors",
    "QuadraturePrior": "priors",
    "LogNormal": "priors",
    "pyro_context": "_context",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name == "lra":  # the reference package's namespace (``import pyrovae as scmodes``)
        return importlib.import_module(".lra", __name__)
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
