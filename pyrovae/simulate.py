r"""Simulated count matrices from the reference note, reproduced bit-for-bit.

Both simulations draw a rank-``k`` Poisson-Gamma (negative-binomial) matrix

.. math::

    l_{ik} \sim \operatorname{LogNormal}(0, 0.5^2), \quad
    f_{jk} \sim \operatorname{LogNormal}(0, 0.5^2), \quad
    \mu_{ij} = \textstyle\sum_k l_{ik} f_{jk},

    u_{ij} \sim \operatorname{Gamma}(\theta, \text{rate}=\theta), \quad
    \lambda_{ij} = \mu_{ij} u_{ij}, \quad
    x_{ij} \sim \operatorname{Poisson}(\lambda_{ij}),

so that :math:`E[u_{ij}] = 1`, :math:`V[u_{ij}] = 1/\theta` and marginally
:math:`x_{ij} \sim \operatorname{NB}(\text{mean}=\mu_{ij}, \text{inverse dispersion}=\theta)`.

.. warning::

    To reproduce the reference note exactly, these functions seed and then draw from
    **numpy's legacy global RNG** (``np.random.seed`` followed by ``np.random.*`` calls in the
    reference order).  Calling them therefore changes the global ``np.random`` state, exactly as
    the reference code did.  They never touch torch's RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Simulation",
    "bayes_posterior_mean_lambda",
    "imputation",
    "poisson_thinning",
]


@dataclass(frozen=True, eq=False)
class Simulation:
    r"""One simulated data set together with the ground truth that generated it.

    :param x: ``(n, p)`` int64 observed counts, :math:`x \sim \operatorname{Poisson}(\lambda)`.
    :param x_val: ``(n, p)`` int64 independent validation counts drawn from the *same*
        :math:`\lambda` (thinning simulation), or ``None`` (imputation simulation).
    :param w: ``(n, p)`` bool observation mask, ``True`` = observed (imputation simulation),
        or ``None`` (thinning simulation).
    :param lam: ``(n, p)`` true Poisson rates :math:`\lambda = \mu \odot u`.
    :param mu: ``(n, p)`` true low-rank means :math:`\mu = l f^\top`.
    :param u: ``(n, p)`` true Gamma random effects, :math:`u \sim \operatorname{Gamma}(\theta,
        \theta)`.
    :param l: ``(n, k)`` true cell loadings.
    :param f: ``(p, k)`` true gene factors.
    :param inv_disp: the Gamma shape :math:`\theta` of ``u`` (= its rate), i.e. the inverse
        dispersion of the marginal negative binomial (0.1 for thinning, ``1 / mu.var()`` for
        imputation).
    :param seed: the seed passed to ``np.random.seed``.
    """

    x: np.ndarray
    x_val: np.ndarray | None
    w: np.ndarray | None
    lam: np.ndarray
    mu: np.ndarray
    u: np.ndarray
    l: np.ndarray  # noqa: E741 -- name from the reference note
    f: np.ndarray
    inv_disp: float
    seed: int

    def bayes_posterior_mean(self) -> np.ndarray:
        r"""Oracle ("Bayes limit") estimate :math:`E[\lambda \mid x]` under the true prior.

        See :func:`bayes_posterior_mean_lambda`; uses ``self.x``, ``self.mu`` and
        ``self.inv_disp``.
        """
        return bayes_posterior_mean_lambda(self.x, self.mu, self.inv_disp)


def _low_rank_means(n: int, p: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw ``l``, ``f`` from the (already seeded) global RNG and return ``(l, f, l @ f.T)``."""
    l = np.random.lognormal(sigma=0.5, size=(n, k))  # noqa: E741, NPY002
    f = np.random.lognormal(sigma=0.5, size=(p, k))  # noqa: NPY002
    return l, f, l @ f.T


def poisson_thinning(seed: int = 0, n: int = 500, p: int = 100, k: int = 3) -> Simulation:
    r"""Reference "Poisson thinning" simulation: two independent draws from one :math:`\lambda`.

    Exactly the reference code::

        np.random.seed(seed)
        l = np.random.lognormal(sigma=.5, size=(n, k))
        f = np.random.lognormal(sigma=.5, size=(p, k))
        mu = l @ f.T
        u = np.random.gamma(shape=.1, scale=10, size=(n, p))
        lam = mu * u
        x = np.random.poisson(lam=lam)
        x_val = np.random.poisson(lam=lam)

    i.e. :math:`\theta = 0.1` (:math:`u \sim \operatorname{Gamma}(0.1, \text{rate}=0.1)`, mean 1,
    variance 10), and :math:`x, x_{val} \mid \lambda` independent Poisson.  An estimate
    :math:`\hat\lambda(x)` is scored by the Poisson log-likelihood of ``x_val``
    (:func:`pyrovae.metrics.poisson_heldout_mean`).

    Seeds and advances numpy's *global* legacy RNG (see the module docstring).

    :param seed: seed for ``np.random.seed``.
    :param n: number of cells (rows).
    :param p: number of genes (columns).
    :param k: true rank.
    :return: a :class:`Simulation` with ``w=None``.
    """
    np.random.seed(seed)  # noqa: NPY002
    l, f, mu = _low_rank_means(n, p, k)  # noqa: E741
    u = np.random.gamma(shape=0.1, scale=10, size=(n, p))  # noqa: NPY002
    lam = mu * u
    x = np.random.poisson(lam=lam)  # noqa: NPY002
    x_val = np.random.poisson(lam=lam)  # noqa: NPY002
    return Simulation(
        x=x, x_val=x_val, w=None, lam=lam, mu=mu, u=u, l=l, f=f, inv_disp=0.1, seed=seed
    )


def imputation(
    seed: int = 0, n: int = 500, p: int = 100, k: int = 3, frac_observed: float = 0.9
) -> Simulation:
    r"""Reference "imputation" simulation: one draw plus a random observation mask.

    Exactly the reference code (with ``0.9`` replaced by ``frac_observed``)::

        np.random.seed(seed)
        l = np.random.lognormal(sigma=.5, size=(n, k))
        f = np.random.lognormal(sigma=.5, size=(p, k))
        mu = l @ f.T
        u = np.random.gamma(shape=1 / mu.var(), scale=mu.var(), size=(n, p))
        lam = mu * u
        x = np.random.poisson(lam=lam)
        w = np.random.uniform(size=x.shape) < 0.9

    i.e. :math:`\theta = 1 / \operatorname{Var}(\mu)` (the empirical variance over all entries of
    ``mu``) and :math:`w_{ij} \sim \operatorname{Bernoulli}(\text{frac\_observed})`, with
    ``w == True`` meaning observed.

    Seeds and advances numpy's *global* legacy RNG (see the module docstring).

    :param seed: seed for ``np.random.seed``.
    :param n: number of cells (rows).
    :param p: number of genes (columns).
    :param k: true rank.
    :param frac_observed: probability that an entry is observed.
    :return: a :class:`Simulation` with ``x_val=None``.
    """
    np.random.seed(seed)  # noqa: NPY002
    l, f, mu = _low_rank_means(n, p, k)  # noqa: E741
    var = mu.var()
    u = np.random.gamma(shape=1 / var, scale=var, size=(n, p))  # noqa: NPY002
    lam = mu * u
    x = np.random.poisson(lam=lam)  # noqa: NPY002
    w = np.random.uniform(size=x.shape) < frac_observed  # noqa: NPY002
    return Simulation(
        x=x, x_val=None, w=w, lam=lam, mu=mu, u=u, l=l, f=f, inv_disp=float(1 / var), seed=seed
    )


def bayes_posterior_mean_lambda(x, mu, shape) -> np.ndarray:
    r"""Posterior mean of :math:`\lambda = \mu u` given :math:`x` under the true Gamma prior.

    With :math:`u \sim \operatorname{Gamma}(\theta, \text{rate}=\theta)` and
    :math:`x \mid u \sim \operatorname{Poisson}(\mu u)`, conjugacy gives
    :math:`u \mid x \sim \operatorname{Gamma}(\theta + x, \text{rate}=\theta + \mu)`, hence

    .. math::

        E[\lambda \mid x] = \mu \, \frac{\theta + x}{\theta + \mu}.

    With the true :math:`\mu` and :math:`\theta` this is the oracle ("Bayes limit") estimator.
    For an independent draw :math:`x' \mid \lambda \sim \operatorname{Poisson}(\lambda)`,
    :math:`E[\log p(x' \mid \hat\lambda) \mid x] = E[\lambda \mid x] \log\hat\lambda -
    \hat\lambda + \text{const}` is maximised by :math:`\hat\lambda = E[\lambda \mid x]`, so
    no plug-in estimate computed from ``x`` has a higher expected held-out Poisson
    log-likelihood.

    :param x: counts (any shape).
    :param mu: true means, broadcastable against ``x``.
    :param shape: Gamma shape :math:`\theta > 0` (scalar or broadcastable).
    :return: float64 array with the broadcast shape.
    """
    x = np.asarray(x, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    shape = np.asarray(shape, dtype=np.float64)
    if np.any(shape <= 0):
        raise ValueError("shape (inverse dispersion) must be positive")
    return mu * (shape + x) / (shape + mu)
