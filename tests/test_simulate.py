"""Tests for :mod:`pyrovae.simulate`: bit-for-bit reproduction of the reference simulations."""

import numpy as np
import pytest
import scipy.integrate
import scipy.stats as st

from pyrovae.simulate import (
    Simulation,
    bayes_posterior_mean_lambda,
    imputation,
    poisson_thinning,
)

# ruff: noqa: NPY002 -- the reference code uses numpy's legacy global RNG on purpose


def reference_thinning(seed=0, n=500, p=100, k=3):
    """Inline copy of the reference note's Poisson-thinning simulation."""
    np.random.seed(seed)
    l = np.random.lognormal(sigma=0.5, size=(n, k))  # noqa: E741
    f = np.random.lognormal(sigma=0.5, size=(p, k))
    mu = l @ f.T
    u = np.random.gamma(shape=0.1, scale=10, size=(n, p))
    lam = mu * u
    x = np.random.poisson(lam=lam)
    x_val = np.random.poisson(lam=lam)
    return dict(l=l, f=f, mu=mu, u=u, lam=lam, x=x, x_val=x_val)


def reference_imputation(seed=0, n=500, p=100, k=3):
    """Inline copy of the reference note's imputation simulation."""
    np.random.seed(seed)
    l = np.random.lognormal(sigma=0.5, size=(n, k))  # noqa: E741
    f = np.random.lognormal(sigma=0.5, size=(p, k))
    mu = l @ f.T
    u = np.random.gamma(shape=1 / mu.var(), scale=mu.var(), size=(n, p))
    lam = mu * u
    x = np.random.poisson(lam=lam)
    w = np.random.uniform(size=x.shape) < 0.9
    return dict(l=l, f=f, mu=mu, u=u, lam=lam, x=x, w=w)


def _assert_identical(sim: Simulation, ref: dict) -> None:
    for name, expected in ref.items():
        got = getattr(sim, name)
        assert got.dtype == expected.dtype, name
        assert np.array_equal(got, expected), name


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_thinning_bit_identical_to_reference(seed):
    ref = reference_thinning(seed)
    after_ref = np.random.random(3)
    sim = poisson_thinning(seed)
    after_sim = np.random.random(3)
    _assert_identical(sim, ref)
    assert sim.w is None
    assert sim.inv_disp == 0.1
    assert sim.seed == seed
    # The global RNG is left exactly where the reference code left it.
    assert np.array_equal(after_ref, after_sim)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_imputation_bit_identical_to_reference(seed):
    ref = reference_imputation(seed)
    after_ref = np.random.random(3)
    sim = imputation(seed)
    after_sim = np.random.random(3)
    _assert_identical(sim, ref)
    assert sim.x_val is None
    assert sim.inv_disp == 1 / ref["mu"].var()
    assert np.array_equal(after_ref, after_sim)


def test_non_default_sizes_match_reference():
    _assert_identical(poisson_thinning(3, n=20, p=7, k=2), reference_thinning(3, n=20, p=7, k=2))
    _assert_identical(imputation(3, n=20, p=7, k=2), reference_imputation(3, n=20, p=7, k=2))


def test_shapes_and_consistency():
    n, p, k = 40, 15, 4
    for sim in (poisson_thinning(2, n, p, k), imputation(2, n, p, k)):
        assert sim.l.shape == (n, k)
        assert sim.f.shape == (p, k)
        for name in ("x", "lam", "mu", "u"):
            assert getattr(sim, name).shape == (n, p), name
        assert np.array_equal(sim.mu, sim.l @ sim.f.T)
        assert np.array_equal(sim.lam, sim.mu * sim.u)
        assert np.issubdtype(sim.x.dtype, np.integer)
        assert (sim.x >= 0).all()
    assert poisson_thinning(2, n, p, k).x_val.shape == (n, p)
    w = imputation(2, n, p, k).w
    assert w.shape == (n, p) and w.dtype == np.bool_


def test_simulation_is_frozen():
    sim = poisson_thinning(0, n=5, p=4)
    with pytest.raises(AttributeError):
        sim.x = None


def test_observed_fraction_near_target():
    sim = imputation(0)  # 50,000 entries: sd of the fraction is about 0.0013
    assert abs(sim.w.mean() - 0.9) < 0.01
    sim = imputation(0, n=200, p=100, frac_observed=0.5)
    assert abs(sim.w.mean() - 0.5) < 0.02


def test_bayes_posterior_mean_formula():
    x = np.array([0, 1, 5])
    mu = np.array([2.0, 0.5, 3.0])
    expected = mu * (0.1 + x) / (0.1 + mu)
    np.testing.assert_allclose(bayes_posterior_mean_lambda(x, mu, 0.1), expected, rtol=1e-15)
    sim = poisson_thinning(0, n=10, p=6)
    np.testing.assert_array_equal(
        sim.bayes_posterior_mean(), bayes_posterior_mean_lambda(sim.x, sim.mu, 0.1)
    )
    with pytest.raises(ValueError, match="positive"):
        bayes_posterior_mean_lambda(x, mu, 0.0)


def _posterior_mean_by_quadrature(x, mu, shape):
    """E[mu u | x] with u ~ Gamma(shape, rate=shape), x | u ~ Poisson(mu u), by quadrature."""

    def joint(u):
        return st.poisson.pmf(x, mu * u) * st.gamma.pdf(u, shape, scale=1 / shape)

    # Split at the posterior mode region so quad sees the peak.
    mode = max((shape + x - 1) / (shape + mu), 1e-3)
    pieces = [(0.0, mode), (mode, 10 * mode + 10), (10 * mode + 10, np.inf)]
    num = sum(scipy.integrate.quad(lambda u: mu * u * joint(u), a, b)[0] for a, b in pieces)
    den = sum(scipy.integrate.quad(joint, a, b)[0] for a, b in pieces)
    return num / den


@pytest.mark.parametrize(
    "x, mu, shape",
    [(1, 2.0, 0.1), (4, 0.7, 0.1), (12, 5.0, 0.1), (0, 2.0, 1.0), (0, 0.3, 2.5), (3, 1.5, 2.5)],
)
def test_bayes_posterior_mean_matches_quadrature(x, mu, shape):
    expected = _posterior_mean_by_quadrature(x, mu, shape)
    got = bayes_posterior_mean_lambda(x, mu, shape)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_bayes_posterior_mean_on_simulated_entries():
    sim = poisson_thinning(0, n=20, p=10)
    bayes = sim.bayes_posterior_mean()
    # Entries with x = 0 are skipped: with shape 0.1 the integrand is singular at u = 0.
    for i, j in np.argwhere(sim.x > 0)[::7][:4]:
        x, mu = int(sim.x[i, j]), float(sim.mu[i, j])
        expected = _posterior_mean_by_quadrature(x, mu, sim.inv_disp)
        np.testing.assert_allclose(bayes[i, j], expected, rtol=1e-6)
