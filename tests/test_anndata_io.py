"""AnnData in/out (:mod:`pyrovae.anndata_io`) and chunked evaluation of sparse input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import scipy.sparse as sp

import pyrovae
import pyrovae._chunking as chunking_module
from pyrovae import NBVAE
from pyrovae.anndata_io import results_uns, settings_of, stream_results, write_results
from pyrovae.datasets import pbmc3k

anndata = pytest.importorskip("anndata")

N_CELLS, N_GENES = 200, 1000


@pytest.fixture(scope="module")
def adata():
    """The bundled PBMC 3k subset cut to 200 cells × 1000 genes (sparse X and 'counts')."""
    return pbmc3k().to_anndata()[:N_CELLS, :N_GENES].copy()


@pytest.fixture(scope="module")
def fitted(adata):
    return NBVAE(latent_dim=3, hidden=(16,)).fit(
        adata, size_factor="library", max_epochs=3, batch_size=64, seed=0
    )


def test_fit_accepts_anndata_and_its_layers(adata, fitted):
    again = NBVAE(latent_dim=3, hidden=(16,)).fit(
        adata, layer="counts", size_factor="library", max_epochs=3, batch_size=64, seed=0
    )
    np.testing.assert_array_equal(again.trace_, fitted.trace_)
    with pytest.raises(ValueError, match="no layer 'raw'"):
        NBVAE().fit(adata, layer="raw", max_epochs=1)


def test_write_results_matches_whole_matrix_calls(adata, fitted):
    out = write_results(fitted, adata.copy(), n_samples=20, chunk_size=64)
    x = adata.layers["counts"]
    assert out.obsm["X_pyrovae"].shape == (N_CELLS, 3)
    np.testing.assert_allclose(out.obsm["X_pyrovae"], fitted.latent(x), rtol=1e-6)
    lam = out.layers["pyrovae_denoised"]
    assert isinstance(lam, np.ndarray) and lam.dtype == np.float32
    np.testing.assert_allclose(lam, fitted.denoise(x, n_samples=20), rtol=1e-5)
    assert out.X is not lam and sp.issparse(out.X)  # the counts are untouched


def test_uns_holds_plain_settings_and_round_trips(adata, fitted, tmp_path):
    out = write_results(
        fitted, adata.copy(), n_samples=5, extra_uns={"note": "x", "score": float("nan")}
    )
    uns = out.uns["pyrovae"]
    json.dumps(uns, allow_nan=False)  # plain JSON-able types only
    assert uns["version"] == pyrovae.__version__
    assert uns["estimator"] == "NBVAE"
    assert uns["params"]["latent_dim"] == 3 and uns["params"]["hidden"] == [16]
    assert uns["params"]["dtype"] == "torch.float32"
    assert uns["fit_settings"]["batch_size"] == 64 and uns["fit_settings"]["max_epochs"] == 3
    assert uns["size_factor_mode"] == "library"
    assert uns["library_median"] == pytest.approx(fitted.library_median_)
    assert uns["epochs_run"] == 3 and uns["final_loss"] == pytest.approx(fitted.trace_[-1])
    assert uns["counts_layer"] == "counts" and uns["denoised_layer"] == "pyrovae_denoised"
    assert uns["note"] == "x" and uns["score"] is None  # NaN is not JSON
    assert settings_of(fitted)["params"] == uns["params"]
    path = tmp_path / "out.h5ad"
    out.write_h5ad(path)
    back = anndata.read_h5ad(path)
    np.testing.assert_array_equal(back.obsm["X_pyrovae"], out.obsm["X_pyrovae"])
    np.testing.assert_array_equal(back.layers["pyrovae_denoised"], out.layers["pyrovae_denoised"])
    assert back.uns["pyrovae"]["fit_settings"]["lr"] == uns["fit_settings"]["lr"]


def test_denoised_layer_can_be_skipped_and_keys_chosen(adata, fitted):
    out = write_results(fitted, adata.copy(), key="X_vae", denoised_layer=None, layer="counts")
    assert "X_vae" in out.obsm and "X_pyrovae" not in out.obsm
    assert list(out.layers) == ["counts"]
    assert out.uns["pyrovae"]["denoised_layer"] is None


def test_write_results_rejects_bad_targets(adata, fitted):
    with pytest.raises(ValueError, match="view"):
        write_results(fitted, adata[:10], denoised_layer=None)
    with pytest.raises(ValueError, match="genes"):
        write_results(fitted, adata[:, :50].copy(), denoised_layer=None)
    with pytest.raises(ValueError, match="AnnData"):
        write_results(fitted, adata.layers["counts"])
    with pytest.raises(ValueError, match="size_factor"):
        write_results(fitted, adata.copy(), size_factor=np.ones(3))


def test_sparse_input_is_densified_one_chunk_at_a_time(
    adata, fitted, monkeypatch, densify_recorder
):
    x = adata.layers["counts"]
    assert sp.issparse(x)
    expected = {
        "latent": fitted.latent(x),
        "denoise": fitted.denoise(x, n_samples=5),
        "predict": fitted.predict(x, n_samples=3),
        "log_likelihood": fitted.log_likelihood(x, n_samples=5),
    }
    # evaluation chunks come from a memory budget: shrink it to at most 48 cells per chunk
    monkeypatch.setattr(chunking_module, "ELEMENT_BUDGET", 48 * x.shape[1])
    recorder = densify_recorder
    recorder.shapes.clear()  # (what the unshrunk evaluations above densified)
    got = {
        "latent": fitted.latent(x),
        "denoise": fitted.denoise(x, n_samples=5),
        "predict": fitted.predict(x, n_samples=3),
        "log_likelihood": fitted.log_likelihood(x, n_samples=5),
    }
    assert recorder.shapes, "the recorder saw no densification at all"
    assert recorder.max_rows <= 48  # never the whole matrix
    for name, value in expected.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, err_msg=name)
    recorder.shapes.clear()
    write_results(fitted, adata.copy(), n_samples=5, chunk_size=30)
    assert recorder.max_rows <= 30


def test_csc_and_dense_layers_give_the_same_results(adata, fitted):
    ref = write_results(fitted, adata.copy(), n_samples=5).layers["pyrovae_denoised"]
    for convert in (sp.csc_matrix, lambda m: m.toarray()):
        other = adata.copy()
        other.layers["counts"] = convert(other.layers["counts"])
        got = write_results(fitted, other, n_samples=5, chunk_size=70)
        np.testing.assert_allclose(got.layers["pyrovae_denoised"], ref, rtol=1e-5)


def test_stream_results_equal_the_in_memory_results(adata, fitted, tmp_path):
    """The h5py writer for data on disk gives the file that write_results + write_h5ad give."""
    src = tmp_path / "in.h5ad"
    adata.write_h5ad(src)
    before = src.read_bytes()
    x = adata.layers["counts"]
    reference = write_results(fitted, adata.copy(), n_samples=7, chunk_size=50)
    calls = []

    def denoise_rows(start, stop):
        calls.append((start, stop))
        return fitted.denoise(x[start:stop], n_samples=7)

    out = tmp_path / "out.h5ad"
    uns = results_uns(fitted, "counts", n_samples=7)
    stream_results(src, out, fitted.latent(x), denoise_rows, uns=uns, block_size=64)
    assert src.read_bytes() == before  # the input is never modified
    assert max(b - a for a, b in calls) == 64 and calls[-1][1] == N_CELLS
    back = anndata.read_h5ad(out)
    np.testing.assert_allclose(back.obsm["X_pyrovae"], reference.obsm["X_pyrovae"], rtol=1e-6)
    lam = back.layers["pyrovae_denoised"]
    assert lam.dtype == np.float32 and lam.shape == (N_CELLS, N_GENES)
    np.testing.assert_allclose(lam, reference.layers["pyrovae_denoised"], rtol=1e-5)
    assert back.uns["pyrovae"]["params"] == reference.uns["pyrovae"]["params"]
    assert back.uns["pyrovae"]["denoised_layer"] == "pyrovae_denoised"
    np.testing.assert_array_equal(back.layers["counts"].toarray(), x.toarray())
    # rewriting the output replaces the entries; skipping the layer leaves none
    stream_results(out, tmp_path / "again.h5ad", np.zeros((N_CELLS, 3)), None, uns=uns)
    again = anndata.read_h5ad(tmp_path / "again.h5ad")
    assert not again.obsm["X_pyrovae"].any()
    assert "pyrovae_denoised" in again.layers  # copied from the input, untouched
    with pytest.raises(ValueError, match="latent must have shape"):
        stream_results(src, tmp_path / "bad.h5ad", np.zeros((3, 3)))
    with pytest.raises(ValueError, match="returned shape"):
        stream_results(src, tmp_path / "bad.h5ad", np.zeros((N_CELLS, 3)), lambda a, b: np.ones(2))
