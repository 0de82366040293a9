"""pyrovae: Pyro variational autoencoders for count data with pluggable random-effect priors."""

__version__ = "0.1.0"

from .estimator import NBVAE, PVAE, VAE, ZINBVAE, NotFittedError  # noqa: E402
from .fit import FitDivergedError  # noqa: E402
from .priors import (  # noqa: E402
    Gamma,
    LogNormal,
    PointMass,
    QuadraturePrior,
    UPrior,
    ZeroInflatedGamma,
)

__all__ = [
    "VAE",
    "PVAE",
    "NBVAE",
    "ZINBVAE",
    "NotFittedError",
    "FitDivergedError",
    "UPrior",
    "PointMass",
    "Gamma",
    "ZeroInflatedGamma",
    "QuadraturePrior",
    "LogNormal",
]
