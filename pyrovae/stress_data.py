r"""Synthetic count matrices shaped like real droplet (10x-style) scRNA-seq data, for stress tests.

:func:`droplet_like` draws cells from a few cell types with

.. math::

    x_{ij} \sim \operatorname{Poisson}(\ell_i\, p_{t(i) j}\, u_{ij}), \qquad
    u_{ij} \sim \operatorname{Gamma}(\theta, \theta),

where the gene profiles :math:`p_t` (summing to 1) are log-normal abundances shared by all types
times type-specific log-normal fold changes, 5% of the genes have abundance 0 (with the rarely
expressed ones, about 10–15% of the genes are all-zero), the libraries :math:`\ell_i` are log-normal over about two orders of magnitude (at least 30) and a few
cells (0.5%) are 20–50 times deeper than the median. The defaults give 1–2% non-zero entries at
15,000 genes, median library about 200 — the regime of issue 13 (4,186 × 13,488, 1.4% non-zero,
libraries 35 … 3,841, median 123) in which training used to diverge.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["droplet_like"]


def droplet_like(
    n_cells: int,
    n_genes: int,
    seed: int = 0,
    *,
    median_library: float = 200.0,
    library_sigma: float = 1.0,
    n_types: int = 6,
    zero_gene_fraction: float = 0.05,
    deep_fraction: float = 0.005,
    theta: float = 2.0,
) -> sp.csr_matrix:
    r"""A sparse ``(n_cells, n_genes)`` float32 CSR count matrix shaped like droplet data.

    :param int n_cells: cells.
    :param int n_genes: genes.
    :param int seed: seed of the numpy generator (the same seed gives the same matrix).
    :param float median_library: median of the log-normal library size :math:`\ell_i`.
    :param float library_sigma: standard deviation of :math:`\log \ell_i` (1.0: the central 95%
        span :math:`e^{\pm 1.96}`, a factor 50, about two orders of magnitude end to end).
    :param int n_types: cell types (distinct expression profiles).
    :param float zero_gene_fraction: fraction of genes with abundance 0 (never a count; more genes
        end up all-zero by chance).
    :param float deep_fraction: fraction of very deep cells (library times 20–50).
    :param float theta: Gamma shape of the per-entry noise :math:`u` (negative binomial).
    """
    if not (
        isinstance(n_cells, int) and n_cells >= 1 and isinstance(n_genes, int) and n_genes >= 1
    ):
        raise ValueError(f"n_cells and n_genes must be positive ints, got {n_cells!r}, {n_genes!r}")
    if not 0.0 <= zero_gene_fraction < 1.0:
        raise ValueError(f"zero_gene_fraction must be in [0, 1), got {zero_gene_fraction!r}")
    rng = np.random.default_rng(seed)
    base = rng.lognormal(0.0, 1.5, size=n_genes)
    base[rng.random(n_genes) < zero_gene_fraction] = 0.0
    profiles = base * rng.lognormal(0.0, 1.0, size=(n_types, n_genes))
    profiles /= profiles.sum(1, keepdims=True)
    # at least 30 molecules, as after the usual cell filtering (no cell without a count)
    library = rng.lognormal(np.log(median_library), library_sigma, size=n_cells).clip(30.0, None)
    deep = rng.random(n_cells) < deep_fraction
    library[deep] *= rng.uniform(20.0, 50.0, size=int(deep.sum()))
    types = rng.integers(0, n_types, size=n_cells)
    blocks = []
    for start in range(0, n_cells, 256):  # dense only 256 cells at a time
        sl = slice(start, min(start + 256, n_cells))
        mu = library[sl, None] * profiles[types[sl]]
        u = rng.gamma(theta, 1.0 / theta, size=mu.shape)
        blocks.append(sp.csr_matrix(rng.poisson(mu * u).astype(np.float32)))
    return sp.vstack(blocks, format="csr")
