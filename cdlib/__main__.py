"""``python -m cdlib`` (and ``torchrun -m cdlib``): the same as the ``cdlib`` command."""

import sys

from .cli import main

# The guard matters: DataLoader workers started with "spawn" (macOS, Windows) import the
# main module again, as __mp_main__, and must not rerun the whole command.
if __name__ == "__main__":
    sys.exit(main())
