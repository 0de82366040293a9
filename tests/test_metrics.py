"""Tests for :mod:`pyrovae.metrics` against direct scipy computations."""

import numpy as np
import pytest
import scipy.sparse
import scipy.stats as st
import torch

from pyrovae.metrics import (
    binomial_thin,
    imputation_score,
    nb_imputation_score,
    nb_logpmf,
    poisson_heldout_mean,
    reconstruction_score,
    thinning_rescale,
    zinb_imputation_score,
)


@pytest.fixture
def data():
    """Counts, a positive rate estimate, and a mask with both observed and held-out entries."""
    rng = np.random.default_rng(0)
    lam = rng.gamma(1.0, 2.0, size=(30, 12))
    x = rng.poisson(lam)
    lam_hat = lam * rng.uniform(0.5, 1.5, size=lam.shape)
    w = rng.uniform(size=x.shape) < 0.8
    return lam_hat, x, w


# --------------------------------------------------------------------------------------------
# Poisson scores
# --------------------------------------------------------------------------------------------


def test_poisson_heldout_mean_matches_scipy(data):
    lam_hat, x, _ = data
    expected = st.poisson.logpmf(x, lam_hat).mean()
    assert poisson_heldout_mean(lam_hat, x) == pytest.approx(expected, rel=1e-14)


def test_poisson_heldout_mean_accepts_torch(data):
    lam_hat, x, _ = data
    lam_t = torch.tensor(lam_hat, dtype=torch.float64, requires_grad=True)
    got = poisson_heldout_mean(lam_t, torch.tensor(x))
    assert got == pytest.approx(poisson_heldout_mean(lam_hat, x), rel=1e-14)


def test_zero_rate_gives_minus_inf_without_warning():
    assert poisson_heldout_mean(np.zeros((2, 2)), np.zeros((2, 2))) == 0.0
    assert poisson_heldout_mean(np.array([[0.0, 1.0]]), np.array([[1, 1]])) == -np.inf


def test_poisson_input_validation(data):
    lam_hat, x, w = data
    with pytest.raises(ValueError, match="shape"):
        poisson_heldout_mean(lam_hat[:, :-1], x)
    with pytest.raises(ValueError, match="negative"):
        poisson_heldout_mean(-lam_hat, x)
    with pytest.raises(ValueError, match="non-integer"):
        poisson_heldout_mean(lam_hat, x + 0.5)
    with pytest.raises(ValueError, match="non-finite"):
        poisson_heldout_mean(np.full_like(lam_hat, np.nan), x)
    with pytest.raises(ValueError, match="shape"):
        imputation_score(lam_hat, x, w[:-1])
    with pytest.raises(ValueError, match="0 and 1"):
        imputation_score(lam_hat, x, w.astype(int) * 2)


def test_imputation_and_reconstruction_match_scipy(data):
    lam_hat, x, w = data
    logpmf = st.poisson.logpmf(x, lam_hat)
    assert imputation_score(lam_hat, x, w) == pytest.approx(logpmf[~w].sum(), rel=1e-14)
    assert reconstruction_score(lam_hat, x, w) == pytest.approx(logpmf[w].sum(), rel=1e-14)
    # 0/1 masks (and torch masks) are equivalent to boolean masks.
    assert imputation_score(lam_hat, x, w.astype(np.int64)) == imputation_score(lam_hat, x, w)
    assert imputation_score(lam_hat, x, torch.tensor(w)) == imputation_score(lam_hat, x, w)


def test_imputation_ignores_observed_entries(data):
    lam_hat, x, w = data
    x2 = x.astype(np.float64)
    x2[w] = np.nan
    lam2 = lam_hat.copy()
    lam2[w] = -1.0  # invalid, but never read
    assert imputation_score(lam2, x2, w) == imputation_score(lam_hat, x, w)


def test_reconstruction_ignores_heldout_entries(data):
    lam_hat, x, w = data
    x2 = x.astype(np.float64)
    x2[~w] = 1e6
    lam2 = lam_hat.copy()
    lam2[~w] = np.inf
    assert reconstruction_score(lam2, x2, w) == reconstruction_score(lam_hat, x, w)


def test_imputation_plus_reconstruction_is_total(data):
    lam_hat, x, w = data
    total = st.poisson.logpmf(x, lam_hat).sum()
    got = imputation_score(lam_hat, x, w) + reconstruction_score(lam_hat, x, w)
    assert got == pytest.approx(total, rel=1e-12)


# --------------------------------------------------------------------------------------------
# negative-binomial scores
# --------------------------------------------------------------------------------------------


def _scipy_nb(x, mean, theta):
    return st.nbinom.logpmf(x, theta, theta / (theta + mean))


@pytest.mark.parametrize("theta", [1e-3, 0.1, 1.0, 7.5, 1e4])
def test_nb_logpmf_matches_scipy(theta):
    x = np.array([0, 0, 1, 3, 10, 250])
    mean = np.array([0.0, 2.0, 0.3, 3.0, 25.0, 200.0])
    got, expected = nb_logpmf(x, mean, theta), _scipy_nb(x, mean, theta)
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)
    assert nb_logpmf(1, 0.0, theta) == -np.inf


def test_nb_logpmf_large_theta_tends_to_poisson():
    x = np.array([0, 2, 9])
    mean = np.array([0.5, 2.0, 7.0])
    np.testing.assert_allclose(nb_logpmf(x, mean, 1e12), st.poisson.logpmf(x, mean), rtol=1e-9)


@pytest.mark.parametrize("per_gene", [False, True])
def test_nb_imputation_score_matches_scipy(data, per_gene):
    mean, x, w = data
    theta = np.linspace(0.2, 3.0, x.shape[1]) if per_gene else 0.7
    expected = _scipy_nb(x, mean, np.broadcast_to(theta, x.shape))[~w].sum()
    assert nb_imputation_score(mean, theta, x, w) == pytest.approx(expected, rel=1e-12)
    x2 = x.astype(np.float64)
    x2[w] = np.nan
    assert nb_imputation_score(mean, theta, x2, w) == nb_imputation_score(mean, theta, x, w)


def test_zinb_imputation_score_matches_scipy(data):
    mean, x, w = data
    theta = 1.3
    pi = np.linspace(0.0, 0.6, x.shape[1])
    pmf = pi * (x == 0) + (1 - pi) * st.nbinom.pmf(x, theta, theta / (theta + mean))
    expected = np.log(pmf)[~w].sum()
    assert zinb_imputation_score(mean, theta, pi, x, w) == pytest.approx(expected, rel=1e-12)
    # pi = 0 reduces to the NB score.
    nb = nb_imputation_score(mean, theta, x, w)
    assert zinb_imputation_score(mean, theta, 0.0, x, w) == pytest.approx(nb, rel=1e-14)


def test_zinb_extreme_pi_without_warnings():
    x = np.array([[0, 2]])
    w = np.zeros_like(x, dtype=bool)
    mean = np.array([[1.0, 1.0]])
    assert zinb_imputation_score(mean, 1.0, 1.0, x, w) == -np.inf
    assert zinb_imputation_score(mean[:, :1], 1.0, 1.0, x[:, :1], w[:, :1]) == 0.0


def test_nb_input_validation(data):
    mean, x, w = data
    with pytest.raises(ValueError, match="inv_disp"):
        nb_imputation_score(mean, 0.0, x, w)
    with pytest.raises(ValueError, match="broadcast"):
        nb_imputation_score(mean, np.ones(x.shape[1] + 1), x, w)
    with pytest.raises(ValueError, match="shape"):
        nb_imputation_score(mean[:-1], 1.0, x, w)
    with pytest.raises(ValueError, match="pi"):
        zinb_imputation_score(mean, 1.0, 1.5, x, w)


# --------------------------------------------------------------------------------------------
# molecular cross-validation
# --------------------------------------------------------------------------------------------


def _counts(seed=0, shape=(40, 25)):
    rng = np.random.default_rng(seed)
    return rng.poisson(rng.gamma(0.3, 10.0, size=shape))


def test_binomial_thin_sums_to_input():
    x = _counts()
    x_train, x_val = binomial_thin(x, frac=0.3, seed=1)
    assert x_train.dtype == x.dtype and x_val.dtype == x.dtype
    assert np.array_equal(x_train + x_val, x)
    assert (x_train >= 0).all() and (x_val >= 0).all()


def test_binomial_thin_mean():
    x = np.full((200, 50), 20)
    for frac in (0.2, 0.5, 0.9):
        x_train, _ = binomial_thin(x, frac=frac, seed=3)
        # 200,000 molecules: the sd of the training fraction is at most 0.0012
        assert abs(x_train.sum() / x.sum() - frac) < 0.006


def test_binomial_thin_deterministic_and_seeded():
    x = _counts()
    a, _ = binomial_thin(x, seed=5)
    b, _ = binomial_thin(x, seed=5)
    c, _ = binomial_thin(x, seed=6)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_binomial_thin_sparse_matches_dense():
    x = _counts()
    x_sp = scipy.sparse.csr_matrix(x)
    before = x_sp.copy()
    tr_sp, val_sp = binomial_thin(x_sp, frac=0.4, seed=2)
    tr, val = binomial_thin(x, frac=0.4, seed=2)
    assert scipy.sparse.issparse(tr_sp) and scipy.sparse.issparse(val_sp)
    assert tr_sp.format == "csr" and val_sp.format == "csr"
    assert np.array_equal(tr_sp.toarray(), tr)
    assert np.array_equal(val_sp.toarray(), val)
    assert (x_sp != before).nnz == 0  # input untouched


def test_binomial_thin_sparse_non_canonical():
    x = _counts(shape=(10, 8))
    coo = scipy.sparse.coo_matrix(x)
    # Split every stored value into two duplicates and add explicit zeros, in shuffled order.
    half = coo.data // 2
    rows = np.concatenate([coo.row, coo.row, [0, 1]])
    cols = np.concatenate([coo.col, coo.col, [0, 1]])
    vals = np.concatenate([half, coo.data - half, [0, 0]])
    perm = np.random.default_rng(0).permutation(len(vals))
    messy = scipy.sparse.csr_matrix((vals[perm], (rows[perm], cols[perm])), shape=x.shape)
    tr_sp, val_sp = binomial_thin(messy, seed=4)
    tr, val = binomial_thin(x, seed=4)
    assert np.array_equal(tr_sp.toarray(), tr) and np.array_equal(val_sp.toarray(), val)


def test_binomial_thin_validation():
    with pytest.raises(ValueError, match="frac"):
        binomial_thin(np.ones((2, 2)), frac=1.0)
    with pytest.raises(ValueError, match="negative"):
        binomial_thin(-np.ones((2, 2)))
    with pytest.raises(ValueError, match="non-integer"):
        binomial_thin(np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="negative"):
        binomial_thin(scipy.sparse.csr_matrix(-np.ones((2, 2))))


def test_thinning_rescale():
    lam = np.array([1.0, 2.0, 4.0])
    np.testing.assert_allclose(thinning_rescale(lam, 0.25), lam * 3.0, rtol=1e-15)
    np.testing.assert_allclose(thinning_rescale(lam, 0.5), lam, rtol=1e-15)
    t = thinning_rescale(torch.tensor(lam), 0.8)
    assert isinstance(t, torch.Tensor)
    np.testing.assert_allclose(t.numpy(), lam * 0.25, rtol=1e-15)
    with pytest.raises(ValueError, match="frac"):
        thinning_rescale(lam, 0.0)


def test_thinning_rescale_puts_a_training_estimate_on_the_validation_scale():
    """A per-gene mean estimated on the training split, rescaled, estimates the validation
    split's per-gene mean (within sampling error) and scores it better than the raw estimate."""
    rng = np.random.default_rng(0)
    lam = rng.gamma(2.0, 3.0, size=(2000, 40))
    x = rng.poisson(lam)
    x_train, x_val = binomial_thin(x, frac=0.7, seed=1)
    estimate = np.broadcast_to(x_train.mean(0), x.shape)
    rescaled = thinning_rescale(estimate, 0.7)
    se = np.sqrt(x_val.var(0) / len(x) + x_train.var(0) / len(x) * (0.3 / 0.7) ** 2)
    assert np.all(np.abs(rescaled[0] - x_val.mean(0)) < 5 * se)
    assert not np.all(np.abs(estimate[0] - x_val.mean(0)) < 5 * se)
    assert poisson_heldout_mean(rescaled, x_val) > poisson_heldout_mean(estimate, x_val)
