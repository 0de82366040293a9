r"""The posterior kernel: every evaluation of a fitted model is a thin use of :func:`draw`.

For a cell :math:`i` with observed entries :math:`x_{i,w=1}` the encoder gives
:math:`q(z_i \mid x_i) = \mathcal N(m_i, \operatorname{diag} S_i)`; with fixed standard-normal
draws :math:`\epsilon_s` (the same for every cell, so a cell's output never depends on the other
cells evaluated with it),

.. math::

    z_{is} = m_i + S_i^{1/2} \epsilon_s, \qquad r_{ijs} = s_i\, \mu(z_{is})_j .

The functions below turn one :class:`Draw` into the quantities the estimator reports:

* :func:`latent` — :math:`m_i = E_q[z_i]`;
* :func:`predict` — the decoder mean :math:`s_i \mu(m_i)` or :math:`s_i E_q[\mu(z_i)]` (the
  rate *before* the random effect :math:`u`);
* :func:`denoise` — the posterior mean :math:`E[\lambda_{ij} \mid x_i] \approx
  \frac1S \sum_s r_{ijs} E[u_{ij} \mid x_{ij}, r_{ijs}]`;
* :func:`predictive_log_prob` — :math:`\log \frac1S \sum_s p(x_{ij} \mid z_{is})`, per entry;
* :func:`log_likelihood` — the importance-sampled :math:`\log \frac1S \sum_s p(x_i, z_{is}) /
  q(z_{is} \mid x_i)`, per cell;
* :func:`heldout_entries_loss` — minus the sum of :func:`predictive_log_prob` over held-out
  entries (the validation loss of entry-level early stopping).

All of them run without gradients; chunking over cells is the caller's business
(:func:`evaluate_rows`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyro.distributions as dist
import torch

from ._chunking import auto_chunk, row_chunks

__all__ = [
    "Draw",
    "draw",
    "standard_normal_draws",
    "latent",
    "predict",
    "denoise",
    "predictive_log_prob",
    "log_likelihood",
    "heldout_entries_loss",
    "evaluate_rows",
]


@dataclass
class Draw:
    """One pass of the kernel over a batch of cells.

    :ivar loc: :math:`m`, shape ``(cells, K)``.
    :ivar scale: :math:`S^{1/2}`, shape ``(cells, K)``.
    :ivar z: ``loc`` (no particles) or ``(S, cells, K)`` draws.
    :ivar log_rate: :math:`\\log r = \\log s + \\log\\mu(z)`, shape ``z.shape[:-1] + (genes,)``.
    """

    loc: torch.Tensor
    scale: torch.Tensor
    z: torch.Tensor
    log_rate: torch.Tensor

    @property
    def rate(self) -> torch.Tensor:
        """:math:`r` (floored at the smallest normal float)."""
        return self.log_rate.exp().clamp_min(torch.finfo(self.log_rate.dtype).tiny)

    def log_prob(self, prior, x) -> torch.Tensor:
        """:math:`\\log p(x \\mid r)` under the prior's marginal, from the log-rate."""
        return prior.marginal_from_log_rate(self.log_rate).log_prob(x)


def standard_normal_draws(
    n_samples: int, latent_dim: int, seed: int, dtype=torch.float32, device="cpu"
) -> torch.Tensor:
    """``(S, 1, K)`` standard-normal draws from a local generator (the global RNG is untouched)."""
    if not (isinstance(n_samples, int | np.integer) and not isinstance(n_samples, bool)):
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    g = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(int(n_samples), latent_dim, generator=g, dtype=dtype)
    return eps.to(device).unsqueeze(-2)


def draw(model, guide, x, w=None, size_factor=None, eps=None) -> Draw:
    """Encode the observed entries of ``x``, draw :math:`z` with ``eps`` (``None``:
    :math:`z = m`) and compute the rate. The encoder never sees entries with ``w == 0``."""
    loc, scale = guide.encoder(x, w)
    z = loc if eps is None else loc + scale * eps
    return Draw(loc, scale, z, model.log_rate(z, size_factor))


def _masked(values, w):
    return values if w is None else torch.where(w, values, torch.zeros_like(values))


def latent(model, guide, x, w=None, size_factor=None, eps=None) -> torch.Tensor:
    """:math:`E_q[z]`, shape ``(cells, K)``."""
    return guide.encoder(x, w)[0]


def predict(model, guide, x, w=None, size_factor=None, eps=None) -> torch.Tensor:
    """:math:`s\\,\\mu(m)` (``eps is None``) or the Monte Carlo mean :math:`s\\,E_q[\\mu(z)]`."""
    d = draw(model, guide, x, w, size_factor, eps)
    return d.rate if eps is None else d.rate.mean(0)


def denoise(model, guide, x, w=None, size_factor=None, eps=None) -> torch.Tensor:
    """:math:`E[\\lambda \\mid x]`; entries with ``w == 0`` use the prior mean :math:`E[u]`."""
    assert eps is not None, "denoise averages over particles"
    d = draw(model, guide, x, w, size_factor, eps)
    prior = model.prior
    rate = d.rate
    eu = prior.posterior_mean(x, rate)
    if w is not None:
        eu = torch.where(w, eu, prior.mean().to(rate).expand_as(eu))
    return (rate * eu).mean(0)


def predictive_log_prob(model, guide, x, w=None, size_factor=None, eps=None) -> torch.Tensor:
    """Per-entry :math:`\\log \\frac1S \\sum_s p(x_{ij} \\mid z_{is})` (``eps is None``:
    :math:`\\log p(x_{ij} \\mid m_i)`), for *every* entry of ``x``; ``w`` only limits what the
    encoder sees, so an entry with ``w == 0`` gets a proper held-out score."""
    d = draw(model, guide, x, w, size_factor, eps)
    lp = d.log_prob(model.prior, x)
    if eps is not None:
        lp = torch.logsumexp(lp, 0) - math.log(eps.shape[0])
    return lp


def log_likelihood(model, guide, x, w=None, size_factor=None, eps=None) -> torch.Tensor:
    """Per-cell :math:`\\log \\frac1S \\sum_s p(x_{i,w=1}, z_{is}) / q(z_{is} \\mid x_i)`."""
    assert eps is not None, "log_likelihood averages over particles"
    d = draw(model, guide, x, w, size_factor, eps)
    lp = _masked(d.log_prob(model.prior, x), w).sum(-1)
    log_w = (
        lp
        + dist.Normal(0.0, 1.0).log_prob(d.z).sum(-1)
        - dist.Normal(d.loc, d.scale).log_prob(d.z).sum(-1)
    )
    return torch.logsumexp(log_w, 0) - math.log(eps.shape[0])


def heldout_entries_loss(model, guide, x, w_train, w_heldout, size_factor=None, eps=None):
    """:math:`-\\sum_{w^{\\text{held}}_{ij} = 1}` :func:`predictive_log_prob`, the encoder
    seeing only the ``w_train`` entries (a 0-d tensor)."""
    lp = predictive_log_prob(model, guide, x, w_train, size_factor, eps)
    return -_masked(lp, w_heldout).sum()


def evaluate_rows(
    fn: Callable,
    model,
    guide,
    source,
    eps: torch.Tensor | None,
    dtype=torch.float32,
    device="cpu",
    rows: np.ndarray | None = None,
) -> np.ndarray:
    """Apply ``fn(model, guide, x, w, s, eps)`` to ``source`` a chunk of cells at a time (a
    memory budget for the ``(particles, cells, genes)`` tensors, :func:`auto_chunk`) and stack
    the results as numpy, in cell order. ``source`` hands out ``batch(idx, dtype, device)``;
    ``rows`` (sorted) limits the evaluation to those cells."""
    n = source.n_cells if rows is None else len(rows)
    if n == 0:  # an empty share (more ranks than cells): the trailing shape from one cell
        return evaluate_rows(fn, model, guide, source, eps, dtype, device, np.arange(1))[:0]
    n_samples = 1 if eps is None else eps.shape[0]
    out = None  # filled in place: the result is the only thing that grows with the cells
    with torch.no_grad():
        width = getattr(getattr(model, "prior", None), "evaluation_width", 1)
        for chunk in row_chunks(n, auto_chunk(source.n_genes, n_samples, width=width)):
            idx = np.arange(chunk.start, chunk.stop) if rows is None else rows[chunk]
            value = fn(model, guide, *source.batch(idx, dtype, device), eps).cpu().numpy()
            if out is None:
                out = np.empty((n, *value.shape[1:]), dtype=value.dtype)
            out[chunk] = value
    return out
