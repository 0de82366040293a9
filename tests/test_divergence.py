"""Divergence stress test (issue 13), the fast subset of ``benchmarks/stress.py``.

Wide, sparse, skewed droplet-like data (:func:`pyrovae.stress_data.droplet_like`: 1,200 cells x
15,000 genes, ~1.8% non-zero, log-normal libraries over two orders of magnitude, ~9% all-zero
genes, a few very deep cells) fitted for one epoch with the CLI defaults (latent 10, hidden
128-128, library size factors, batch 128, lr 3e-3, one particle). On this matrix (seed 3) the code
before issue 13 raised FitDivergedError in epoch 0 (a NaN gradient in batch 6) with the gamma
and the zinb prior; now every fit must finish with finite losses and outputs. The full grid (every closed-form
prior x ELBO/IWAE x seeds 0-9 x with/without validation) is ``benchmarks/stress.py``.
"""

import numpy as np
import pytest
import scipy.sparse as sp

import pyrovae
from pyrovae.stress_data import droplet_like

CLI_DEFAULTS = dict(size_factor="library", batch_size=128, lr=3e-3, n_samples=1, max_epochs=1)


@pytest.fixture(scope="module")
def data():
    return droplet_like(1200, 15000, seed=3)


def test_droplet_like_has_the_shape_of_droplet_data(data):
    x = data
    assert sp.isspmatrix_csr(x) and x.shape == (1200, 15000)
    assert 0.01 <= x.nnz / (1200 * 15000) <= 0.02
    lib = np.asarray(x.sum(1)).ravel()
    assert lib.min() > 0
    assert np.percentile(lib, 99) / np.percentile(lib, 1) > 50  # ~two orders of magnitude
    assert lib.max() > 20 * np.median(lib)  # very deep cells
    zero_genes = (np.asarray(x.sum(0)).ravel() == 0).mean()
    assert 0.05 <= zero_genes <= 0.15
    assert (droplet_like(50, 300, seed=3) != droplet_like(50, 300, seed=3)).nnz == 0


@pytest.mark.parametrize(
    "prior, objective, seed, validation",
    [("gamma", "elbo", 3, 0.0), ("zinb", "iwae", 3, 0.1)],
    ids=["gamma-elbo", "zinb-iwae-validation"],
)
def test_wide_sparse_skewed_data_do_not_diverge(data, prior, objective, seed, validation):
    x = data
    est = pyrovae.VAE(latent_dim=10, hidden=(128, 128), prior=prior)
    kwargs = dict(CLI_DEFAULTS, objective=objective, seed=seed)
    if validation:
        kwargs.update(validation_fraction=validation, validation_by="cells", patience=10)
    est.fit(x, **kwargs)  # raises FitDivergedError on divergence
    assert np.all(np.isfinite(est.trace_))
    sub = x[:64]
    assert np.all(np.isfinite(est.latent(sub)))
    assert np.all(np.isfinite(est.denoise(sub, n_samples=2)))
