"""``nnspec bench``: kernel and model benchmarks with a report a kernel engineer can trust.

* :mod:`.options`  - the command line (argparse only; also ``python -m nnspec.runner.bench``)
* :mod:`.suite`    - one run: machine info, measured ceilings, the suites, the report
* :mod:`.machine`  - device / versions / clocks / git, and the measured ceilings
* :mod:`.timing`   - CUDA events with L2 flush, CUDA graphs, the CPU timer
* :mod:`.kernels`  - the kernel suite (needs torch only: no pydantic)
* :mod:`.models`   - the model suite (needs the full install: pydantic)
* :mod:`.report`   - report.json / report.md / PNG plots
* :mod:`.compare`  - ``bench compare A.json B.json``

Importing this package imports nothing heavy; see docs/bench.md.
"""

from __future__ import annotations

from nnspec.runner.bench.options import add_arguments, main, run
from nnspec.runner.bench.report import FORMAT_VERSION

__all__ = ["FORMAT_VERSION", "add_arguments", "main", "run"]
