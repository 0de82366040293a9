r"""The generative model :math:`p(x, z)` as a Pyro model.

For cell :math:`i` and gene :math:`j`,

.. math::

    z_i \sim \mathcal N(0, I_K), \qquad
    x_{ij} \mid z_i \sim p(x \mid r_{ij}), \qquad r_{ij} = s_i\, \mu(z_i)_j,

where :math:`p(x \mid r) = \int \operatorname{Poisson}(x; r u)\, dp(u)` is the marginal of the
u-prior (:mod:`pyrovae.priors`; the model hands it :math:`\log r` through
:meth:`~pyrovae.priors.UPrior.marginal_from_log_rate`), :math:`\mu` the decoder (:class:`~pyrovae.nets.Decoder`) and
:math:`s_i > 0` an optional size factor (library size offset; 1 when not given). Entries with
:math:`w_{ij} = 0` are missing: the observed site is ``.mask(w)``-ed, so they contribute exactly
0 to every log density, and their values are replaced by 0 before the likelihood is evaluated so
that a placeholder (NaN, a negative number) cannot leak into gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from .nets import Decoder
from .priors import UPrior

__all__ = ["VAEModel"]


class VAEModel(PyroModule):
    """Pyro model ``model(x, w=None, size_factor=None)`` with sites ``z`` and ``x``.

    :param int input_dim: number of genes :math:`p`.
    :param int latent_dim: :math:`K`.
    :param UPrior prior: the prior on :math:`u` (its parameters are learned with the decoder).
    :param hidden: decoder hidden layer widths (mirrored from the encoder's).
    """

    def __init__(
        self, input_dim: int, latent_dim: int, prior: UPrior, hidden: Sequence[int] = (128, 128)
    ):
        super().__init__()
        assert isinstance(prior, UPrior)
        self.input_dim = input_dim
        self.latent_dim = latent_dim
        self.decoder = Decoder(latent_dim, input_dim, tuple(reversed(tuple(hidden))))
        self.prior = prior

    def log_rate(self, z: torch.Tensor, size_factor: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`\\log r = \\log s + \\log\\mu(z)`, computed in log space (the decoder returns
        :math:`\\log\\mu`); ``size_factor`` has shape ``z.shape[:-1]`` (or broadcasts)."""
        log_rate = self.decoder(z)
        if size_factor is not None:
            log_rate = log_rate + size_factor.log().unsqueeze(-1)
        return log_rate

    def rate(self, z: torch.Tensor, size_factor: torch.Tensor | None = None) -> torch.Tensor:
        """:math:`r = s\\,\\mu(z)` = ``exp(log_rate(z, size_factor))``, floored at the smallest
        normal float (an ``exp`` that underflows to 0 would make a log-likelihood of ``r`` and its
        gradient non-finite). The model's likelihood uses :meth:`log_rate` itself."""
        log_rate = self.log_rate(z, size_factor)
        return log_rate.exp().clamp_min(torch.finfo(log_rate.dtype).tiny)

    def forward(
        self,
        x: torch.Tensor | None,
        w: torch.Tensor | None = None,
        size_factor: torch.Tensor | None = None,
        n_cells: int | None = None,
    ):
        """Run the model. ``x`` is ``(cells, genes)``; ``w`` a boolean mask of the same shape
        (``True`` = observed); ``size_factor`` ``(cells,)``. With ``x=None`` the model samples
        ``n_cells`` cells (prior predictive)."""
        if x is None:
            assert n_cells is not None, "give n_cells when x is None"
            ref = next(self.decoder.parameters())
        else:
            n_cells, ref = x.shape[-2], x
            if w is not None:
                x = torch.where(w, x, torch.zeros_like(x))
        zeros = ref.new_zeros(self.latent_dim)
        with pyro.plate("cells", n_cells, dim=-1):
            z = pyro.sample("z", dist.Normal(zeros, 1.0).to_event(1))
            likelihood = self.prior.marginal_from_log_rate(self.log_rate(z, size_factor))
            if w is not None:
                likelihood = likelihood.mask(w)
            return pyro.sample("x", likelihood.to_event(1), obs=x)
