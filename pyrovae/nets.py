r"""The two neural networks: the encoder :math:`x \mapsto (m, S)` and the decoder :math:`z \mapsto \mu`.

Both are plain fully connected ReLU networks without batch normalization, so a cell's output never
depends on the other cells in its batch and training and evaluation behave identically (this is
also what lets Pyro vectorize particles: a leading particle dimension passes straight through).

Both are built so that one large optimizer step on wide, sparse, skewed data cannot drive them
into a region where the loss or its gradients stop being finite (issue 13): the encoder's input
has the same scale for a cell of 30 molecules as for one of 30,000 and for 500 genes as for
30,000, its outputs are bounded, and the decoder returns :math:`\log\mu` computed in log space
with finite gradients at any finite pre-activation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.nn import PyroModule
from torch import nn

from ._context import submodule

__all__ = [
    "Encoder",
    "Decoder",
    "mlp",
    "input_major",
    "log_softplus",
    "encoder_input",
    "bounded",
    "LIBRARY_SCALE",
]

#: Normalised library of the encoder input (counts per 10,000, as in scanpy's ``normalize_total``).
LIBRARY_SCALE = 1e4


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers of the given sizes with a ReLU after each (including the last)."""
    layers: list[nn.Module] = []
    for d_in, d_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(d_in, d_out), nn.ReLU()]
    return nn.Sequential(*layers)


class _LogSoftplus(torch.autograd.Function):
    """:func:`log_softplus` with its derivative written out: two to four elementwise passes
    forward and four backward over the (particles × cells × genes) tensor, where autograd of the
    composed form records eleven (issue 10).

    The select below :math:`h = -15` (a comparison and a ``where``, as costly as the ``log``) is
    skipped on the CPU when no pre-activation is that small, which one ``amin`` (a tenth of
    their cost) tells; the values are the same either way. On a GPU the answer would make the
    host wait, so the select always runs there."""

    @staticmethod
    def forward(ctx, h):
        sp = F.softplus(h)
        y = sp.log()
        if h.device.type != "cpu" or h.numel() == 0 or bool(h.amin() < -15.0):
            y = torch.where(h < -15.0, h, y)
        ctx.save_for_backward(h, sp, y)
        return y

    @staticmethod
    def backward(ctx, grad):
        h, sp, y = ctx.saved_tensors
        # sigma(h) / softplus(h) = exp(h - softplus(h) - y): 1 where y = h, tends to 1/h above;
        # it never exceeds 1 (log(1 + u) >= u / (1 + u)), which the clamp keeps under rounding
        return torch.sub(h, sp).sub_(y).exp_().clamp_max_(1.0).mul_(grad)


def log_softplus(h: torch.Tensor) -> torch.Tensor:
    r""":math:`\log \operatorname{softplus}(h)`, accurate where softplus underflows (:math:`h \ll 0`).

    Below :math:`h = -15` it is :math:`h` (the relative error :math:`e^h / 2` is below float64's
    precision of the log there). The gradient, :math:`\sigma(h) / \operatorname{softplus}(h) =
    \exp(h - \operatorname{softplus}(h) - \log\operatorname{softplus}(h))`, is computed in that
    form (:class:`_LogSoftplus`): it lies in :math:`(0, 1]`, is 1 up to rounding below -15 and
    tends to :math:`1/h` above, and is never non-finite, whatever the pre-activation.
    """
    return _LogSoftplus.apply(h)


def encoder_input(
    x: torch.Tensor, w: torch.Tensor | None = None, normalise: bool = True
) -> torch.Tensor:
    r"""The encoder's input :math:`f(x) = [\log(1 + 10^4\, \tilde x / \ell),\ \log(1 + \ell)]`
    (``normalise``) or :math:`[\log(1 + \tilde x),\ \log(1 + \ell)]`.

    :math:`\tilde x = x \odot w` are the observed counts (missing entries set to 0 *before*
    anything is computed from them, so their stored values cannot reach any output) and
    :math:`\ell = \sum_j \tilde x_j` the cell's observed library (a cell without any observed
    count gets :math:`\ell = 0` and input 0, not NaN). Row-wise only: no statistic of other
    cells is used.

    :return: shape ``x.shape[:-1] + (p + 1,)``.
    """
    if w is not None:
        x = torch.where(w, x, torch.zeros_like(x))
    library = x.sum(-1, keepdim=True)
    if normalise:
        # x / library <= 1 for non-negative counts; an empty cell divides 0 by 1
        safe = torch.where(library > 0, library, torch.ones_like(library))
        profile = torch.log1p(x * (LIBRARY_SCALE / safe))
    else:
        profile = torch.log1p(x)
    return torch.cat([profile, torch.log1p(library)], -1)


def bounded(h: torch.Tensor, bound: float) -> torch.Tensor:
    r""":math:`b \tanh(h / b)`: the identity near 0 (slope 1, error :math:`h^3/(3b^2)`), never
    beyond :math:`\pm b`, with a gradient that vanishes smoothly instead of being cut off."""
    return bound * torch.tanh(h / bound)


def input_major(layer: nn.Linear) -> nn.Linear:
    r"""Store ``layer``'s weight input-major: the same ``(out, in)`` parameter (values, name and
    ``state_dict`` unchanged) laid out in memory as its transpose. For a narrow input — the
    decoder's first layer reads the :math:`K`-dimensional :math:`z` for every particle and
    cell — the three matrix products of a step then run on layouts the BLAS handles several
    times faster: autograd's backward follows the weight's strides, computing the weight's
    gradient as :math:`(z^\top G)^\top` instead of :math:`G^\top z` and the input's as
    :math:`G W` against a row-major :math:`W^\top` (5,000 rows, :math:`K = 3`, hidden 128: about
    2.1 ms → 0.75 ms a step on one thread; issue 10). The arithmetic is the same products of the
    same numbers."""
    with torch.no_grad():
        layer.weight = nn.Parameter(layer.weight.t().contiguous().t())
    return layer


class Encoder(PyroModule):
    r"""Amortized Gaussian posterior :math:`q(z \mid x) = \mathcal N(m, \operatorname{diag} S)`.

    **Input** (:func:`encoder_input`): the log of the library-normalised observed counts,
    :math:`\log(1 + 10^4\, x_j w_j / \ell)` with :math:`\ell = \sum_j x_j w_j`, and one extra
    feature :math:`\log(1 + \ell)`. Missing entries are filled with 0 (Mattei & Frellsen 2018)
    before the library is taken; the mask itself is not an input. Normalising by the library
    makes the input's scale the same for a shallow and a very deep cell and for few or many
    genes: the normalised counts of a cell sum to :math:`10^4` whatever its depth and width, so
    the first layer's pre-activations cannot be tens of times larger for a deep cell (the cause
    of the divergence of issue 13, where the first layer saw :math:`\log(1 + x)` summed over 13k
    genes). The depth is kept as the single bounded feature :math:`\log(1 + \ell)` (at most ~15)
    so that a model *without* size factors can still encode it. No LayerNorm/BatchNorm: the
    input's scale is already fixed, and BatchNorm would couple the cells of a batch.

    **Outputs** are bounded: :math:`m = 10 \tanh(\cdot / 10)` (:func:`bounded`; under the
    :math:`\mathcal N(0, I)` prior a posterior mean beyond :math:`\pm 10` is never plausible) and

    .. math::

        S^{1/2} = \epsilon + \frac{s\, s_{\max}}{s + s_{\max}}, \qquad
        s = \operatorname{softplus}(\cdot), \quad \epsilon = 10^{-4},\ s_{\max} = 5,

    which is :math:`\approx s` for small scales and never exceeds :math:`s_{\max} + \epsilon`
    (five prior standard deviations), with a finite, non-zero gradient everywhere.

    **Models without size factors** (:math:`s_i = 1`) see :math:`\log(1 + \tilde x)` instead
    (``normalise_input=False``): there the decoder must reproduce each cell's depth from
    :math:`z`, and the unnormalised profile carries it in every coordinate, which trains
    markedly faster than depth in one feature. With size factors the depth is
    :math:`s_i`'s job and the encoder sees the normalised profile.

    :param int input_dim: number of genes :math:`p`.
    :param int latent_dim: :math:`K`.
    :param hidden: hidden layer widths.
    :param bool normalise_input: library-normalise the counts (see above).
    """

    #: bound on :math:`|m|`.
    max_loc = 10.0
    #: bound on the standard deviation :math:`S^{1/2}` (approached smoothly).
    max_scale = 5.0
    #: smallest standard deviation.
    min_scale = 1e-4

    def __init__(
        self,
        input_dim: int,
        latent_dim: int,
        hidden: Sequence[int] = (128, 128),
        normalise_input: bool = True,
    ):
        super().__init__()
        self.normalise_input = bool(normalise_input)
        self.body = mlp([input_dim + 1, *hidden])
        width = hidden[-1] if hidden else input_dim + 1
        self.mean = nn.Linear(width, latent_dim)
        self.scale = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor, w: torch.Tensor | None = None):
        """Return ``(loc, scale)`` of :math:`q(z \\mid x)`, each of shape ``x.shape[:-1] + (K,)``."""
        h = submodule(self, "body")(encoder_input(x, w, self.normalise_input))
        s = F.softplus(submodule(self, "scale")(h))
        scale = s * self.max_scale / (s + self.max_scale) + self.min_scale
        return bounded(submodule(self, "mean")(h), self.max_loc), scale


class Decoder(PyroModule):
    r"""Mean expression :math:`\mu(z) = \operatorname{softplus}(g(z))`, returned as :math:`\log\mu`.

    Softplus grows linearly, so a large pre-activation cannot overflow the rate the way
    :math:`\exp` can; the log is taken by :func:`log_softplus`, which stays finite, with a finite
    gradient, at any finite pre-activation (:math:`\pm 200` in float32 included). The model uses
    :math:`\log\mu` directly (:meth:`pyrovae.model.VAEModel.log_rate`), never
    :math:`\log\exp\log\mu`.
    """

    def __init__(self, latent_dim: int, output_dim: int, hidden: Sequence[int] = (128, 128)):
        super().__init__()
        self.body = mlp([latent_dim, *hidden])
        width = hidden[-1] if hidden else latent_dim
        self.out = nn.Linear(width, output_dim)
        input_major(self.body[0] if hidden else self.out)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log \\mu(z)` with shape ``z.shape[:-1] + (p,)``."""
        return log_softplus(submodule(self, "out")(submodule(self, "body")(z)))
