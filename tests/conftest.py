"""Shared test configuration.

The MNIST files for tests come from ``$NNSPEC_DATA`` (CI points it at
``../shared/data``); when unset we look beside the checkout the same way.
"""

from __future__ import annotations

import os
from pathlib import Path

_SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
if "NNSPEC_DATA" not in os.environ and _SHARED.is_dir():
    os.environ["NNSPEC_DATA"] = str(_SHARED)

SPECS = Path(__file__).resolve().parents[1] / "specs"
