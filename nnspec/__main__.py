"""``python -m nnspec`` (and ``torchrun -m nnspec train …``) runs the CLI."""

import sys

from nnspec.cli import main

sys.exit(main())
