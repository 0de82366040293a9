"""Input validation at the public boundary, size factors, and cell batches.

Counts arrive as a numpy array, a torch tensor or a scipy.sparse matrix (cells × genes). They are
checked once here — shape, finiteness, sign, integrality, mask shape and values — and kept in
their own storage: a sparse matrix stays sparse and is densified one batch of cells at a time
(:func:`pyrovae.sources.gather_rows`). Counts on disk are :class:`pyrovae.sources.BackedSource`;
:func:`pyrovae.sources.as_source` chooses between the two.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

__all__ = [
    "CountData",
    "as_counts",
    "as_mask",
    "library_size",
    "matrix_of",
    "NonIntegerCountsWarning",
]


class NonIntegerCountsWarning(UserWarning):
    """Counts that are not whole numbers were accepted because the caller allowed them."""


def is_anndata(x) -> bool:
    """Whether ``x`` looks like an AnnData object (checked without importing anndata)."""
    return hasattr(x, "obs") and hasattr(x, "var") and hasattr(x, "layers")


def matrix_of(x, layer: str | None = None):
    """The count matrix of ``x``: itself, or for an AnnData ``layers[layer]``, else
    ``layers['counts']`` when present, else ``X`` (sparse stays sparse)."""
    if not is_anndata(x):
        if layer is not None:
            raise ValueError("layer is only meaningful for AnnData input")
        return x
    if layer is not None:
        if layer not in x.layers:
            raise ValueError(f"AnnData has no layer {layer!r}; layers: {list(x.layers)}")
        return x.layers[layer]
    return x.layers["counts"] if "counts" in x.layers else x.X


def _to_numpy(a):
    if torch.is_tensor(a):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def as_counts(x, name: str = "x", allow_noninteger: bool = False, missing=None):
    """Validate a count matrix; return it as a float numpy array or a scipy CSR matrix.

    :param x: cells × genes counts (numpy, torch or scipy.sparse).
    :param str name: the argument's name, used in error messages.
    :param bool allow_noninteger: accept non-integer counts (e.g. ambient-corrected data) with a
        :class:`NonIntegerCountsWarning` instead of an error.
    :param missing: boolean mask of missing entries; NaN is allowed there (for sparse input the
        stored values at missing entries are replaced by 0 in a copy).
    :raises TypeError: ``x`` is not array-like numeric data.
    :raises ValueError: wrong number of dimensions, empty, NaN/inf, negative or non-integer values.
    """
    if sp.issparse(x):
        if np.issubdtype(x.dtype, np.complexfloating):
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        x = sp.csr_matrix(x, dtype=np.float64 if x.dtype == np.float64 else np.float32)
        values = x.data
        if missing is not None and x.shape == missing.shape:
            # stored values at missing entries (NaN placeholders allowed) are replaced by 0
            rows = np.repeat(np.arange(x.shape[0]), np.diff(x.indptr))
            stored_missing = missing[rows, x.indices]
            if stored_missing.any():
                x = x.copy()  # never modify the caller's matrix
                x.data[stored_missing] = 0
                values = x.data[~stored_missing]
    else:
        try:
            x = _to_numpy(x)
        except Exception as err:  # pragma: no cover - exotic inputs
            raise TypeError(
                f"{name} must be a numpy array, torch tensor or scipy.sparse matrix"
            ) from err
        if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise TypeError(f"{name} must hold numbers, got dtype {x.dtype}")
        if np.issubdtype(x.dtype, np.complexfloating):
            raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
        x = x.astype(np.float64 if x.dtype == np.float64 else np.float32, copy=False)
        values = x if missing is None else x[~missing]
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D matrix (cells × genes), got {x.ndim} dimension(s)")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty: shape {x.shape}")
    if not np.all(np.isfinite(values)):
        where = "observed entries of " if missing is not None else ""
        raise ValueError(f"{where}{name} contain NaN or inf; mark missing entries with w = 0")
    if np.any(values < 0):
        raise ValueError(f"{name} has negative counts (min {values.min()})")
    if np.any(values != np.round(values)):
        if not allow_noninteger:
            raise ValueError(
                f"{name} has non-integer counts; pass allow_noninteger=True for corrected data"
            )
        warnings.warn(
            f"{name} has non-integer counts; the Poisson-based likelihoods treat them as "
            "continuous extensions of the pmf",
            NonIntegerCountsWarning,
            stacklevel=3,
        )
    return x


def as_mask(w, shape: tuple[int, int], name: str = "w") -> np.ndarray | None:
    """Validate a missingness mask (``True``/1 = observed, ``False``/0 = missing).

    :raises ValueError: wrong shape, non-finite values or values other than 0/1.
    :raises TypeError: a non-numeric dtype.
    """
    if w is None:
        return None
    if sp.issparse(w):
        w = w.toarray()
    w = _to_numpy(w)
    if w.shape != tuple(shape):
        raise ValueError(f"{name} must have the shape of x {tuple(shape)}, got {w.shape}")
    if w.dtype == bool:
        return w
    if not np.issubdtype(w.dtype, np.number) or np.issubdtype(w.dtype, np.complexfloating):
        raise TypeError(f"{name} must be boolean or 0/1 numbers, got dtype {w.dtype}")
    if not np.all((w == 0) | (w == 1)):
        raise ValueError(f"{name} must contain only 0/1 (or True/False)")
    return w.astype(bool)


def library_size(x, w: np.ndarray | None = None) -> np.ndarray:
    """Total observed counts per cell (sparse-aware; missing entries excluded)."""
    if sp.issparse(x):
        if w is not None:
            x = x.multiply(w).tocsr()  # masking the stored values; never densifies x
        return np.asarray(x.sum(axis=1)).ravel().astype(np.float64)
    if w is not None:
        x = np.where(w, x, 0)
    return x.sum(axis=1, dtype=np.float64)


@dataclass
class CountData:
    """Validated counts, mask and size factors; hands out dense torch batches of cells.

    :param x: counts as returned by :func:`as_counts` (dense numpy or CSR).
    :param w: boolean mask or ``None`` (all observed).
    :param size_factor: positive float array of shape ``(cells,)`` or ``None``.
    """

    x: np.ndarray | sp.csr_matrix
    w: np.ndarray | None = None
    size_factor: np.ndarray | None = None

    @property
    def n_cells(self) -> int:
        return self.x.shape[0]

    @property
    def n_genes(self) -> int:
        return self.x.shape[1]

    def library_size(self) -> np.ndarray:
        """Total observed counts per cell (as :meth:`pyrovae.sources.BackedSource.library_size`)."""
        return library_size(self.x, self.w)

    def with_size_factor(self, size_factor: np.ndarray | None) -> CountData:
        """The same counts and mask with other size factors (or none)."""
        return CountData(self.x, self.w, size_factor)

    def with_mask(self, w: np.ndarray | None) -> CountData:
        """The same counts and size factors with another mask (or none)."""
        return CountData(self.x, w, self.size_factor)

    def subset(self, idx: np.ndarray) -> CountData:
        """The cells ``idx`` (a new :class:`CountData`)."""
        return CountData(
            self.x[idx],
            None if self.w is None else self.w[idx],
            None if self.size_factor is None else self.size_factor[idx],
        )

    def batch(self, idx=None, dtype=torch.float32, device="cpu", out: torch.Tensor | None = None):
        """Dense tensors ``(x, w, size_factor)`` for the cells ``idx`` (all when ``None``).

        Sparse rows are gathered by :func:`pyrovae.sources.gather_rows` (no intermediate CSR
        matrix). ``out``: an optional CPU tensor of at least ``(len(idx), genes)`` (e.g. pinned,
        reused across batches) to fill; ``x`` is then (a device copy of) its first rows.
        """
        from .sources import _np_dtype, _to_device, gather_rows

        if out is not None and idx is not None:
            gather_rows(self.x, idx, out=out.numpy())
            xt = _to_device(out[: len(idx)], device)
        elif idx is not None and sp.issparse(self.x):
            xt = torch.from_numpy(gather_rows(self.x, idx, dtype=_np_dtype(dtype)))
            xt = _to_device(xt, device)
        else:
            x = self.x if idx is None else self.x[idx]
            if sp.issparse(x):
                x = x.toarray()
            xt = torch.as_tensor(x, dtype=dtype, device=device)
        if xt.dtype != dtype:
            xt = xt.to(dtype)
        wt = None
        if self.w is not None:
            w = self.w if idx is None else self.w[idx]
            wt = torch.as_tensor(w, device=device)
            xt = torch.where(wt, xt, torch.zeros_like(xt))  # NaN placeholders never leave here
        st = None
        if self.size_factor is not None:
            s = self.size_factor if idx is None else self.size_factor[idx]
            st = torch.as_tensor(s, dtype=dtype, device=device)
        return xt, wt, st
