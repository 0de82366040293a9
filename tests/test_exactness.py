"""Exactness (issue 6): the estimators of log p(x) and the objectives against independent
computations, in float64.

* With a 1-D latent and a fixed (briefly fitted) decoder, log p(x_i) = log ∫ N(z; 0, 1)
  p(x_i | z) dz by quadrature over a dense grid of z, using the model's ``prior.marginal``.
  ``log_likelihood(n_samples=K)`` approaches it as K grows; the IWAE bound of
  :mod:`pyrovae.objectives` is <= log p(x) on average over seeds and increases with K on
  average; the ELBO is below the IWAE bound.
* The IWAE loss equals a hand-computed log-mean-exp of log p(x, z) - log q(z) on the same
  particles (the guide traced inside ``pyro.plate("num_particles_vectorized", K, dim=-2)`` as
  Pyro's vectorized ``RenyiELBO`` does), loss and gradients, full batch and for a minibatch with
  scale N/B applied outside the log-mean-exp; scaling the sites instead (what a subsampled plate
  or ``poutine.scale`` does) gives a different, wrong number.
* ``denoise`` of a fitted model equals a hand computation from the encoder, the decoder and the
  prior's E[u | x, r] written out independently (closed forms, or a numerical integral for the
  quadrature priors) with the same standard-normal draws — for every prior class. (The priors'
  posterior means against numerical integrals are in ``test_priors.py``.)
"""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import scipy.special as sc
import scipy.stats as st
import torch
from priors_under_test import PRIOR_FACTORIES
from pyro import poutine

import pyrovae
from pyrovae import objectives, priors

F64 = torch.float64
N_CELLS, N_GENES = 40, 8
EVAL = [0, 7, 13, 22, 35]  # the cells whose log p(x) is computed by quadrature


@pytest.fixture(scope="module")
def data():
    """Counts from a 1-D latent negative-binomial model, with a few missing entries."""
    rng = np.random.default_rng(11)
    z = rng.normal(size=(N_CELLS, 1))
    a, b = rng.normal(1.0, 0.5, size=N_GENES), rng.normal(0.0, 0.8, size=N_GENES)
    mu = np.exp(a + z * b)
    x = rng.poisson(mu * rng.gamma(4.0, 0.25, size=mu.shape)).astype(np.float64)
    w = np.ones_like(x, dtype=bool)
    w[[1, 7, 13, 30], [2, 0, 5, 7]] = False
    return x, w


@pytest.fixture(scope="module")
def model(data):
    x, w = data
    est = pyrovae.VAE(latent_dim=1, hidden=(16,), prior="zinb", dtype=F64)
    return est.fit(x, w=w, max_epochs=60, lr=2e-2, seed=3)


def _tensors(data, cells=None):
    x, w = data
    if cells is not None:
        x, w = x[cells], w[cells]
    return torch.tensor(x, dtype=F64), torch.tensor(w)


def quadrature_log_px(est, x, w, half_width=8.0, n=8001):
    """log p(x_i) = log ∫ N(z; 0, 1) prod_j p(x_ij | r_j(z)) dz on a uniform grid (trapezoid)."""
    z = torch.linspace(-half_width, half_width, n, dtype=F64).reshape(n, 1, 1)
    h = 2 * half_width / (n - 1)
    with torch.no_grad(), pyrovae.pyro_context():
        rate = est.model_.rate(z)  # (n, 1, genes)
        lp = est.model_.prior.marginal(rate.expand(n, *x.shape)).log_prob(x)  # (n, cells, genes)
        lp = torch.where(w, lp, torch.zeros_like(lp)).sum(-1)
        log_joint = lp + dist.Normal(0.0, 1.0).log_prob(z[..., 0])
        end_weights = torch.ones(n, 1, dtype=F64)
        end_weights[[0, -1]] = 0.5
        return (torch.logsumexp(log_joint + end_weights.log(), 0) + math.log(h)).numpy()


@pytest.fixture(scope="module")
def log_px(model, data):
    x, w = _tensors(data, EVAL)
    exact = quadrature_log_px(model, x, w)
    # the grid is fine enough (the ReLU decoder has kinks, so the trapezoid error is O(h^2)):
    # halving the resolution or widening the range changes nothing at 1e-6
    coarse = quadrature_log_px(model, x, w, n=4001)
    np.testing.assert_allclose(exact, coarse, rtol=0, atol=1e-6)
    wider = quadrature_log_px(model, x, w, half_width=12.0, n=12001)
    np.testing.assert_allclose(exact, wider, rtol=0, atol=1e-6)
    return exact


def test_log_likelihood_converges_to_the_quadrature(model, data, log_px):
    x, w = data
    x, w = x[EVAL], w[EVAL]
    errors = {}
    for k in (1, 10, 100, 10_000):
        est = np.stack([model.log_likelihood(x, w, n_samples=k, seed=s) for s in range(8)])
        errors[k] = np.abs(est - log_px).mean()
        if k >= 100:  # a lower bound in expectation: the seeds' average is not above it
            # (the cells of one seed share their particles, so pool them per seed and test the
            # 8 per-seed means against 0 with a one-sided t test at level 1e-4)
            gap = (est - log_px).mean(1)
            t = gap.mean() / (gap.std(ddof=1) / np.sqrt(len(gap)))
            assert t < st.t.ppf(1 - 1e-4, df=len(gap) - 1), (k, gap)
    assert errors[1] > errors[10] > errors[100] > errors[10_000], errors
    assert errors[10_000] < 2e-3, errors


def _bound(est, x, w, k, seed, objective="iwae"):
    """The bound (sum over cells) of the named objective of pyrovae.objectives."""
    pyro.set_rng_seed(seed)
    elbo = objectives.make_elbo(objective, k)
    return -objectives.loss(elbo, est.model_, est.guide_, x, w, None)


@pytest.fixture(scope="module")
def rough(data):
    """The same model after only 10 epochs: an encoder far enough from the posterior that the
    IWAE bound visibly improves with more particles."""
    x, w = data
    est = pyrovae.VAE(latent_dim=1, hidden=(16,), prior="zinb", dtype=F64)
    return est.fit(x, w=w, max_epochs=10, lr=2e-2, seed=3)


def test_iwae_is_below_log_px_and_increases_with_particles(rough, data):
    x, w = _tensors(data, EVAL)
    total = quadrature_log_px(rough, x, w).sum()
    # the EVAL cells repeated: one call draws REPS independent bounds of the same cells, which
    # makes the average over calls and seeds precise at a small cost
    reps = 60
    xr, wr = x.repeat(reps, 1), w.repeat(reps, 1)

    def average(k, objective="iwae"):
        draws = np.array([_bound(rough, xr, wr, k, s, objective) for s in range(8)]) / reps
        return draws.mean(), draws.std() / np.sqrt(len(draws))

    mean, se = {}, {}
    for k in (1, 8, 128):
        mean[k], se[k] = average(k)
        # IWAE is a lower bound on log p(x) in expectation
        assert mean[k] <= total + 4 * se[k] + 1e-9, (k, mean[k], total)
    ks = sorted(mean)
    for lo, hi in zip(ks[:-1], ks[1:], strict=True):  # increases with K on average
        assert mean[hi] - mean[lo] > 3 * math.hypot(se[hi], se[lo]), (mean, se)
    assert total - mean[128] < 0.1 * (total - mean[1])  # and closes most of the gap
    elbo, elbo_se = average(8, "elbo")  # analytic KL
    elbo_mc, elbo_mc_se = average(8, "elbo_mc")
    assert elbo < mean[8] - 3 * math.hypot(elbo_se, se[8])  # the ELBO is below the IWAE bound
    assert abs(elbo - elbo_mc) < 4 * math.hypot(elbo_se, elbo_mc_se) + 1e-9  # same bound
    assert abs(mean[1] - elbo) < 4 * math.hypot(se[1], elbo_se) + 1e-9  # IWAE_1 is the ELBO


# -- the IWAE loss by hand ------------------------------------------------------------------------
def hand_log_weights(est, x, w, k, seed):
    """log p(x_i, z_ik) - log q(z_ik | x_i), shape (k, cells), on the particles Pyro draws: the
    guide traced inside the particle plate that vectorized RenyiELBO wraps it in."""
    pyro.set_rng_seed(seed)
    with pyrovae.pyro_context():
        with pyro.plate("num_particles_vectorized", k, dim=-2):
            trace = poutine.trace(est.guide_).get_trace(x, w, None)
        z = trace.nodes["z"]["value"]  # (k, cells, 1), reparameterized: carries gradients
        loc, scale = est.guide_.encoder(x, w)
        lp = est.model_.prior.marginal(est.model_.rate(z)).log_prob(torch.where(w, x, 0.0))
        lp = torch.where(w, lp, torch.zeros_like(lp)).sum(-1)
        log_prior = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_q = dist.Normal(loc, scale).log_prob(z).sum(-1)
    assert z.shape == (k, x.shape[0], 1)
    return lp + log_prior - log_q


def _params(est):
    return [*est.model_.parameters(), *est.guide_.parameters()]


def _grads(params):
    return [p.grad.clone() for p in params]


def _zero(params):
    for p in params:
        p.grad = None


@pytest.mark.parametrize("cells", [None, [3, 4, 9, 17, 28, 31]], ids=["full-batch", "minibatch"])
def test_iwae_loss_and_gradients_equal_the_hand_computed_bound(model, data, cells):
    k, seed = 16, 123
    x, w = _tensors(data, cells)
    scale = N_CELLS / x.shape[0]  # N / B, applied outside the log-mean-exp
    params = _params(model)

    _zero(params)
    log_w = hand_log_weights(model, x, w, k, seed)
    bound = (torch.logsumexp(log_w, 0) - math.log(k)).sum()
    (-scale * bound).backward()
    hand_value, hand_grads = -scale * bound.item(), _grads(params)

    _zero(params)
    pyro.set_rng_seed(seed)
    elbo = objectives.make_elbo("iwae", k)
    value = objectives.loss_and_grads(
        elbo, model.model_, model.guide_, params, x, w, None, scale=scale
    )
    assert value == pytest.approx(hand_value, rel=1e-10)
    for g, h in zip(_grads(params), hand_grads, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-8, atol=1e-10)
    _zero(params)

    pyro.set_rng_seed(seed)
    no_grad = objectives.loss(elbo, model.model_, model.guide_, x, w, None, scale=scale)
    assert no_grad == pytest.approx(hand_value, rel=1e-10)

    if cells is not None:
        # the trap: scaling the sites (a subsampled plate, poutine.scale) puts N/B inside the
        # log-mean-exp, giving sum_i log mean_k w_ik^(N/B) — not N/B times the batch bound
        wrong_by_hand = -(torch.logsumexp(scale * log_w, 0) - math.log(k)).sum().item()
        pyro.set_rng_seed(seed)
        scaled_model = poutine.scale(model.model_, scale=scale)
        scaled_guide = poutine.scale(model.guide_, scale=scale)
        wrong = objectives.loss(elbo, scaled_model, scaled_guide, x, w, None)
        assert wrong == pytest.approx(wrong_by_hand, rel=1e-10)
        assert abs(wrong - hand_value) > 1e-3 * abs(hand_value)


# -- denoise by hand ------------------------------------------------------------------------------
def _u_prior(prior):
    """(P(u = 0), log density of v = log u as a numpy function, E[u]) written out with scipy."""
    if isinstance(prior, priors.PointMass):
        return None
    if isinstance(prior, priors.QuadraturePrior):
        base = prior.base()
        assert isinstance(base, dist.LogNormal)
        loc, s = base.loc.item(), base.scale.item()
        return 0.0, lambda v: st.norm.logpdf(v, loc, s), math.exp(loc + s**2 / 2)
    theta = prior.inv_dispersion.detach().numpy()
    pi = 0.0
    if isinstance(prior, priors.ZeroInflatedGamma):
        pi = sc.expit(prior.logodds.detach().numpy())
    return pi, theta, 1.0 - pi


def hand_posterior_mean_u(prior, x, r):
    """E[u | x, r] elementwise in numpy, independently of pyrovae.priors."""
    spec = _u_prior(prior)
    if spec is None:
        return np.ones_like(r)
    if isinstance(prior, priors.QuadraturePrior):
        _, log_density, _ = spec
        v = np.linspace(-25.0, 25.0, 10001).reshape(-1, 1)  # log u; trapezoid on a dense grid
        xs, rs = np.broadcast_arrays(x, r)
        xs, rs = xs.reshape(1, -1), rs.reshape(1, -1)
        log_g = st.poisson.logpmf(xs, rs * np.exp(v)) + log_density(v)
        m = log_g.max(0)
        ratio = (np.exp(log_g - m) * np.exp(v)).sum(0) / np.exp(log_g - m).sum(0)
        return ratio.reshape(np.broadcast(x, r).shape)
    pi, theta, _ = spec
    gamma_mean = (theta + x) / (theta + r)
    nb0 = st.nbinom.pmf(0, theta, theta / (theta + r))
    rho = np.where(x > 0, 1.0, (1 - pi) * nb0 / (pi + (1 - pi) * nb0))
    return rho * gamma_mean


@pytest.mark.parametrize("cls", list(PRIOR_FACTORIES), ids=lambda c: c.__name__)
def test_denoise_equals_hand_computation(data, cls):
    x, w = data
    x, w = x[:6], w[:6].copy()
    w[2, 3] = False
    s = np.linspace(0.5, 2.0, 6)
    est = pyrovae.VAE(latent_dim=2, hidden=(8,), prior=PRIOR_FACTORIES[cls](), dtype=F64)
    est.fit(data[0], w=data[1], size_factor=np.ones(N_CELLS), max_epochs=3, seed=0)
    n_samples, seed = 5, 42
    out = est.denoise(x, w, size_factor=s, n_samples=n_samples, seed=seed)

    # the same standard-normal draws for every cell (documented in pyrovae.estimator)
    eps = torch.randn(n_samples, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    with torch.no_grad():
        xt, wt = torch.tensor(x), torch.tensor(w)
        loc, scale = est.encoder(torch.where(wt, xt, 0.0))  # missing entries zero-filled
        z = loc + scale * eps[:, None, :]  # (S, cells, K)
        rate = (est.decoder(z).exp() * torch.tensor(s)[:, None]).numpy()
    eu = hand_posterior_mean_u(est.prior_, x, rate)
    spec = _u_prior(est.prior_)
    prior_mean = 1.0 if spec is None else spec[2]
    eu = np.where(w, eu, prior_mean)
    expected = (rate * eu).mean(0)
    rtol = 1e-6 if isinstance(est.prior_, priors.QuadraturePrior) else 1e-12
    np.testing.assert_allclose(out, expected, rtol=rtol)
