"""Shared test configuration.

The MNIST files for tests come from ``$NNSPEC_DATA`` (CI points it at
``../shared/data``); when unset we look beside the checkout the same way.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if "NNSPEC_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["NNSPEC_DATA"] = str(_SHARED)

SPECS = Path(__file__).resolve().parents[1] / "specs"

# Without a GPU the Triton kernels run through Triton's interpreter. It must be
# chosen before triton is first imported, so it is decided here, at collection.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"


#: Test files whose tests need the real MNIST files (they skip without them).
MNIST_TESTS = ("test_ablation_short.py", "test_datasets.py (real_mnist_files)", "test_train.py::test_short_mnist_run_learns")


def mnist_status() -> str | None:
    """Why the MNIST tests will skip, or None when the files are there."""
    from nnspec.data.idx import DATA_ENV, locate_idx_files

    if locate_idx_files("mnist") is not None:
        return None
    where = f"${DATA_ENV}={os.environ[DATA_ENV]}" if DATA_ENV in os.environ else f"${DATA_ENV} unset and {_SHARED} absent"
    return f"MNIST files not found ({where}): skipping the real-data tests in {', '.join(MNIST_TESTS)}"


def pytest_sessionstart(session) -> None:
    """One line at the start of the session when the data tests will skip, so a green run
    without the data is never mistaken for one that tested on it (shown with -q too)."""
    message = mnist_status()
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if message and reporter is not None:
        reporter.write_line(f"nnspec: {message}")


@pytest.fixture
def one_thread():
    """One intra-op thread for the duration of a test.

    Training tests compare runs bit for bit (in-process against subprocesses run
    with OMP_NUM_THREADS=1), which needs the same kernels; on a shared 2-core
    machine one thread is also faster and steadier for tiny models.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The GPU hosts have torch and triton but no pydantic (tools/gpu-check.sh carries it as wheels,
# but a bare `pytest -m cuda` must still work there).  A test module that cannot be imported
# only because pydantic is missing is reported as skipped, with that reason, rather than as a
# collection error that stops the whole run; any other import error still fails.
_NO_PYDANTIC = re.compile(r"No module named '(pydantic|pydantic_core)'")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    report = outcome.get_result()
    if report.failed and isinstance(collector, pytest.Module) and _NO_PYDANTIC.search(str(report.longrepr)):
        report.outcome = "skipped"
        report.longrepr = (str(collector.path), 0, "Skipped: needs pydantic (pip install pydantic), which is not installed")
