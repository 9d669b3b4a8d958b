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

# Without a GPU the Triton kernels run through Triton's interpreter. It must be
# chosen before triton is first imported, so it is decided here, at collection.
if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
