"""Tests for the NMF / NB matrix-factorisation baselines in :mod:`pyrovae.baselines`."""

import numpy as np
import pytest
import scipy.sparse
import scipy.stats as st
import torch

from pyrovae.baselines import nbmf, nmf
from pyrovae.baselines.nbmf import _NBLikelihood
from pyrovae.baselines.nmf import _Problem

FITS = [nmf, nbmf]


@pytest.fixture(scope="module")
def poisson_data():
    """A 100 x 30 rank-3 Poisson matrix and a mask with about 20% held out."""
    rng = np.random.default_rng(1)
    left = rng.gamma(2.0, 1.0, size=(100, 3))
    right = rng.gamma(2.0, 1.0, size=(30, 3))
    x = rng.poisson(left @ right.T)
    w = rng.uniform(size=x.shape) < 0.8
    return x, w


@pytest.fixture(scope="module")
def nb_data():
    """A 150 x 40 rank-2 negative-binomial matrix with inverse dispersion 2."""
    rng = np.random.default_rng(2)
    mean = rng.gamma(2.0, 1.5, size=(150, 2)) @ rng.gamma(2.0, 1.5, size=(40, 2)).T
    theta = 2.0
    x = rng.poisson(mean * rng.gamma(theta, 1 / theta, size=mean.shape))
    return x, theta


def _trace(fit, *args, **kwargs):
    trace = []
    out = fit(*args, callback=lambda it, ll: trace.append((it, ll)), **kwargs)
    return out, trace


@pytest.mark.parametrize("fit", FITS)
@pytest.mark.parametrize("masked", [False, True])
def test_loglik_trace_is_monotone(poisson_data, fit, masked):
    x, w = poisson_data
    out, trace = _trace(fit, x, w if masked else None, rank=3, max_iters=300, tol=0.0)
    its, lls = zip(*trace, strict=True)
    assert list(its) == list(range(301))
    lls = np.array(lls)
    assert np.all(np.diff(lls) >= -1e-10 * np.abs(lls[1:]))
    assert out[2] == lls[-1]


@pytest.mark.parametrize("fit", FITS)
def test_converges_before_max_iters(poisson_data, fit):
    x, _ = poisson_data
    _, trace = _trace(fit, x, rank=3, max_iters=5000, tol=1e-6)
    assert len(trace) - 1 < 5000
    (_, prev), (_, last) = trace[-2:]
    assert abs(last - prev) <= 1e-6 * abs(last)


@pytest.mark.parametrize("fit", FITS)
def test_true_rank_beats_rank_one(poisson_data, fit):
    x, w = poisson_data
    ll1 = fit(x, w, rank=1)[2]
    ll3 = fit(x, w, rank=3)[2]
    assert ll3 > ll1 + 100


@pytest.mark.parametrize("fit", FITS)
def test_masked_entries_have_no_influence(poisson_data, fit):
    x, w = poisson_data
    l1, f1, ll1 = fit(x, w, rank=3, max_iters=200)
    x2 = x.astype(np.float64)
    x2[~w] = np.where(np.arange((~w).sum()) % 2 == 0, np.nan, 1e6)
    l2, f2, ll2 = fit(x2, w.astype(np.int64), rank=3, max_iters=200)
    assert np.array_equal(l1, l2) and np.array_equal(f1, f2) and ll1 == ll2


def test_nmf_loglik_matches_scipy(poisson_data):
    x, w = poisson_data
    left, right, ll = nmf(x, w, rank=3, max_iters=200)
    assert left.shape == (100, 3) and right.shape == (30, 3)
    expected = st.poisson.logpmf(x, left @ right.T)[w].sum()
    assert ll == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("fix", [False, True])
def test_nbmf_loglik_matches_scipy(nb_data, fix):
    x, _ = nb_data
    w = np.random.default_rng(0).uniform(size=x.shape) < 0.9
    left, right, ll, theta = nbmf(
        x, w, rank=2, inv_disp=0.5, fix_inv_disp=fix, max_iters=200, return_inv_disp=True
    )
    m = left @ right.T
    expected = st.nbinom.logpmf(x, theta, theta / (theta + m))[w].sum()
    assert ll == pytest.approx(expected, rel=1e-12)
    if fix:
        assert theta == 0.5


def test_nbmf_estimates_inverse_dispersion(nb_data):
    x, theta_true = nb_data
    _, _, _, theta = nbmf(x, rank=2, inv_disp=0.1, return_inv_disp=True)
    assert theta == pytest.approx(theta_true, rel=0.25)


def test_nbmf_beats_nmf_on_nb_data(nb_data):
    """NB log-likelihood at the NB fit exceeds the Poisson one at the Poisson fit."""
    x, _ = nb_data
    assert nbmf(x, rank=2)[2] > nmf(x, rank=2)[2]


def test_theta_derivatives_match_finite_differences(nb_data):
    x, _ = nb_data
    w = np.random.default_rng(0).uniform(size=x.shape) < 0.9
    left, right, _ = nmf(x, w, rank=2, max_iters=50)
    m = left @ right.T
    nb = _NBLikelihood(_Problem(x, w))
    for theta in (0.3, 2.0, 40.0):
        grad, hess = nb.theta_derivatives(m, theta)
        h = 1e-4 * theta
        fd_grad = (nb.loglik(m, theta + h) - nb.loglik(m, theta - h)) / (2 * h)
        g_plus, _ = nb.theta_derivatives(m, theta + h)
        g_minus, _ = nb.theta_derivatives(m, theta - h)
        assert grad == pytest.approx(fd_grad, rel=1e-5, abs=1e-6)
        assert hess == pytest.approx((g_plus - g_minus) / (2 * h), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("fit", FITS)
def test_deterministic_given_seed(poisson_data, fit):
    x, w = poisson_data
    a = fit(x, w, rank=3, max_iters=50, seed=3)
    b = fit(x, w, rank=3, max_iters=50, seed=3)
    c = fit(x, w, rank=3, max_iters=50, seed=4)
    assert all(np.array_equal(u, v) for u, v in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


@pytest.mark.parametrize("fit", FITS)
def test_input_types_agree(poisson_data, fit):
    x, w = poisson_data
    ref = fit(x, w, rank=2, max_iters=30)
    for x_alt in (scipy.sparse.csr_matrix(x), torch.tensor(x), x.tolist()):
        out = fit(x_alt, w, rank=2, max_iters=30)
        assert all(np.array_equal(u, v) for u, v in zip(ref, out, strict=True))


@pytest.mark.parametrize("fit", FITS)
def test_unobserved_row_and_zero_column(poisson_data, fit):
    x, w = poisson_data
    x = x.copy()
    w = w.copy()
    w[0] = False  # a cell with no observed entry
    x[:, 1] = 0  # a gene with no counts
    left, right, ll = fit(x, w, rank=3, max_iters=100)
    assert np.all(np.isfinite(left)) and np.all(np.isfinite(right)) and np.isfinite(ll)
    assert np.all(right[1] <= 1e-6)


def test_max_iters_zero_returns_initialisation(poisson_data):
    x, _ = poisson_data
    left, right, ll = nmf(x, rank=2, max_iters=0)
    assert ll == pytest.approx(st.poisson.logpmf(x, left @ right.T).sum(), rel=1e-12)


@pytest.mark.parametrize("fit", FITS)
def test_bad_inputs(poisson_data, fit):
    x, w = poisson_data
    bad = x.astype(np.float64)
    bad[0, 0] = -1
    with pytest.raises(ValueError, match="negative"):
        fit(bad, rank=2)
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        fit(bad, rank=2)
    bad[0, 0] = 0.5
    with pytest.raises(ValueError, match="non-integer"):
        fit(bad, rank=2)
    with pytest.raises(ValueError, match="shape"):
        fit(x, w[:, :-1], rank=2)
    with pytest.raises(ValueError, match="0 and 1"):
        fit(x, w * 2, rank=2)
    with pytest.raises(ValueError, match="observed"):
        fit(x, np.zeros_like(w), rank=2)
    with pytest.raises(ValueError, match="rank"):
        fit(x, rank=0)
    with pytest.raises(ValueError, match="rank"):
        fit(x, rank=1.5)
    with pytest.raises(ValueError, match="2-D"):
        fit(x[0], rank=2)
    with pytest.raises(ValueError, match="max_iters"):
        fit(x, rank=2, max_iters=-1)


def test_nbmf_bad_inv_disp(poisson_data):
    x, _ = poisson_data
    for value in (0.0, -1.0, np.inf, np.nan):
        with pytest.raises(ValueError, match="inv_disp"):
            nbmf(x, rank=2, inv_disp=value)
