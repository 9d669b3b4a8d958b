"""The bench without the nnspec CLI, for hosts where only the kernel suite can run.

    PYTHONPATH=. python -m nnspec.runner.bench kernels         # needs no pydantic, provided
                                                               # nnspec/runner/__init__.py is lazy
    python nnspec/runner/bench/__main__.py kernels             # needs no pydantic, always

``python -m`` imports the parent packages (``nnspec``, ``nnspec.runner``) before this file
runs, so it is pydantic-free only while their ``__init__`` modules import nothing that needs
pydantic.  Run as a file, this script puts the checkout on ``sys.path`` and, when importing
``nnspec.runner`` fails for want of a dependency, registers the ``nnspec.runner`` folder as a
bare package (its ``__init__`` - the trainer - unexecuted): the bench's kernel suite uses
nothing from it.
"""

import sys

if __package__ in (None, ""):  # run as a file, not with -m
    import importlib
    import types
    from pathlib import Path

    _root = Path(__file__).resolve().parents[3]
    if sys.path and Path(sys.path[0]).resolve() == Path(__file__).resolve().parent:
        sys.path[0] = str(_root)  # not this folder: its kernels.py / report.py must not shadow anything
    else:
        sys.path.insert(0, str(_root))
    try:
        importlib.import_module("nnspec.runner")
    except ImportError as _exc:
        _pkg = types.ModuleType("nnspec.runner", f"nnspec.runner, __init__ skipped ({_exc})")
        _pkg.__path__ = [str(_root / "nnspec" / "runner")]  # type: ignore[attr-defined]
        sys.modules["nnspec.runner"] = _pkg

from nnspec.runner.bench.options import main  # noqa: E402

sys.exit(main())
