r"""Weighted negative-binomial matrix factorisation fitted by EM over a Gamma random effect.

Model: for observed entries (:math:`w_{ij} = 1`)

.. math::

    u_{ij} \sim \operatorname{Gamma}(\theta, \text{rate}=\theta), \qquad
    x_{ij} \mid u_{ij} \sim \operatorname{Poisson}(m_{ij} u_{ij}), \qquad m = L F^\top,

so marginally :math:`x_{ij} \sim \operatorname{NB}(\text{mean}=m_{ij}, \text{inverse
dispersion}=\theta)` with variance :math:`m + m^2/\theta`, i.e. ``scipy.stats.nbinom(n=θ,
p=θ/(θ+m))``.  The marginal log-likelihood maximised is

.. math::

    \ell(L, F, \theta) = \sum_{ij} w_{ij} \log \operatorname{NB}(x_{ij}; m_{ij}, \theta).

Each iteration is a generalised EM (ECM) sweep, so :math:`\ell` never decreases:

* **E-step** -- :math:`u_{ij} \mid x_{ij} \sim \operatorname{Gamma}(\theta + x_{ij},
  \text{rate}=\theta + m_{ij})`, so :math:`\bar u_{ij} = E[u_{ij} \mid x_{ij}] =
  (\theta + x_{ij}) / (\theta + m_{ij})`.
* **M-step for L, F** -- the expected complete-data log-likelihood in :math:`(L, F)` is
  :math:`\sum_{ij} w_{ij} [x_{ij} \log m_{ij} - \bar u_{ij} m_{ij}]`, a Poisson NMF objective
  with exposure :math:`\bar u`; one multiplicative (minorise-maximise) step
  :math:`L \leftarrow L \odot \frac{(W \odot X \oslash m) F}{(W \odot \bar u) F}` increases it
  (then the E-step is refreshed and :math:`F` is updated the same way).  Factors are floored at
  ``eps`` as in :func:`~pyrovae.baselines.nmf`.
* **θ-step** (unless ``fix_inv_disp``) -- one safeguarded Newton step on :math:`\log\theta`
  for the marginal :math:`\ell` with :math:`m` fixed, using

  .. math::

      \partial_\theta \ell = \sum w \left[\psi(x+\theta) - \psi(\theta)
          - \log(1 + m/\theta) + \frac{m - x}{\theta + m}\right],

      \partial^2_\theta \ell = \sum w \left[\psi_1(x+\theta) - \psi_1(\theta)
          + \frac{1}{\theta} - \frac{1}{\theta + m} - \frac{m - x}{(\theta + m)^2}\right],

  with step halving until :math:`\ell` does not decrease (the old :math:`\theta` is kept if no
  step helps).  :math:`\theta` is kept in ``[1e-8, 1e8]``.
"""

from __future__ import annotations

import numpy as np
import scipy.special as sc

from .nmf import Callback, _check_options, _multiplicative_step, _Problem

__all__ = ["nbmf"]

_THETA_MIN = 1e-8
_THETA_MAX = 1e8
_MAX_LOG_STEP = 2.0  # largest change of log(theta) per iteration
_MAX_HALVINGS = 30


class _NBLikelihood:
    r"""Fast evaluation of the marginal NB log-likelihood and its :math:`\theta` derivatives.

    Splits :func:`pyrovae.metrics.nb_logpmf` summed over the observed entries into a part that
    depends only on :math:`\theta` and the counts, evaluated on the histogram of the observed
    count values (:math:`c_v` = number of observed entries equal to :math:`v`),

    .. math::

        C(\theta) = \sum_v c_v \left[-\log B(\theta, v + 1) - \log(\theta + v)\right]
                  = \sum_{ij} w_{ij} \log\frac{\Gamma(x_{ij}+\theta)}
                    {\Gamma(\theta)\, x_{ij}!},

    and an elementwise part that depends on the means,
    :math:`\sum_{ij} w_{ij} [x \log m - \theta \log(1 + m/\theta) - x \log(\theta + m)]`.
    """

    def __init__(self, prob: _Problem) -> None:
        self.prob = prob
        obs = prob.x if prob.mask is None else prob.x[prob.mask]
        self.values, counts = np.unique(obs, return_counts=True)
        self.counts = counts.astype(np.float64)

    def _coef(self, theta: float) -> float:
        v = self.values
        coef = np.where(v == 0, 0.0, -sc.betaln(theta, v + 1.0) - np.log(theta + v))
        return float(self.counts @ coef)

    def loglik(self, m: np.ndarray, theta: float) -> float:
        """Marginal NB log-likelihood of the observed entries under means ``m``."""
        x = self.prob.x
        elem = sc.xlogy(x, m) - theta * np.log1p(m / theta) - x * np.log(theta + m)
        return self._coef(theta) + self.prob.msum(elem)

    def theta_derivatives(self, m: np.ndarray, theta: float) -> tuple[float, float]:
        r"""First and second derivatives of :meth:`loglik` with respect to :math:`\theta`."""
        v, c, x = self.values, self.counts, self.prob.x
        tm = theta + m
        resid = (m - x) / tm
        grad = float(c @ (sc.digamma(v + theta) - sc.digamma(theta)))
        grad += self.prob.msum(resid - np.log1p(m / theta))
        hess = float(c @ (sc.polygamma(1, v + theta) - sc.polygamma(1, theta)))
        hess += self.prob.msum(1.0 / theta - (1.0 + resid) / tm)
        return grad, hess


def _theta_step(
    nb: _NBLikelihood, m: np.ndarray, theta: float, loglik: float
) -> tuple[float, float]:
    """One safeguarded Newton step on ``log(theta)``; returns ``(theta, loglik)``, never worse."""
    grad, hess = nb.theta_derivatives(m, theta)
    g_s = theta * grad  # derivatives with respect to s = log(theta)
    h_s = theta**2 * hess + g_s
    if g_s == 0.0 or not np.isfinite(g_s):
        return theta, loglik
    step = -g_s / h_s if h_s < 0 else np.sign(g_s) * _MAX_LOG_STEP
    step = float(np.clip(step, -_MAX_LOG_STEP, _MAX_LOG_STEP))
    log_theta = np.log(theta)
    lo, hi = np.log(_THETA_MIN), np.log(_THETA_MAX)
    for _ in range(_MAX_HALVINGS):
        cand = float(np.exp(np.clip(log_theta + step, lo, hi)))
        if cand == theta:
            break
        new = nb.loglik(m, cand)
        if new >= loglik:
            return cand, new
        step /= 2.0
    return theta, loglik


def nbmf(
    x,
    w=None,
    rank: int = 10,
    inv_disp: float = 0.1,
    fix_inv_disp: bool = False,
    max_iters: int = 10000,
    tol: float = 1e-6,
    seed: int | None = 0,
    eps: float = 1e-10,
    callback: Callback | None = None,
    return_inv_disp: bool = False,
):
    r"""Fit a weighted negative-binomial matrix factorisation :math:`m = L F^\top` by EM.

    See the module docstring for the model and the algorithm.  Iteration stops when the
    relative change of the marginal log-likelihood, :math:`|\ell_t - \ell_{t-1}| \le
    \text{tol}\,|\ell_t|`, or after ``max_iters`` iterations (no warning is emitted).  The
    initialisation is the same as :func:`~pyrovae.baselines.nmf` with the same ``seed``.

    :param x: ``(n, p)`` non-negative integer counts (numpy array, anything
        :func:`numpy.asarray` handles, torch tensor, or scipy sparse -- densified).  Entries
        with ``w == 0`` are ignored and may be NaN.
    :param w: optional ``(n, p)`` observation mask, bool or 0/1, ``True``/1 = observed.
    :param rank: number of factors :math:`K \ge 1`.
    :param inv_disp: inverse dispersion :math:`\theta > 0` (Gamma shape of :math:`u`; one value
        shared by all entries): the starting value, or the fixed value if ``fix_inv_disp``.
    :param fix_inv_disp: keep :math:`\theta` fixed at ``inv_disp`` instead of estimating it.
    :param max_iters: maximum number of EM iterations.
    :param tol: relative log-likelihood change for convergence.
    :param seed: seed for ``np.random.default_rng`` used for the initialisation.
    :param eps: positive floor applied to every entry of ``L`` and ``F``.
    :param callback: optional ``callback(iteration, loglik)`` called after initialisation
        (iteration 0) and after every iteration with the marginal NB log-likelihood; the
        sequence is non-decreasing (up to floating-point rounding).
    :param return_inv_disp: also return the fitted :math:`\theta` as a fourth value.
    :return: ``(l, f, loglik)``, or ``(l, f, loglik, inv_disp)`` if ``return_inv_disp``:
        ``l`` is ``(n, rank)``, ``f`` is ``(p, rank)`` (fitted NB means ``l @ f.T``),
        ``loglik`` is the final NB log-likelihood summed over the observed entries and
        ``inv_disp`` the final :math:`\theta` (float).
    :raises ValueError: for invalid counts or mask (see :func:`~pyrovae.baselines.nmf`),
        ``rank < 1``, or a non-positive / non-finite ``inv_disp``.
    """
    rank = _check_options(rank, max_iters, tol, eps)
    theta = float(inv_disp)
    if not (np.isfinite(theta) and theta > 0):
        raise ValueError(f"inv_disp must be finite and positive, got {inv_disp}")
    prob = _Problem(x, w)
    nb = _NBLikelihood(prob)
    left, right, _ = prob.init_factors(rank, seed, eps)
    weight = None if prob.mask is None else prob.mask.astype(np.float64)

    def expected_u(m: np.ndarray) -> np.ndarray:
        """E-step: posterior mean of u on observed entries (0 elsewhere)."""
        u_bar = (theta + prob.x) / (theta + m)
        return u_bar if weight is None else u_bar * weight

    m = left @ right.T
    loglik = nb.loglik(m, theta)
    if callback is not None:
        callback(0, loglik)
    for it in range(1, max_iters + 1):
        left = _multiplicative_step(left, right, prob.x / m, expected_u(m), eps)
        m = left @ right.T
        right = _multiplicative_step(right, left, (prob.x / m).T, expected_u(m).T, eps)
        m = left @ right.T
        new = nb.loglik(m, theta)
        if not fix_inv_disp:
            theta, new = _theta_step(nb, m, theta, new)
        if callback is not None:
            callback(it, new)
        converged = abs(new - loglik) <= tol * abs(new)
        loglik = new
        if converged:
            break
    if return_inv_disp:
        return left, right, loglik, theta
    return left, right, loglik
