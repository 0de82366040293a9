"""Tests for the bundled PBMC 3k subset (``pyrovae.datasets``)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pyrovae.datasets import CountDataset, pbmc3k

REPO = Path(__file__).parents[1]
SOURCE_H5AD = REPO.parent / "shared" / "data" / "pbmc3k_10x.h5ad"
SUBSET_SCRIPT = REPO / "scripts" / "make_pbmc3k_subset.py"


@pytest.fixture(scope="module")
def ds() -> CountDataset:
    return pbmc3k()


def test_shape_and_types(ds):
    assert isinstance(ds, CountDataset)
    assert sp.issparse(ds.counts) and ds.counts.format == "csr"
    assert ds.counts.shape == (2700, 1000) == ds.shape
    assert (ds.n_obs, ds.n_vars) == (2700, 1000)
    assert ds.counts.dtype == np.float32
    assert ds.obs_names.shape == (2700,) and ds.obs_names.dtype.kind == "U"
    assert ds.var_names.shape == (1000,) and ds.var_names.dtype.kind == "U"
    assert isinstance(ds.var, pd.DataFrame)
    assert list(ds.var.index) == list(ds.var_names)
    assert ds.var["gene_ids"].str.startswith("ENSG").all()


def test_counts_are_sparse_nonnegative_integers(ds):
    data = ds.counts.data
    assert ds.counts.nnz / np.prod(ds.counts.shape) < 0.5
    assert np.all(data >= 0)
    assert np.array_equal(data, np.round(data))
    assert np.all(np.isfinite(data))


def test_no_empty_genes_or_cells(ds):
    detected_cells = np.asarray((ds.counts > 0).sum(axis=0)).ravel()
    assert detected_cells.min() >= 3
    assert np.asarray(ds.counts.sum(axis=1)).min() > 0


def test_names_unique(ds):
    assert len(set(ds.obs_names)) == ds.n_obs
    assert len(set(ds.var_names)) == ds.n_vars
    assert ds.obs_names[0] == "AAACATACAACCAC-1"
    for marker in ("CD3E", "MS4A1", "CD14", "LYZ", "NKG7"):
        assert marker in set(ds.var_names)


def test_attribution(ds):
    for text in ("10x Genomics", "CC BY 4.0", "hmumme/scToolbox", "ae12ae7cc6d26bd1"):
        assert text in ds.description


def test_frozen_and_fresh(ds):
    with pytest.raises(AttributeError):
        ds.description = "x"  # type: ignore[misc]
    other = pbmc3k()
    assert other.counts is not ds.counts
    assert (other.counts != ds.counts).nnz == 0


def test_import_does_not_pull_torch():
    code = (
        "import sys; import pyrovae.datasets as d; d.pbmc3k(); "
        "bad = [m for m in ('torch', 'pyro', 'anndata') if m in sys.modules]; "
        "assert not bad, bad"
    )
    # the package __init__ is lazy: importing pyrovae alone must not import torch either
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, pyrovae; print('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "False"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_to_anndata_round_trip(ds):
    pytest.importorskip("anndata")
    adata = ds.to_anndata()
    assert adata.shape == (2700, 1000)
    assert list(adata.obs_names) == list(ds.obs_names)
    assert list(adata.var_names) == list(ds.var_names)
    assert list(adata.var["gene_ids"]) == list(ds.var["gene_ids"])
    assert sp.issparse(adata.X) and adata.X.dtype == np.float32
    assert (adata.X != ds.counts).nnz == 0
    assert (adata.layers["counts"] != ds.counts).nnz == 0
    assert adata.layers["counts"] is not adata.X
    assert adata.uns["source"] == ds.description
    # X and the layer are independent copies of the dataset's matrix.
    adata.X.data[:] = 0
    assert ds.counts.data.max() > 0
    assert adata.layers["counts"].data.max() > 0


@pytest.mark.skipif(not SOURCE_H5AD.exists(), reason=f"source data not at {SOURCE_H5AD}")
def test_matches_source_h5ad(ds):
    anndata = pytest.importorskip("anndata")
    src = anndata.read_h5ad(SOURCE_H5AD)
    assert list(src.obs_names) == list(ds.obs_names)
    col = src.var_names.get_indexer(ds.var_names)
    assert np.all(col >= 0)
    assert np.all(np.diff(col) > 0)  # original gene order is kept
    assert list(src.var["gene_ids"].iloc[col]) == list(ds.var["gene_ids"])
    assert list(src.var["gene_symbols"].iloc[col]) == list(ds.var["gene_symbols"])
    expected = sp.csr_matrix(src.X[:, col])
    assert (expected != ds.counts).nnz == 0
    # The documented selection rule, re-run on the source, gives the same genes.
    if SUBSET_SCRIPT.exists():
        spec = importlib.util.spec_from_file_location("make_pbmc3k_subset", SUBSET_SCRIPT)
        script = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(script)
        chosen, _, _ = script.select_genes(src.X)
        assert np.array_equal(chosen, col)
