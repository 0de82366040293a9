"""Compatibility namespace for code written against the reference package (scmodes).

``import pyrovae as scmodes`` makes the reference note's calls run unchanged:
``scmodes.lra.vae.PVAE(...)``, ``scmodes.lra.nmf(x, rank=...)``,
``scmodes.lra.nbmf(x, w=w, rank=..., inv_disp=0.1, fix_inv_disp=False)``. New code should use
:mod:`pyrovae` and :mod:`pyrovae.baselines` directly.
"""

from ..baselines import nbmf, nmf
from . import vae

__all__ = ["nmf", "nbmf", "vae"]
