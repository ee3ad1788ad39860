"""``python -m densenets`` (also what ``torchrun -m densenets train ...`` runs)."""

import sys

from .cli import main

sys.exit(main())
