"""Old module paths of nnspec 0.1, kept working for one release (removed in 0.3).

The 0.1 layout kept training, data and measurement under ``nnspec.runner``; they now live in
:mod:`nnspec.train`, :mod:`nnspec.data` and :mod:`nnspec.bench`. Only the entry points that
the documentation told users to run are kept, each printing where it moved:
``python -m nnspec.runner.bench``, ``python -m nnspec.runner.study`` and
``python -m nnspec.runner.overhead``. Nothing in nnspec imports this package.
"""

import sys


def moved(old: str, new: str) -> None:
    """Say once, on stderr, that ``python -m old`` is now ``python -m new``."""
    print(f"nnspec: {old} is now {new}; the old name goes in nnspec 0.3", file=sys.stderr)
