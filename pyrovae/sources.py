r"""Cell sources: where the fit loop and the evaluation methods get dense batches of cells from.

A *source* is any object with ``n_cells``, ``n_genes`` and
``batch(idx, dtype, device) -> (x, w, s)`` (dense torch tensors: counts, boolean mask or
``None``, size factors or ``None``; ``idx`` an array of cell positions or ``None`` for all) and,
optionally, ``epoch_order(generator)`` — the order in which one epoch visits the cells (the fit
loop's default is :func:`torch.randperm`). Two kinds exist:

* :class:`pyrovae.data.CountData` — counts in memory (numpy or CSR). Its batches are gathered by
  :func:`gather_rows`: the stored entries of the requested CSR rows are scattered straight into a
  dense buffer (``numpy.repeat`` / ``indptr`` arithmetic), without SciPy's fancy row indexing
  (which builds an intermediate CSR matrix) and ``toarray``.
* :class:`BackedSource` — counts in an ``.h5ad`` file that are **never loaded as a whole**: the
  CSR arrays (``data``/``indices``/``indptr`` of ``X`` or a layer) or a dense ``X`` are read in
  contiguous blocks of rows; an epoch visits the cells in *block-shuffled* order
  (:meth:`BackedSource.epoch_order`), so every block is read once per epoch. Memory grows with
  the block size and the batch, plus 8–24 bytes per cell (row offsets, library sizes and size
  factors), never with cells × genes.

:func:`as_source` picks the kind. :func:`prefetch` runs any iterator (e.g. the batches of an
epoch) in a background thread, and :func:`load_batches` combines both with a ring of reusable
(on CUDA: pinned) dense buffers.

``anndata`` and ``h5py`` are imported only when a file is opened.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from .size_factors import checked_size_factor

__all__ = [
    "BackedSource",
    "as_source",
    "gather_rows",
    "load_batches",
    "prefetch",
]


# --------------------------------------------------------------------------------------------
# the row gather
# --------------------------------------------------------------------------------------------


try:  # SciPy's compiled CSR kernels (private module, present since SciPy 0.14)
    from scipy.sparse import _sparsetools
except ImportError:  # pragma: no cover - a SciPy without it: the numpy scatter below
    _sparsetools = None


def _gather_csr(indptr, indices, data, rows, out: np.ndarray) -> None:
    """Fill the zeroed, C-contiguous ``out`` (``len(rows)`` × columns) with the CSR rows
    ``rows`` (duplicate entries of a row add up, as in scipy's ``toarray``).

    The stored entries of the rows are located from ``indptr`` and written straight into
    ``out``: with SciPy's compiled ``csr_row_index`` + ``csr_todense`` when available, else by
    a vectorized numpy scatter at positions ``row * columns + column``.
    """
    m, p = out.shape
    starts = indptr[rows]
    lens = indptr[rows + 1] - starts
    nnz = int(lens.sum())
    if nnz == 0:
        return
    itype = indices.dtype
    if _sparsetools is not None and itype in (np.int32, np.int64):
        sub_ptr = np.zeros(m + 1, dtype=itype)
        np.cumsum(lens, out=sub_ptr[1:])
        sub_idx = np.empty(nnz, dtype=itype)
        sub_val = np.empty(nnz, dtype=data.dtype)
        _sparsetools.csr_row_index(
            m, np.asarray(rows, dtype=itype), indptr.astype(itype, copy=False), indices, data,
            sub_idx, sub_val,
        )  # fmt: skip
        _sparsetools.csr_todense(m, p, sub_ptr, sub_idx, sub_val.astype(out.dtype), out)
        return
    first_k = np.cumsum(lens) - lens  # position k of row r is data[k + starts[r] - first_k[r]]
    pos = np.arange(nnz, dtype=np.int64) + np.repeat(starts - first_k, lens)
    target = np.repeat(np.arange(m, dtype=np.int64) * p, lens) + indices[pos]
    np.add.at(out.reshape(-1), target, data[pos])


def gather_rows(x, idx, out: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
    """The rows ``idx`` of ``x`` as a dense C-contiguous array (``x[idx].toarray()`` for CSR).

    For CSR input only the stored entries of the requested rows are touched: their positions in
    ``x.data`` follow from ``indptr`` (one slice when ``idx`` is a run of consecutive rows) and
    they are scattered into the zeroed output in one vectorized assignment.

    :param x: a ``scipy.sparse`` CSR matrix or a 2-D numpy array (cells × genes).
    :param idx: integer row positions (any order, repeats allowed).
    :param out: optional array of at least ``(len(idx), genes)`` (C-contiguous) to fill and
        return a view of (its first ``len(idx)`` rows); reusing one avoids an allocation and
        the page faults of fresh memory for every batch.
    :param dtype: dtype of a newly allocated output.
    :return: the ``(len(idx), genes)`` dense rows.
    """
    idx = np.asarray(idx, dtype=np.int64).reshape(-1)
    m, p = len(idx), x.shape[1]
    if out is None:
        out = np.zeros((m, p), dtype=dtype)
    else:
        assert out.flags.c_contiguous and out.shape[0] >= m and out.shape[1] == p
        out = out[:m]
    if sp.issparse(x):
        if x.format != "csr":
            x = x.tocsr()
        out.fill(0)
        _gather_csr(x.indptr, x.indices, x.data, idx, out)
    elif out.dtype == x.dtype:
        np.take(x, idx, axis=0, out=out)
    else:
        out[...] = x[idx]
    return out


def _np_dtype(dtype: torch.dtype) -> np.dtype:
    return torch.empty((), dtype=dtype).numpy().dtype


def _to_device(t: torch.Tensor, device) -> torch.Tensor:
    device = torch.device(device)
    if t.device == device:
        return t
    return t.to(device, non_blocking=t.is_pinned())


# --------------------------------------------------------------------------------------------
# out-of-core: an .h5ad on disk
# --------------------------------------------------------------------------------------------


def _decode(value):
    return value.decode() if isinstance(value, bytes) else value


class BackedSource:
    r"""Counts of an ``.h5ad`` file, read from disk a block of rows at a time.

    The matrix is ``layers[layer]``, by default ``layers['counts']`` when the file has it, else
    ``X``; it may be CSR (``data``/``indices``/``indptr``, the AnnData encoding and the older
    ``h5sparse_format`` one) or a dense array. CSC is refused (its rows cannot be read without
    reading everything). The row offsets ``indptr`` (8 bytes per cell) are kept in memory.

    **Validation** (at construction, ``validate=True``): one streaming pass over the file,
    ``chunk_entries`` stored values at a time, checks the CSR structure (offsets start at 0, never
    decrease, end at the number of stored values; column indices in range) and the values
    (finite, non-negative, whole numbers), and accumulates the library sizes
    (:meth:`library_size`) on the way. Problems raise :class:`ValueError` naming the file, the
    matrix, the problem and a row where it occurs.

    **Blocks.** Rows are grouped in aligned blocks :math:`[kL, (k+1)L)` of ``block_size``
    :math:`L` rows. A batch reads the blocks that hold its cells (two contiguous HDF5 reads per
    block for CSR, one for dense) and keeps the last ``cache_blocks`` of them, so a
    block-shuffled epoch reads every block once. Memory: about ``cache_blocks × L`` rows of
    stored values (dense ``X``: ``cache_blocks × L × genes`` values).

    **File handles** are opened lazily by the process that reads, on first use, and reopened when
    the process id changes: a source can be pickled (the handle and the cache are dropped) and
    used after a ``fork`` (the child opens its own handle; the parent's is never touched there),
    e.g. in DataLoader workers.

    :param path: the ``.h5ad`` file.
    :param layer: layer with the raw counts; ``None``: ``layers['counts']`` if present, else
        ``X``. ``"X"`` names ``X`` explicitly.
    :param size_factor: per-cell size factors (shape ``(cells,)``, positive) or ``None``.
    :param block_size: rows per block :math:`L` (the unit of reading and of shuffling).
    :param mix: blocks whose cells are shuffled together in :meth:`epoch_order`.
    :param cache_blocks: blocks kept in memory (default ``2 × mix``: a batch of at most
        ``mix × block_size`` cells of a block-shuffled epoch touches at most two runs of ``mix``
        blocks, so each block is then read once per epoch).
    :param validate: run the validation pass (and compute the library sizes) now.
    :param allow_noninteger: accept non-integer counts with a
        :class:`pyrovae.data.NonIntegerCountsWarning` instead of an error.
    :param chunk_entries: stored values per step of the validation pass.
    :raises ValueError: a missing file, layer or matrix, an unsupported encoding, invalid counts.
    """

    def __init__(
        self,
        path,
        layer: str | None = None,
        size_factor=None,
        *,
        block_size: int = 1024,
        mix: int = 8,
        cache_blocks: int | None = None,
        validate: bool = True,
        allow_noninteger: bool = False,
        chunk_entries: int = 2**20,
    ):
        for name, value in (("block_size", block_size), ("mix", mix)):
            if not (isinstance(value, int | np.integer) and value >= 1):
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.path = Path(path)
        if not self.path.is_file():
            raise ValueError(f"{self.path} does not exist or is not a file")
        self.block_size = int(block_size)
        self.mix = int(mix)
        self.cache_blocks = int(cache_blocks) if cache_blocks is not None else 2 * self.mix
        self.allow_noninteger = allow_noninteger
        self._rows = None  # file rows of this source's cells (None: all rows in order)
        self._library = None
        self._groups = None
        self._reset_process_state()
        self.layer, self._key = self._find_matrix(layer)
        self._inspect()
        self.size_factor = None
        if size_factor is not None:
            self.size_factor = checked_size_factor(size_factor, self.n_cells)
        if validate:
            self.validate(chunk_entries)

    # -- process-local state ---------------------------------------------------------------
    def _reset_process_state(self):
        self._pid = os.getpid()
        self._file = None
        self._lock = threading.Lock()
        self._cache: OrderedDict = OrderedDict()

    def _check_process(self):
        if self._pid != os.getpid():  # a forked child: never touch the parent's handle, lock
            self._reset_process_state()  # or cache

    def _h5(self):
        """This process's open h5py file (opened on first use; reopened after a fork)."""
        self._check_process()
        if self._file is None:
            import h5py

            self._file = h5py.File(self.path, "r")
        return self._file

    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_file", "_lock", "_cache", "_pid"):
            state.pop(key)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reset_process_state()

    def close(self) -> None:
        """Close this process's file handle (it is reopened on the next read)."""
        if self._file is not None and self._pid == os.getpid():
            self._file.close()
        self._file = None
        self._cache.clear()

    def __array__(self, *args, **kwargs):
        raise TypeError(
            "a BackedSource is not converted to an array (that would load the whole matrix); "
            "pass it where a data source is accepted"
        )

    def __repr__(self) -> str:
        return (
            f"BackedSource({str(self.path)!r}, layer={self.layer!r}, cells={self.n_cells}, "
            f"genes={self.n_genes}, block_size={self.block_size})"
        )

    # -- the matrix ------------------------------------------------------------------------
    def _find_matrix(self, layer):
        import h5py

        try:
            f = self._h5()
        except OSError as err:
            raise ValueError(f"cannot read {self.path} as .h5ad: {err}") from None
        if layer is None:
            layers = f.get("layers")
            if isinstance(layers, h5py.Group) and "counts" in layers:
                return "counts", "layers/counts"
            if "X" not in f:
                raise ValueError(f"{self.path} has no X matrix; name the counts layer")
            return None, "X"
        if layer == "X":
            if "X" not in f:
                raise ValueError(f"{self.path} has no X matrix")
            return "X", "X"
        layers = f.get("layers")
        names = list(layers) if isinstance(layers, h5py.Group) else []
        if layer not in names:
            raise ValueError(f"{self.path} has no layer {layer!r}; layers: {names}")
        return layer, f"layers/{layer}"

    def _inspect(self):
        import h5py

        node = self._h5()[self._key]
        what = f"{self.path} [{self.layer or 'X'}]"
        if isinstance(node, h5py.Dataset):
            if node.ndim != 2:
                raise ValueError(f"{what} must be a 2-D matrix, got {node.ndim} dimension(s)")
            self.sparse = False
            self._n_file_rows, self.n_genes = (int(s) for s in node.shape)
            self._indptr = None
            dtype = node.dtype
        else:
            encoding = _decode(node.attrs.get("encoding-type", node.attrs.get("h5sparse_format")))
            if encoding in ("csc_matrix", "csc"):
                raise ValueError(
                    f"{what} is stored as CSC, whose rows cannot be read without reading "
                    "everything; rewrite it as CSR (e.g. adata.X = adata.X.tocsr())"
                )
            if encoding not in ("csr_matrix", "csr") or not {"data", "indices", "indptr"} <= set(
                node
            ):
                raise ValueError(f"{what} is neither a dense array nor a CSR matrix")
            self.sparse = True
            shape = node.attrs.get("shape", node.attrs.get("h5sparse_shape"))
            self._n_file_rows, self.n_genes = (int(s) for s in shape)
            self._indptr = np.asarray(node["indptr"][()], dtype=np.int64)
            dtype = node["data"].dtype
        if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
            raise ValueError(f"{what} must hold real numbers, got dtype {dtype}")
        if self._n_file_rows == 0 or self.n_genes == 0:
            raise ValueError(f"{what} is empty: shape {(self._n_file_rows, self.n_genes)}")
        self.dtype = np.dtype(np.float64 if dtype == np.float64 else np.float32)

    @property
    def n_cells(self) -> int:
        return self._n_file_rows if self._rows is None else len(self._rows)

    @property
    def shape(self) -> tuple[int, int]:
        return (self.n_cells, self.n_genes)

    @property
    def nnz(self) -> int:
        """Stored entries of the cells of this source (dense: all entries)."""
        if not self.sparse:
            return self.n_cells * self.n_genes
        if self._rows is None:
            return int(self._indptr[-1])
        return int((self._indptr[self._rows + 1] - self._indptr[self._rows]).sum())

    def _file_rows(self, idx) -> np.ndarray:
        if idx is None:
            idx = np.arange(self.n_cells)
        idx = np.asarray(idx, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_cells):
            raise IndexError(f"cell index out of range for {self.n_cells} cells")
        return idx if self._rows is None else self._rows[idx]

    # -- validation and library sizes ------------------------------------------------------
    def _row_spans(self, chunk_entries: int) -> Iterator[tuple[int, int]]:
        """Consecutive file-row ranges of about ``chunk_entries`` stored values each."""
        n = self._n_file_rows
        if not self.sparse:
            step = max(1, chunk_entries // self.n_genes)
            yield from ((a, min(a + step, n)) for a in range(0, n, step))
            return
        a = 0
        while a < n:
            # the furthest row b with indptr[b] - indptr[a] <= chunk_entries (at least one row)
            b = int(np.searchsorted(self._indptr, self._indptr[a] + chunk_entries, "right")) - 1
            b = min(max(b, a + 1), n)
            yield a, b
            a = b

    def validate(self, chunk_entries: int = 2**20) -> None:
        """Check the file's counts in one streaming pass and record the library sizes.

        :raises ValueError: a broken CSR structure, or NaN/inf, negative or (unless allowed)
            non-integer values, naming a row where the problem occurs.
        """
        from .data import NonIntegerCountsWarning

        what = f"{self.path} [{self.layer or 'X'}]"
        n, p = self._n_file_rows, self.n_genes
        library = np.zeros(n, dtype=np.float64)
        node = self._h5()[self._key]
        if self.sparse:
            indptr = self._indptr
            nnz = node["data"].shape[0]
            if len(indptr) != n + 1:
                raise ValueError(f"{what}: indptr has {len(indptr)} entries, expected {n + 1}")
            if indptr[0] != 0 or np.any(np.diff(indptr) < 0) or indptr[-1] != nnz:
                raise ValueError(f"{what}: indptr is not a valid CSR row-offset array")
            if node["indices"].shape[0] != nnz:
                raise ValueError(f"{what}: data and indices have different lengths")
        noninteger_row = None
        for a, b in self._row_spans(chunk_entries):
            if self.sparse:
                lo, hi = int(self._indptr[a]), int(self._indptr[b])
                values = node["data"][lo:hi]
                cols = node["indices"][lo:hi]
                if cols.size and (cols.min() < 0 or cols.max() >= p):
                    raise ValueError(f"{what}: column indices out of range [0, {p})")
                offsets = self._indptr[a : b + 1] - lo
            else:
                values = node[a:b].reshape(-1)
                offsets = np.arange(0, (b - a + 1) * p, p)

            def row_of(mask, a=a, offsets=offsets):
                first = int(np.flatnonzero(mask)[0])
                return a + int(np.searchsorted(offsets, first, "right")) - 1

            floating = np.issubdtype(values.dtype, np.floating)
            if floating:  # integers are always finite and whole
                bad = ~np.isfinite(values)
                if bad.any():
                    raise ValueError(f"{what} contains NaN or inf (row {row_of(bad)})")
            bad = values < 0
            if bad.any():
                raise ValueError(
                    f"{what} has negative counts (min {values.min():g}, row {row_of(bad)})"
                )
            if floating and noninteger_row is None:
                bad = values != np.round(values)
                if bad.any():
                    noninteger_row = row_of(bad)
                    if not self.allow_noninteger:
                        raise ValueError(
                            f"{what} has non-integer counts (row {noninteger_row}); pass "
                            "allow_noninteger=True for corrected data"
                        )
            total = np.zeros(len(values) + 1)
            np.cumsum(values, dtype=np.float64, out=total[1:])
            library[a:b] = total[offsets[1:]] - total[offsets[:-1]]
            del values, total, bad
        if noninteger_row is not None:
            warnings.warn(
                f"{what} has non-integer counts; the Poisson-based likelihoods treat them as "
                "continuous extensions of the pmf",
                NonIntegerCountsWarning,
                stacklevel=2,
            )
        self._library = library

    def library_size(self) -> np.ndarray:
        """Total counts per cell of this source, shape ``(cells,)`` (a streaming pass over the
        file the first time, shared with :meth:`validate`)."""
        if self._library is None:
            self.validate()
        return self._library if self._rows is None else self._library[self._rows]

    # -- subsets and size factors ----------------------------------------------------------
    def with_size_factor(self, size_factor) -> BackedSource:
        """A copy of this source (same file and cells) with the given size factors (or none)."""
        new = self._copy()
        new.size_factor = (
            None if size_factor is None else checked_size_factor(size_factor, self.n_cells)
        )
        return new

    def subset(self, idx) -> BackedSource:
        """The cells ``idx`` (positions in this source, in the given order) as a new source on
        the same file, e.g. the training and validation cells of a split."""
        rows = self._file_rows(idx)
        new = self._copy()
        new._rows = rows
        new._groups = None
        if self.size_factor is not None:
            new.size_factor = self.size_factor[np.asarray(idx, dtype=np.int64)]
        return new

    def _copy(self) -> BackedSource:
        new = object.__new__(BackedSource)
        new.__setstate__(self.__getstate__())
        return new

    # -- reading ---------------------------------------------------------------------------
    def _block(self, k: int):
        """Block ``k`` (file rows ``[kL, (k+1)L)``): CSR arrays ``(indptr, indices, data)``
        relative to the block, or the dense rows."""
        cached = self._cache.get(k)
        if cached is not None:
            self._cache.move_to_end(k)
            return cached
        a = k * self.block_size
        b = min(a + self.block_size, self._n_file_rows)
        node = self._h5()[self._key]
        if self.sparse:
            lo, hi = int(self._indptr[a]), int(self._indptr[b])
            block = (self._indptr[a : b + 1] - lo, node["indices"][lo:hi], node["data"][lo:hi])
        else:
            block = node[a:b]
        self._cache[k] = block
        while len(self._cache) > self.cache_blocks:
            self._cache.popitem(last=False)
        return block

    def read_rows(self, idx=None, out: np.ndarray | None = None, dtype=np.float32) -> np.ndarray:
        """The cells ``idx`` (all when ``None``) as a dense ``(len(idx), genes)`` numpy array,
        filled into ``out`` (its first rows) when given. Sorted ``idx`` (what the fit loop
        passes) is gathered straight into the output; other orders go through a sorted copy."""
        rows = self._file_rows(idx)
        m, p = len(rows), self.n_genes
        if out is None:
            out = np.zeros((m, p), dtype=dtype)
        else:
            assert out.flags.c_contiguous and out.shape[0] >= m and out.shape[1] == p
            out = out[:m]
            out.fill(0)
        ordered = m < 2 or bool(np.all(rows[1:] >= rows[:-1]))
        order = None if ordered else np.argsort(rows, kind="stable")
        target = out if ordered else np.zeros_like(out)
        sorted_rows = rows if ordered else rows[order]
        blocks = sorted_rows // self.block_size
        cuts = np.concatenate(([0], np.flatnonzero(np.diff(blocks)) + 1, [m]))
        self._check_process()
        with self._lock:
            for a, b in zip(cuts[:-1], cuts[1:], strict=True):
                if a == b:
                    continue
                k = int(blocks[a])
                block = self._block(k)
                local = sorted_rows[a:b] - k * self.block_size
                if self.sparse:
                    _gather_csr(*block, local, target[a:b])
                else:
                    target[a:b] = block[local]
        if not ordered:
            out[order] = target
        return out

    def batch(self, idx=None, dtype=torch.float32, device="cpu", out: torch.Tensor | None = None):
        """Dense tensors ``(x, None, size_factor)`` for the cells ``idx`` (all when ``None``).

        :param out: optional CPU tensor of at least ``(len(idx), genes)`` rows (e.g. pinned) to
            fill; ``x`` is then (a device copy of) its first rows.
        """
        if out is None:
            x = torch.from_numpy(self.read_rows(idx, dtype=_np_dtype(dtype)))
        else:
            x = out[: self.n_cells if idx is None else len(idx)]
            self.read_rows(idx, out=out.numpy())
        x = _to_device(x, device)
        s = None
        if self.size_factor is not None:
            sf = self.size_factor if idx is None else self.size_factor[np.asarray(idx)]
            s = torch.as_tensor(sf, dtype=dtype, device=device)
        return x, None, s

    def row_blocks(self, size: int | None = None) -> Iterator[np.ndarray]:
        """Consecutive position ranges (``np.arange`` arrays) of ``size`` cells (default
        ``block_size``) covering this source — the order for an evaluation pass."""
        size = size or self.block_size
        for a in range(0, self.n_cells, size):
            yield np.arange(a, min(a + size, self.n_cells))

    # -- epoch order -----------------------------------------------------------------------
    def _block_groups(self) -> list:
        """This source's cell positions grouped by the file block that holds them (``range``
        objects for a whole file, computed on the fly; cached index arrays for a subset)."""
        if self._rows is None:
            n, size = self._n_file_rows, self.block_size
            return [range(a, min(a + size, n)) for a in range(0, n, size)]
        if self._groups is None:
            order = np.argsort(self._rows, kind="stable")
            blocks = self._rows[order] // self.block_size
            self._groups = np.split(order, np.flatnonzero(np.diff(blocks)) + 1)
        return self._groups

    def epoch_order(self, generator: torch.Generator | None = None) -> np.ndarray:
        r"""A block-shuffled permutation of ``range(n_cells)`` for one epoch.

        The cells are grouped by the aligned file block of :math:`L` = ``block_size`` rows that
        holds them. The blocks are put in a uniformly random order; then each run of ``mix``
        consecutive blocks (the last run may be shorter) has its cells shuffled uniformly among
        themselves. All draws come from ``generator``, so the order is reproducible from its
        state. With a single run (``mix × L ≥`` the file's rows) the order is exactly
        ``torch.randperm(n_cells, generator=generator)``, the fit loop's default.

        **The randomness given up** compared with a full permutation: a full permutation makes
        every batch of :math:`B` cells a uniformly random :math:`B`-subset of all cells, and all
        :math:`N!` orders are equally likely. Here only orders that keep each run of ``mix``
        blocks together are possible — :math:`G!\,\prod_r n_r!` of them for :math:`G` blocks and
        runs of :math:`n_r` cells — so the cells of one batch come from at most
        :math:`2\cdot` ``mix`` blocks (one run, or two at a run boundary), i.e. from a few
        contiguous regions of the file. Every epoch still visits every cell exactly once and
        every block is equally likely at every place, but cells stored near each other share
        batches far more often than chance: if the file is sorted by sample, donor or cell type,
        batches are less mixed and the gradient noisier than with full shuffling.
        Remedies: a larger ``mix`` (the cache holds
        ``2 × mix`` blocks), a smaller ``block_size``, or shuffling the file's rows once on
        disk.

        :param generator: the ``torch.Generator`` that all ranks seed alike.
        """
        groups = self._block_groups()
        runs = [groups[i : i + self.mix] for i in range(0, len(groups), self.mix)]
        if len(runs) == 1:
            return torch.randperm(self.n_cells, generator=generator).numpy()
        block_order = torch.randperm(len(groups), generator=generator).numpy()
        out = []
        for start in range(0, len(groups), self.mix):
            cells = np.concatenate(
                [np.asarray(groups[k]) for k in block_order[start : start + self.mix]]
            )
            out.append(cells[torch.randperm(len(cells), generator=generator).numpy()])
        return np.concatenate(out)


# --------------------------------------------------------------------------------------------
# choosing a source
# --------------------------------------------------------------------------------------------


def _is_source(x) -> bool:
    return hasattr(x, "batch") and hasattr(x, "n_cells") and hasattr(x, "n_genes")


def as_source(
    x,
    w=None,
    layer: str | None = None,
    backed: bool | None = None,
    *,
    allow_noninteger: bool = False,
    block_size: int = 1024,
    mix: int = 8,
    score_all: bool = False,
):
    """A validated source for ``x``.

    * a path to an ``.h5ad`` (``str`` or :class:`~pathlib.Path`) or a backed AnnData
      (``adata.isbacked``) → :class:`BackedSource` on that file (``backed=False`` reads a path
      into memory instead);
    * anything else — numpy, torch, scipy.sparse, an in-memory AnnData — →
      :class:`pyrovae.data.CountData` after :func:`pyrovae.data.as_counts` /
      :func:`pyrovae.data.as_mask`, as the estimator did so far;
    * a source (anything with ``batch``/``n_cells``/``n_genes``) is returned as it is.

    Size factors are the estimator's business (:mod:`pyrovae.size_factors`, from
    :meth:`BackedSource.library_size` / :meth:`pyrovae.data.CountData.library_size`).

    :param w: mask (in-memory data only; a backed source has no mask).
    :param layer: the counts layer (AnnData or file; default ``counts`` if present, else ``X``).
    :param backed: ``None``: decided by the type of ``x`` as above; ``True``: require a
        path or backed AnnData; ``False``: load into memory.
    :param score_all: validate the counts at the masked entries too (for an evaluation that
        scores them); by default masked entries may hold anything (NaN placeholders).
    :raises ValueError: invalid counts or mask; ``backed=True`` for in-memory data.
    """
    from .data import CountData, as_counts, as_mask, is_anndata, matrix_of

    if _is_source(x) and not isinstance(x, str | os.PathLike):
        if w is not None or layer is not None:
            raise ValueError("w and layer cannot be combined with a data source")
        return x
    path = None
    if isinstance(x, str | os.PathLike):
        path = Path(x)
    elif is_anndata(x) and getattr(x, "isbacked", False):
        path = Path(x.filename)
    if backed and path is None:
        raise ValueError("backed=True needs a path to an .h5ad file or a backed AnnData")
    if path is not None and backed is not False:
        if w is not None:
            raise ValueError("a mask w is not supported for backed data")
        return BackedSource(
            path, layer, block_size=block_size, mix=mix, allow_noninteger=allow_noninteger
        )
    if path is not None:
        try:
            import anndata
        except ImportError:  # pragma: no cover - optional extra
            raise ImportError(
                "reading .h5ad files needs anndata: pip install 'pyrovae[anndata]'"
            ) from None
        x = anndata.read_h5ad(path)
    counts = matrix_of(x, layer)
    if counts is None and is_anndata(x):
        raise ValueError("the AnnData has no X matrix; name the counts layer")
    shape = getattr(counts, "shape", None)
    w_np = as_mask(w, tuple(np.shape(counts) if shape is None else shape))
    counts = as_counts(
        counts,
        allow_noninteger=allow_noninteger,
        missing=None if (w_np is None or score_all) else ~w_np,
    )
    return CountData(counts, w_np)


# --------------------------------------------------------------------------------------------
# prefetching
# --------------------------------------------------------------------------------------------

_ITEM, _DONE, _ERROR = 0, 1, 2


class prefetch(Iterator):  # noqa: N801 - used like a function
    """Iterate ``iterable`` in a background thread, ``depth`` items ahead of the consumer.

    Exceptions raised by the iterable are re-raised in the consumer (with their traceback) at the
    position where they occurred. Stopping early (``break``, :meth:`close`, leaving a ``with``
    block, garbage collection) stops the thread. ``depth=0`` iterates in the calling thread.

    Worth it when producing an item (reading and densifying a batch) releases the GIL for long
    enough — numpy/h5py reads and torch kernels do — so it overlaps with the consumer's work.

    :param iterable: any iterable; it is iterated only in the background thread.
    :param int depth: items produced ahead (the queue length).
    """

    def __init__(self, iterable: Iterable, depth: int = 2):
        if not (isinstance(depth, int) and depth >= 0):
            raise ValueError(f"depth must be a non-negative int, got {depth!r}")
        self._depth = depth
        self._done = False
        if depth == 0:
            self._it = iter(iterable)
            return
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._produce, args=(iterable,), name="pyrovae-prefetch", daemon=True
        )
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self, iterable):
        try:
            for item in iterable:
                if not self._put((_ITEM, item)):
                    return
            self._put((_DONE, None))
        except BaseException as err:  # handed to the consumer
            self._put((_ERROR, err))

    def __next__(self):
        if self._done:
            raise StopIteration
        if self._depth == 0:
            try:
                return next(self._it)
            except StopIteration:
                self._done = True
                raise
        kind, item = self._queue.get()
        if kind == _ITEM:
            return item
        self._done = True
        self._thread.join()
        if kind == _ERROR:
            raise item
        raise StopIteration

    def close(self) -> None:
        """Stop the background thread (items not yet consumed are dropped)."""
        self._done = True
        if self._depth == 0:
            return
        self._stop.set()
        while self._thread.is_alive():
            try:  # unblock a producer waiting on a full queue
                self._queue.get(timeout=0.05)
            except queue.Empty:
                pass
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        if getattr(self, "_depth", 0) and not self._done:
            self.close()


class _BufferRing:
    """``size`` reusable CPU tensors of ``(rows, genes)``, pinned when the batches go to CUDA;
    a buffer handed out again waits until the device copy made from it has finished."""

    def __init__(self, size: int, rows: int, n_genes: int, dtype, device):
        device = torch.device(device)
        pin = device.type == "cuda" and torch.cuda.is_available()
        self._buffers = [
            torch.empty((rows, n_genes), dtype=dtype, pin_memory=pin) for _ in range(size)
        ]
        self._events: list = [None] * size
        self._cuda = pin
        self._next = 0

    def take(self) -> tuple[int, torch.Tensor]:
        i = self._next
        self._next = (i + 1) % len(self._buffers)
        if self._events[i] is not None:
            self._events[i].synchronize()
            self._events[i] = None
        return i, self._buffers[i]

    def copied(self, i: int) -> None:
        if self._cuda:
            event = torch.cuda.Event()
            event.record()
            self._events[i] = event


def load_batches(
    source,
    batches: Iterable,
    dtype=torch.float32,
    device="cpu",
    depth: int = 2,
    reuse_buffers: bool = True,
) -> Iterator:
    """The batches ``source.batch(idx, dtype, device)`` for each ``idx`` in ``batches``,
    produced ``depth`` ahead in a background thread (:func:`prefetch`).

    With ``reuse_buffers`` (and a source whose ``batch`` takes ``out=``, as
    :class:`~pyrovae.data.CountData` and :class:`BackedSource` do) the dense counts are written
    into a ring of ``depth + 2`` preallocated CPU buffers (pinned for a CUDA ``device``, copied
    with ``non_blocking``): **a yielded ``x`` on the CPU is overwritten once ``depth + 1`` further
    batches have been requested** — use it inside the loop body, copy it to keep it.

    :param batches: arrays of cell positions (e.g. consecutive slices of an epoch order).
    """
    batches = list(batches)
    if not batches:
        return iter(())
    use_ring = reuse_buffers and isinstance(source, BackedSource | _count_data_type())
    ring = None
    if use_ring:
        rows = max(source.n_cells if b is None else len(b) for b in batches)
        ring = _BufferRing(depth + 2, rows, source.n_genes, dtype, device)

    def produce():
        for idx in batches:
            if ring is None:
                yield source.batch(idx, dtype, device)
                continue
            i, buf = ring.take()
            out = source.batch(idx, dtype, device, out=buf)
            ring.copied(i)
            yield out

    return prefetch(produce(), depth) if depth else produce()


def _count_data_type():
    from .data import CountData

    return CountData
