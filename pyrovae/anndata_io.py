r"""Writing a fitted model's results back into an AnnData.

:func:`write_results` adds

* ``adata.obsm[key]`` — the latent means :math:`E_q[z_i]`, shape ``(cells, latent_dim)``;
* ``adata.layers[denoised_layer]`` — the posterior means :math:`E[\lambda_{ij} \mid x_i]` of
  :meth:`pyrovae.VAE.denoise`, a **dense** float32 ``(cells, genes)`` matrix (4 bytes per
  entry: 8 GB for 10^6 cells × 2000 genes). It is computed a block of cells at a time, so the
  count matrix itself is never densified, but the result is necessarily dense; pass
  ``denoised_layer=None`` to skip it for large data;
* ``adata.uns['pyrovae']`` — the settings as plain JSON-able types: the estimator's class,
  ``get_params()``, ``fit_settings_``, size-factor mode, training summary and the package version.

``anndata`` itself is never imported here: any object with AnnData's ``obs``/``var``/``layers``/
``obsm``/``uns`` works.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

import numpy as np

from . import __version__
from ._chunking import auto_chunk, row_chunks, row_sliceable, take_rows
from .data import is_anndata, matrix_of

__all__ = ["write_results", "settings_of"]


def _plain(value):
    """``value`` as plain JSON-able Python types (dicts, lists, str, int, float, bool, None)."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int | np.integer):
        return int(value)
    if isinstance(value, float | np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_plain(v) for v in value]
    return str(value)  # torch.dtype, a UPrior instance, a device ...


def settings_of(estimator) -> dict:
    """The settings of a fitted estimator as plain JSON-able types (what goes in ``uns``).

    Keys: ``version``, ``estimator`` (class name), ``params`` (``get_params()``; a prior given
    as an object is stored as its ``repr``), ``fit_settings``, ``size_factor_mode``,
    ``library_median`` (or ``None``), ``n_features``, ``epochs_run``, ``best_epoch``,
    ``stopped_early``, ``final_loss``, ``final_val_loss`` (``None`` without validation).
    """
    estimator._check_fitted()
    history = estimator.history_
    loss = list(history.loss)
    val = list(history.val_loss)
    out = {
        "version": __version__,
        "estimator": type(estimator).__name__,
        "params": estimator.get_params(),
        "fit_settings": getattr(estimator, "fit_settings_", {}),
        "size_factor_mode": getattr(estimator, "size_factor_mode_", None),
        "library_median": getattr(estimator, "library_median_", None),
        "n_features": estimator.n_features_in_,
        "epochs_run": len(loss),
        "best_epoch": history.best_epoch,
        "stopped_early": history.stopped_early,
        "final_loss": loss[-1] if loss else None,
        "final_val_loss": val[-1] if val else None,
    }
    out = _plain(out)
    _finite_or_none(out)
    json.dumps(out, allow_nan=False)  # guarantee: strict JSON
    return out


def write_results(
    estimator,
    adata,
    layer: str | None = None,
    key: str = "X_pyrovae",
    denoised_layer: str | None = "pyrovae_denoised",
    n_samples: int = 100,
    size_factor=None,
    seed: int = 0,
    chunk_size: int | None = None,
    extra_uns: Mapping | None = None,
):
    r"""Write latent means, denoised values and settings of a fitted ``estimator`` into ``adata``.

    The counts are read from ``layers[layer]`` (default: ``layers['counts']`` when present,
    else ``X``; sparse stays sparse) in blocks of ``chunk_size`` cells. Each cell's outputs do
    not depend on the other cells of its block (see :mod:`pyrovae.estimator`), so the result
    equals that of one ``estimator.latent(x)`` / ``estimator.denoise(x)`` call on the whole
    matrix.

    :param estimator: a fitted :class:`pyrovae.VAE`.
    :param adata: an AnnData (not a view) with as many genes as the model was fitted on; it is
        modified in place and returned.
    :param layer: the layer holding raw counts (as in ``fit``).
    :param key: ``obsm`` key for the ``(cells, latent_dim)`` latent means :math:`E_q[z_i]`.
    :param denoised_layer: layer name for :math:`E[\lambda_{ij} \mid x_i]` (dense float32,
        cells × genes — 4 bytes per entry); ``None`` skips it.
    :param n_samples: draws from :math:`q(z \mid x)` per cell for ``denoise``.
    :param size_factor: per-cell size factors when the model was fitted with explicit ones
        (``size_factor_mode_ == "given"``); otherwise leave ``None`` (``"library"`` models
        recompute them from the counts, on the training median's scale).
    :param seed: seed of the ``denoise`` draws.
    :param chunk_size: cells per block; default: enough for about 64 MiB per
        particles × cells × genes tensor (at most 1024).
    :param extra_uns: more JSON-able entries for ``uns['pyrovae']`` (e.g. held-out scores).
    :return: ``adata``.
    :raises ValueError: ``adata`` is not an AnnData, is a view, or has the wrong number of genes.
    """
    if not is_anndata(adata):
        raise ValueError(f"adata must be an AnnData, got {type(adata).__name__}")
    if getattr(adata, "is_view", False):
        raise ValueError("adata is a view; pass adata.copy() so results can be written to it")
    estimator._check_fitted()
    x = row_sliceable(matrix_of(adata, layer))
    n, p = x.shape
    if p != estimator.n_features_in_:
        raise ValueError(
            f"adata has {p} genes but the model was fitted on {estimator.n_features_in_}"
        )
    if size_factor is not None:
        size_factor = np.asarray(size_factor, dtype=np.float64)
        if size_factor.shape != (n,):
            raise ValueError(f"size_factor must have shape ({n},), got {size_factor.shape}")
    step = auto_chunk(p, n_samples if denoised_layer is not None else 1, chunk_size)
    z = np.empty((n, estimator.latent_dim), dtype=np.float32)
    lam = None if denoised_layer is None else np.empty((n, p), dtype=np.float32)
    for rows in row_chunks(n, step):
        xb = take_rows(x, rows)
        z[rows] = estimator.latent(xb)
        if lam is not None:
            lam[rows] = estimator.denoise(
                xb, size_factor=take_rows(size_factor, rows), n_samples=n_samples, seed=seed
            )
    adata.obsm[key] = z
    if lam is not None:
        adata.layers[denoised_layer] = lam
    uns = settings_of(estimator)
    if layer is None:
        layer = "counts" if "counts" in adata.layers else "X"
    uns.update(
        counts_layer=layer,
        obsm_key=key,
        denoised_layer=denoised_layer,
        denoise_n_samples=int(n_samples),
    )
    if extra_uns:
        uns.update(_plain(dict(extra_uns)))
        _finite_or_none(uns)
    adata.uns["pyrovae"] = uns
    return adata


def _finite_or_none(value):
    """Replace NaN/inf floats (not valid JSON) by ``None``, in place, in nested dicts/lists."""
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, float) and not math.isfinite(v):
                value[k] = None
            else:
                _finite_or_none(v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if isinstance(v, float) and not math.isfinite(v):
                value[i] = None
            else:
                _finite_or_none(v)
