"""The install a new user follows: the README asks for torch's CPU build explicitly, CI installs from what its
own machine reaches, and Triton is an extra that the CPU path never needs.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the checks are the same on any version

REPO = Path(__file__).resolve().parents[1]
CPU_INDEX = "--index-url https://download.pytorch.org/whl/cpu"


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _first_bash_block(text: str) -> str:
    return re.search(r"```bash\n(.*?)```", text, re.S).group(1)


def test_triton_is_an_extra_included_by_test_not_a_dependency():
    project = _pyproject()["project"]
    assert not any(dep.startswith("triton") for dep in project["dependencies"]), project["dependencies"]
    extras = project["optional-dependencies"]
    assert any(dep.startswith("triton") for dep in extras["triton"])
    assert "nnspec[triton]" in extras["test"]


def test_the_readme_installs_the_cpu_build_of_torch_explicitly():
    block = _first_bash_block((REPO / "README.md").read_text())
    torch_line = next(line for line in block.splitlines() if "install torch" in line)
    assert CPU_INDEX in torch_line and "torch==" in torch_line
    assert block.index(torch_line) < block.index('pip install -e ".[test]"')  # torch first: pip keeps that build
    assert 'python -m pytest -m "not slow"' in block


def test_ci_installs_torch_from_what_its_machine_reaches():
    ci = (REPO / ".ci" / "run").read_text()
    installs = [line for line in ci.splitlines() if "pip install" in line and "torch==" in line]
    assert installs and all("--index-url" not in line for line in installs)  # its pip has a local CPU wheel
    assert '-e ".[test]"' in ci


def test_the_slow_marker_is_declared_and_used():
    markers = _pyproject()["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("slow:") for m in markers)
    uses = [p.name for p in (REPO / "tests").glob("test_*.py") if "pytest.mark.slow" in p.read_text()]
    assert "test_docs_examples.py" in uses and len(uses) >= 3, uses
