"""Small real single-cell count data sets bundled with pyrovae.

``pbmc3k()`` returns a subset of 10x Genomics' "3k PBMCs from a Healthy Donor"
data set (Cell Ranger 1.1.0 filtered gene-barcode matrix, hg19), licensed under
CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/), as redistributed in the
GitHub repository ``hmumme/scToolbox`` at commit
``ae12ae7cc6d26bd109adb9f9d9a335d559c1f024`` (MIT licence).  The subset keeps all
2700 cells and the raw UMI counts of 1000 highly variable genes; it was made by
``scripts/make_pbmc3k_subset.py`` (see ``pyrovae/data/README.md``).

This module only needs numpy, scipy and pandas; it does not import torch or pyro.
``anndata`` is imported lazily by :meth:`CountDataset.to_anndata`.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["CountDataset", "pbmc3k"]

PBMC3K_FILE = "pbmc3k_hvg1000.npz"


@dataclass(frozen=True, eq=False)
class CountDataset:
    """A cells x genes matrix of raw counts with its names and attribution.

    :ivar counts: ``scipy.sparse.csr_matrix`` of shape ``(n_obs, n_vars)``, dtype float32,
        holding non-negative integer UMI counts (AnnData convention).
    :ivar obs_names: cell names (barcodes), numpy unicode array of length ``n_obs``.
    :ivar var_names: gene names (unique gene symbols), numpy unicode array of length
        ``n_vars``.
    :ivar var: per-gene table indexed by ``var_names`` (columns ``gene_ids``: Ensembl ids,
        ``gene_symbols``: original, possibly duplicated, symbols).
    :ivar description: source and licence attribution text.
    """

    counts: sp.csr_matrix
    obs_names: np.ndarray
    var_names: np.ndarray
    var: pd.DataFrame
    description: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.counts.shape

    @property
    def n_obs(self) -> int:
        return self.counts.shape[0]

    @property
    def n_vars(self) -> int:
        return self.counts.shape[1]

    def __repr__(self) -> str:
        return (
            f"CountDataset(n_obs={self.n_obs}, n_vars={self.n_vars}, "
            f"nnz={self.counts.nnz}, var_columns={list(self.var.columns)})"
        )

    def to_anndata(self) -> anndata.AnnData:
        """Return an ``AnnData`` with ``X`` and ``layers['counts']`` set to the counts.

        ``X`` and ``layers['counts']`` are independent copies; ``uns['source']``
        holds the attribution text.  Requires ``anndata``
        (``pip install 'pyrovae[anndata]'``).
        """
        try:
            import anndata
        except ImportError as err:  # pragma: no cover - depends on environment
            raise ImportError(
                "CountDataset.to_anndata() needs the optional dependency 'anndata'; "
                "install it with: pip install 'pyrovae[anndata]'"
            ) from err

        obs = pd.DataFrame(index=pd.Index(self.obs_names.tolist(), dtype=object))
        var = self.var.copy()
        var.index = pd.Index(self.var_names.tolist(), dtype=object)
        return anndata.AnnData(
            X=self.counts.copy(),
            obs=obs,
            var=var,
            layers={"counts": self.counts.copy()},
            uns={"source": self.description},
        )


def _load_npz_resource(filename: str) -> dict[str, np.ndarray]:
    ref = resources.files("pyrovae") / "data" / filename
    with ref.open("rb") as fh, np.load(fh, allow_pickle=False) as npz:
        return {key: npz[key] for key in npz.files}


def pbmc3k() -> CountDataset:
    """Load the bundled PBMC 3k subset: 2700 cells x 1000 highly variable genes.

    Raw UMI counts from 10x Genomics, "3k PBMCs from a Healthy Donor" (CC BY 4.0),
    via ``hmumme/scToolbox`` @ ``ae12ae7`` (MIT).  The genes are the 1000 with the
    highest variance of ``log1p(counts / library size * 1e4)`` among genes detected
    in at least 3 cells, kept in their original order; all cells are kept.  No
    cell-type labels are included.  Each call reads the file afresh and returns
    new arrays.

    :return: a :class:`CountDataset` whose ``counts`` is a float32 CSR matrix of shape
        ``(2700, 1000)``.
    """
    arrays = _load_npz_resource(PBMC3K_FILE)
    shape = tuple(int(n) for n in arrays["shape"])
    counts = sp.csr_matrix(
        (
            arrays["data"].astype(np.float32),
            arrays["indices"].astype(np.int32),
            arrays["indptr"].astype(np.int32),
        ),
        shape=shape,
    )
    var_names = arrays["var_names"].astype(str)
    var = pd.DataFrame(
        {
            "gene_ids": arrays["gene_ids"].astype(str).tolist(),
            "gene_symbols": arrays["gene_symbols"].astype(str).tolist(),
        },
        index=pd.Index(var_names.tolist(), dtype=object),
    )
    return CountDataset(
        counts=counts,
        obs_names=arrays["obs_names"].astype(str),
        var_names=var_names,
        var=var,
        description=str(arrays["description"]),
    )
