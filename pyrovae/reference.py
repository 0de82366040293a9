"""The reference package's estimators: :class:`PVAE`, :class:`NBVAE`, :class:`ZINBVAE`.

Sarkar's note fits them as ``PVAE(input_dim, latent_dim).fit(x, w=w, lr=1e-2, n_samples=10,
max_epochs=3000, trace=True)``; called with those explicit arguments they follow the note's
protocol (``max_epochs`` full-batch epochs, no validation split). Each is a :class:`~pyrovae.VAE`
with its prior fixed.
"""

from __future__ import annotations

import torch

from .estimator import VAE
from .priors import Gamma, PointMass, ZeroInflatedGamma

__all__ = ["PVAE", "NBVAE", "ZINBVAE"]


class PVAE(VAE):
    """Poisson VAE (:math:`u = 1`), the reference's ``PVAE(input_dim, latent_dim)``."""

    def __init__(
        self, input_dim=None, latent_dim=10, hidden=(128, 128), device="cpu", dtype=torch.float32
    ):
        super().__init__(input_dim, latent_dim, "poisson", False, hidden, device, dtype)

    def _make_prior(self, n_genes):
        return PointMass()


class NBVAE(VAE):
    """Negative binomial VAE (:math:`u \\sim \\operatorname{Gamma}(\\theta, \\theta)`).

    :param bool disp_by_gene: one inverse dispersion per gene (else one shared).
    """

    def __init__(
        self,
        input_dim=None,
        latent_dim=10,
        disp_by_gene=False,
        hidden=(128, 128),
        device="cpu",
        dtype=torch.float32,
    ):
        super().__init__(input_dim, latent_dim, "gamma", disp_by_gene, hidden, device, dtype)
        self.disp_by_gene = disp_by_gene

    def _make_prior(self, n_genes):
        return Gamma(n_genes=n_genes if self.disp_by_gene else None)


class ZINBVAE(VAE):
    """Zero-inflated negative binomial VAE (:math:`u` zero-inflated Gamma).

    :param bool disp_by_gene: one inverse dispersion per gene.
    :param bool logodds_by_gene: one zero-inflation log-odds per gene.
    """

    def __init__(
        self,
        input_dim=None,
        latent_dim=10,
        disp_by_gene=False,
        logodds_by_gene=False,
        hidden=(128, 128),
        device="cpu",
        dtype=torch.float32,
    ):
        super().__init__(input_dim, latent_dim, "zinb", disp_by_gene, hidden, device, dtype)
        self.disp_by_gene = disp_by_gene
        self.logodds_by_gene = logodds_by_gene

    def _make_prior(self, n_genes):
        by_gene = self.disp_by_gene or self.logodds_by_gene
        return ZeroInflatedGamma(
            n_genes=n_genes if by_gene else None,
            disp_by_gene=self.disp_by_gene,
            logodds_by_gene=self.logodds_by_gene,
        )
