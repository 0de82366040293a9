"""Held-out evaluation helpers (:mod:`pyrovae.evaluation`) on a slice of the bundled PBMC data."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from pyrovae import NBVAE, PVAE
from pyrovae.baselines import nmf
from pyrovae.datasets import pbmc3k
from pyrovae.evaluation import (
    NMF_DEFAULTS,
    imputation_experiment,
    mask_entries,
    thinning_experiment,
)
from pyrovae.metrics import imputation_score, poisson_heldout_mean, thinning_rescale

FIT = dict(size_factor="library", max_epochs=3, batch_size=50, seed=0)
NMF = dict(max_iters=15)


def small():
    return NBVAE(latent_dim=2, hidden=(16,))


@pytest.fixture(scope="module")
def x_sparse():
    """150 cells × 200 genes of PBMC 3k (CSR float32 counts)."""
    return pbmc3k().counts[:150, :200].tocsr()


@pytest.fixture(scope="module")
def x(x_sparse):
    return x_sparse.toarray()


# --------------------------------------------------------------------------------------------
# mask_entries
# --------------------------------------------------------------------------------------------


def test_mask_entries_hides_a_random_fraction_of_zeros_and_nonzeros(x, x_sparse):
    w = mask_entries(x, frac=0.2, seed=3)
    assert w.shape == x.shape and w.dtype == np.bool_
    assert (~w).mean() == pytest.approx(0.2, abs=0.01)
    # independent of the values: zeros and non-zeros are hidden at the same rate
    assert (~w[x == 0]).mean() == pytest.approx(0.2, abs=0.015)
    assert (~w[x > 0]).mean() == pytest.approx(0.2, abs=0.02)
    # depends on the seed and the shape only (dense, sparse, AnnData-like all agree)
    np.testing.assert_array_equal(mask_entries(x_sparse, 0.2, 3), w)
    assert not np.array_equal(mask_entries(x, 0.2, 4), w)


@pytest.mark.parametrize("frac", [0.0, 1.0, -0.1, 2.0])
def test_mask_entries_rejects_fractions_outside_0_1(x, frac):
    with pytest.raises(ValueError, match="frac"):
        mask_entries(x, frac)


# --------------------------------------------------------------------------------------------
# imputation
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def imputation(x):
    return imputation_experiment(small, x, frac=0.1, seed=1, fit_kwargs=FIT, nmf_kwargs=NMF)


def test_imputation_scores_equal_direct_computation(x, imputation):
    res, w = imputation, imputation["w"]
    est = res["estimator"]
    assert isinstance(est, NBVAE)
    assert res["n_hidden"] == int((~w).sum()) > 0
    assert res["n_hidden_nonzero"] == int((~w & (x > 0)).sum()) > 0
    scores = res["scores"]
    assert isinstance(scores, pd.DataFrame)
    assert list(scores.index) == ["vae_denoise", "vae_predict", "nmf"]
    assert list(scores.columns) == ["total", "mean", "mean_nonzero"]
    nonzero_hidden = w | (x == 0)
    left, right, _ = nmf(x, w, rank=2, seed=1, **{**NMF_DEFAULTS, **NMF})
    lam = {
        "vae_denoise": est.denoise(x, w=w, seed=1),
        "vae_predict": est.predict(x, w=w),
        "nmf": left @ right.T,
    }
    for method, estimate in lam.items():
        total = imputation_score(estimate, x, w)
        assert scores.loc[method, "total"] == pytest.approx(total, rel=1e-9)
        assert scores.loc[method, "mean"] == pytest.approx(total / res["n_hidden"], rel=1e-9)
        nz = imputation_score(estimate, x, nonzero_hidden) / res["n_hidden_nonzero"]
        assert scores.loc[method, "mean_nonzero"] == pytest.approx(nz, rel=1e-9)
    assert np.isfinite(scores.to_numpy()).all()


def test_imputation_never_reads_the_hidden_entries(x, imputation):
    w = imputation["w"]
    other = x.copy()
    other[~w] = np.random.default_rng(0).integers(0, 50, size=int((~w).sum()))
    res = imputation_experiment(small, other, w=w, fit_kwargs=FIT, baseline=False)
    np.testing.assert_array_equal(res["estimator"].trace_, imputation["estimator"].trace_)
    # the estimates are the same; only the scored values changed
    np.testing.assert_allclose(
        res["estimator"].denoise(other, w=w), imputation["estimator"].denoise(x, w=w), rtol=1e-6
    )


def test_imputation_on_sparse_input_densifies_only_blocks(
    x, x_sparse, imputation, densify_recorder
):
    recorder = densify_recorder
    res = imputation_experiment(
        small, x_sparse, frac=0.1, seed=1, fit_kwargs=FIT, baseline=False, chunk_size=40
    )
    assert recorder.shapes and recorder.max_rows <= 50  # minibatches of 50, blocks of 40
    pd.testing.assert_frame_equal(res["scores"], imputation["scores"].drop(index="nmf"), rtol=1e-6)


def test_imputation_accepts_a_user_mask_and_an_estimator_instance(x):
    w = np.ones(x.shape, bool)
    w[::7, ::3] = False
    est = PVAE(latent_dim=2, hidden=(8,))
    res = imputation_experiment(est, x, w=w, fit_kwargs=FIT, baseline=False)
    assert res["estimator"] is est and hasattr(est, "model_")
    assert res["n_hidden"] == int((~w).sum())


def test_imputation_input_errors(x):
    with pytest.raises(ValueError, match="fit_kwargs"):
        imputation_experiment(small, x, fit_kwargs={"w": np.ones(x.shape, bool)})
    with pytest.raises(ValueError, match="hides no entry"):
        imputation_experiment(small, x, w=np.ones(x.shape, bool))
    with pytest.raises(TypeError, match="VAE"):
        imputation_experiment("nbvae", x)
    with pytest.raises(TypeError, match="not a VAE"):
        imputation_experiment(lambda: 3, x)


# --------------------------------------------------------------------------------------------
# binomial thinning
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def thinning(x):
    return thinning_experiment(small, x, frac=0.5, seed=2, fit_kwargs=FIT, nmf_kwargs=NMF)


def test_thinning_fits_on_the_training_half_only(x, thinning):
    x_train, x_val = thinning["x_train"], thinning["x_val"]
    np.testing.assert_array_equal(x_train + x_val, x)
    refit = small().fit(x_train, **FIT)
    np.testing.assert_array_equal(thinning["estimator"].trace_, refit.trace_)


def test_thinning_scores_equal_direct_computation(thinning):
    x_train, x_val, est = thinning["x_train"], thinning["x_val"], thinning["estimator"]
    left, right, _ = nmf(x_train, rank=2, seed=2, **{**NMF_DEFAULTS, **NMF})
    lam = {
        "vae_denoise": est.denoise(x_train, seed=2),
        "vae_predict": est.predict(x_train),
        "nmf": left @ right.T,
    }
    scores = thinning["scores"]
    assert list(scores.columns) == ["total", "mean"]
    for method, estimate in lam.items():
        mean = poisson_heldout_mean(thinning_rescale(estimate.astype(np.float64), 0.5), x_val)
        assert scores.loc[method, "mean"] == pytest.approx(mean, rel=1e-9)
        assert scores.loc[method, "total"] == pytest.approx(mean * x_val.size, rel=1e-9)


def test_thinning_on_sparse_input(x_sparse, thinning, densify_recorder):
    recorder = densify_recorder
    res = thinning_experiment(
        small, x_sparse, frac=0.5, seed=2, fit_kwargs=FIT, baseline=False, chunk_size=40
    )
    assert sp.issparse(res["x_train"]) and sp.issparse(res["x_val"])
    assert recorder.shapes and recorder.max_rows <= 50
    pd.testing.assert_frame_equal(res["scores"], thinning["scores"].drop(index="nmf"), rtol=1e-6)
