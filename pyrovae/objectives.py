r"""Training objectives: the ELBO and the importance-weighted bound (IWAE).

For a batch :math:`B` of cells and :math:`S` particles :math:`z_{is} \sim q(z \mid x_i)`,

.. math::

    \text{ELBO} = \sum_{i \in B} \frac1S \sum_s \log \frac{p(x_i, z_{is})}{q(z_{is} \mid x_i)},
    \qquad
    \text{IWAE} = \sum_{i \in B} \log \frac1S \sum_s \frac{p(x_i, z_{is})}{q(z_{is} \mid x_i)}

(Burda et al. 2016; with missing data, Mattei & Frellsen 2018). The ELBO uses Pyro's
:class:`~pyro.infer.TraceMeanField_ELBO` (analytic KL for the Gaussian latent), the IWAE bound
Pyro's :class:`~pyro.infer.RenyiELBO` with ``alpha=0``; both vectorize the particles.

**Minibatches.** The cells plate always has the size of the batch — there is no
``subsample_size`` and no ``poutine.scale`` — because Pyro applies such scales to the log
densities *inside* the log-mean-exp of ``RenyiELBO``, which is not an unbiased estimate of the
full-data bound. The full-data loss is :math:`N/B` times the batch loss and that factor is
applied here, after the estimator, to the loss and to the gradients.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

from ._context import pyro_context

__all__ = [
    "OBJECTIVES",
    "make_elbo",
    "loss_and_grads",
    "loss",
    "kl_scale",
]

#: Objective names accepted by :func:`make_elbo`.
OBJECTIVES = ("elbo", "iwae", "elbo_mc")


def make_elbo(objective: str = "elbo", n_samples: int = 1) -> ELBO:
    """The Pyro estimator for an objective name.

    :param str objective: ``"elbo"`` (TraceMeanField_ELBO, analytic KL), ``"elbo_mc"``
        (Trace_ELBO, Monte Carlo KL) or ``"iwae"`` (RenyiELBO with alpha = 0).
    :param int n_samples: particles :math:`S` per cell.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; choose one of {OBJECTIVES}")
    if not (isinstance(n_samples, int) and n_samples >= 1):
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    kwargs = dict(num_particles=n_samples, max_plate_nesting=1, vectorize_particles=True)
    if objective == "iwae":
        return RenyiELBO(alpha=0.0, **kwargs)
    if objective == "elbo_mc":
        return Trace_ELBO(**kwargs)
    return TraceMeanField_ELBO(**kwargs)


class kl_scale(Messenger):  # noqa: N801 - used like the poutine handlers
    r"""Scale the log densities of the latent site ``z`` (model and guide) by ``beta``.

    With :class:`~pyro.infer.TraceMeanField_ELBO` this multiplies the KL term:
    :math:`E_q[\log p(x \mid z)] - \beta\, \mathrm{KL}(q \,\|\, p)` — the "warm-up" of
    Sønderby et al. (2016) against posterior collapse. It is only used with the ELBO: inside
    ``RenyiELBO`` the scale would land inside the log-mean-exp (see the module docstring).
    """

    def __init__(self, beta: float, site: str = "z"):
        super().__init__()
        self.beta = float(beta)
        self.site = site

    def _process_message(self, msg):
        if msg["type"] == "sample" and msg["name"] == self.site:
            msg["scale"] = self.beta * msg["scale"]


def loss_and_grads(
    elbo: ELBO, model, guide, params: Iterable[torch.Tensor], *args, scale: float = 1.0, **kwargs
) -> float:
    """Negative bound of one batch times ``scale`` (= N / B); gradients of it accumulate in the
    ``.grad`` of ``params``.

    ``scale`` multiplies the already computed batch bound and its gradients, outside the
    estimator's log-mean-exp. Runs with Pyro's module-local parameters, so several fitted models
    can live in one process without sharing the global parameter store.
    """
    with pyro_context(), warnings.catch_warnings():
        # a NaN loss is reported by the caller with the epoch; Pyro's generic warning is noise
        warnings.filterwarnings("ignore", message="Encountered NaN", category=UserWarning)
        value = elbo.loss_and_grads(model, guide, *args, **kwargs)
    if scale != 1.0:
        for p in params:
            if p.grad is not None:
                p.grad.mul_(scale)
    return float(value) * scale


def loss(elbo: ELBO, model, guide, *args, scale: float = 1.0, **kwargs) -> float:
    """Negative bound times ``scale`` without gradients (for validation data)."""
    with torch.no_grad(), pyro_context():
        return float(elbo.loss(model, guide, *args, **kwargs)) * scale
