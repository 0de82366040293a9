"""The reference package's ``scmodes.lra.vae`` names: :class:`~pyrovae.PVAE`,
:class:`~pyrovae.NBVAE`, :class:`~pyrovae.ZINBVAE`."""

from ..reference import NBVAE, PVAE, ZINBVAE

__all__ = ["PVAE", "NBVAE", "ZINBVAE"]
