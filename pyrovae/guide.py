r"""The amortized variational posterior :math:`q(z \mid x)` as a Pyro guide."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
from pyro.nn import PyroModule

from .nets import Encoder

__all__ = ["VAEGuide"]


class VAEGuide(PyroModule):
    r"""Pyro guide ``guide(x, w=None, size_factor=None)``:
    :math:`z_i \sim \mathcal N(m(f(x_i)), \operatorname{diag} S(f(x_i)))`.

    The encoder sees only observed entries (:class:`~pyrovae.nets.Encoder` zero-fills the
    rest); the size factor is not an input.

    :param int input_dim: number of genes.
    :param int latent_dim: :math:`K`.
    :param hidden: encoder hidden layer widths.
    :param bool normalise_input: library-normalised encoder input (models with size factors).
    """

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (128, 128),
        normalise_input: bool = True,
    ):
        super().__init__()
        self.encoder = Encoder(input_dim, latent_dim, tuple(hidden), normalise_input)

    def forward(
        self,
        x: torch.Tensor,
        w: torch.Tensor | None = None,
        size_factor: torch.Tensor | None = None,
        n_cells: int | None = None,
    ):
        loc, scale = self.encoder(x, w)
        with pyro.plate("cells", x.shape[-2], dim=-1):
            return pyro.sample("z", dist.Normal(loc, scale).to_event(1))
