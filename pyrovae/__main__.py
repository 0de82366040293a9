"""``python -m pyrovae`` and ``torchrun -m pyrovae``: the command line of :mod:`pyrovae.cli`."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
