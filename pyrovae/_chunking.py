"""Row-chunk helpers shared by :mod:`pyrovae.anndata_io` and :mod:`pyrovae.evaluation`.

Large count matrices (scipy.sparse, an AnnData backed dataset) are walked through in blocks of
cells, so that nothing of size cells × genes is densified except, where a caller asks for it, a
dense output.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

__all__ = ["auto_chunk", "row_chunks", "row_sliceable", "take_rows"]

#: Elements (particles × cells × genes) of one evaluation tensor that an automatic chunk aims at:
#: 2**24 float32 values = 64 MiB per intermediate tensor.
ELEMENT_BUDGET = 2**24


def auto_chunk(
    n_genes: int, n_samples: int = 1, chunk_size: int | None = None, width: int = 1
) -> int:
    """Cells per chunk: ``chunk_size`` when given, else as many cells as keep
    ``width × n_samples × cells × n_genes`` within :data:`ELEMENT_BUDGET` (between 1 and 1024).
    ``width`` is the number of values the likelihood materializes per particle, cell and gene
    (:attr:`pyrovae.priors.UPrior.evaluation_width`: the quadrature nodes of a
    :class:`~pyrovae.priors.QuadraturePrior`)."""
    if chunk_size is not None:
        if not (isinstance(chunk_size, int | np.integer) and chunk_size >= 1):
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        return int(chunk_size)
    return int(max(1, min(1024, ELEMENT_BUDGET // max(1, width * n_samples * n_genes))))


def row_chunks(n: int, size: int) -> Iterator[slice]:
    """Consecutive slices ``[start, stop)`` of at most ``size`` rows covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def row_sliceable(m):
    """``m`` in a form whose rows can be sliced cheaply: sparse matrices other than CSR are
    converted to CSR (still sparse); arrays, tensors and backed datasets are returned as is;
    anything else goes through :func:`numpy.asarray`."""
    if sp.issparse(m):
        return m if m.format == "csr" else m.tocsr()
    if hasattr(m, "shape") and hasattr(m, "__getitem__"):
        return m
    return np.asarray(m)


def take_rows(m, rows: slice):
    """The rows ``rows`` of ``m`` (sparse stays sparse; a 1-D array is sliced along its axis)."""
    return None if m is None else m[rows]
