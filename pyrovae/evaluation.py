r"""Held-out evaluation on real count data: masked imputation and molecular cross-validation.

Two protocols; in both, a score only ever reads data the fit never saw.

**Imputation of hidden entries** (:func:`mask_entries`, :func:`imputation_experiment`). A random
set :math:`H` of entries — zeros and non-zeros alike — is hidden (:math:`w_{ij} = 0`); the model
is fitted with ``w`` (hidden entries contribute nothing to the likelihood, the encoder sees them
as 0, and ``size_factor="library"`` counts only observed entries), evaluated with the same ``w``,
and scored on :math:`H`:

.. math::

    S_H = \sum_{(i,j) \in H} \log \operatorname{Poisson}(x_{ij}; \hat\lambda_{ij})

(:func:`pyrovae.metrics.imputation_score`), for :math:`\hat\lambda =` ``denoise(x, w)``
(:math:`E[\lambda_{ij} \mid x_{i,\text{obs}}]`, which for a hidden entry is
:math:`E_q[r_{ij}]\,E[u]`), :math:`\hat\lambda =` ``predict(x, w)``
(:math:`s_i\,\mu(E_q z_i)_j`) and, as a baseline, the masked Poisson NMF fitted to the same
observed entries (:func:`pyrovae.baselines.nmf`). Because most entries of single-cell data are
zero, :math:`S_H` is dominated by the hidden zeros; the mean over the hidden *non-zero* entries is
reported as well.

**Binomial thinning** (:func:`thinning_experiment`; Batson et al. 2019). Every molecule is sent to
a training matrix with probability :math:`f` (:func:`pyrovae.metrics.binomial_thin`):
:math:`x^{train}_{ij} \sim \operatorname{Binomial}(x_{ij}, f)`,
:math:`x^{val} = x - x^{train}`. If :math:`x_{ij} \sim \operatorname{Poisson}(\lambda_{ij})`, the
halves are independent Poisson with rates :math:`f\lambda_{ij}` and :math:`(1-f)\lambda_{ij}`. The
model is fitted on :math:`x^{train}` only, :math:`\hat\lambda^{train} =` ``denoise(x_train)`` is
put on the validation scale by :func:`pyrovae.metrics.thinning_rescale`
(:math:`\hat\lambda^{val} = \hat\lambda^{train}(1-f)/f`) and scored on every entry of
:math:`x^{val}`:

.. math::

    \frac{1}{np} \sum_{i,j} \log \operatorname{Poisson}(x^{val}_{ij}; \hat\lambda^{val}_{ij})

(:func:`pyrovae.metrics.poisson_heldout_mean`), and the same for Poisson NMF fitted on
:math:`x^{train}`.

**Memory.** Scores are sums over entries, so they are accumulated a block of cells at a time:
neither the counts (sparse stays sparse) nor the estimates :math:`\hat\lambda` are ever held as a
full dense cells × genes matrix. Exceptions: the mask ``w`` is a dense ``(cells, genes)`` bool
array (1 byte per entry), and the NMF baseline densifies the counts and its fitted means
(:func:`pyrovae.baselines.nmf` works on dense arrays) — pass ``baseline=False`` to skip it on
large data.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ._chunking import auto_chunk, row_chunks, row_sliceable, take_rows
from .baselines import nmf
from .data import as_mask, matrix_of
from .estimator import VAE
from .metrics import binomial_thin, imputation_score, poisson_heldout_mean, thinning_rescale

__all__ = ["mask_entries", "imputation_experiment", "thinning_experiment", "NMF_DEFAULTS"]

#: Options of the NMF baseline unless ``nmf_kwargs`` overrides them (``nmf``'s own default of
#: 10,000 iterations takes minutes on a few thousand cells).
NMF_DEFAULTS = {"max_iters": 1000, "tol": 1e-6}

_MASK_BLOCK = (
    2**22
)  # entries drawn per block in mask_entries (fixed: the mask depends on seed only)


def mask_entries(x, frac: float = 0.1, seed: int = 0) -> np.ndarray:
    r"""A random mask hiding about a fraction ``frac`` of the entries of ``x``.

    Each entry is hidden independently with probability ``frac`` — whatever its value, so the
    hidden set holds zeros and non-zeros in the proportions of the data. Only ``x.shape`` is
    read (``x`` may be dense, scipy.sparse, a torch tensor or an AnnData); the mask depends only
    on ``seed`` and the shape.

    :param x: the ``(cells, genes)`` count matrix (or anything with that ``shape``).
    :param frac: probability of hiding an entry, in ``(0, 1)``.
    :param seed: seed for ``np.random.default_rng``.
    :return: a dense ``(cells, genes)`` **bool** array ``w``: ``True`` = observed (used for
        fitting), ``False`` = hidden (scored).
    """
    if not 0.0 < frac < 1.0:
        raise ValueError(f"frac must lie strictly between 0 and 1, got {frac!r}")
    shape = tuple(getattr(x, "shape", np.shape(x)))
    if len(shape) != 2:
        raise ValueError(f"x must be a 2-D matrix (cells × genes), got shape {shape}")
    n, p = shape
    rng = np.random.default_rng(seed)
    w = np.empty((n, p), dtype=bool)
    for rows in row_chunks(n, max(1, _MASK_BLOCK // max(p, 1))):
        w[rows] = rng.random((rows.stop - rows.start, p)) >= frac
    return w


def _estimator(estimator) -> VAE:
    """A :class:`~pyrovae.VAE` instance (used as is) or one built by calling a factory."""
    if isinstance(estimator, VAE):
        return estimator
    if callable(estimator):
        est = estimator()
        if not isinstance(est, VAE):
            raise TypeError(f"the estimator factory returned a {type(est).__name__}, not a VAE")
        return est
    raise TypeError(f"estimator must be a pyrovae VAE or a factory of one, got {estimator!r}")


def _fit_kwargs(fit_kwargs, n_cells: int) -> tuple[dict, np.ndarray | None]:
    """Copy of ``fit_kwargs`` and the explicit size factors to reuse at evaluation (or None)."""
    kwargs = dict(fit_kwargs or {})
    if "w" in kwargs:
        raise ValueError("pass the mask as the w argument of the experiment, not in fit_kwargs")
    s = kwargs.get("size_factor")
    if s is None or isinstance(s, str):
        return kwargs, None
    s = np.asarray(s, dtype=np.float64)
    if s.shape != (n_cells,):
        raise ValueError(f"size_factor must have shape ({n_cells},), got {s.shape}")
    return kwargs, s


def _nmf_means(x, w, rank, seed, nmf_kwargs):
    """``(l, f)`` of the Poisson NMF baseline (densifies ``x``; see the module docstring)."""
    kwargs = {**NMF_DEFAULTS, **(nmf_kwargs or {})}
    kwargs.setdefault("seed", seed)
    left, right, _ = nmf(x, w, rank=rank, **kwargs)
    return left, right


def _ratio(a: float, b: int) -> float:
    return a / b if b else float("nan")


def imputation_experiment(
    estimator,
    x,
    w=None,
    frac: float = 0.1,
    seed: int = 0,
    fit_kwargs: dict | None = None,
    *,
    layer: str | None = None,
    n_samples: int = 100,
    baseline: bool = True,
    nmf_rank: int | None = None,
    nmf_kwargs: dict | None = None,
    chunk_size: int | None = None,
) -> dict:
    r"""Hide entries, fit with the mask, and score the imputation of the hidden entries.

    See the module docstring for the protocol. The VAE is fitted with
    ``estimator.fit(x, w=w, **fit_kwargs)``, then ``denoise(x, w=w)`` and ``predict(x, w=w)``
    are scored on the hidden entries (``w == 0``) with
    :func:`pyrovae.metrics.imputation_score`; the masked Poisson NMF baseline is fitted to the
    same observed entries and scored the same way.

    :param estimator: an unfitted :class:`pyrovae.VAE` (fitted in place — refitted if it was
        fitted) or a zero-argument factory returning one.
    :param x: ``(cells, genes)`` counts: numpy, torch, scipy.sparse or AnnData (see ``layer``).
    :param w: a user mask (``True``/1 = observed); default :func:`mask_entries`\ ``(x, frac,
        seed)``.
    :param frac: fraction of entries hidden when ``w`` is not given.
    :param seed: seed of the mask and of the NMF initialization (the VAE's fit seed is
        ``fit_kwargs['seed']``, default 0).
    :param fit_kwargs: keyword arguments of ``estimator.fit`` (``size_factor``, ``max_epochs``,
        ``batch_size``, ...), except ``w``.
    :param layer: AnnData layer holding the counts.
    :param n_samples: draws from :math:`q(z \mid x)` for ``denoise``.
    :param baseline: fit the NMF baseline (it densifies ``x``).
    :param nmf_rank: NMF rank; default the estimator's ``latent_dim``.
    :param nmf_kwargs: options of :func:`pyrovae.baselines.nmf` (default :data:`NMF_DEFAULTS`).
    :param chunk_size: cells per evaluation block (default: automatic).
    :return: a dict with ``scores`` — a DataFrame indexed by method (``vae_denoise``,
        ``vae_predict``, ``nmf``) with columns ``total`` (:math:`S_H`, summed log pmf over the
        hidden entries), ``mean`` (per hidden entry) and ``mean_nonzero`` (per hidden non-zero
        entry) — and ``n_hidden``, ``n_hidden_nonzero``, ``w`` and the fitted ``estimator``.
    """
    est = _estimator(estimator)
    x = row_sliceable(matrix_of(x, layer))
    n, p = x.shape
    w = mask_entries(x, frac, seed) if w is None else as_mask(w, (n, p))
    if w.all():
        raise ValueError("the mask hides no entry: nothing to score")
    kwargs, s = _fit_kwargs(fit_kwargs, n)
    est.fit(x, w=w, **kwargs)
    methods = ["vae_denoise", "vae_predict"]
    nmf_lr = None
    if baseline:
        rank = est.latent_dim if nmf_rank is None else nmf_rank
        nmf_lr = _nmf_means(x, w, rank, seed, nmf_kwargs)
        methods.append("nmf")
    total = dict.fromkeys(methods, 0.0)  # summed log pmf over the hidden entries
    total_nz = dict.fromkeys(methods, 0.0)  # ... over the hidden non-zero entries
    n_hidden = n_hidden_nz = 0
    for rows in row_chunks(n, auto_chunk(p, n_samples, chunk_size)):
        xb, wb, sb = take_rows(x, rows), w[rows], take_rows(s, rows)
        xd = xb.toarray() if sp.issparse(xb) else np.asarray(xb)  # one block of cells
        # "observed or zero": as a mask, it leaves only the hidden non-zero entries to score
        w_nonzero = wb | (xd == 0)
        n_hidden += int((~wb).sum())
        n_hidden_nz += int((~w_nonzero).sum())
        lam = {
            "vae_denoise": est.denoise(xb, w=wb, size_factor=sb, n_samples=n_samples, seed=seed),
            "vae_predict": est.predict(xb, w=wb, size_factor=sb),
        }
        if nmf_lr is not None:
            lam["nmf"] = nmf_lr[0][rows] @ nmf_lr[1].T
        for m in methods:
            total[m] += imputation_score(lam[m], xd, wb)
            total_nz[m] += imputation_score(lam[m], xd, w_nonzero)
    scores = pd.DataFrame(
        {
            "total": [total[m] for m in methods],
            "mean": [_ratio(total[m], n_hidden) for m in methods],
            "mean_nonzero": [_ratio(total_nz[m], n_hidden_nz) for m in methods],
        },
        index=pd.Index(methods, name="method"),
    )
    return {
        "scores": scores,
        "n_hidden": n_hidden,
        "n_hidden_nonzero": n_hidden_nz,
        "w": w,
        "estimator": est,
    }


def thinning_experiment(
    estimator,
    x,
    frac: float = 0.5,
    seed: int = 0,
    fit_kwargs: dict | None = None,
    *,
    layer: str | None = None,
    n_samples: int = 100,
    baseline: bool = True,
    nmf_rank: int | None = None,
    nmf_kwargs: dict | None = None,
    chunk_size: int | None = None,
) -> dict:
    r"""Molecular cross-validation: fit on a binomially thinned half, score the other half.

    See the module docstring for the protocol: ``x_train, x_val = binomial_thin(x, frac,
    seed)``; the VAE is fitted on ``x_train`` only and
    :math:`\hat\lambda = \text{thinning\_rescale}(\text{denoise}(x^{train}), f)` (and the same
    for ``predict`` and for the NMF baseline fitted on ``x_train``) is scored on all entries of
    ``x_val`` by the mean Poisson log pmf (:func:`pyrovae.metrics.poisson_heldout_mean`,
    accumulated a block of cells at a time).

    :param estimator: an unfitted :class:`pyrovae.VAE` (fitted in place) or a zero-argument
        factory returning one.
    :param x: ``(cells, genes)`` integer counts: numpy, torch, scipy.sparse (thinned without
        densifying) or AnnData (see ``layer``).
    :param frac: fraction :math:`f` of molecules in the training half, in ``(0, 1)``.
    :param seed: seed of the split and of the NMF initialization.
    :param fit_kwargs: keyword arguments of ``estimator.fit`` (e.g. ``size_factor="library"``:
        then every cell needs at least one training molecule).
    :param layer: AnnData layer holding the counts.
    :param n_samples: draws from :math:`q(z \mid x)` for ``denoise``.
    :param baseline: fit the NMF baseline (it densifies ``x_train``).
    :param nmf_rank: NMF rank; default the estimator's ``latent_dim``.
    :param nmf_kwargs: options of :func:`pyrovae.baselines.nmf` (default :data:`NMF_DEFAULTS`).
    :param chunk_size: cells per evaluation block (default: automatic).
    :return: a dict with ``scores`` — a DataFrame indexed by method (``vae_denoise``,
        ``vae_predict``, ``nmf``) with columns ``total`` (summed log pmf of ``x_val``) and
        ``mean`` (per entry: the :func:`~pyrovae.metrics.poisson_heldout_mean`) — and
        ``n_entries``, ``frac``, ``x_train``, ``x_val`` and the fitted ``estimator``.
    """
    est = _estimator(estimator)
    x = matrix_of(x, layer)
    if not sp.issparse(x):
        x = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    x_train, x_val = binomial_thin(x, frac, seed)
    n, p = x_train.shape
    kwargs, s = _fit_kwargs(fit_kwargs, n)
    est.fit(x_train, **kwargs)
    methods = ["vae_denoise", "vae_predict"]
    nmf_lr = None
    if baseline:
        rank = est.latent_dim if nmf_rank is None else nmf_rank
        nmf_lr = _nmf_means(x_train, None, rank, seed, nmf_kwargs)
        methods.append("nmf")
    total = dict.fromkeys(methods, 0.0)  # summed Poisson log pmf of x_val
    for rows in row_chunks(n, auto_chunk(p, n_samples, chunk_size)):
        xb, sb = take_rows(x_train, rows), take_rows(s, rows)
        vb = take_rows(x_val, rows)
        vb = vb.toarray() if sp.issparse(vb) else vb  # one block of cells
        lam = {
            "vae_denoise": est.denoise(xb, size_factor=sb, n_samples=n_samples, seed=seed),
            "vae_predict": est.predict(xb, size_factor=sb),
        }
        if nmf_lr is not None:
            lam["nmf"] = nmf_lr[0][rows] @ nmf_lr[1].T
        for m in methods:
            lam_val = thinning_rescale(np.asarray(lam[m], dtype=np.float64), frac)
            total[m] += poisson_heldout_mean(lam_val, vb) * vb.size
    scores = pd.DataFrame(
        {"total": [total[m] for m in methods], "mean": [total[m] / (n * p) for m in methods]},
        index=pd.Index(methods, name="method"),
    )
    return {
        "scores": scores,
        "n_entries": n * p,
        "frac": frac,
        "x_train": x_train,
        "x_val": x_val,
        "estimator": est,
    }
