"""Numerical safety (issue 6).

* Property tests (hypothesis) for every prior class: counts 0..1e5 and rates 1e-8..1e6 give a
  finite ``log_prob`` that matches scipy's Poisson / negative binomial / a hand-written ZINB where
  a closed form exists (float64), finite gradients in the rate and in the prior's parameters, and
  a finite posterior mean that is positive (or zero where the prior puts mass at u = 0). The same
  in float32: finite everywhere, and close to float64 at float32 precision.
* A fit whose loss (or a gradient, or a parameter after a step) turns NaN/inf stops with
  :class:`pyrovae.FitDivergedError` naming the epoch; ``trace_`` holds the finite losses before it
  and the model keeps the parameters from the end of the last finite epoch, exactly.
"""

import math

import numpy as np
import pyro.distributions as dist
import pytest
import scipy.special as sc
import scipy.stats as st
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from priors_under_test import PRIOR_FACTORIES

import pyrovae
from pyrovae import fit as fit_module
from pyrovae import objectives, priors
from pyrovae.build import build as build_pair

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLASSES = list(PRIOR_FACTORIES)
IDS = [c.__name__ for c in CLASSES]
CLOSED_FORM = [priors.PointMass, priors.Gamma, priors.ZeroInflatedGamma]

# a handful of counts and rates per example (all pairs are evaluated): counts 0..1e5 with small
# counts drawn often; rates log-uniform on 1e-8..1e6 with the end points drawn often
counts = hs.lists(hs.one_of(hs.integers(0, 20), hs.integers(0, 10**5)), min_size=1, max_size=5).map(
    lambda v: np.asarray(v, dtype=np.float64)
)
rates = hs.lists(
    hs.one_of(hs.floats(-8.0, 6.0), hs.sampled_from([-8.0, 6.0])), min_size=1, max_size=5
).map(lambda v: 10.0 ** np.asarray(v, dtype=np.float64))
log_uniform = lambda lo, hi: hs.floats(math.log10(lo), math.log10(hi)).map(lambda u: 10.0**u)


@hs.composite
def prior_params(draw, cls):
    """Prior parameters for ``cls`` over a wide range (dict of floats)."""
    if cls is priors.PointMass:
        return {}
    if cls is priors.Gamma:
        return dict(theta=draw(log_uniform(1e-2, 1e3)))
    if cls is priors.ZeroInflatedGamma:
        return dict(theta=draw(log_uniform(1e-2, 1e3)), logodds=draw(hs.floats(-10.0, 10.0)))
    if cls is priors.QuadraturePrior:
        # a Gamma base has a closed form to compare with; below shape 0.1 the prior mass under
        # u = 1e-308 (which float64 cannot represent) is no longer negligible
        return dict(theta=draw(log_uniform(0.1, 1e2)))
    if cls is priors.LogNormal:
        return dict(sigma=draw(log_uniform(0.05, 3.0)))
    raise AssertionError(f"no parameter strategy for {cls}")  # a new prior class needs one


def build(cls, params, dtype):
    """(prior, tensors whose gradients must be finite) in ``dtype``."""
    if cls is priors.PointMass:
        return priors.PointMass(), []
    if cls is priors.Gamma:
        prior = priors.Gamma(params["theta"])
    elif cls is priors.ZeroInflatedGamma:
        prior = priors.ZeroInflatedGamma(params["theta"], logodds=params["logodds"])
    elif cls is priors.QuadraturePrior:
        t = torch.tensor(params["theta"], dtype=dtype, requires_grad=True)
        return priors.QuadraturePrior(dist.Gamma(t, t)), [t]
    else:
        prior = priors.LogNormal(params["sigma"])
    prior = prior.to(dtype)
    return prior, list(prior.parameters())


def reference_log_prob(cls, prior, x, r):
    """scipy's closed form (float64 numpy), or None where there is none."""
    if cls is priors.PointMass:
        return st.poisson.logpmf(x, r)
    if cls in (priors.Gamma, priors.QuadraturePrior):
        theta = (
            prior.inv_dispersion.item()
            if cls is priors.Gamma
            else prior.base().concentration.item()
        )
        return st.nbinom.logpmf(x, theta, theta / (theta + r))
    if cls is priors.ZeroInflatedGamma:
        theta = prior.inv_dispersion.item()
        logit = prior.logodds.item()
        log_pi, log_1m_pi = -np.logaddexp(0, -logit), -np.logaddexp(0, logit)
        nb = st.nbinom.logpmf(x, theta, theta / (theta + r))
        return np.where(x == 0, np.logaddexp(log_pi, log_1m_pi + nb), log_1m_pi + nb)
    return None


def evaluate(cls, params, x, r, dtype):
    """log p(x | r), E[u | x, r] and the gradients of sum(log p) in the rate and parameters."""
    prior, leaves = build(cls, params, dtype)
    xt = torch.tensor(x, dtype=dtype)[:, None]
    rt = torch.tensor(r, dtype=dtype)[None, :].expand(len(x), len(r)).clone().requires_grad_(True)
    lp = prior.marginal(rt).log_prob(xt)
    grads = torch.autograd.grad(lp.sum(), [rt, *leaves])
    with torch.no_grad():
        post = prior.posterior_mean(xt, rt)
    return prior, lp.detach(), post, grads


def _check_finite_parts(cls, lp, post, grads, x):
    assert lp.shape == post.shape == (len(x), lp.shape[1])
    assert torch.isfinite(lp).all(), lp
    # rounding; in float32 the quadrature's Gamma/LogNormal log-densities lose ~1e-5 as well
    slack = 1e-6 if lp.dtype == torch.float64 else 1e-5 if cls in CLOSED_FORM else 1e-4
    assert (lp <= slack * lp.abs().clamp_min(1)).all()  # a pmf is at most 1
    for g in grads:
        assert torch.isfinite(g).all(), g
    assert torch.isfinite(post).all(), post
    if cls is priors.ZeroInflatedGamma:  # mass at u = 0: E[u | x = 0] may underflow to 0
        x0 = torch.as_tensor(x == 0)[:, None].expand_as(post)
        assert (post[~x0] > 0).all() and (post[x0] >= 0).all()
    else:
        assert (post > 0).all(), post
    if cls is priors.PointMass:
        assert (post == 1).all()


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_float64_log_prob_gradients_and_posterior_mean(cls):
    @PROPERTY
    @given(x=counts, r=rates, params=prior_params(cls))
    def check(x, r, params):
        prior, lp, post, grads = evaluate(cls, params, x, r, torch.float64)
        _check_finite_parts(cls, lp, post, grads, x)
        ref = reference_log_prob(cls, prior, x[:, None], r[None, :])
        if ref is not None:
            # scipy's nbinom loses ~1e-7 relative where p = theta / (theta + r) is close to 1;
            # the quadrature prior is held to its documented 1e-4
            tol = 1e-4 if cls is priors.QuadraturePrior else 1e-6
            err = np.abs(lp.numpy() - ref) / np.maximum(1.0, np.abs(ref))
            assert err.max() < tol, (err.max(), x, r, params)
        if cls is priors.QuadraturePrior:  # Gamma base: E[u | x, r] = (theta + x) / (theta + r)
            theta = prior.base().concentration.item()
            closed = (theta + x[:, None]) / (theta + r[None, :])
            np.testing.assert_allclose(post.numpy(), closed, rtol=1e-3)
        if cls is priors.LogNormal:
            # no closed form: p(x | r) <= max_u Poisson(x; r u) = Poisson(x; x)
            bound = st.poisson.logpmf(x, np.maximum(x, 1e-300))[:, None]
            assert (lp.numpy() <= bound + 1e-9 * np.abs(bound) + 1e-12).all()

    check()


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_float32_is_finite_and_close_to_float64(cls):
    @PROPERTY
    @given(x=counts, r=rates, params=prior_params(cls))
    def check(x, r, params):
        _, lp32, post32, grads32 = evaluate(cls, params, x, r, torch.float32)
        _check_finite_parts(cls, lp32, post32, grads32, x)
        _, lp64, post64, _ = evaluate(cls, params, x, r, torch.float64)
        # float32 error relative to the size of the terms that cancel in log p; at x = 0 the
        # lgamma terms of the negative binomial cancel exactly, so large-theta cancellation in
        # the remaining term (log NB(0) = -theta log(1 + r / theta)) would show up here
        xx, rr = x[:, None], r[None, :]
        scale = sc.gammaln(xx + 1) + np.abs(xx * np.log(rr)) + rr + 1.0
        theta = params.get("theta")
        if theta is not None:
            scale = scale + (xx > 0) * (np.abs(sc.gammaln(xx + theta)) + abs(sc.gammaln(theta)))
        tol = 1e-5 if cls in CLOSED_FORM else 1e-3
        assert (np.abs(lp32.double().numpy() - lp64.numpy()) <= tol * scale).all()

    check()


@pytest.mark.parametrize("theta", [1e2, 1e3])
def test_float32_negative_binomial_zero_count_for_large_theta(theta):
    """Regression: log NB(0) = -theta log(1 + r / theta) written as theta (log theta -
    log(theta + r)) lost ~theta log(theta) float32 ulps (5e-4 absolute at theta = 1e3)."""
    r = np.array([1e-8, 1e-3, 1.0, 50.0])
    log_nb0 = -theta * np.log1p(r / theta)
    log_pi, log_1m_pi = -np.logaddexp(0, 3.0), -np.logaddexp(0, -3.0)  # logit pi = -3
    for prior, expected in (
        (priors.Gamma(theta), log_nb0),
        (priors.ZeroInflatedGamma(theta, logodds=-3.0), np.logaddexp(log_pi, log_1m_pi + log_nb0)),
    ):
        lp = prior.marginal(torch.tensor(r, dtype=torch.float32)).log_prob(torch.zeros(4))
        np.testing.assert_allclose(lp.detach().double().numpy(), expected, rtol=1e-6, atol=1e-6)


def test_quadrature_gradient_where_rate_times_node_overflows():
    """Regression: a wide prior puts quadrature nodes where r e^v overflows float32; those nodes
    add 0 to the sum but used to give NaN gradients in the rate."""
    t = torch.tensor(10**-0.5)
    prior = priors.QuadraturePrior(dist.Gamma(t, t))
    rate = torch.tensor([100.0, 1e6], requires_grad=True)
    lp = prior.marginal(rate).log_prob(torch.zeros(2))
    (grad,) = torch.autograd.grad(lp.sum(), rate)
    assert torch.isfinite(lp).all() and torch.isfinite(grad).all()
    # d/dr log NB(0; r, theta) = -theta / (theta + r)
    np.testing.assert_allclose(grad.numpy(), (-t / (t + rate.detach())).numpy(), rtol=1e-3)


@pytest.mark.parametrize("cls", CLASSES, ids=IDS)
def test_extreme_counts_fit_with_finite_loss(cls):
    """Counts 0..1e5 (and an all-zero cell and gene) through the whole model and objective."""
    rng = np.random.default_rng(3)
    x = np.floor(rng.lognormal(2.0, 3.0, size=(12, 6))).clip(0, 1e5)
    x[0] = 0
    x[:, 1] = 0
    x[2, 2] = 1e5
    est = pyrovae.VAE(latent_dim=2, hidden=(8,), prior=PRIOR_FACTORIES[cls]())
    est.fit(x, max_epochs=3, lr=1e-2, objective="iwae", n_samples=2)
    assert np.all(np.isfinite(est.trace_))
    assert np.all(np.isfinite(est.denoise(x, n_samples=3)))
    assert np.all(np.isfinite(est.log_likelihood(x, n_samples=3)))


# -- divergence ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return rng.poisson(rng.gamma(2.0, 2.0, size=(24, 1)) * rng.gamma(2.0, 1.0, size=(1, 8)))


def _params(est):
    return [p.detach().clone() for p in (*est.model_.parameters(), *est.guide_.parameters())]


def _tiny(**kwargs):
    return pyrovae.VAE(latent_dim=2, hidden=(8,), **kwargs)


@pytest.mark.parametrize("optimizer", ["adam", "rmsprop"])
def test_absurd_learning_rate_stops_with_the_epoch(data, optimizer):
    est = _tiny()
    with pytest.raises(pyrovae.FitDivergedError, match=r"not finite in epoch (\d+)") as info:
        est.fit(data, lr=1e6, max_epochs=50, optimizer=optimizer)
    assert not hasattr(est, "model_")  # the failed fit left the estimator as it was
    est = info.value.estimator  # the diverged fit, kept for inspection
    epoch = info.value.epoch
    assert f"in epoch {epoch} " in str(info.value) and "lr" in str(info.value)
    assert 0 < epoch < 50
    assert len(est.trace_) == epoch and np.all(np.isfinite(est.trace_))
    assert all(torch.isfinite(p).all() for p in _params(est))
    assert est.denoise(data, n_samples=2).shape == data.shape  # the model is still usable


class _NaNAt:
    """Wraps pyrovae.fit's step (forward + backward); from call ``at`` on, the loss (or a
    gradient) is NaN."""

    def __init__(self, at, what="loss"):
        self.at, self.what, self.calls = at, what, 0
        self.real = fit_module._loss_and_grads

    def __call__(self, net, *args, **kwargs):
        value = self.real(net, *args, **kwargs)
        self.calls += 1
        if self.calls - 1 < self.at:
            return value
        if self.what == "loss":
            return torch.full_like(value, math.nan if self.calls % 2 else math.inf)
        grad = next(p for p in net.parameters() if p.grad is not None).grad
        grad[(0,) * grad.dim()] = math.nan
        return value


@pytest.mark.parametrize(
    "what, batch_size, bad_epoch",
    [("loss", None, 3), ("gradient", None, 4), ("loss", 8, 2)],
    ids=["loss-full-batch", "gradient-full-batch", "loss-minibatch"],
)
def test_divergence_keeps_the_last_finite_parameters(
    data, monkeypatch, what, batch_size, bad_epoch
):
    steps_per_epoch = 1 if batch_size is None else -(-len(data) // batch_size)
    at = bad_epoch * steps_per_epoch + (1 if batch_size else 0)  # mid-epoch with minibatches
    settings_ = dict(lr=1e-2, seed=5, batch_size=batch_size, objective="iwae", n_samples=3)
    clean = _tiny(prior="zinb").fit(data, max_epochs=bad_epoch, **settings_)
    # the parameters at which the last finite loss was computed: in a full-batch fit those of
    # the last trace_ entry, i.e. after bad_epoch - 1 steps
    before = _tiny(prior="zinb").fit(data, max_epochs=bad_epoch - 1, **settings_)

    monkeypatch.setattr(fit_module, "_loss_and_grads", _NaNAt(at, what))
    est = _tiny(prior="zinb")
    with pytest.raises(pyrovae.FitDivergedError) as info:
        est.fit(data, max_epochs=20, **settings_)
    monkeypatch.undo()

    err = info.value
    est = err.estimator
    assert err.epoch == bad_epoch
    assert f"in epoch {bad_epoch} " in str(err)
    assert "last finite loss was computed were restored" in str(err)
    assert ("a gradient" if what == "gradient" else "loss ") in str(err)
    np.testing.assert_array_equal(est.trace_, clean.trace_)  # the finite losses before it
    assert np.all(np.isfinite(est.trace_))
    assert all(torch.isfinite(p).all() for p in _params(est))
    if batch_size is None:
        for p, q in zip(_params(est), _params(before), strict=True):
            torch.testing.assert_close(p, q, rtol=0, atol=0)
        np.testing.assert_array_equal(est.denoise(data), before.denoise(data))
    assert np.all(np.isfinite(est.denoise(data)))


def test_divergence_in_the_first_epoch_keeps_the_initial_parameters(data, monkeypatch):
    monkeypatch.setattr(fit_module, "_loss_and_grads", _NaNAt(0))
    est = _tiny()
    with pytest.raises(pyrovae.FitDivergedError, match="last finite loss") as info:
        est.fit(data, max_epochs=5, seed=2)
    est = info.value.estimator
    assert info.value.epoch == 0 and len(est.trace_) == 0
    # the initialization fit(seed=2) starts from (seeded, then built)
    torch.manual_seed(2)
    model, guide = build_pair(data.shape[1], 2, _tiny()._make_prior(data.shape[1]), (8,))
    initial = [p.detach() for p in (*model.parameters(), *guide.parameters())]
    for p, q in zip(_params(est), initial, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_non_finite_parameter_after_a_step_is_caught(data, monkeypatch):
    """An optimizer step that leaves a parameter non-finite (finite loss and gradients) stops too,
    before the bad values are used."""

    class Poisoned(torch.optim.Adam):
        steps = 0

        def step(self, closure=None):
            out = super().step(closure)
            Poisoned.steps += 1
            if Poisoned.steps == 3:
                with torch.no_grad():
                    first = self.param_groups[0]["params"][0]
                    first[(0,) * first.dim()] = math.inf
            return out

    clean = _tiny().fit(data, max_epochs=2, seed=1)
    monkeypatch.setitem(fit_module.OPTIMIZERS, "adam", Poisoned)
    est = _tiny()
    with pytest.raises(pyrovae.FitDivergedError, match="not finite after the step") as info:
        est.fit(data, max_epochs=10, seed=1)
    est = info.value.estimator
    assert info.value.epoch == 2
    np.testing.assert_array_equal(est.trace_, clean.trace_)
    for p, q in zip(_params(est), _params(clean), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_fit_diverged_error_is_exported():
    assert issubclass(pyrovae.FitDivergedError, FloatingPointError)
    assert pyrovae.FitDivergedError("x", 3).epoch == 3


# -- networks at extreme inputs and pre-activations (issue 13) ----------------------------------
def test_encoder_input_is_library_normalised_row_wise_and_finite_on_empty_cells():
    from pyrovae.nets import LIBRARY_SCALE, encoder_input

    g = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((4, 50), 0.3, dtype=torch.float64), generator=g)
    x[0] = 0  # an empty cell
    x[1, :3] = torch.tensor([1.0, 2.0, 5.0])
    f = encoder_input(x)
    assert f.shape == (4, 51) and torch.isfinite(f).all()
    assert (f[0] == 0).all()
    lib = x.sum(-1, keepdim=True)
    expected = torch.log1p(LIBRARY_SCALE * x[1:] / lib[1:])
    torch.testing.assert_close(f[1:, :-1], expected, rtol=1e-15, atol=0)
    torch.testing.assert_close(f[:, -1:], torch.log1p(lib), rtol=1e-15, atol=0)
    # 30x deeper cells: the same normalised part; a cell's input ignores the other cells
    torch.testing.assert_close(encoder_input(30 * x)[:, :-1], f[:, :-1])
    torch.testing.assert_close(encoder_input(x[2:3]), f[2:3], rtol=0, atol=0)
    # missing entries are dropped before the library is taken
    w = torch.ones_like(x, dtype=torch.bool)
    w[1, 0] = False
    torch.testing.assert_close(
        encoder_input(x, w)[1], encoder_input(torch.where(w, x, 0.0))[1], rtol=0, atol=0
    )
    assert encoder_input(x, w)[1, -1] == torch.log1p(lib[1] - x[1, 0])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_encoder_outputs_are_bounded_with_finite_gradients(dtype):
    from pyrovae.nets import Encoder

    torch.manual_seed(0)
    enc = Encoder(30, 3, hidden=(8,)).to(dtype)
    with torch.no_grad():  # weights an absurd Adam run could reach
        for p in enc.parameters():
            p.mul_(1e4)
    x = torch.poisson(torch.full((6, 30), 50.0, dtype=dtype))
    loc, scale = enc(x)
    assert (loc.abs() <= Encoder.max_loc).all()
    assert (scale >= Encoder.min_scale).all()
    assert (scale <= Encoder.max_scale + Encoder.min_scale).all()
    grads = torch.autograd.grad((loc.sum() + scale.sum()), list(enc.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)
    # in the normal range the bounds change little: loc = 10 tanh(h / 10) ~ h, scale ~ softplus
    enc = Encoder(30, 3, hidden=(8,)).to(dtype)
    h = enc.body(torch.zeros(1, 31, dtype=dtype))
    loc, scale = enc(torch.zeros(1, 30, dtype=dtype))
    raw_loc, raw_scale = enc.mean(h), torch.nn.functional.softplus(enc.scale(h))
    torch.testing.assert_close(loc, raw_loc, rtol=1e-2, atol=1e-3)
    assert ((scale - raw_scale).abs() <= raw_scale**2 / Encoder.max_scale + 1e-4).all()


@pytest.mark.parametrize("prior", ["poisson", "gamma", "zinb"])
@pytest.mark.parametrize("pre", [-1e4, -200.0, -87.5, -86.0, 200.0, 1e4])
def test_decoder_pre_activations_at_the_extremes_keep_loss_and_gradients_finite(prior, pre):
    """float32, the whole model/guide objective: decoder pre-activations of +-200 (and 1e4)
    give a finite loss and finite gradients for every parameter (issue 13 saw -171 and NaN
    gradients in the decoder's Linear backward). Regression: around log r = -87 (float32's
    smallest normal number) the old exp -> log round trip gave d log p / dr = x / r = inf for
    a positive count, and NaN gradients."""
    from pyrovae.guide import VAEGuide
    from pyrovae.model import VAEModel

    torch.manual_seed(0)
    with pyrovae.pyro_context():
        model = VAEModel(6, 2, priors.make_prior(prior, 6), hidden=(4,))
        guide = VAEGuide(6, 2, hidden=(4,))
    with torch.no_grad():
        model.decoder.out.bias[:3] = pre
        model.decoder.out.weight.zero_()
    x = torch.tensor([[0.0, 30.0, 100.0, 0.0, 2.0, 7.0]] * 4)
    s = torch.tensor([0.5, 1.0, 2.0, 1.5])
    params = list(model.parameters()) + list(guide.parameters())
    elbo = objectives.make_elbo("iwae", 3)
    value = objectives.loss_and_grads(elbo, model, guide, params, x, None, s)
    assert math.isfinite(value)
    for p in params:
        assert p.grad is None or torch.isfinite(p.grad).all()
    log_mu = model.decoder(torch.zeros(1, 2))
    assert torch.isfinite(log_mu).all()
    if pre < 0:  # log softplus(h) = h below -15: the log-rate is exact, not clamped
        torch.testing.assert_close(log_mu[0, :3], torch.full((3,), pre))


def test_log_softplus_gradient_is_finite_everywhere():
    from pyrovae.nets import log_softplus

    for dtype in (torch.float32, torch.float64):
        h = torch.tensor([-1e30, -1e4, -200.0, -15.0, 0.0, 15.0, 200.0, 1e4, 1e30], dtype=dtype)
        h.requires_grad_(True)
        y = log_softplus(h)
        (g,) = torch.autograd.grad(y.sum(), h)
        assert torch.isfinite(y).all() and torch.isfinite(g).all()
        assert (g > 0).all() and (g <= 1).all()


def test_log_softplus_matches_the_composed_form_and_its_autograd():
    """The hand-written derivative of ``log_softplus`` equals autograd of the composed form
    (float64) wherever that form is differentiable as the function, passes gradcheck, and the
    value is the composed form's bit for bit."""
    import torch.nn.functional as F

    from pyrovae.nets import log_softplus

    def composed(h):
        return torch.where(h < -15.0, h, torch.log(F.softplus(h.clamp_min(-15.0))))

    h = torch.cat([torch.linspace(-40, 40, 2001, dtype=torch.float64), torch.tensor([-1e3, 1e3])])
    a, b = h.clone().requires_grad_(), h.clone().requires_grad_()
    ya, yb = log_softplus(a), composed(b)
    assert torch.equal(ya.detach(), yb.detach())
    weights = torch.rand(h.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    (ga,) = torch.autograd.grad((ya * weights).sum(), a)
    (gb,) = torch.autograd.grad((yb * weights).sum(), b)
    # at and above -15 both are sigma(h) / softplus(h); below, the composed form's branch has
    # slope exactly 1 and the written-out one exp(-softplus(h)), about e^h (the value's own
    # relative error there) of it
    above = h >= -15
    torch.testing.assert_close(ga[above], gb[above], rtol=1e-12, atol=0)
    assert ((ga[~above] - gb[~above]).abs() <= 1.5 * h[~above].exp() + 1e-14).all()
    # none below -15 (the select is skipped on the CPU), and one just below: the same values
    for part in (h[above], torch.cat([h[above], h.new_tensor([-15.5])])):
        assert torch.equal(log_softplus(part), composed(part))
    start = torch.randn(50, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert torch.autograd.gradcheck(log_softplus, (start.mul(10).requires_grad_(),))


@pytest.mark.parametrize("theta_shape", [(), (300,)], ids=["shared", "per-gene"])
@pytest.mark.parametrize("kind", ["nb", "zinb", "poisson"])
def test_sparse_data_terms_equal_the_dense_ones(kind, theta_shape, monkeypatch):
    """The data-only lgamma terms evaluated at the non-zero counts only (mostly-zero counts on the
    CPU) give the dense form's log pmf bit for bit and its gradients to rounding (float64)."""
    from pyrovae import priors

    gen = torch.Generator().manual_seed(0)
    x = torch.poisson(torch.full((40, 300), 3.0, dtype=torch.float64), generator=gen)
    x = x * (torch.rand(x.shape, generator=gen, dtype=torch.float64) < 0.1)
    log_rate = torch.randn((2, *x.shape), generator=gen, dtype=torch.float64).requires_grad_()
    theta = torch.rand(theta_shape, generator=gen, dtype=torch.float64).add(0.3).requires_grad_()
    logit = torch.tensor(-1.0, dtype=torch.float64, requires_grad=True)

    def log_prob_and_grads():
        if kind == "nb":
            lp = priors.NegativeBinomialLogMean(log_rate, concentration=theta).log_prob(x)
        elif kind == "zinb":
            lp = priors.ZeroInflatedNegativeBinomialLogMean(
                log_rate, concentration=theta, gate_logits=logit
            ).log_prob(x)
        else:
            lp = priors.poisson_log_prob(x, log_rate)
        inputs = [log_rate] + ([] if kind == "poisson" else [theta])
        return lp.detach(), torch.autograd.grad(lp.sum(), inputs)

    calls = []
    real = priors._nonzero_counts
    monkeypatch.setattr(priors, "_nonzero_counts", lambda v: calls.append(real(v)) or calls[-1])
    sparse_lp, sparse_grads = log_prob_and_grads()
    assert calls and all(c is not None for c in calls), "the sparse path was not taken"
    monkeypatch.setattr(priors, "SPARSE_FRACTION", 0.0)  # forces the dense form
    calls.clear()
    dense_lp, dense_grads = log_prob_and_grads()
    assert all(c is None for c in calls)
    assert torch.equal(sparse_lp, dense_lp)
    for a, b in zip(sparse_grads, dense_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
