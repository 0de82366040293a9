r"""Priors on the per-entry random effect :math:`u_{ij}`.

The observation model is

.. math::

    x_{ij} \mid \lambda_{ij} \sim \operatorname{Poisson}(\lambda_{ij}), \qquad
    \lambda_{ij} = r_{ij}\, u_{ij}, \qquad u_{ij} \sim p(u),

where :math:`r_{ij} = s_i\, \mu(z_i)_j` is the *rate* given the latent code. A prior is the one
extension point of the model: a small :class:`~pyro.nn.PyroModule` whose parameters are
:class:`~pyro.nn.PyroParam` s (a scalar, or one per gene) and which provides

* :meth:`UPrior.marginal` — the count distribution
  :math:`p(x \mid r) = \int \operatorname{Poisson}(x; r u)\, dp(u)` as a Pyro distribution, so
  the model can ``.mask()`` it and use it as an observed site;
* optionally :meth:`UPrior.marginal_from_log_rate` — the same distribution given
  :math:`\log r`, which is what the model computes. The default calls :meth:`UPrior.marginal`
  with :math:`r = e^{\log r}` (floored at the smallest normal float), so a prior that only
  implements the three methods here keeps working; the closed-form priors override it with
  distributions that evaluate :math:`\log p(x \mid r)` from :math:`\log r` directly (no
  :math:`\exp \to \log` round trip, whose gradient :math:`1/r` overflows where :math:`r`
  underflows) and keep the terms that depend only on the data and the prior's parameters
  (:math:`\log x!`, :math:`\log\Gamma(x + \theta) - \log\Gamma(\theta)`) out of the particle
  dimension;
* :meth:`UPrior.posterior_mean` — :math:`E[u \mid x, r]`, used by ``denoise``;
* :meth:`UPrior.mean` — :math:`E[u]`, the posterior mean of an entry that was not observed.

Closed forms: :class:`PointMass` (Poisson), :class:`Gamma` (negative binomial) and
:class:`ZeroInflatedGamma` (ZINB). Any other positive prior goes through
:class:`QuadraturePrior`, which integrates :math:`u` out numerically.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam
from torch.distributions.utils import broadcast_all

from ._context import pyro_context

__all__ = [
    "UPrior",
    "PointMass",
    "Gamma",
    "ZeroInflatedGamma",
    "QuadraturePrior",
    "LogNormal",
    "NegativeBinomial",
    "PoissonLogRate",
    "NegativeBinomialLogMean",
    "ZeroInflatedNegativeBinomialLogMean",
    "nb_log_prob",
    "poisson_log_prob",
    "PRIORS",
    "make_prior",
]


def _param_shape(n_genes: int | None) -> tuple[int, ...]:
    if n_genes is None:
        return ()
    if not isinstance(n_genes, int) or n_genes < 1:
        raise ValueError(
            f"n_genes must be None (one shared parameter) or a positive int, got {n_genes!r}"
        )
    return (n_genes,)


def _log(rate: torch.Tensor) -> torch.Tensor:
    """``log(rate)`` with ``rate`` floored at the smallest normal float (an underflowed 0 gives a
    finite log, as the model's floored rates always did)."""
    return rate.clamp_min(torch.finfo(rate.dtype).tiny).log()


def _broadcast_shape(*shapes: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes`` for the few short shapes of a likelihood, without its Python
    reference implementation's cost (a few µs instead of ~50, on every training step)."""
    ndim = max(len(s) for s in shapes)
    out = [1] * ndim
    for shape in shapes:
        for i, d in enumerate(shape, ndim - len(shape)):
            if d != 1:
                if out[i] not in (1, d):
                    raise ValueError(f"shapes {[tuple(s) for s in shapes]} do not broadcast")
                out[i] = d
    return torch.Size(out)


def _softplus_pair(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    r""":math:`(\log(1 + e^y), \log(1 + e^{-y}))` from one ``log1p(exp(-|y|))``: both exact to
    rounding whatever the sign and size of :math:`y` (no cancellation), and with the right
    gradient (:math:`\pm 1/2`) at :math:`y = 0`."""
    pos = y.clamp_min(0.0)  # its gradient is 1 at y = 0, so y - 2 pos has slope -1 there
    t = torch.log1p(torch.exp(y - 2.0 * pos))  # log(1 + e^{-|y|})
    return t + pos, t + (pos - y)


#: Largest fraction of non-zero counts at which the data-only terms are evaluated at the
#: non-zero counts only (on the CPU; see :func:`_nonzero_counts`).
SPARSE_FRACTION = 0.25


def _nonzero_counts(value: torch.Tensor) -> tuple[torch.Tensor, ...] | None:
    r"""Indices of the non-zero entries of ``value`` when evaluating the data-only terms there
    pays, else ``None``.

    :math:`\log\Gamma(x + \theta) - \log\Gamma(\theta)` and :math:`\log\Gamma(x + 1)` are
    exactly 0 at :math:`x = 0`, and single-cell counts are mostly zeros; the ``lgamma`` calls and
    their ``digamma`` gradients are the most expensive elementwise work of a step. On the CPU,
    with at most :data:`SPARSE_FRACTION` of the entries non-zero, they are evaluated at the
    non-zero entries only and scattered into zeros: the same values bit for bit
    (``benchmarks/levers.py``: the NB likelihood's forward and backward at 0.66× the time on a
    CBMC batch, 12% non-zero). On a GPU (where ``nonzero`` synchronizes with the host) and for
    denser or small tensors, the dense form is used.
    """
    if value.device.type != "cpu" or value.numel() < 4096 or value.requires_grad:
        return None
    if int(torch.count_nonzero(value)) > SPARSE_FRACTION * value.numel():
        return None
    return value.nonzero(as_tuple=True)


def _log_factorial(value: torch.Tensor) -> torch.Tensor:
    r""":math:`\log x! = \log\Gamma(x + 1)`, shape of ``value`` (see :func:`_nonzero_counts`)."""
    idx = _nonzero_counts(value)
    if idx is None:
        return torch.lgamma(value + 1)
    return value.new_zeros(value.shape).index_put(idx, torch.lgamma(value[idx] + 1))


def _lgamma_ratio(value: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    r""":math:`\log\Gamma(x + \theta) - \log\Gamma(\theta) - \log\Gamma(x + 1)`: data and prior
    parameters only, shape ``broadcast(x, theta)`` (cells × genes, never particles); evaluated
    at the non-zero counts only where that pays (:func:`_nonzero_counts`)."""
    shape = _broadcast_shape(value.shape, theta.shape)
    idx = _nonzero_counts(value) if shape == value.shape else None
    if idx is None:
        return torch.lgamma(value + theta) - torch.lgamma(theta) - torch.lgamma(value + 1)
    v = value[idx]
    if theta.dim() == 0:
        t = theta
    elif theta.dim() == 1:  # per gene: the gene of each non-zero count
        t = theta[idx[-1]]
    else:
        t = theta.expand(shape)[idx]
    terms = torch.lgamma(v + t) - torch.lgamma(t) - torch.lgamma(v + 1)
    return terms.new_zeros(shape).index_put(idx, terms)


def _written_out_kernel_applies(value, log_rate, *params) -> bool:
    """Whether a kernel with written-out derivatives (:class:`_PoissonKernel`,
    :class:`_NBKernel`) can be used: they differentiate the log-rate (and the prior's
    parameters) at the full broadcast shape only, so counts that need a gradient, or a log-rate
    smaller than the broadcast shape, take autograd of the composed form instead."""
    shape = _broadcast_shape(value.shape, log_rate.shape, *(p.shape for p in params))
    return not value.requires_grad and log_rate.shape == shape


class _NBKernel(torch.autograd.Function):
    r""":math:`-x \log(1 + e^{y}) - \theta \log(1 + e^{-y})`, :math:`y = \log\theta - \log m`,
    with its derivatives written out (issue 10): with :math:`\sigma = \sigma(y) = \theta /
    (\theta + m) = e^{-\log(1 + e^{-y})}` and :math:`B = (x + \theta)\,\sigma - \theta`,

    .. math::

        \frac{\partial}{\partial \log m} = B = \frac{\theta (x - m)}{\theta + m}, \qquad
        \frac{\partial}{\partial \theta} = -\frac{B}{\theta} - \log(1 + e^{-y})

    (the second summed over the dimensions :math:`\theta` is broadcast along). About half the
    elementwise passes of autograd of the composed form over the (particles × cells × genes)
    tensor, forward and backward. Counts carry no gradient; ``log_mean`` has the broadcast
    shape."""

    @staticmethod
    def forward(ctx, value, log_mean, theta):
        # softplus is log1p(exp(.)) up to a threshold above which log(1 + e^a) = a to the
        # dtype's precision (e^-a < eps / e^4): no cancellation on either side
        threshold = 4.0 - math.log(torch.finfo(log_mean.dtype).eps)
        y = theta.log() - log_mean
        sp_y = F.softplus(y, threshold=threshold)  # log(1 + e^{y})
        sp_neg_y = F.softplus(y.neg_(), threshold=threshold)  # log(1 + e^{-y})
        ctx.save_for_backward(value, theta, sp_neg_y)
        return torch.mul(value, sp_y).addcmul_(theta, sp_neg_y).neg_()

    @staticmethod
    def backward(ctx, grad):
        value, theta, sp_neg_y = ctx.saved_tensors
        b = sp_neg_y.neg().exp_().mul_(value + theta).sub_(theta)  # B, with sigma = e^{-sp(-y)}
        grad_log_mean = torch.mul(b, grad) if ctx.needs_input_grad[1] else None
        grad_theta = None
        if ctx.needs_input_grad[2]:
            grad_theta = b.div_(theta).add_(sp_neg_y).mul_(grad).sum_to_size(theta.shape).neg_()
        return None, grad_log_mean, grad_theta


def nb_log_prob(value: torch.Tensor, log_mean: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    r"""Negative binomial :math:`\log p(x)` with mean :math:`m = e^{\log m}` and inverse dispersion
    :math:`\theta`, in log space:

    .. math::

        \log p(x) = \log\Gamma(x + \theta) - \log\Gamma(\theta) - \log\Gamma(x + 1)
        - x \log(1 + e^{y}) - \theta \log(1 + e^{-y}), \qquad y = \log\theta - \log m,

    each :math:`\log(1 + e^{\pm y})` computed directly (no cancellation whichever of
    :math:`\theta` and :math:`m` is larger; the form :math:`\theta(\log\theta - \log(\theta +
    m))` loses about :math:`\theta \log\theta` float32 ulps when :math:`m \ll \theta`), with the
    derivatives written out (:class:`_NBKernel`; autograd of :func:`_softplus_pair` where the
    counts need a gradient or ``log_mean`` is smaller than the broadcast shape). The
    :math:`\log\Gamma` terms are evaluated at the shape of ``value`` and ``theta``, before the
    particle dimension of ``log_mean`` is broadcast in.
    """
    if _written_out_kernel_applies(value, log_mean, theta):
        return _lgamma_ratio(value, theta) + _NBKernel.apply(value, log_mean, theta)
    sp_y, sp_neg_y = _softplus_pair(theta.log() - log_mean)
    return _lgamma_ratio(value, theta) - value * sp_y - theta * sp_neg_y


class _PoissonKernel(torch.autograd.Function):
    r""":math:`x \log r - r` from :math:`\log r`, with its derivative :math:`x - r` written out
    (three elementwise passes forward, two backward over the particles × cells × genes tensor,
    where autograd of the composed form records six; issue 10). Counts carry no gradient."""

    @staticmethod
    def forward(ctx, value, log_rate):
        rate = log_rate.exp()
        ctx.save_for_backward(value, rate)
        return torch.mul(value, log_rate).sub_(rate)

    @staticmethod
    def backward(ctx, grad):
        value, rate = ctx.saved_tensors
        return None, torch.sub(value, rate).mul_(grad)


def poisson_log_prob(value: torch.Tensor, log_rate: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \operatorname{Poisson}(x; e^{\log r}) = x \log r - e^{\log r} - \log x!`, with
    :math:`\log x!` evaluated at the shape of ``value`` (once per cell and gene, not per
    particle)."""
    if _written_out_kernel_applies(value, log_rate):
        kernel = _PoissonKernel.apply(value, log_rate)
    else:
        kernel = value * log_rate - log_rate.exp()
    return kernel - _log_factorial(value)


class _LogRateDistribution(dist.TorchDistribution):
    """Common part of the count distributions parametrized by a log-rate: ``log_rate`` carries
    the batch shape (particles × cells × genes); the prior's parameters keep their own, smaller
    shape (``()`` or ``(genes,)``) and broadcast only inside :meth:`log_prob`."""

    support = constraints.nonnegative_integer
    has_rsample = False
    _params: tuple[str, ...] = ()

    def __init__(self, log_rate: torch.Tensor, validate_args=None, **params):
        self.log_rate = log_rate
        for name in self._params:
            setattr(self, name, params[name])
        shapes = [log_rate.shape] + [params[n].shape for n in self._params]
        super().__init__(_broadcast_shape(*shapes), validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        params = {n: getattr(self, n) for n in self._params}
        return type(self)(self.log_rate.expand(batch_shape), **params)

    @property
    def rate(self) -> torch.Tensor:
        """:math:`r = e^{\\log r}` (floored at the smallest normal float) in the batch shape."""
        r = self.log_rate.exp().clamp_min(torch.finfo(self.log_rate.dtype).tiny)
        return r.expand(self.batch_shape)


class PoissonLogRate(_LogRateDistribution):
    r""":math:`\operatorname{Poisson}(e^{\log r})` with ``log_prob`` from :math:`\log r`
    (:func:`poisson_log_prob`)."""

    arg_constraints = {"log_rate": constraints.real}

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return poisson_log_prob(value, self.log_rate)

    def sample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            return torch.poisson(self.rate.expand(shape))

    @property
    def mean(self):
        return self.rate

    @property
    def variance(self):
        return self.rate


class NegativeBinomialLogMean(_LogRateDistribution):
    r"""Negative binomial with mean :math:`e^{\log m}` and inverse dispersion ``concentration``
    (:math:`\theta`, unexpanded): the distribution of :class:`NegativeBinomial`, with
    ``log_prob`` from :math:`\log m` (:func:`nb_log_prob`)."""

    arg_constraints = {"log_rate": constraints.real, "concentration": constraints.positive}
    _params = ("concentration",)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return nb_log_prob(value, self.log_rate, self.concentration)

    def sample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            theta = self.concentration.expand(shape)
            u = torch.distributions.Gamma(theta, theta).sample()
            return torch.poisson(self.rate.expand(shape) * u)

    @property
    def mean(self):
        return self.rate

    @property
    def variance(self):
        m = self.rate
        return m + m**2 / self.concentration


class ZeroInflatedNegativeBinomialLogMean(_LogRateDistribution):
    r""":math:`\pi\, 1[x = 0] + (1 - \pi)\operatorname{NB}(x; e^{\log m}, \theta)` with
    :math:`\operatorname{logit}\pi` = ``gate_logits`` (unexpanded). Same values as Pyro's
    :class:`~pyro.distributions.ZeroInflatedDistribution` with ``gate_logits`` over
    :class:`NegativeBinomial`, written so that neither the data nor :math:`\log\pi` is
    broadcast to the particle dimension before the negative binomial's data-only terms are
    taken."""

    arg_constraints = {
        "log_rate": constraints.real,
        "concentration": constraints.positive,
        "gate_logits": constraints.real,
    }
    _params = ("concentration", "gate_logits")

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits = self.gate_logits
        log_gate = -F.softplus(-logits)  # log pi
        # log((1 - pi) NB(x)) - log pi = NB(x) - logit pi; at x = 0 log(pi + (1 - pi) NB(0))
        # - log pi = softplus(NB(0) - logit pi)
        a = nb_log_prob(value, self.log_rate, self.concentration) - logits
        return torch.where(value == 0, F.softplus(a), a) + log_gate

    def sample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            theta = self.concentration.expand(shape)
            u = torch.distributions.Gamma(theta, theta).sample()
            keep = torch.rand(shape, dtype=u.dtype, device=u.device) >= torch.sigmoid(
                self.gate_logits
            ).expand(shape)
            return torch.poisson(self.rate.expand(shape) * u) * keep

    @property
    def mean(self):
        return self.rate * torch.sigmoid(-self.gate_logits)


class NegativeBinomial(dist.GammaPoisson):
    r"""Negative binomial with mean ``mean`` and inverse dispersion ``concentration`` (:math:`\theta`).

    This *is* Pyro's :class:`~pyro.distributions.GammaPoisson` with
    ``rate = concentration / mean`` (the Poisson mixture over :math:`u \sim
    \operatorname{Gamma}(\theta, \theta)` scaled by the mean), i.e. ``scipy.stats.nbinom(n=θ,
    p=θ / (θ + mean))``; variance :math:`m + m^2 / \theta`. Only ``log_prob`` is rewritten, in log
    space (:func:`nb_log_prob`), so that very small or very large means stay accurate in float32.
    The priors' own marginals are :class:`NegativeBinomialLogMean`, which takes :math:`\log m`.
    """

    def __init__(self, mean, concentration, validate_args=None):
        theta = concentration  # unexpanded: log_prob works on it before broadcasting (speed)
        mean, concentration = broadcast_all(mean, concentration)
        self.mean_ = mean
        self.theta_ = theta if torch.is_tensor(theta) else concentration
        super().__init__(concentration, concentration / mean, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(NegativeBinomial, _instance)
        batch_shape = torch.Size(batch_shape)
        new.mean_ = self.mean_.expand(batch_shape)
        new.theta_ = self.theta_
        return super().expand(batch_shape, _instance=new)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return nb_log_prob(value, _log(self.mean_), self.theta_)


class UPrior(PyroModule):
    """Base class of the priors on :math:`u`. Subclasses implement the three methods below.

    A prior keeps its parameters in its own module (Pyro's ``module_local_params``), whatever
    that setting is where the prior is constructed, so two fitted models never share them.
    """

    #: How many values evaluating :math:`\log p(x \mid r)` materializes per particle, cell and
    #: gene (1 for the closed forms). Evaluation over many cells divides its chunks of cells by
    #: it (:func:`pyrovae._chunking.auto_chunk`), so a prior that integrates numerically over
    #: many nodes does not multiply the memory of ``denoise`` / ``predict`` / validation.
    evaluation_width: int = 1

    def __init__(self, name: str = ""):
        with pyro_context():
            super().__init__(name)

    def marginal(self, rate: torch.Tensor) -> dist.TorchDistribution:
        """Count distribution :math:`p(x \\mid r)` with batch shape ``rate.shape``.

        :param rate: positive tensor :math:`r = s\\,\\mu(z)`, last dimension genes.
        """
        raise NotImplementedError

    def posterior_mean(self, x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        """:math:`E[u \\mid x, r]` elementwise (broadcast of ``x`` and ``rate``)."""
        raise NotImplementedError

    def mean(self) -> torch.Tensor:
        """:math:`E[u]` (scalar or per gene)."""
        raise NotImplementedError

    def marginal_from_log_rate(self, log_rate: torch.Tensor) -> dist.TorchDistribution:
        r""":meth:`marginal` given :math:`\log r` (what the model computes).

        The default is ``marginal(exp(log_rate))`` with the rate floored at the smallest normal
        float, so a subclass that implements only :meth:`marginal` works unchanged; override it
        to evaluate :math:`\log p(x \mid r)` from :math:`\log r` directly.
        """
        return self.marginal(log_rate.exp().clamp_min(torch.finfo(log_rate.dtype).tiny))

    def extra_repr(self) -> str:
        return ""


class PointMass(UPrior):
    r""":math:`u = 1` almost surely, so :math:`x \sim \operatorname{Poisson}(r)`. No parameters."""

    def marginal(self, rate):
        return self.marginal_from_log_rate(_log(rate))

    def marginal_from_log_rate(self, log_rate):
        return PoissonLogRate(log_rate)

    def posterior_mean(self, x, rate):
        return torch.ones_like(torch.as_tensor(x) * rate)

    def mean(self):
        return torch.tensor(1.0)


class Gamma(UPrior):
    r""":math:`u \sim \operatorname{Gamma}(\theta, \theta)` (mean 1, variance :math:`1/\theta`).

    The marginal is negative binomial with mean :math:`r` and inverse dispersion :math:`\theta`
    (:class:`NegativeBinomial`, a :class:`~pyro.distributions.GammaPoisson`); the posterior is
    :math:`u \mid x \sim \operatorname{Gamma}(\theta + x, \theta + r)`, so
    :math:`E[u \mid x, r] = (\theta + x) / (\theta + r)`.

    :param float inv_dispersion: initial :math:`\theta`.
    :param n_genes: ``None`` for one shared :math:`\theta`, else the number of genes (one each).
    """

    def __init__(self, inv_dispersion: float = 1.0, n_genes: int | None = None):
        super().__init__()
        if not inv_dispersion > 0:
            raise ValueError(f"inv_dispersion must be positive, got {inv_dispersion!r}")
        self.n_genes = n_genes
        self.inv_dispersion = PyroParam(
            torch.full(_param_shape(n_genes), float(inv_dispersion)),
            constraint=constraints.positive,
        )

    def marginal(self, rate):
        return self.marginal_from_log_rate(_log(rate))

    def marginal_from_log_rate(self, log_rate):
        return NegativeBinomialLogMean(log_rate, concentration=self.inv_dispersion.to(log_rate))

    def posterior_mean(self, x, rate):
        theta = self.inv_dispersion.to(rate)
        return (theta + x) / (theta + rate)

    def mean(self):
        return torch.ones_like(self.inv_dispersion)


class ZeroInflatedGamma(UPrior):
    r""":math:`u = 0` with probability :math:`\pi`, else :math:`u \sim \operatorname{Gamma}(\theta,
    \theta)`; the marginal is the zero-inflated negative binomial (ZINB)

    .. math::

        p(x \mid r) = \pi\, 1[x = 0] + (1 - \pi)\, \operatorname{NB}(x; r, \theta).

    :math:`\pi` is learned on the logit scale. With :math:`\rho = P(u > 0 \mid x, r)`, which is 1
    for :math:`x > 0` and :math:`(1-\pi)\operatorname{NB}(0) / (\pi + (1-\pi)\operatorname{NB}(0))`
    for :math:`x = 0`, :math:`E[u \mid x, r] = \rho\, (\theta + x) / (\theta + r)`.

    :param float inv_dispersion: initial :math:`\theta`.
    :param float logodds: initial :math:`\operatorname{logit} \pi`.
    :param n_genes: per-gene :math:`\theta` if given and ``disp_by_gene``.
    :param bool disp_by_gene: one :math:`\theta` per gene (needs ``n_genes``).
    :param bool logodds_by_gene: one :math:`\pi` per gene (needs ``n_genes``).
    """

    def __init__(
        self,
        inv_dispersion: float = 1.0,
        logodds: float = -3.0,
        n_genes: int | None = None,
        disp_by_gene: bool = True,
        logodds_by_gene: bool = True,
    ):
        super().__init__()
        if not inv_dispersion > 0:
            raise ValueError(f"inv_dispersion must be positive, got {inv_dispersion!r}")
        self.n_genes = n_genes
        self.inv_dispersion = PyroParam(
            torch.full(_param_shape(n_genes if disp_by_gene else None), float(inv_dispersion)),
            constraint=constraints.positive,
        )
        self.logodds = PyroParam(
            torch.full(_param_shape(n_genes if logodds_by_gene else None), float(logodds))
        )

    def marginal(self, rate):
        return self.marginal_from_log_rate(_log(rate))

    def marginal_from_log_rate(self, log_rate):
        return ZeroInflatedNegativeBinomialLogMean(
            log_rate,
            concentration=self.inv_dispersion.to(log_rate),
            gate_logits=self.logodds.to(log_rate),
        )

    def posterior_mean(self, x, rate):
        theta, logodds = self.inv_dispersion.to(rate), self.logodds.to(rate)
        gamma_mean = (theta + x) / (theta + rate)
        # log NB(0) = theta * (log theta - log(theta + r)); rho = sigmoid(log NB(0) - logit pi)
        log_nb0 = -theta * torch.logaddexp(torch.zeros_like(rate), rate.log() - theta.log())
        rho0 = torch.sigmoid(log_nb0 - logodds)
        rho = torch.where(torch.as_tensor(x) > 0, torch.ones_like(rho0), rho0)
        return rho * gamma_mean

    def mean(self):
        return torch.sigmoid(-self.logodds)


class QuadraturePrior(UPrior):
    r"""Any positive prior, with :math:`u` integrated out numerically.

    Hand in a fixed distribution (``QuadraturePrior(dist.LogNormal(0., .5))``) or subclass and
    override :meth:`base` to build the distribution from your own ``PyroParam`` s::

        class LogNormalPrior(QuadraturePrior):
            def __init__(self):
                super().__init__()
                self.sigma = PyroParam(torch.tensor(1.0), constraint=constraints.positive)

            def base(self):
                return dist.LogNormal(-self.sigma**2 / 2, self.sigma)  # E[u] = 1

    **Method.** With :math:`v = \log u` the integrand is
    :math:`g(v) = \operatorname{Poisson}(x; r e^v)\, p_U(e^v)\, e^v`. For every entry a few damped
    Newton steps find the mode :math:`\hat v` of :math:`\log g` and its curvature
    :math:`\hat\sigma^{-2}` (Laplace), then a trapezoid rule in :math:`t` with the sinh substitution
    :math:`v = \hat v + \hat\sigma \sinh t` (``2 * n_half + 1`` nodes, step ``h``) sums

    .. math::

        p(x \mid r) \approx \sum_k h\, \hat\sigma \cosh t_k\; g(\hat v + \hat\sigma \sinh t_k).

    The substitution makes the tails decay double-exponentially in :math:`t`, so heavy
    left tails of :math:`\log u` (e.g. a Gamma with shape < 1) are integrated accurately. Nodes
    are chosen without gradient and the sum is differentiated at fixed nodes, in closed form
    (:meth:`log_marginal`): autograd records only :math:`\log p_U` at the nodes, so a
    training step costs one pass over the nodes plus one over the prior's log-density. Nodes whose
    :math:`u` under- or overflows the dtype are dropped (in float32 that loses the prior mass
    below :math:`u \approx 10^{-38}`; use float64 where that matters).

    :param base_distribution: a distribution on :math:`(0, \infty)` with scalar event shape and
        batch shape ``()`` or ``(n_genes,)``; omit it when subclassing :meth:`base`.
    :param int n_half: nodes on each side of the mode (``2 * n_half + 1`` in all; default 32).
    :param float step: trapezoid step ``h`` in :math:`t`.
    :param int newton_steps: Newton iterations for the mode.
    """

    def __init__(
        self,
        base_distribution: dist.Distribution | None = None,
        n_half: int = 32,
        step: float = 0.15,
        newton_steps: int = 6,
    ):
        super().__init__()
        if base_distribution is not None and not isinstance(
            base_distribution, torch.distributions.Distribution
        ):
            raise TypeError(
                f"base_distribution must be a torch/pyro Distribution, got {type(base_distribution)}"
            )
        if n_half < 16:
            raise ValueError(f"n_half must be >= 16 (>= 33 nodes), got {n_half}")
        self._base = base_distribution
        self.n_half = int(n_half)
        self.step = float(step)
        self.newton_steps = int(newton_steps)

    @property
    def evaluation_width(self) -> int:
        """The quadrature nodes, ``2 * n_half + 1`` (see :attr:`UPrior.evaluation_width`)."""
        return 2 * self.n_half + 1

    def base(self) -> dist.Distribution:
        """The prior :math:`p(u)`; override to build it from ``PyroParam`` s."""
        if self._base is None:
            raise NotImplementedError("pass base_distribution or override base()")
        return self._base

    def marginal(self, rate):
        return QuadratureMarginal(self, rate)

    def posterior_mean(self, x, rate):
        x, rate = broadcast_all(torch.as_tensor(x, dtype=rate.dtype, device=rate.device), rate)
        with torch.no_grad():
            return self._quadrature(x, rate.log()).mean_u

    def mean(self):
        base = self.base()
        try:
            return base.mean
        except NotImplementedError:  # pragma: no cover - a distribution without .mean
            return base.sample((4096,)).mean(0)

    def log_marginal(self, x: torch.Tensor, rate: torch.Tensor) -> torch.Tensor:
        r""":math:`\log p(x \mid r)` by quadrature (elementwise).

        The sum is computed without autograd; its first derivatives are attached in closed form:
        :math:`\partial_{\log r} \log p = x - r\,E[u \mid x, r]` and
        :math:`\partial_\phi \log p = \sum_k \pi_k\, \partial_\phi \log p_U(u_k)` for the
        parameters :math:`\phi` of :meth:`base`, with :math:`\pi_k` the normalised terms of the
        sum (the gradient of the sum at fixed nodes). Second derivatives are not provided.
        """
        x, rate = broadcast_all(x, rate)
        log_rate = rate.log()
        fixed = log_rate.detach()
        q = self._quadrature(x, fixed)
        out = q.log_sum + (x * fixed - _log_factorial(x))
        if not torch.is_grad_enabled():
            return out
        if log_rate.requires_grad:
            slope = x - fixed.exp() * q.mean_u  # d log p / d log r
            out = out + slope * (log_rate - fixed)
        prior_term = self._expected_prior_log_prob(q)
        if prior_term.requires_grad:  # value 0, gradient E_pi[d log p_U(u_k) / d phi]
            out = out + (prior_term - prior_term.detach())
        return out

    # -- numerics ---------------------------------------------------------------------------
    # Every pass below runs node by node on tensors of the shape of x: a stack of all the nodes
    # is tens of MB for one minibatch, and elementwise passes over it ran 2-7x slower per
    # element than over one node's slice, which stays in the cache.
    # _NO_VALIDATION: the prior's log-density is evaluated with distribution validation off:
    # the nodes are positive and finite by construction, and checking them node by node was a
    # fifth of a training step.
    @staticmethod
    def _log_kernel(base, x, log_rate, v):
        """log g(v) less the terms free of v (x log r - log x!): x v - r e^v + log p_U(e^v) + v."""
        return x * v - (log_rate + v).exp() + base.log_prob(v.exp()) + v

    @staticmethod
    def _kernel_slopes(base, x, log_rate, v):
        """First and second derivative in v of :meth:`_log_kernel`: the Poisson part in closed
        form, the prior's by autograd."""
        with torch.enable_grad():
            v = v.detach().requires_grad_(True)
            lp = base.log_prob(v.exp())
            d1 = d2 = torch.zeros_like(v)
            if lp.requires_grad:
                (d1,) = torch.autograd.grad(lp.sum(), v, create_graph=True)
                if d1.requires_grad:
                    (d2,) = torch.autograd.grad(d1.sum(), v)
        lam = (log_rate + v.detach()).exp()
        return x + 1.0 - lam + d1.detach(), d2.detach() - lam

    def _mode(self, base, x, log_rate):
        """Damped Newton on v for the mode of log g and its curvature (no gradient kept)."""
        finfo = torch.finfo(log_rate.dtype)
        vmin, vmax = math.log(finfo.tiny) + 1, math.log(finfo.max) - 1
        # start at the best of a coarse grid around the Poisson MLE of u (Newton on e^v is slow
        # from far right of the mode)
        v_mle = torch.log(x + 0.5) - log_rate
        v = best = None
        for offset in torch.linspace(-30.0, 10.0, 21, dtype=torch.float64).tolist():
            node = (v_mle + offset).clamp(vmin, vmax)
            f = torch.nan_to_num(self._log_kernel(base, x, log_rate, node), nan=-math.inf)
            if v is None:
                v, best = node, f
            else:  # the first of equal values wins, as argmax's
                better = f > best
                v, best = torch.where(better, node, v), torch.where(better, f, best)
        curv = None
        for _ in range(self.newton_steps + 1):
            g, h = self._kernel_slopes(base, x, log_rate, v)
            curv = (-h).clamp_min(1e-4)
            step = torch.nan_to_num((g / curv).clamp(-5.0, 5.0), nan=0.0)
            v = (v + step).clamp(vmin, vmax)
        sigma = curv.rsqrt().clamp(1e-3, 50.0)
        return v, torch.nan_to_num(sigma, nan=1.0)

    def _quadrature(self, x, log_rate) -> _Quadrature:
        """Nodes, their normalised terms and the log of the sum, all without gradient."""
        self.base()  # its parameters are checked here, as the user's distribution checks them
        with torch.no_grad(), pyro.validation_enabled(False):  # see _NO_VALIDATION
            base = _detached(self.base())
            v_hat, sigma = self._mode(base, x, log_rate)
            finfo = torch.finfo(log_rate.dtype)
            low, high = math.log(finfo.tiny), math.log(finfo.max) - 1
            log_sigma = sigma.log()
            nodes, terms = [], []
            for k in range(-self.n_half, self.n_half + 1):
                t = k * self.step
                v = v_hat + sigma * math.sinh(t)
                ok = (v > low) & (v < high)
                v = torch.where(ok, v, 0.0)
                log_g = self._log_kernel(base, x, log_rate, v)
                # drop nodes whose integrand overflows too (r e^v = inf): they add 0 to the sum
                ok &= torch.isfinite(log_g)
                log_w = log_sigma + (math.log(self.step) + math.log(math.cosh(t)))
                nodes.append(v)
                terms.append(torch.where(ok, log_g + log_w, -math.inf))
            top = functools.reduce(torch.maximum, terms)
            # and nodes whose term is negligible next to the largest one: together they change
            # the sum by less than eps * e^-10 relative, and far in the tails their gradients
            # can overflow where the term is still finite (a Weibull's u^c log u in float32)
            cutoff = -math.log(finfo.eps) + math.log(2 * self.n_half + 1) + 10.0
            floor = top - cutoff
            for k, term in enumerate(terms):
                keep = term >= floor
                terms[k] = torch.where(keep, term, -math.inf)
                nodes[k] = torch.where(keep, nodes[k], 0.0)
            shift = torch.where(torch.isfinite(top), top, 0.0)
            weights = [torch.exp(term - shift) for term in terms]
            total = functools.reduce(torch.add, weights)
            log_sum = total.log() + shift
            weights = [w / total for w in weights]
            # E[u | x, r] = sum_k pi_k e^{v_k}, in log space (e^v may overflow)
            top_u = functools.reduce(
                torch.maximum, [t + v for t, v in zip(terms, nodes, strict=True)]
            )
            top_u = torch.where(torch.isfinite(top_u), top_u, 0.0)
            num = functools.reduce(
                torch.add, [torch.exp(t + v - top_u) for t, v in zip(terms, nodes, strict=True)]
            )
            mean_u = torch.exp(num.log() + top_u - log_sum)
        return _Quadrature(log_sum, mean_u, nodes, weights)

    def _expected_prior_log_prob(self, q: _Quadrature) -> torch.Tensor:
        r""":math:`\sum_k \pi_k \log p_U(u_k)` at the fixed nodes, with autograd in the prior's
        parameters (dropped nodes sit at :math:`u = 1` with weight 0)."""
        with pyro.validation_enabled(False):  # see _NO_VALIDATION
            base = self.base()
            return functools.reduce(
                torch.add,
                [w * base.log_prob(v.exp()) for v, w in zip(q.nodes, q.weights, strict=True)],
            )


class _Quadrature(NamedTuple):
    """What :meth:`QuadraturePrior._quadrature` computes: ``log_sum`` (:math:`\\log p(x \\mid r)`
    less :math:`x \\log r - \\log x!`), ``mean_u`` (:math:`E[u \\mid x, r]`), and per node
    :math:`v_k` and :math:`\\pi_k`."""

    log_sum: torch.Tensor
    mean_u: torch.Tensor
    nodes: list[torch.Tensor]
    weights: list[torch.Tensor]


def _detached(base: dist.Distribution) -> dist.Distribution:
    """A copy of ``base`` whose tensor parameters carry no autograd history."""
    params = {}
    for name in base.arg_constraints:
        value = getattr(base, name, None)
        if torch.is_tensor(value):
            params[name] = value.detach()
    if not params:
        return base
    try:
        return type(base)(**params)
    except TypeError:  # a distribution whose constructor differs from its arg names
        return base


class QuadratureMarginal(dist.TorchDistribution):
    """:math:`p(x \\mid r) = \\int \\operatorname{Poisson}(x; r u)\\, dp(u)` by quadrature."""

    arg_constraints = {"rate": constraints.positive}
    support = constraints.nonnegative_integer
    has_rsample = False

    def __init__(self, prior: QuadraturePrior, rate: torch.Tensor, validate_args=None):
        self.prior = prior
        self.rate = rate
        super().__init__(rate.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return QuadratureMarginal(self.prior, self.rate.expand(batch_shape))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return self.prior.log_marginal(value, self.rate)

    def sample(self, sample_shape=()):
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            u = self.prior.base().expand(shape).sample()
            return torch.poisson(self.rate.expand(shape) * u)

    @property
    def mean(self):
        return self.rate * self.prior.mean().to(self.rate)


class LogNormal(QuadraturePrior):
    r""":math:`\log u \sim \mathcal N(-\sigma^2/2, \sigma^2)` (so :math:`E[u] = 1`), integrated out by
    quadrature — the worked example of a prior without a closed-form marginal.

    :param float sigma: initial :math:`\sigma`.
    :param n_genes: one :math:`\sigma` per gene when given.
    :param quadrature: keyword arguments for :class:`QuadraturePrior` (``n_half``, ``step``).
    """

    def __init__(self, sigma: float = 1.0, n_genes: int | None = None, **quadrature):
        super().__init__(**quadrature)
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}")
        self.n_genes = n_genes
        self.sigma = PyroParam(
            torch.full(_param_shape(n_genes), float(sigma)), constraint=constraints.positive
        )

    def base(self):
        return dist.LogNormal(-(self.sigma**2) / 2, self.sigma)


#: The priors known by name to :func:`make_prior` and the estimator.
PRIORS = {
    "poisson": PointMass,
    "gamma": Gamma,
    "nb": Gamma,
    "zig": ZeroInflatedGamma,
    "zinb": ZeroInflatedGamma,
    "lognormal": LogNormal,
}


def make_prior(name: str, n_genes: int | None = None) -> UPrior:
    """Build a prior by name (``"poisson"``, ``"gamma"``/``"nb"``, ``"zig"``/``"zinb"``,
    ``"lognormal"``).

    :param n_genes: one parameter per gene when given, else one shared parameter.
    """
    key = str(name).lower()
    if key not in PRIORS:
        raise ValueError(f"unknown prior {name!r}; choose one of {sorted(PRIORS)} or pass a UPrior")
    cls = PRIORS[key]
    return cls() if cls is PointMass else cls(n_genes=n_genes)
