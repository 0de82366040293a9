r"""The size-factor policy: how :math:`s_i` in :math:`r_{ij} = s_i \mu(z_i)_j` is obtained.

A policy is fitted once, on the training data, and then applied to any data passed to the fitted
model:

* ``None`` — :math:`s_i = 1`;
* ``"library"`` — :math:`s_i = \sum_{j: w_{ij} = 1} x_{ij} / \operatorname{median}_{\text{train}}`:
  the total of the cell's *observed* entries over the median total of the training cells. Entries
  with :math:`w_{ij} = 0` never enter :math:`s_i`, so a held-out entry cannot leak into its own
  prediction through the size factor;
* an array — factors the caller supplies; the fitted model then needs them for every call.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SizeFactorPolicy", "checked_size_factor"]


def checked_size_factor(size_factor, n_cells: int) -> np.ndarray:
    """``size_factor`` as a float64 array of shape ``(n_cells,)``, positive and finite."""
    s = np.asarray(
        size_factor.detach().cpu() if torch.is_tensor(size_factor) else size_factor,
        dtype=np.float64,
    )
    if s.shape != (n_cells,):
        raise ValueError(f"size_factor must have shape ({n_cells},), got {s.shape}")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise ValueError("size_factor must be positive and finite")
    return s


def _library(data) -> np.ndarray:
    total = data.library_size()
    if np.any(total <= 0):
        bad = np.flatnonzero(total <= 0)
        raise ValueError(
            f"size_factor='library' needs counts in every cell; cell(s) {bad[:10].tolist()} "
            "have no observed counts"
        )
    return total


@dataclass(frozen=True)
class SizeFactorPolicy:
    """A fitted size-factor policy.

    :ivar mode: ``None``, ``"library"`` or ``"given"``.
    :ivar library_median: median observed total of the training cells (``"library"`` only).
    """

    mode: str | None = None
    library_median: float | None = None

    @classmethod
    def fit(cls, size_factor, data) -> SizeFactorPolicy:
        """The policy for the ``size_factor`` argument of ``fit`` on the training data (anything
        with ``n_cells`` and ``library_size()``: the totals of its observed entries)."""
        if size_factor is None:
            return cls(None)
        if isinstance(size_factor, str):
            if size_factor != "library":
                raise ValueError(
                    f"size_factor must be None, 'library' or an array, got {size_factor!r}"
                )
            return cls("library", float(np.median(_library(data))))
        checked_size_factor(size_factor, data.n_cells)
        return cls("given")

    def __call__(self, data, size_factor=None) -> np.ndarray | None:
        """Size factors of the cells of ``data`` (from their observed entries), or ``None``.

        :param size_factor: factors for these cells (required when the policy is ``"given"``;
            with the other policies it overrides them), or ``"library"``.
        """
        if size_factor is not None and not isinstance(size_factor, str):
            return checked_size_factor(size_factor, data.n_cells)
        if size_factor is not None and size_factor != "library":
            raise ValueError(
                f"size_factor must be None, 'library' or an array, got {size_factor!r}"
            )
        mode = "library" if size_factor == "library" else self.mode
        if mode == "given":
            raise ValueError("this model was fitted with size factors: pass size_factor")
        if mode is None:
            return None
        if self.library_median is None:
            raise ValueError("size_factor='library' needs a model fitted with library size factors")
        return _library(data) / self.library_median
