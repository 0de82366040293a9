r"""Validation splits for early stopping, and the losses that score them.

Two kinds of held-out data, chosen by ``validation_by``:

* ``"cells"`` — a fraction of the cells is set aside; the validation loss is the negative
  training objective (ELBO or IWAE bound) of those cells.
* ``"entries"`` — a fraction of the *observed* entries of every cell is hidden from training
  (masked in the likelihood, never seen by the encoder or the size factors); the validation loss
  is their negative posterior-predictive log density
  :func:`pyrovae.posterior.heldout_entries_loss`, with fixed particles so that the curve over
  epochs has no Monte Carlo jitter.

Held-out cells or entries never take part in a gradient step or in any choice other than the
early-stopping epoch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from . import objectives, posterior
from ._chunking import auto_chunk, row_chunks
from ._context import pyro_context
from .data import CountData

__all__ = [
    "ValidationSplit",
    "split_validation",
    "validation_loss",
    "validation_interval",
    "VALIDATION_KINDS",
    "VALIDATION_BUDGET",
]

VALIDATION_KINDS = ("cells", "entries")

#: Particles of the entry-level validation score (fixed draws, seed below).
ENTRY_PARTICLES = 10
ENTRY_SEED = 12345

#: Share of the training epochs' cost that the validation passes may add (see
#: :func:`validation_interval`).
VALIDATION_BUDGET = 0.2


@dataclass
class ValidationSplit:
    """Which data were held out.

    :ivar by: ``"cells"`` or ``"entries"``.
    :ivar cells: sorted indices of the held-out cells (``"cells"``).
    :ivar train_cells: sorted indices of the training cells (``"cells"``).
    :ivar heldout: boolean ``(cells, genes)`` mask of the held-out entries (``"entries"``).
    """

    by: str
    cells: np.ndarray | None = None
    train_cells: np.ndarray | None = None
    heldout: np.ndarray | None = None


def split_validation(
    data, fraction: float, by: str, generator: torch.Generator
) -> tuple[np.ndarray | None, ValidationSplit]:
    """Draw the split of ``data`` (``n_cells``, ``n_genes``, and a mask ``w`` for entries);
    return the training mask (``"entries"``; ``None`` otherwise) and the split.

    :raises ValueError: an unknown ``by``, or a split that leaves a cell or gene without
        training data.
    """
    if by not in VALIDATION_KINDS:
        raise ValueError(f"validation_by must be 'cells' or 'entries', got {by!r}")
    n_cells, shape = data.n_cells, (data.n_cells, data.n_genes)
    if by == "cells":
        n_val = max(1, int(round(fraction * n_cells)))
        if n_val >= n_cells:
            raise ValueError("validation_fraction leaves no training cells")
        perm = torch.randperm(n_cells, generator=generator).numpy()
        split = ValidationSplit(by, cells=np.sort(perm[:n_val]), train_cells=np.sort(perm[n_val:]))
        return None, split
    observed = np.ones(shape, bool) if data.w is None else data.w
    u = torch.rand(shape, generator=generator, dtype=torch.float64).numpy()
    heldout = observed & (u < fraction)
    train = observed & ~heldout
    if not (train.any(axis=1).all() and train.any(axis=0).all()):
        raise ValueError(
            "validation_fraction hides every observed entry of some cell or gene; "
            "use a smaller fraction"
        )
    return train, ValidationSplit(by, heldout=heldout)


def validation_interval(split: ValidationSplit, n_train_cells: int, n_samples: int) -> int:
    r"""Epochs between validation passes so that they add at most :data:`VALIDATION_BUDGET` of
    the training cost, estimated from tensor sizes: an epoch evaluates and differentiates
    ``n_samples`` particles of every training cell (forward and backward: about 3 forward
    passes), a pass over held-out cells evaluates their ``n_samples`` particles once, a pass
    over held-out entries evaluates :data:`ENTRY_PARTICLES` particles of every cell.

    .. math::

        k = \left\lceil \frac{\text{validation cost}}{0.2 \times 3\, n_\text{train} S}
        \right\rceil

    (1 for a 10% cell split; 17 for entries with one training particle, 2 with ten).
    """
    train = 3 * n_train_cells * n_samples
    if split.by == "cells":
        cost = len(split.cells) * n_samples
    else:
        cost = split.heldout.shape[0] * ENTRY_PARTICLES
    return max(1, math.ceil(cost / (VALIDATION_BUDGET * train)))


def _batches(data: CountData, n_samples: int, dtype, device, heldout=None, width: int = 1):
    """Dense chunks of ``data`` (kept in memory when all of it fits one chunk's budget). With
    ``heldout`` each chunk is ``(x, w_train, s, w_heldout)``: ``x`` keeps the held-out values
    (they are scored), ``w_train`` hides them from the encoder."""
    size = auto_chunk(data.n_genes, n_samples, width=width)

    def chunks():
        for rows in row_chunks(data.n_cells, size):
            idx = np.arange(rows.start, rows.stop)
            x, w, s = data.batch(idx, dtype, device)
            if heldout is None:
                yield x, w, s
                continue
            held = torch.as_tensor(heldout[idx], device=device)
            yield x, (~held if w is None else w & ~held), s, held

    if data.n_cells <= size:
        cached = list(chunks())
        return lambda: iter(cached)
    return chunks


def validation_loss(
    split: ValidationSplit,
    held: CountData,
    *,
    objective: str,
    n_samples: int,
    latent_dim: int,
    dtype=torch.float32,
    device="cpu",
    rows: slice | None = None,
    width: int = 1,
):
    """A function ``loss(model, guide) -> float`` scoring the held-out data of ``split``.

    :param rows: score only these rows of ``held`` (a data-parallel rank's share; the fit loop
        sums the ranks' losses).
    :param width: the prior's :attr:`~pyrovae.priors.UPrior.evaluation_width` (chunks of
        held-out cells are divided by it).

    :param held: for ``"cells"`` the held-out cells (with their size factors); for
        ``"entries"`` all cells with their observed-entry mask and the size factors of the
        training entries.
    """
    heldout = split.heldout
    if rows is not None:
        held = held.subset(np.arange(held.n_cells)[rows])
        heldout = None if heldout is None else heldout[rows]
    if split.by == "cells":
        elbo = objectives.make_elbo(objective, n_samples)
        chunks = _batches(held, n_samples, dtype, device, width=width)

        def cells_loss(model, guide) -> float:
            return sum(objectives.loss(elbo, model, guide, *b) for b in chunks())

        return cells_loss
    eps = posterior.standard_normal_draws(ENTRY_PARTICLES, latent_dim, ENTRY_SEED, dtype, device)
    chunks = _batches(held, ENTRY_PARTICLES, dtype, device, heldout=heldout, width=width)

    def entries_loss(model, guide) -> float:
        with torch.no_grad(), pyro_context():
            return sum(
                float(posterior.heldout_entries_loss(model, guide, x, w, h, s, eps))
                for x, w, s, h in chunks()
            )

    return entries_loss
