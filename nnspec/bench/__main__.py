"""The bench without the nnspec CLI, for hosts where only the kernel suite can run.

    PYTHONPATH=. python -m nnspec.bench kernels       # needs no pydantic
    python nnspec/bench/__main__.py kernels           # the same, as a script

``python -m`` imports the parent packages (``nnspec``, ``nnspec.bench``) before this file
runs; both import nothing that needs pydantic (``nnspec`` exports its API lazily), which
tests/test_bench.py checks with pydantic made unimportable.  Run as a file, this script puts
the checkout on ``sys.path`` first.
"""

import sys

if __package__ in (None, ""):  # run as a file, not with -m
    from pathlib import Path

    _root = Path(__file__).resolve().parents[2]
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path[0] = str(_root)  # not this folder: its kernels.py / report.py must not shadow anything
    else:
        sys.path.insert(0, str(_root))

from nnspec.bench.options import main  # noqa: E402

sys.exit(main())
