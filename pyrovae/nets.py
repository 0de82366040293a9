r"""The two neural networks: the encoder :math:`x \mapsto (m, S)` and the decoder :math:`z \mapsto \mu`.

Both are plain fully connected ReLU networks without batch normalization, so a cell's output never
depends on the other cells in its batch and training and evaluation behave identically (this is
also what lets Pyro vectorize particles: a leading particle dimension passes straight through).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

__all__ = ["Encoder", "Decoder", "mlp", "log_softplus"]


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes with a ReLU after each (including the last)."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    return nn.Sequential(*layers)


def log_softplus(h: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \operatorname{softplus}(h)`, accurate where softplus underflows (:math:`h \ll 0`)."""
    return torch.where(h < -15.0, h, torch.log(F.softplus(h).clamp_min(torch.finfo(h.dtype).tiny)))


class Encoder(PyroModule):
    r"""Amortized Gaussian posterior :math:`q(z \mid x) = \mathcal N(m(f(x)), \operatorname{diag} S(f(x)))`.

    The input :math:`f(x) = \log(1 + x \odot w)`: missing entries are filled with 0 (Mattei &
    Frellsen 2018) and counts are log-transformed, which keeps heavy-tailed counts from driving
    the first layer into huge activations. The mask itself is not an input.

    :param int input_dim: number of genes :math:`p`.
    :param int latent_dim: :math:`K`.
    :param hidden: hidden layer widths.
    """

    def __init__(self, input_dim: int, latent_dim: int, hidden: Sequence[int] = (128, 128)):
        super().__init__()
        self.body = mlp([input_dim, *hidden])
        width = hidden[-1] if hidden else input_dim
        self.mean = nn.Linear(width, latent_dim)
        self.scale = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor | None = None):
        """Return ``(loc, scale)`` of :math:`q(z \\mid x)`, each of shape ``x.shape[:-1] + (K,)``."""
        if w is not None:
            x = torch.where(w, x, torch.zeros_like(x))
        h = self.body(torch.log1p(x))
        return self.mean(h), F.softplus(self.scale(h)) + 1e-4


class Decoder(PyroModule):
    r"""Mean expression :math:`\mu(z) = \operatorname{softplus}(g(z))`, returned as :math:`\log\mu`.

    Softplus grows linearly, so a large pre-activation cannot overflow the rate the way
    :math:`\exp` can; the log is taken by :func:`log_softplus`, which stays finite where softplus
    underflows.
    """

    def __init__(self, latent_dim: int, output_dim: int, hidden: Sequence[int] = (128, 128)):
        super().__init__()
        self.body = mlp([latent_dim, *hidden])
        width = hidden[-1] if hidden else latent_dim
        self.out = nn.Linear(width, output_dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log \\mu(z)` with shape ``z.shape[:-1] + (p,)``."""
        return log_softplus(self.out(self.body(z)))
