"""``nnspec bench``: kernel and model benchmarks with a report a kernel engineer can trust.

* :mod:`.options`  - the command line (argparse only; also ``python -m nnspec.bench``)
* :mod:`.suite`    - one run: machine info, measured ceilings, the suites, the report
* :mod:`.machine`  - device / versions / clocks / git, and the measured ceilings
* :mod:`.timing`   - CUDA events with L2 flush, CUDA graphs, the CPU timer
* :mod:`.kernels`  - the kernel suite: checking and timing each row (needs torch only: no pydantic)
* :mod:`.kernel_cases` - what it measures: each op's inputs, costs and float64 reference; the shape suites
* :mod:`.models`   - the model suite (needs the full install: pydantic)
* :mod:`.report`   - report.json / report.md / PNG plots
* :mod:`.compare`  - ``bench compare A.json B.json``
* :mod:`.overhead` - the runner's overhead against a hand-written loop (``python -m nnspec.bench.overhead``)
* :mod:`.study`    - reproduction studies: the textbook ablation, the best specs (``python -m nnspec.bench.study``)

Importing this package imports nothing heavy; see docs/bench.md.
"""

from __future__ import annotations

from nnspec.bench.options import add_arguments, main, run
from nnspec.bench.report import FORMAT_VERSION

__all__ = ["FORMAT_VERSION", "add_arguments", "main", "run"]
