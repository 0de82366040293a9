"""Construction: the estimator's settings checked, the device resolved, the Pyro pair built.

:func:`build` turns the constructor arguments of :class:`pyrovae.VAE` (and a number of genes)
into a fresh :class:`~pyrovae.model.VAEModel` / :class:`~pyrovae.guide.VAEGuide` pair on the
requested device and dtype. It is used by ``fit`` and by :mod:`pyrovae.persistence` (which then
loads the saved parameters into the pair).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import numpy as np
import torch

from ._context import pyro_context
from .guide import VAEGuide
from .model import VAEModel
from .priors import UPrior, make_prior

__all__ = [
    "resolve_device",
    "is_int",
    "check_settings",
    "make_prior_for",
    "check_prior_numerics",
    "build",
]


def is_int(value) -> bool:
    """A Python or numpy integer (not a bool)."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def resolve_device(device) -> torch.device:
    """``"auto"`` → a GPU when there is one, else the CPU; ``"cuda"`` without one → ValueError."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' requested but no CUDA device is available")
    return device


def check_settings(latent_dim, input_dim, hidden, dtype, prior) -> None:
    """Validate the constructor arguments of :class:`pyrovae.VAE` (called by ``fit``)."""
    if not (is_int(latent_dim) and latent_dim >= 1):
        raise ValueError(f"latent_dim must be an int >= 1, got {latent_dim!r}")
    if input_dim is not None and not (is_int(input_dim) and input_dim >= 1):
        raise ValueError(f"input_dim must be None or an int >= 1, got {input_dim!r}")
    if isinstance(hidden, str) or not isinstance(hidden, Sequence | np.ndarray):
        raise ValueError(f"hidden must be a sequence of positive ints, got {hidden!r}")
    if not all(is_int(h) and h >= 1 for h in hidden):
        raise ValueError(f"hidden must be positive ints, got {hidden!r}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
    if not isinstance(prior, str | UPrior):
        raise TypeError(f"prior must be a name or a UPrior, got {type(prior).__name__}")


def make_prior_for(prior: str | UPrior, n_genes: int, by_gene: bool = False) -> UPrior:
    """A fresh prior: a copy of a :class:`UPrior` instance (checked against ``n_genes``), or the
    named one with one parameter per gene when ``by_gene``."""
    if isinstance(prior, UPrior):
        prior = copy.deepcopy(prior)
        n = getattr(prior, "n_genes", None)
        if n is not None and n != n_genes:
            raise ValueError(f"the prior was built for {n} genes but x has {n_genes}")
        return prior
    return make_prior(prior, n_genes if by_gene else None)


def check_prior_numerics(prior: UPrior, dtype=torch.float32, device="cpu") -> None:
    r"""Evaluate the prior's :math:`\log p(x \mid r)` and its gradients (with respect to the rate
    and the prior's parameters) on a grid of counts and rates in ``dtype``, before any training.

    :raises ValueError: a non-finite value or gradient, naming the prior and suggesting float64
        (or a prior that is stable in float32).
    """
    x = torch.tensor([0.0, 1.0, 3.0, 10.0, 100.0, 1000.0], dtype=dtype, device=device)
    rate = torch.logspace(-3, 3, 7, dtype=dtype, device=device)
    probe = copy.deepcopy(prior).to(device, dtype)
    n_genes = getattr(probe, "n_genes", None)
    shape = (x.numel(), rate.numel(), n_genes or 1)
    xs = x.reshape(-1, 1, 1).expand(shape)
    rs = rate.reshape(1, -1, 1).expand(shape).clone().requires_grad_(True)
    params = [p for p in probe.parameters() if p.requires_grad]
    problem = None
    try:
        with pyro_context():
            lp = probe.marginal(rs).log_prob(xs)
            grads = torch.autograd.grad(lp.sum(), [rs, *params], allow_unused=True)
        if not torch.isfinite(lp).all():
            problem = "log p(x | r) is not finite"
        elif not all(g is None or torch.isfinite(g).all() for g in grads):
            problem = "its gradient is not finite"
    except (RuntimeError, ValueError, FloatingPointError) as err:
        problem = f"evaluating it failed ({err})"
    if problem is not None:
        raise ValueError(
            f"the prior {type(prior).__qualname__} is numerically unstable in {dtype}: "
            f"{problem} for counts 0-1000 and rates 1e-3-1e3 before training. Fit with "
            "dtype=torch.float64, or parametrize the prior so that it stays finite."
        )


def build(
    n_genes: int,
    latent_dim: int,
    prior: UPrior,
    hidden: Sequence[int],
    device="cpu",
    dtype=torch.float32,
    normalise_input: bool = True,
) -> tuple[VAEModel, VAEGuide]:
    """A fresh model/guide pair (the decoder mirrors the encoder's ``hidden`` widths; the
    encoder's input is library-normalised when ``normalise_input``, i.e. for models with size
    factors: :class:`~pyrovae.nets.Encoder`)."""
    hidden = tuple(int(h) for h in hidden)
    device = resolve_device(device)
    with pyro_context():
        model = VAEModel(int(n_genes), int(latent_dim), prior, hidden).to(device, dtype)
        guide = VAEGuide(int(n_genes), int(latent_dim), hidden, normalise_input)
        guide = guide.to(device, dtype)
    return model, guide
