"""Classical matrix-factorisation baselines for count matrices (numpy/scipy, no torch).

* :func:`nmf` -- weighted Poisson (KL) NMF by multiplicative updates.
* :func:`nbmf` -- weighted negative-binomial matrix factorisation by EM over a Gamma random
  effect, with the inverse dispersion estimated or fixed.

Both return ``(l, f, loglik)`` with fitted means ``l @ f.T`` and the log-likelihood summed over
the observed entries (``w == 1``); entries with ``w == 0`` have no influence on the fit.
"""

from .nbmf import nbmf
from .nmf import nmf

__all__ = ["nbmf", "nmf"]
