"""``python -m nnspec.runner.bench``: the 0.1 name of ``python -m nnspec.bench``."""

import sys

from nnspec.runner import moved

moved("nnspec.runner.bench", "nnspec.bench")

from nnspec.bench.options import main  # noqa: E402

sys.exit(main())
