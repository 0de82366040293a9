"""Each u-prior against closed forms, scipy and numerical integrals (float64)."""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import scipy.integrate as integrate
import scipy.stats as st
import torch
from priors_under_test import PRIOR_FACTORIES

from pyrovae import priors

XS = [0, 1, 3, 10, 50]
RATES = [0.05, 1.0, 20.0]


def _all_subclasses(cls):
    out = set()
    for sub in cls.__subclasses__():
        out |= {sub} | _all_subclasses(sub)
    return out


def test_every_prior_class_is_tested():
    shipped = {c for c in _all_subclasses(priors.UPrior) if c.__module__ == priors.__name__}
    assert shipped == set(PRIOR_FACTORIES)


def _u_density(prior):
    """(probability of u = 0, density of u on (0, inf)) of a prior, in float64 numpy."""
    if isinstance(prior, priors.PointMass):
        return 0.0, None
    if isinstance(prior, priors.ZeroInflatedGamma):
        theta = prior.inv_dispersion.item()
        pi = torch.sigmoid(prior.logodds).item()
        return pi, lambda u: (1 - pi) * st.gamma.pdf(u, theta, scale=1 / theta)
    if isinstance(prior, priors.Gamma):
        theta = prior.inv_dispersion.item()
        return 0.0, lambda u: st.gamma.pdf(u, theta, scale=1 / theta)
    base = prior.base()
    assert isinstance(base, dist.LogNormal)
    loc, scale = base.loc.item(), base.scale.item()
    return 0.0, lambda u: st.lognorm.pdf(u, scale, scale=math.exp(loc))


def _reference(prior, x, r):
    """p(x | r) and E[u | x, r] by numerical integration over v = log u."""
    if isinstance(prior, priors.PointMass):
        return st.poisson.pmf(x, r), 1.0
    p0, density = _u_density(prior)
    v_mode = math.log((x + 0.5) / r)

    def integrand(v, power):
        u = math.exp(v)
        return st.poisson.pmf(x, r * u) * density(u) * u ** (1 + power)

    lo, hi = v_mode - 60, v_mode + 12
    opts = dict(points=[v_mode], limit=400, epsabs=0, epsrel=1e-10)
    mass = integrate.quad(integrand, lo, hi, args=(0,), **opts)[0]
    first = integrate.quad(integrand, lo, hi, args=(1,), **opts)[0]
    marginal = mass + p0 * (x == 0)
    return marginal, first / marginal


def _make(cls, n_genes=None):
    return PRIOR_FACTORIES[cls](n_genes).double()


@pytest.mark.parametrize("cls", list(PRIOR_FACTORIES), ids=lambda c: c.__name__)
def test_marginal_and_posterior_mean_match_numerical_integral(cls):
    prior = _make(cls)
    closed_form = not isinstance(prior, priors.QuadraturePrior)
    tol = 1e-7 if closed_form else 1e-4
    for r in RATES:
        x = torch.tensor(XS, dtype=torch.float64)
        rate = torch.full_like(x, r)
        with torch.no_grad():
            logp = prior.marginal(rate).log_prob(x).numpy()
            post = prior.posterior_mean(x, rate).numpy()
        for i, xi in enumerate(XS):
            ref_p, ref_mean = _reference(prior, xi, r)
            assert logp[i] == pytest.approx(math.log(ref_p), abs=tol, rel=tol), (xi, r)
            assert post[i] == pytest.approx(ref_mean, rel=10 * tol), (xi, r)


@pytest.mark.parametrize("cls", list(PRIOR_FACTORIES), ids=lambda c: c.__name__)
def test_marginal_sums_to_one_and_has_mean_rate_times_mean_u(cls):
    prior = _make(cls)
    x = torch.arange(0, 400, dtype=torch.float64)
    rate = torch.tensor(2.5, dtype=torch.float64)
    with torch.no_grad():
        pmf = prior.marginal(rate.expand(x.shape)).log_prob(x).exp()
        mean_u = prior.mean().item()
    assert float(pmf.sum()) == pytest.approx(1.0, abs=1e-5)
    assert float((pmf * x).sum()) == pytest.approx(2.5 * mean_u, rel=1e-4)


@pytest.mark.parametrize("cls", list(PRIOR_FACTORIES), ids=lambda c: c.__name__)
def test_samples_follow_the_marginal_pmf(cls):
    """The marginal's samples have its own pmf (and mean): empirical frequencies of 0..15 within
    5 binomial standard errors of exp(log_prob), for every prior."""
    torch.manual_seed(0)
    prior = _make(cls)
    n = 20000
    rate = torch.full((n,), 3.0, dtype=torch.float64)
    with torch.no_grad():
        marginal = prior.marginal(rate)
        sample = marginal.sample()
        values = torch.arange(16, dtype=torch.float64)
        pmf = prior.marginal(rate[:16]).log_prob(values).exp().numpy()
        mean_u = prior.mean().item()
    assert sample.shape == rate.shape
    freq = np.bincount(sample.long().numpy(), minlength=16)[:16] / n
    se = np.sqrt(pmf * (1 - pmf) / n)
    np.testing.assert_array_less(np.abs(freq - pmf), 5 * se + 1e-3)
    assert float(sample.mean()) == pytest.approx(3.0 * mean_u, rel=0.05)


@pytest.mark.parametrize("cls", list(PRIOR_FACTORIES), ids=lambda c: c.__name__)
def test_per_gene_parameters_broadcast(cls):
    prior = PRIOR_FACTORIES[cls](5)
    rate = torch.rand(3, 5) + 0.1
    x = torch.poisson(rate * 3)
    d = prior.marginal(rate)
    assert d.batch_shape == (3, 5)
    assert d.log_prob(x).shape == (3, 5)
    assert prior.posterior_mean(x, rate).shape == (3, 5)
    assert d.mask(torch.ones(3, 5, dtype=torch.bool)).to_event(1).log_prob(x).shape == (3,)


@pytest.mark.parametrize("theta", [0.3, 2.0, 15.0])
@pytest.mark.parametrize("mean", [1e-3, 0.7, 40.0, 3e4])
def test_gamma_poisson_parametrization_is_nbinom(theta, mean):
    x = np.array([0, 1, 2, 5, 17, 100, 1000], dtype=np.float64)
    ref = st.nbinom(n=theta, p=theta / (theta + mean)).logpmf(x)
    m, t, xt = (torch.tensor(v, dtype=torch.float64) for v in (mean, theta, x))
    pyro_gp = dist.GammaPoisson(concentration=t, rate=t / m).log_prob(xt).numpy()
    ours = priors.NegativeBinomial(m, t).log_prob(xt).numpy()
    np.testing.assert_allclose(pyro_gp, ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-10)
    nb = priors.NegativeBinomial(m, t)
    assert float(nb.mean) == pytest.approx(mean, rel=1e-12)
    assert float(nb.variance) == pytest.approx(mean + mean**2 / theta, rel=1e-12)


def test_zinb_marginal_is_handwritten_mixture():
    prior = priors.ZeroInflatedGamma(1.25, logodds=0.375).double()
    x = np.arange(0, 30, dtype=np.float64)
    rate = 4.0
    theta = prior.inv_dispersion.item()  # the stored value (float32 round trip of 1.25)
    pi = 1 / (1 + math.exp(-prior.logodds.item()))
    ref = (1 - pi) * st.nbinom(n=theta, p=theta / (theta + rate)).pmf(x) + pi * (x == 0)
    with torch.no_grad():
        ours = prior.marginal(torch.full((30,), rate, dtype=torch.float64)).log_prob(
            torch.tensor(x)
        )
    np.testing.assert_allclose(ours.numpy(), np.log(ref), rtol=1e-10)


@pytest.mark.parametrize("theta", [0.1, 1.0, 10.0])
def test_quadrature_of_gamma_equals_negative_binomial(theta):
    """The generic prior handed a Gamma reproduces the closed form to 1e-4 (relative pmf)."""
    t = torch.tensor(theta, dtype=torch.float64)
    generic = priors.QuadraturePrior(dist.Gamma(t, t))
    exact = priors.Gamma(theta).double()
    x = torch.arange(0, 300, dtype=torch.float64).unsqueeze(-1)
    rate = torch.tensor([1e-6, 1e-3, 0.1, 1.0, 10.0, 1e3, 1e5], dtype=torch.float64)
    with torch.no_grad():
        diff = generic.marginal(rate).log_prob(x) - exact.marginal(rate).log_prob(x)
        post = generic.posterior_mean(x, rate) / exact.posterior_mean(x, rate)
    assert float(diff.abs().max()) < 1e-4
    assert float((post - 1).abs().max()) < 1e-3


@pytest.mark.parametrize("n_genes", [None, 3])
def test_quadrature_gradients_match_finite_differences(n_genes):
    """The closed-form first derivatives attached to the quadrature sum (in the rate, and in the
    prior's parameters) are those of the marginal: central differences of the quadrature value
    (its nodes move with the parameters) agree to 1e-5 relative in float64."""
    prior = priors.LogNormal(0.7, n_genes=n_genes).double()
    rate = torch.tensor([0.5, 3.0, 30.0], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([0.0, 4.0, 20.0], dtype=torch.float64)
    lp = prior.marginal(rate).log_prob(x).sum()
    lp.backward()
    (sigma,) = [p for n, p in prior.named_parameters() if "sigma" in n]
    assert sigma.grad is not None and bool((sigma.grad.abs() > 0).all())
    eps = 1e-6
    with torch.no_grad():
        up = prior.marginal(rate + eps).log_prob(x)
        down = prior.marginal(rate - eps).log_prob(x)
    np.testing.assert_allclose(rate.grad.numpy(), ((up - down) / (2 * eps)).numpy(), rtol=1e-5)
    numeric = torch.zeros_like(sigma)
    with torch.no_grad():
        for i in range(sigma.numel()):
            values = []
            for sign in (1, -1):
                sigma.view(-1)[i] += sign * eps
                values.append(float(prior.marginal(rate).log_prob(x).sum()))
                sigma.view(-1)[i] -= sign * eps
            numeric.view(-1)[i] = (values[0] - values[1]) / (2 * eps)
    np.testing.assert_allclose(sigma.grad.numpy(), numeric.numpy(), rtol=1e-5)


def test_quadrature_without_gradients_gives_the_same_values():
    """Under ``no_grad`` the same numbers come out (the gradient terms add exact zeros)."""
    prior = priors.LogNormal(0.7).double()
    rate = torch.tensor([0.5, 3.0, 30.0], dtype=torch.float64, requires_grad=True)
    x = torch.tensor([0.0, 4.0, 20.0], dtype=torch.float64)
    with_grad = prior.marginal(rate).log_prob(x)
    with torch.no_grad():
        without = prior.marginal(rate).log_prob(x)
    assert with_grad.requires_grad and torch.equal(with_grad.detach(), without)


def test_make_prior_names_and_errors():
    assert isinstance(priors.make_prior("nb"), priors.Gamma)
    assert priors.make_prior("zinb", n_genes=4).logodds.shape == (4,)
    with pytest.raises(ValueError, match="unknown prior"):
        priors.make_prior("student")
    with pytest.raises(ValueError, match="n_genes"):
        priors.Gamma(n_genes=0)
    with pytest.raises(ValueError, match="inv_dispersion"):
        priors.Gamma(-1.0)


# -- log-rate paths (issue 10: the model hands the prior log r) --------------------------------
LOG_RATES = np.log([1e-6, 0.05, 1.0, 20.0, 3e4])


@pytest.mark.parametrize("cls", list(PRIOR_FACTORIES), ids=lambda c: c.__name__)
def test_marginal_from_log_rate_matches_marginal_and_numerical_integral(cls):
    """float64: log p(x | r) from log r equals the rate path, and for the closed forms scipy's
    pmf, for every prior class (the quadrature priors' rate path is checked against numerical
    integrals above; their log-rate path is the UPrior default)."""
    prior = _make(cls, n_genes=None)
    closed_form = not isinstance(prior, priors.QuadraturePrior)
    x = torch.tensor(XS, dtype=torch.float64)[:, None]
    log_r = torch.tensor(LOG_RATES, dtype=torch.float64)
    with torch.no_grad():
        from_log = prior.marginal_from_log_rate(log_r).log_prob(x).numpy()
        from_rate = prior.marginal(log_r.exp()).log_prob(x).numpy()
    np.testing.assert_allclose(from_log, from_rate, rtol=1e-12, atol=1e-12)
    for j, lr in enumerate(LOG_RATES):
        r = math.exp(lr)
        if isinstance(prior, priors.PointMass):
            ref = st.poisson.logpmf(XS, r)
        elif isinstance(prior, priors.Gamma):
            theta = prior.inv_dispersion.item()
            ref = st.nbinom.logpmf(XS, theta, theta / (theta + r))
        elif isinstance(prior, priors.ZeroInflatedGamma):
            theta, pi = prior.inv_dispersion.item(), torch.sigmoid(prior.logodds).item()
            nb = st.nbinom.pmf(XS, theta, theta / (theta + r))
            ref = np.log((1 - pi) * nb + pi * (np.asarray(XS) == 0))
        else:
            assert not closed_form
            continue
        np.testing.assert_allclose(from_log[:, j], ref, rtol=1e-10, atol=1e-10)


def test_zinb_log_rate_distribution_equals_pyros_zero_inflated_negative_binomial():
    """Same values as Pyro's ZeroInflatedDistribution(gate_logits) over the negative binomial,
    with a particle dimension in the log-rate and per-gene parameters."""
    g = torch.Generator().manual_seed(0)
    prior = priors.ZeroInflatedGamma(0.6, logodds=-0.5, n_genes=4).double()
    with torch.no_grad():
        prior.logodds.copy_(torch.tensor([-3.0, -0.5, 0.0, 2.0]))
    log_r = torch.randn(3, 5, 4, generator=g, dtype=torch.float64) * 3
    x = torch.poisson(torch.full((5, 4), 2.0, dtype=torch.float64), generator=g)
    x[0] = 0
    theta = prior.inv_dispersion.detach()
    nb = priors.NegativeBinomial(log_r.exp(), theta)
    ref = dist.ZeroInflatedDistribution(nb, gate_logits=prior.logodds.detach().expand(3, 5, 4))
    with torch.no_grad():
        ours = prior.marginal_from_log_rate(log_r)
        assert ours.batch_shape == (3, 5, 4)
        np.testing.assert_allclose(ours.log_prob(x).numpy(), ref.log_prob(x).numpy(), rtol=1e-12)


@pytest.mark.parametrize("log_mean_minus_log_theta", [0.0, -30.0, 30.0, 1.5])
def test_negative_binomial_log_mean_gradients(log_mean_minus_log_theta):
    """Analytic gradients of the log-space NB in log m and theta match finite differences,
    including y = log theta - log m = 0 exactly, where the branches of softplus(+-y) meet."""
    theta = torch.tensor([0.5, 2.0], dtype=torch.float64, requires_grad=True)
    log_m = (theta.detach().log() + log_mean_minus_log_theta).requires_grad_(True)
    x = torch.tensor([0.0, 3.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda lm, t: priors.nb_log_prob(x, lm, t), (log_m, theta))
    assert torch.autograd.gradcheck(lambda lr: priors.poisson_log_prob(x, lr), (log_m,))


def test_poisson_kernel_equals_the_composed_form():
    """The Poisson log pmf with its written-out derivative: the composed form's value bit for bit
    and its gradient to rounding (float64), particles broadcast over counts; gradcheck too."""
    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((6, 7), 2.0, dtype=torch.float64), generator=gen)
    log_rate = (torch.randn((3, 6, 7), generator=gen, dtype=torch.float64) * 5).requires_grad_()
    ours = priors.poisson_log_prob(x, log_rate)
    composed = x * log_rate - log_rate.exp() - torch.lgamma(x + 1)
    assert torch.equal(ours.detach(), composed.detach())
    weights = torch.rand(ours.shape, generator=gen, dtype=torch.float64)
    (g1,) = torch.autograd.grad((ours * weights).sum(), log_rate)
    (g2,) = torch.autograd.grad((composed * weights).sum(), log_rate)
    torch.testing.assert_close(g1, g2, rtol=1e-13, atol=0)
    assert torch.autograd.gradcheck(lambda lr: priors.poisson_log_prob(x, lr), (log_rate,))


@pytest.mark.parametrize("theta_shape", [(), (7,)])
def test_nb_kernel_equals_the_composed_form(theta_shape):
    """The NB log pmf with its written-out derivatives (``_NBKernel``): the composed form's value
    and gradients (log-mean and θ, θ shared or per gene) to rounding in float64, particles
    broadcast over counts, means and θ over many orders of magnitude; gradcheck too."""
    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((6, 7), 3.0, dtype=torch.float64), generator=gen)
    x[0, 0] = 1e4  # a large count
    log_mean = (torch.randn((3, 6, 7), generator=gen, dtype=torch.float64) * 12).requires_grad_()
    theta = torch.exp(torch.randn(theta_shape, generator=gen, dtype=torch.float64) * 3)
    theta.requires_grad_()

    def composed(x, log_mean, theta):
        y = theta.log() - log_mean
        return (
            torch.lgamma(x + theta)
            - torch.lgamma(theta)
            - torch.lgamma(x + 1)
            - x * torch.logaddexp(y, torch.zeros_like(y))
            - theta * torch.logaddexp(-y, torch.zeros_like(y))
        )

    ours = priors.nb_log_prob(x, log_mean, theta)
    ref = composed(x, log_mean, theta)
    torch.testing.assert_close(ours, ref, rtol=1e-13, atol=1e-13)
    weights = torch.rand(ours.shape, generator=gen, dtype=torch.float64)
    g1 = torch.autograd.grad((ours * weights).sum(), (log_mean, theta))
    g2 = torch.autograd.grad((ref * weights).sum(), (log_mean, theta))
    for a, b in zip(g1, g2, strict=True):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)
    small = (log_mean[:, :3, :4].detach() / 4).requires_grad_()
    small_theta = (theta.detach()[:4] if theta.dim() else theta.detach()).clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda m, t: priors.nb_log_prob(x[:3, :4], m, t), (small, small_theta)
    )


class _OnlyMarginal(priors.UPrior):
    """A user prior written against the old contract: marginal, posterior_mean and mean only."""

    def marginal(self, rate):
        return dist.Poisson(rate)

    def posterior_mean(self, x, rate):
        return torch.ones_like(x * rate)

    def mean(self):
        return torch.tensor(1.0)


def test_prior_with_only_the_old_methods_still_works():
    prior = _OnlyMarginal()
    log_r = torch.tensor([-200.0, -3.0, 0.0, 5.0], dtype=torch.float64)
    x = torch.tensor([0.0, 1.0, 2.0, 100.0], dtype=torch.float64)
    lp = prior.marginal_from_log_rate(log_r).log_prob(x)
    r = log_r.exp().clamp_min(torch.finfo(torch.float64).tiny)
    np.testing.assert_allclose(lp.numpy(), st.poisson.logpmf(x.numpy(), r.numpy()), rtol=1e-12)
    import pyrovae

    data = np.random.default_rng(0).poisson(3.0, size=(16, 5))
    est = pyrovae.VAE(latent_dim=2, hidden=(8,), prior=prior).fit(data, max_epochs=2)
    assert np.all(np.isfinite(est.trace_)) and np.all(np.isfinite(est.denoise(data)))
