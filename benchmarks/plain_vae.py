r"""A plain-PyTorch VAE with pyrovae's architecture and likelihood (the speed yardstick).

Written from scratch with ``torch.nn`` only (no Pyro, nothing imported from pyrovae), the way a
user would hand-write it; :mod:`speed` checks before timing that it computes pyrovae's training
loss from the same parameters and the same random draws, and stops when it does not.

* **Encoder** (two inputs, chosen by :meth:`PlainVAE.like` from the fitted pyrovae model):
  ``"library"`` (models with size factors) — :math:`[\log(1 + 10^4 x / \ell), \log(1 + \ell)]`
  with :math:`\ell = \sum_j x_j`; ``"log1p"`` — :math:`[\log(1 + x), \log(1 + \ell)]`.
  Outputs :math:`m = 10\tanh(\cdot/10)` and :math:`S^{1/2} = s\,s_{\max}/(s + s_{\max}) +
  10^{-4}`, :math:`s = \operatorname{softplus}(\cdot)`. Hidden layers: Linear + ReLU.
* **Decoder**: Linear + ReLU layers, then :math:`\log\mu = \log\operatorname{softplus}(g)`
  (:math:`= g` below :math:`g = -15`), plus :math:`\log s_i` (size factor).
* **Likelihood** from the log-rate :math:`\eta = \log(s_i \mu_j)`: negative binomial with
  inverse dispersion :math:`\theta_j` (per gene, or one shared; learned as :math:`\log\theta`)

  .. math::

      \log p(x \mid \eta) = \underbrace{\log\Gamma(x + \theta) - \log\Gamma(\theta)
      - \log\Gamma(x + 1)}_{\text{once per batch}} + x\,(d - \operatorname{softplus}(d))
      - \theta \operatorname{softplus}(d), \qquad d = \eta - \log\theta,

  or Poisson, :math:`x\eta - e^\eta - \log\Gamma(x + 1)`.
* **Objective**: ELBO with :math:`S` reparameterized particles and the analytic Gaussian KL
  (as Pyro's ``TraceMeanField_ELBO``), times :math:`N/B` for a minibatch; Adam.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PlainVAE", "PlainTrainer"]


def _mlp(sizes: Sequence[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class PlainVAE(nn.Module):
    """See the module docstring.

    :param int n_genes: :math:`p`.
    :param int latent_dim: :math:`K`.
    :param hidden: encoder hidden widths (the decoder mirrors them).
    :param str likelihood: ``"nb"`` or ``"poisson"``.
    :param bool theta_by_gene: one :math:`\\theta` per gene (else one shared).
    :param str encoder_input: ``"log1p"`` or ``"library"``.
    :param bounds: ``(max_loc, max_scale)`` for bounded encoder outputs, or ``None``.
    """

    def __init__(
        self,
        n_genes: int,
        latent_dim: int,
        hidden: Sequence[int] = (128, 128),
        likelihood: str = "nb",
        theta_by_gene: bool = True,
        encoder_input: str = "log1p",
        bounds: tuple[float, float] | None = None,
        library_scale: float = 1e4,
        min_scale: float = 1e-4,
    ):
        super().__init__()
        assert likelihood in ("nb", "poisson") and encoder_input in ("log1p", "library")
        hidden = tuple(hidden)
        n_in = n_genes + 1
        self.enc = _mlp([n_in, *hidden])
        width = hidden[-1] if hidden else n_in
        self.mean = nn.Linear(width, latent_dim)
        self.scale = nn.Linear(width, latent_dim)
        back = tuple(reversed(hidden))
        self.dec = _mlp([latent_dim, *back])
        self.out = nn.Linear(back[-1] if back else latent_dim, n_genes)
        self.likelihood, self.encoder_input = likelihood, encoder_input
        self.bounds, self.library_scale, self.min_scale = bounds, library_scale, min_scale
        if likelihood == "nb":
            self.log_theta = nn.Parameter(torch.zeros(n_genes if theta_by_gene else ()))

    # -- mirroring a fitted pyrovae model ---------------------------------------------------
    @classmethod
    def like(cls, est) -> PlainVAE:
        """A :class:`PlainVAE` with the architecture *and parameters* of a fitted pyrovae
        estimator (read from its encoder, decoder and prior; Linear layers in order)."""
        enc, dec = est.encoder, est.decoder
        enc_lin = [m for m in enc.body if isinstance(m, nn.Linear)]
        dec_lin = [m for m in dec.body if isinstance(m, nn.Linear)]
        p = est.n_features_in_
        n_in = enc_lin[0].in_features if enc_lin else enc.mean.in_features
        if n_in != p + 1:
            raise ValueError(f"unknown encoder input width {n_in} for {p} genes")
        variant = "library" if enc.normalise_input else "log1p"
        bounds = None
        if hasattr(enc, "max_loc"):
            bounds = (float(enc.max_loc), float(enc.max_scale))
        library_scale = 1e4
        try:
            from pyrovae.nets import LIBRARY_SCALE as library_scale  # noqa: N811
        except ImportError:
            pass
        prior = est.prior_
        theta = getattr(prior, "inv_dispersion", None)
        if theta is not None and hasattr(prior, "logodds"):
            raise ValueError("the plain VAE has no zero-inflated likelihood")
        net = cls(
            p,
            est.latent_dim,
            hidden=[m.out_features for m in enc_lin],
            likelihood="poisson" if theta is None else "nb",
            theta_by_gene=theta is not None and theta.numel() > 1,
            encoder_input=variant,
            bounds=bounds,
            library_scale=float(library_scale),
            min_scale=float(getattr(enc, "min_scale", 1e-4)),
        )
        assert [m.out_features for m in dec_lin] == [m.out_features for m in net.dec[::2]]
        mine = [*net.enc[::2], net.mean, net.scale, *net.dec[::2], net.out]
        theirs = [*enc_lin, enc.mean, enc.scale, *dec_lin, dec.out]
        with torch.no_grad():
            for a, b in zip(mine, theirs, strict=True):
                a.weight.copy_(b.weight.detach())
                a.bias.copy_(b.bias.detach())
            if theta is not None:
                net.log_theta.copy_(theta.detach().log().reshape(net.log_theta.shape))
        return net.to(next(enc.parameters()).device)

    # -- the computation --------------------------------------------------------------------
    def encode(self, x: torch.Tensor):
        """``(loc, scale)`` of :math:`q(z \\mid x)`."""
        lib = x.sum(-1, keepdim=True)
        if self.encoder_input == "log1p":
            profile = torch.log1p(x)
        else:
            safe = torch.where(lib > 0, lib, torch.ones_like(lib))
            profile = torch.log1p(x * (self.library_scale / safe))
        inp = torch.cat([profile, torch.log1p(lib)], -1)
        h = self.enc(inp)
        loc, s = self.mean(h), F.softplus(self.scale(h))
        if self.bounds is None:
            return loc, s + self.min_scale
        max_loc, max_scale = self.bounds
        return max_loc * torch.tanh(loc / max_loc), s * max_scale / (s + max_scale) + self.min_scale

    def log_mu(self, z: torch.Tensor) -> torch.Tensor:
        """:math:`\\log\\mu(z)`."""
        g = self.out(self.dec(z))
        return torch.where(g < -15.0, g, torch.log(F.softplus(g.clamp_min(-15.0))))

    def loss(
        self, x: torch.Tensor, log_s: torch.Tensor | None, n_samples: int, scale: float = 1.0
    ) -> torch.Tensor:
        """Negative ELBO of the batch ``x`` (cells × genes) times ``scale`` (= N / B)."""
        loc, sd = self.encode(x)
        z = loc + sd * torch.randn((n_samples, *loc.shape), dtype=loc.dtype, device=loc.device)
        eta = self.log_mu(z)
        if log_s is not None:
            eta = eta + log_s.unsqueeze(-1)
        lgx1 = torch.lgamma(x + 1)
        if self.likelihood == "nb":
            log_theta = self.log_theta
            theta = log_theta.exp()
            data = (torch.lgamma(x + theta) - torch.lgamma(theta) - lgx1).sum()
            d = eta - log_theta
            sp = F.softplus(d)
            per_particle = (x * (d - sp) - theta * sp).sum()
        else:
            data = -lgx1.sum()
            per_particle = (x * eta - eta.exp()).sum()
        var = sd * sd
        kl = 0.5 * (var + loc * loc - 1.0 - var.log()).sum()
        return -(data + per_particle / n_samples - kl) * scale


class PlainTrainer:
    """A plain training loop: Adam on :class:`PlainVAE`, shuffled minibatches of a dense tensor.

    :param x: dense counts (cells × genes) on the training device.
    :param size_factor: per-cell size factors or ``None``.
    """

    def __init__(self, net: PlainVAE, x, size_factor, n_samples, batch_size, lr, seed=0):
        self.net, self.x, self.n_samples = net, x, n_samples
        self.log_s = None if size_factor is None else size_factor.log()
        self.batch_size = min(batch_size or x.shape[0], x.shape[0])
        self.opt = torch.optim.Adam(net.parameters(), lr=lr)
        self.generator = torch.Generator().manual_seed(seed)

    def epoch(self) -> float:
        """One pass over the data; returns the mean-over-batches full-data loss."""
        n, bs = self.x.shape[0], self.batch_size
        if bs == n:
            batches = [None]
        else:
            order = torch.randperm(n, generator=self.generator).numpy()
            batches = [
                torch.as_tensor(np.sort(order[i : i + bs]), device=self.x.device)
                for i in range(0, n, bs)
            ]
        total = 0.0
        for idx in batches:
            xb = self.x if idx is None else self.x[idx]
            sb = self.log_s if (self.log_s is None or idx is None) else self.log_s[idx]
            m = xb.shape[0]
            self.opt.zero_grad(set_to_none=True)
            loss = self.net.loss(xb, sb, self.n_samples, scale=n / m)
            loss.backward()
            self.opt.step()
            total += loss.detach() * (m / n)
        value = float(total)
        if not math.isfinite(value):
            raise FloatingPointError("plain VAE loss is not finite")
        return value
