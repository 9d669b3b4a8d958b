"""Without pydantic (as on the GPU hosts), test modules that need it are skipped, not errors."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_RUN_PYTEST_WITHOUT_PYDANTIC = textwrap.dedent(
    """
    import sys
    import pytest

    class NoPydantic:  # as if it were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("pydantic", "pydantic_core"):
                raise ModuleNotFoundError(f"No module named {name!r}", name=name)
            return None

    sys.meta_path.insert(0, NoPydantic())
    sys.exit(pytest.main(sys.argv[1:]))
    """
)


def _pytest_without_pydantic(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "no_pydantic.py"
    script.write_text(_RUN_PYTEST_WITHOUT_PYDANTIC)
    return subprocess.run([sys.executable, str(script), "-p", "no:cacheprovider", "-q", "-rs", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip


def test_modules_needing_pydantic_skip_cleanly(tmp_path):
    # test_compiler.py holds the CUDA model test; test_layout.py needs no pydantic and runs.
    proc = _pytest_without_pydantic(tmp_path, "-m", "cuda", "tests/test_compiler.py", "tests/test_layout.py")
    assert proc.returncode in (0, 5), proc.stdout + proc.stderr  # 5: every test deselected by -m cuda
    assert "needs pydantic" in proc.stdout and "test_compiler.py" in proc.stdout, proc.stdout
    assert "error" not in proc.stdout.lower(), proc.stdout


def test_other_import_errors_still_fail(tmp_path):
    (tmp_path / "conftest.py").write_text((REPO / "tests" / "conftest.py").read_text())
    (tmp_path / "test_needs_pydantic.py").write_text("import pydantic\n\ndef test_x():\n    pass\n")
    (tmp_path / "test_broken.py").write_text("import a_module_that_is_nowhere\n\ndef test_y():\n    pass\n")
    script = tmp_path / "no_pydantic.py"
    script.write_text(_RUN_PYTEST_WITHOUT_PYDANTIC)
    proc = subprocess.run([sys.executable, str(script), "-p", "no:cacheprovider", "-q", "-rs", "--rootdir",
                           str(tmp_path), "-c", str(tmp_path / "conftest.py"), str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2, proc.stdout + proc.stderr  # the unrelated import error stops the run
    assert "1 skipped" in proc.stdout and "needs pydantic" in proc.stdout, proc.stdout
    assert "ERROR" in proc.stdout and "test_broken.py" in proc.stdout and "a_module_that_is_nowhere" in proc.stdout
