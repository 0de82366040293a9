"""The stochastic variational inference loop.

One function, :func:`run_svi`: epochs over (optionally shuffled) minibatches of cells, one
optimizer step per batch on the objective of :mod:`pyrovae.objectives`, a per-epoch loss trace,
an optional KL warm-up, an optional validation loss (held-out cells or entries) with early
stopping, and a guard that stops with
:class:`FitDivergedError` — after restoring the last parameters that gave a finite loss — when the
loss turns NaN or infinite.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from . import objectives
from .data import CountData

__all__ = ["FitDivergedError", "FitHistory", "run_svi", "OPTIMIZERS"]

OPTIMIZERS = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}


class FitDivergedError(FloatingPointError):
    """The training loss (or a gradient) became NaN or infinite. The model keeps the parameters at
    which the last finite loss was computed (those of the last ``trace_`` entry in full-batch
    fits); ``epoch`` is the (0-based) epoch in which it happened."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch


@dataclass
class FitHistory:
    """What happened during a fit.

    :ivar loss: per-epoch training loss (negative bound summed over all training cells).
    :ivar val_loss: per-epoch validation loss (whatever ``validation_loss`` computes: the
        negative bound of held-out cells, or the negative predictive log pmf of held-out
        entries).
    :ivar best_epoch: epoch whose parameters were kept (last epoch without early stopping).
    :ivar stopped_early: whether patience ran out before ``max_epochs``.
    """

    loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False


def _unvalidated():
    """Pyro/torch distribution validation off inside the loop: the data were validated once by
    :mod:`pyrovae.data` (so non-integer counts the caller allowed pass), and a parameter that
    leaves its support (e.g. an inverse dispersion underflowing to 0) gives a non-finite loss
    that the divergence guard reports with its epoch, not a ValueError from inside Pyro."""
    return pyro.validation_enabled(False)


def _snapshot(params):
    return [p.detach().clone() for p in params]


def _restore(params, values):
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)


def run_svi(
    model,
    guide,
    data: CountData,
    *,
    objective: str = "elbo",
    n_samples: int = 1,
    lr: float = 1e-2,
    max_epochs: int = 100,
    batch_size: int | None = None,
    optimizer: str = "adam",
    validation_loss: Callable[[], float] | None = None,
    patience: int | None = None,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
    device="cpu",
    verbose: bool = False,
    kl_warmup: int = 0,
    history: FitHistory | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> FitHistory:
    """Fit ``model``/``guide`` to ``data`` by SVI; return the :class:`FitHistory`.

    :param objective: ``"elbo"``, ``"elbo_mc"`` or ``"iwae"`` (see :mod:`pyrovae.objectives`).
    :param n_samples: particles per cell.
    :param batch_size: cells per step; ``None`` = all cells (full batch, no shuffling).
    :param validation_loss: computes the loss on held-out data (cells or entries the steps never
        see) after every epoch; recorded in ``history.val_loss``.
    :param patience: stop after this many epochs without a better validation loss and restore the
        best parameters (needs ``validation_loss``).
    :param kl_warmup: epochs of KL warm-up: in epoch ``e < kl_warmup`` the objective is the ELBO
        with the KL term scaled by ``(e + 1) / kl_warmup`` (:class:`objectives.kl_scale`; also
        for ``objective="iwae"``, which starts after the warm-up, so no scale ever enters the
        IWAE log-mean-exp). Warm-up epochs record that annealed loss and are not candidates
        for early stopping.
    :param history: a :class:`FitHistory` to append to (so a caller keeps it on an exception).
    :param callback: called as ``callback(epoch, loss)`` after each epoch.
    :raises FitDivergedError: the loss became NaN/inf.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; choose one of {sorted(OPTIMIZERS)}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    if not (isinstance(max_epochs, int) and max_epochs >= 1):
        raise ValueError(f"max_epochs must be a positive int, got {max_epochs!r}")
    if patience is not None and validation_loss is None:
        raise ValueError("patience needs a validation set")
    n = data.n_cells
    if batch_size is None or batch_size >= n:
        batch_size = n
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be None or a positive int, got {batch_size!r}")
    if not (isinstance(kl_warmup, int) and 0 <= kl_warmup):
        raise ValueError(f"kl_warmup must be a non-negative int, got {kl_warmup!r}")
    elbo = objectives.make_elbo(objective, n_samples)
    warm_elbo = objectives.make_elbo("elbo", n_samples) if kl_warmup else None
    params = list(model.parameters()) + list(guide.parameters())
    opt = OPTIMIZERS[optimizer](params, lr=lr)
    history = FitHistory() if history is None else history
    full = data.batch(None, dtype, device) if batch_size == n else None
    last_finite = _snapshot(params)  # parameters at which the last finite loss was computed
    best, best_val, since_best = None, math.inf, 0
    bar = tqdm(range(max_epochs), disable=not verbose, desc="fit", unit="epoch")
    for epoch in bar:
        if full is None:
            order = torch.randperm(n, generator=generator).numpy()
            batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
        else:
            batches = [None]
        warming = epoch < kl_warmup
        beta = (epoch + 1) / kl_warmup if warming else 1.0
        total = 0.0
        for b, idx in enumerate(batches):
            x, w, s = full if idx is None else data.batch(np.sort(idx), dtype, device)
            m = n if idx is None else len(idx)
            opt.zero_grad(set_to_none=True)
            with _unvalidated(), objectives.kl_scale(beta):
                value = objectives.loss_and_grads(
                    warm_elbo if warming else elbo, model, guide, params, x, w, s, scale=n / m
                )
            grads_ok = all(p.grad is None or torch.isfinite(p.grad).all() for p in params)
            if not (math.isfinite(value) and grads_ok):
                _restore(params, last_finite)
                what = f"loss {value}" if not math.isfinite(value) else "a gradient"
                raise FitDivergedError(
                    f"training diverged: {what} was not finite in epoch {epoch} (batch {b}); "
                    "the parameters at which the last finite loss was computed were restored. "
                    f"Try a smaller lr (now {lr}), a larger batch or more particles.",
                    epoch,
                )
            last_finite = _snapshot(params)
            opt.step()
            if not all(torch.isfinite(p).all() for p in params):
                _restore(params, last_finite)
                raise FitDivergedError(
                    f"training diverged: a parameter was not finite after the step in epoch "
                    f"{epoch} (batch {b}); the parameters before that step were restored. "
                    f"Try a smaller lr (now {lr}).",
                    epoch,
                )
            total += value * m / n
        history.loss.append(total)
        if callback is not None:
            callback(epoch, total)
        if validation_loss is not None:
            with _unvalidated():
                v = validation_loss()
            history.val_loss.append(v)
            if warming:
                continue
            if v < best_val:
                best, best_val, since_best, history.best_epoch = _snapshot(params), v, 0, epoch
            else:
                since_best += 1
            if patience is not None and since_best >= patience:
                history.stopped_early = True
                break
        if verbose:
            bar.set_postfix(loss=f"{total:.4g}", refresh=False)
    if patience is not None and best is not None:
        _restore(params, best)
    else:
        history.best_epoch = len(history.loss) - 1
    return history
