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

``anndata`` itself is never imported by :func:`write_results`: any object with AnnData's
``obs``/``var``/``layers``/``obsm``/``uns`` works.

For data read from disk (:class:`pyrovae.sources.BackedSource`), :func:`stream_results` writes
the same entries into a copy of the ``.h5ad`` file with h5py: the latent means from memory, the
denoised layer one block of rows at a time from a ``denoise_rows(start, stop)`` callable, so
nothing of size cells × genes is ever in memory. :func:`results_uns` builds the ``uns`` entry
for both.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping

import numpy as np

from . import __version__
from ._chunking import auto_chunk, row_chunks, row_sliceable, take_rows
from .data import is_anndata, matrix_of

__all__ = ["write_results", "settings_of", "results_uns", "stream_results"]


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
    if layer is None:
        layer = "counts" if "counts" in adata.layers else "X"
    uns = results_uns(estimator, layer, key, denoised_layer, n_samples, extra_uns)
    adata.uns["pyrovae"] = uns
    return adata


def results_uns(
    estimator,
    counts_layer: str,
    key: str = "X_pyrovae",
    denoised_layer: str | None = "pyrovae_denoised",
    n_samples: int = 100,
    extra_uns: Mapping | None = None,
) -> dict:
    """The ``uns['pyrovae']`` entry that :func:`write_results` and :func:`stream_results` write:
    :func:`settings_of` plus ``counts_layer``, ``obsm_key``, ``denoised_layer`` and
    ``denoise_n_samples``, updated with ``extra_uns`` (plain JSON-able types; NaN → ``None``)."""
    uns = settings_of(estimator)
    uns.update(
        counts_layer=counts_layer,
        obsm_key=key,
        denoised_layer=denoised_layer,
        denoise_n_samples=int(n_samples),
    )
    if extra_uns:
        uns.update(_plain(dict(extra_uns)))
        _finite_or_none(uns)
    return uns


def _write_elem():
    try:
        from anndata.io import write_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import write_elem
    return write_elem


def _group(parent, name: str):
    """``parent[name]``, created as an empty AnnData mapping when missing."""
    if name not in parent:
        group = parent.create_group(name)
        group.attrs["encoding-type"] = "dict"
        group.attrs["encoding-version"] = "0.1.0"
    return parent[name]


def _n_obs(f) -> int:
    """Number of cells of an open .h5ad file (from the index of ``obs``)."""
    obs = f["obs"]
    index = obs.attrs.get("_index", "_index")
    index = index.decode() if isinstance(index, bytes) else index
    return int(obs[index].shape[0])


def stream_results(
    input_path,
    output_path,
    latent: np.ndarray,
    denoise_rows: Callable[[int, int], np.ndarray] | None = None,
    *,
    n_genes: int | None = None,
    key: str = "X_pyrovae",
    denoised_layer: str | None = "pyrovae_denoised",
    uns: Mapping | None = None,
    block_size: int = 1024,
) -> None:
    r"""Write results for an ``.h5ad`` too large for memory: the input file is copied to
    ``output_path`` and the results are added to the copy with h5py, never holding a
    cells × genes array.

    * ``obsm[key]`` — ``latent``, the ``(cells, K)`` latent means (in memory: ``K`` values per
      cell);
    * ``layers[denoised_layer]`` — a chunked float32 ``(cells, genes)`` dataset filled one block of
      ``block_size`` rows at a time with ``denoise_rows(start, stop)`` (which returns the
      ``(stop - start, genes)`` values :math:`E[\lambda_{ij} \mid x_i]` of cells
      ``start..stop-1``); skipped when either is ``None``;
    * ``uns['pyrovae']`` — ``uns`` (e.g. from :func:`results_uns`).

    Entries already present under these names are replaced. The file reads back with
    ``anndata.read_h5ad`` like one written by :func:`write_results` and ``write_h5ad``.

    :param input_path: the ``.h5ad`` the results belong to (never modified).
    :param output_path: the file to write (overwritten).
    :param n_genes: genes of the denoised layer (default: the length of ``var``).
    :raises ValueError: ``latent`` or a block of ``denoise_rows`` has the wrong shape.
    """
    import shutil

    import h5py

    if not (isinstance(block_size, int | np.integer) and block_size >= 1):
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    latent = np.asarray(latent)
    shutil.copyfile(input_path, output_path)
    write_elem = _write_elem()
    with h5py.File(output_path, "r+") as f:
        n = _n_obs(f)
        if latent.ndim != 2 or latent.shape[0] != n:
            raise ValueError(f"latent must have shape ({n}, K), got {latent.shape}")
        obsm = _group(f, "obsm")
        if key in obsm:
            del obsm[key]
        write_elem(obsm, key, latent)
        if denoised_layer is not None and denoise_rows is not None:
            if n_genes is None:
                var = f["var"]
                index = var.attrs.get("_index", "_index")
                n_genes = int(var[index.decode() if isinstance(index, bytes) else index].shape[0])
            layers = _group(f, "layers")
            if denoised_layer in layers:
                del layers[denoised_layer]
            rows = int(max(1, min(block_size, n, 2**28 // max(1, n_genes))))  # chunk <= 1 GiB
            ds = layers.create_dataset(
                denoised_layer, shape=(n, n_genes), dtype=np.float32, chunks=(rows, n_genes)
            )
            ds.attrs["encoding-type"] = "array"
            ds.attrs["encoding-version"] = "0.2.0"
            for rows_ in row_chunks(n, int(block_size)):
                block = np.asarray(denoise_rows(rows_.start, rows_.stop), dtype=np.float32)
                if block.shape != (rows_.stop - rows_.start, n_genes):
                    raise ValueError(
                        f"denoise_rows({rows_.start}, {rows_.stop}) returned shape {block.shape}, "
                        f"expected {(rows_.stop - rows_.start, n_genes)}"
                    )
                ds[rows_.start : rows_.stop] = block
        if uns is not None:
            group = _group(f, "uns")
            if "pyrovae" in group:
                del group["pyrovae"]
            write_elem(group, "pyrovae", dict(uns))


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
