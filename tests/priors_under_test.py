"""One factory per prior class in pyrovae.priors: every test parametrized over PRIOR_FACTORIES
covers each class, and test_every_prior_class_is_tested fails when a new class has no entry."""

import pyro.distributions as dist
import torch

from pyrovae import priors


def _quadrature_lognormal(n_genes=None):
    return priors.QuadraturePrior(dist.LogNormal(torch.tensor(-0.125), torch.tensor(0.5)))


PRIOR_FACTORIES = {
    priors.PointMass: lambda n_genes=None: priors.PointMass(),
    priors.Gamma: lambda n_genes=None: priors.Gamma(0.7, n_genes=n_genes),
    priors.ZeroInflatedGamma: lambda n_genes=None: priors.ZeroInflatedGamma(
        0.7, logodds=-1.0, n_genes=n_genes
    ),
    priors.QuadraturePrior: _quadrature_lognormal,
    priors.LogNormal: lambda n_genes=None: priors.LogNormal(0.8, n_genes=n_genes),
}
