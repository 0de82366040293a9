r"""Weighted Poisson (KL) non-negative matrix factorisation.

Model: for observed entries (:math:`w_{ij} = 1`)

.. math::

    x_{ij} \sim \operatorname{Poisson}(m_{ij}), \qquad m = L F^\top, \quad
    L \in \mathbb{R}_{\ge 0}^{n \times K},\ F \in \mathbb{R}_{\ge 0}^{p \times K},

fitted by maximum likelihood, i.e. minimising the generalised KL divergence over the observed
entries.  The log-likelihood is

.. math::

    \ell(L, F) = \sum_{ij} w_{ij} \left[x_{ij} \log m_{ij} - m_{ij} - \log x_{ij}!\right].

Lee & Seung's multiplicative updates in weighted form,

.. math::

    L \leftarrow L \odot \frac{(W \odot X \oslash m)\, F}{W F}, \qquad
    F \leftarrow F \odot \frac{(W \odot X \oslash m)^\top L}{W^\top L},

are minorise-maximise steps, so :math:`\ell` never decreases.  Each factor is then floored at
``eps`` (the projection of the separable, concave surrogate onto :math:`[\epsilon, \infty)`,
which keeps monotonicity and keeps :math:`m > 0`).  Entries with :math:`w_{ij} = 0` have no
influence on the fit; they may hold any value, including NaN.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import scipy.sparse
import scipy.special as sc

from ..metrics import _as_mask, _as_numpy, _check_counts

__all__ = ["nmf"]

#: ``callback(iteration, loglik)``: called after initialisation (iteration 0) and after every
#: iteration with the current log-likelihood.
Callback = Callable[[int, float], None]


class _Problem:
    """Validated inputs shared by :func:`nmf` and :func:`~pyrovae.baselines.nbmf`.

    :ivar x: ``(n, p)`` float64 counts with unobserved entries set to 0.
    :ivar mask: ``(n, p)`` bool mask of observed entries, or ``None`` if all are observed.
    :ivar n_obs: number of observed entries.
    :ivar log_fact: :math:`\\sum_{ij} w_{ij} \\log x_{ij}!`.
    """

    def __init__(self, x, w) -> None:
        if scipy.sparse.issparse(x):
            x = x.toarray()
        x = _as_numpy(x, "x")
        if x.ndim != 2:
            raise ValueError(f"x must be a 2-D matrix, got shape {x.shape}")
        if x.size == 0:
            raise ValueError(f"x must be non-empty, got shape {x.shape}")
        mask = None if w is None else _as_mask(w, x.shape)
        if mask is not None and mask.all():
            mask = None
        if mask is None:
            _check_counts(x)
            self.n_obs = x.size
        else:
            _check_counts(x[mask])
            self.n_obs = int(mask.sum())
            if self.n_obs == 0:
                raise ValueError("w marks no entry as observed")
            x = np.where(mask, x, 0.0)
        self.x = x
        self.mask = mask
        self.log_fact = float(np.sum(sc.gammaln(x + 1.0)))  # 0 for unobserved (x = 0)

    def msum(self, a: np.ndarray) -> float:
        """Sum of ``a`` over the observed entries."""
        return float(np.sum(a) if self.mask is None else np.sum(a, where=self.mask))

    def poisson_loglik(self, m: np.ndarray) -> float:
        """Poisson log-likelihood of the observed entries under means ``m``."""
        return float(np.sum(sc.xlogy(self.x, m))) - self.msum(m) - self.log_fact

    def init_factors(
        self, rank: int, seed, eps: float
    ) -> tuple[np.ndarray, np.ndarray, np.random.Generator]:
        """Random positive factors with ``mean(L @ F.T)`` close to the observed mean count."""
        rng = np.random.default_rng(seed)
        n, p = self.x.shape
        scale = np.sqrt(max(self.x.sum() / self.n_obs, eps) / rank)
        left = np.maximum(scale * rng.uniform(0.5, 1.5, size=(n, rank)), eps)
        right = np.maximum(scale * rng.uniform(0.5, 1.5, size=(p, rank)), eps)
        return left, right, rng


def _check_options(rank, max_iters, tol, eps) -> int:
    """Validate the common fitting options and return ``rank`` as an int."""
    try:
        rank = operator.index(rank)
    except TypeError as err:
        raise ValueError(f"rank must be an integer, got {rank!r}") from err
    if rank < 1:
        raise ValueError(f"rank must be at least 1, got {rank}")
    try:
        if operator.index(max_iters) < 0:
            raise TypeError
    except TypeError as err:
        raise ValueError(f"max_iters must be a non-negative integer, got {max_iters!r}") from err
    if not tol >= 0:
        raise ValueError(f"tol must be non-negative, got {tol}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps}")
    return rank


def _multiplicative_step(
    a: np.ndarray, b: np.ndarray, ratio: np.ndarray, weight: np.ndarray | None, eps: float
) -> np.ndarray:
    r"""One weighted KL multiplicative update of the left factor ``a`` in ``m = a @ b.T``.

    .. math::

        a \leftarrow \max\!\left(\epsilon,\ a \odot \frac{R\, b}{V b}\right)

    with ``ratio`` :math:`R = W \odot X \oslash m` and ``weight`` :math:`V` (``None`` means all
    ones, so :math:`V b` is the column sums of ``b``).  Rows with a zero denominator (no
    observed entry) are left unchanged.
    """
    num = ratio @ b
    den = np.broadcast_to(b.sum(axis=0), num.shape) if weight is None else weight @ b
    factor = np.divide(num, den, out=np.ones_like(num), where=den > 0)
    return np.maximum(a * factor, eps)


def nmf(
    x,
    w=None,
    rank: int = 10,
    max_iters: int = 10000,
    tol: float = 1e-6,
    seed: int | None = 0,
    eps: float = 1e-10,
    callback: Callback | None = None,
) -> tuple[np.ndarray, np.ndarray, float]:
    r"""Fit a weighted Poisson (KL) NMF by multiplicative updates.

    See the module docstring for the model and updates.  Iteration stops when the relative
    change of the log-likelihood, :math:`|\ell_t - \ell_{t-1}| \le \text{tol}\,|\ell_t|`, or
    after ``max_iters`` iterations (no warning is emitted; use ``callback`` to monitor).

    :param x: ``(n, p)`` non-negative integer counts (numpy array, anything
        :func:`numpy.asarray` handles, torch tensor, or scipy sparse -- densified).  Entries
        with ``w == 0`` are ignored and may be NaN.
    :param w: optional ``(n, p)`` observation mask, bool or 0/1, ``True``/1 = observed.
        ``None`` means all entries are observed.
    :param rank: number of factors :math:`K \ge 1`.
    :param max_iters: maximum number of iterations (one iteration updates ``L`` then ``F``).
    :param tol: relative log-likelihood change for convergence.
    :param seed: seed for ``np.random.default_rng`` used for the initialisation (the global
        RNG is never used); the fit is deterministic given the seed.
    :param eps: positive floor applied to every entry of ``L`` and ``F``.
    :param callback: optional ``callback(iteration, loglik)`` called after initialisation
        (iteration 0) and after every iteration; the sequence of ``loglik`` values is
        non-decreasing (up to floating-point rounding).
    :return: ``(l, f, loglik)``: ``l`` is ``(n, rank)``, ``f`` is ``(p, rank)`` (so the fitted
        means are ``l @ f.T``) and ``loglik`` is the final Poisson log-likelihood summed over
        the observed entries (including the :math:`-\log x!` terms).
    :raises ValueError: for negative, non-finite or non-integer observed counts, a mask of the
        wrong shape or with values other than 0/1, no observed entries, or ``rank < 1``.
    """
    rank = _check_options(rank, max_iters, tol, eps)
    prob = _Problem(x, w)
    left, right, _ = prob.init_factors(rank, seed, eps)
    weight = None if prob.mask is None else prob.mask.astype(np.float64)
    weight_t = None if weight is None else weight.T

    m = left @ right.T
    loglik = prob.poisson_loglik(m)
    if callback is not None:
        callback(0, loglik)
    for it in range(1, max_iters + 1):
        left = _multiplicative_step(left, right, prob.x / m, weight, eps)
        m = left @ right.T
        right = _multiplicative_step(right, left, (prob.x / m).T, weight_t, eps)
        m = left @ right.T
        new = prob.poisson_loglik(m)
        if callback is not None:
            callback(it, new)
        converged = abs(new - loglik) <= tol * abs(new)
        loglik = new
        if converged:
            break
    return left, right, loglik
