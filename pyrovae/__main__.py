"""``python -m pyrovae ...`` runs the command line (:mod:`pyrovae.cli`).

Launched by ``torchrun`` (``RANK``/``WORLD_SIZE`` set), e.g.
``torchrun --standalone --nproc-per-node=2 -m pyrovae fit data.h5ad ...``, it first initializes
the process group (gloo on CPU, NCCL on CUDA; :func:`pyrovae.distributed.init_from_env`) so the
fit runs data-parallel, and destroys it afterwards.
"""

from __future__ import annotations

import sys


def _run() -> int:
    from . import distributed
    from .cli import main

    created = distributed.init_from_env()
    try:
        return main()
    finally:
        if created:
            distributed.destroy()


if __name__ == "__main__":
    sys.exit(_run())
