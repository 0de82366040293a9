"""Build the bundled PBMC 3k subset ``pyrovae/data/pbmc3k_hvg1000.npz``.

This script is run once, by hand, and its output is committed; it is not part
of the package or of the test suite.  Re-make the file from the repository root
with::

    python scripts/make_pbmc3k_subset.py \\
        --source ../shared/data/pbmc3k_10x.h5ad \\
        --out pyrovae/data/pbmc3k_hvg1000.npz

It needs ``numpy``, ``scipy``, ``anndata`` and ``h5py`` (``pip install 'pyrovae[anndata]'``).

Source
------
10x Genomics, "3k PBMCs from a Healthy Donor" (Cell Ranger 1.1.0 filtered
gene-barcode matrix, hg19), licensed CC BY 4.0, as redistributed in the GitHub
repository ``hmumme/scToolbox`` at commit
``ae12ae7cc6d26bd109adb9f9d9a335d559c1f024`` (MIT licence).  The input h5ad
holds raw UMI counts (CSR, float32), 2700 cells x 32738 genes.

Gene selection (dependency-free, deterministic)
-----------------------------------------------
1. Keep genes detected (count > 0) in at least 3 cells.
2. Normalise every cell to 1e4 counts using its library size computed over
   *all* 32738 genes, then take ``log1p``:  ``y = log1p(x / libsize * 1e4)``.
3. For each kept gene compute the population variance (ddof=0) of ``y`` over the
   2700 cells, in float64, as ``mean(y**2) - mean(y)**2`` from the sparse
   non-zeros (zeros map to log1p(0) = 0).
4. Rank genes by variance, descending; ties are broken by the gene's column
   index in the source (lower index first).  Keep the top 1000.
5. The kept genes are stored in their original (source) column order, not in
   rank order.

All 2700 cells are kept, in source order.

Output
------
A zip of ``.npy`` arrays readable with ``np.load(path, allow_pickle=False)``:

``data`` (uint16), ``indices`` (uint16), ``indptr`` (int32), ``shape`` (int64, [2])
    The CSR components of the cells x genes count matrix.
``obs_names``
    Cell barcodes (numpy unicode array).
``var_names``
    Unique gene symbols (R ``make.unique`` form, e.g. ``U1.1``), unicode.
``gene_symbols``
    Original (possibly duplicated) gene symbols, unicode.
``gene_ids``
    Ensembl gene ids, unicode.
``source_gene_index`` (int32)
    Column index of each kept gene in the source h5ad.
``description``
    Attribution text (0-d unicode array).

The zip members are written with a fixed timestamp so that re-running the
script on the same input gives a byte-identical file (its SHA-256 is printed).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import scipy.sparse as sp

N_GENES = 1000
MIN_CELLS = 3
TARGET_SUM = 1e4

DESCRIPTION = (
    "PBMC 3k: 10x Genomics, '3k PBMCs from a Healthy Donor' (Cell Ranger 1.1.0 filtered "
    "gene-barcode matrix, hg19), licensed CC BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/). Redistributed via GitHub repository "
    "hmumme/scToolbox at commit ae12ae7cc6d26bd109adb9f9d9a335d559c1f024 (MIT licence). "
    "Subset made by pyrovae (scripts/make_pbmc3k_subset.py): all 2700 cells, raw UMI counts "
    "of the 1000 genes with the highest variance of log1p(counts / library size * 1e4) among "
    "genes detected in >= 3 cells."
)


def select_genes(X: sp.csr_matrix, n_genes: int = N_GENES, min_cells: int = MIN_CELLS):
    """Return (sorted column indices of the selected genes, per-gene variance array)."""
    X = sp.csr_matrix(X, dtype=np.float64)
    n_cells = X.shape[0]
    libsize = np.asarray(X.sum(axis=1)).ravel()
    if np.any(libsize <= 0):
        raise ValueError("cells with zero total counts")
    detected = np.asarray((X > 0).sum(axis=0)).ravel()

    Y = sp.diags(TARGET_SUM / libsize) @ X
    Y = sp.csr_matrix(Y)
    Y.data = np.log1p(Y.data)
    mean = np.asarray(Y.sum(axis=0)).ravel() / n_cells
    Y.data **= 2
    mean_sq = np.asarray(Y.sum(axis=0)).ravel() / n_cells
    var = np.maximum(mean_sq - mean**2, 0.0)

    candidates = np.flatnonzero(detected >= min_cells)
    if candidates.size < n_genes:
        raise ValueError(f"only {candidates.size} genes pass the detection filter")
    # lexsort: last key is primary -> sort by -var, then by gene index.
    order = np.lexsort((candidates, -var[candidates]))
    chosen = np.sort(candidates[order[:n_genes]])
    return chosen, var, detected


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> bytes:
    """Write a deflate-compressed .npz with fixed member timestamps; return its bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, member.getvalue(), compresslevel=9)
    raw = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    return raw


def main(argv: list[str] | None = None) -> None:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--source", type=Path, default=repo.parent / "shared" / "data" / "pbmc3k_10x.h5ad"
    )
    parser.add_argument(
        "--out", type=Path, default=repo / "pyrovae" / "data" / "pbmc3k_hvg1000.npz"
    )
    args = parser.parse_args(argv)

    import anndata as ad

    adata = ad.read_h5ad(args.source)
    X = sp.csr_matrix(adata.X)
    X.sum_duplicates()
    X.sort_indices()
    if not np.all(X.data == np.round(X.data)) or X.data.min() < 0:
        raise ValueError("source counts are not non-negative integers")

    chosen, var, detected = select_genes(X)
    sub = sp.csr_matrix(X[:, chosen])
    sub.sort_indices()
    sub.eliminate_zeros()

    max_count = int(sub.data.max())
    if max_count > np.iinfo(np.uint16).max:
        raise ValueError(f"max count {max_count} does not fit uint16")
    if sub.nnz > np.iinfo(np.int32).max:
        raise ValueError("too many non-zeros for int32 indptr")

    arrays = {
        "data": sub.data.astype(np.uint16),
        "indices": sub.indices.astype(np.uint16),
        "indptr": sub.indptr.astype(np.int32),
        "shape": np.asarray(sub.shape, dtype=np.int64),
        "obs_names": np.asarray(adata.obs_names, dtype=str),
        "var_names": np.asarray(adata.var_names[chosen], dtype=str),
        "gene_symbols": np.asarray(adata.var["gene_symbols"].to_numpy()[chosen], dtype=str),
        "gene_ids": np.asarray(adata.var["gene_ids"].to_numpy()[chosen], dtype=str),
        "source_gene_index": chosen.astype(np.int32),
        "description": np.asarray(DESCRIPTION),
    }
    raw = _write_npz(args.out, arrays)

    # ---- summary stats (pasted into pyrovae/data/README.md) ----
    lib_full = np.asarray(X.sum(axis=1)).ravel()
    lib_sub = np.asarray(sub.sum(axis=1)).ravel()
    genes_per_cell = np.diff(sub.indptr)
    cells_per_gene = np.bincount(sub.indices, minlength=sub.shape[1])
    n_total = sub.shape[0] * sub.shape[1]
    ranked_var = np.sort(var[chosen])
    n_pass = int((detected >= MIN_CELLS).sum())
    lines = [
        f"source                         : {args.source.name} ({X.shape[0]} x {X.shape[1]})",
        f"genes detected in >= {MIN_CELLS} cells   : {n_pass}",
        f"shape (cells x genes)          : {sub.shape[0]} x {sub.shape[1]}",
        f"total counts                   : {int(sub.data.sum()):,}",
        f"non-zero entries               : {sub.nnz:,}",
        f"fraction of zeros              : {1 - sub.nnz / n_total:.4f}",
        f"max count                      : {max_count}",
        "counts per cell (median/min/max): "
        f"{np.median(lib_sub):g} / {lib_sub.min():g} / {lib_sub.max():g}",
        f"fraction of cell's total counts kept (median): {np.median(lib_sub / lib_full):.3f}",
        "genes detected per cell (median/min/max): "
        f"{np.median(genes_per_cell):g} / {genes_per_cell.min()} / {genes_per_cell.max()}",
        "cells per gene (median/min/max): "
        f"{np.median(cells_per_gene):g} / {cells_per_gene.min()} / {cells_per_gene.max()}",
        f"cells with zero counts         : {int((lib_sub == 0).sum())}",
        "log-normalised variance of kept genes (min/median/max): "
        f"{ranked_var[0]:.4f} / {np.median(ranked_var):.4f} / {ranked_var[-1]:.4f}",
        f"file                           : {args.out.name}, {len(raw):,} bytes",
        f"sha256                         : {hashlib.sha256(raw).hexdigest()}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
