"""Test setup for nnspec.kernels.

Without a GPU the Triton kernels run on CPU tensors through Triton's interpreter, which has
to be chosen before triton (and nnspec's Triton modules) are first imported - i.e. here, at
collection time.  With a GPU nothing is set: the CPU/interpreter variants skip themselves and
the ``@pytest.mark.cuda`` tests run the compiled kernels.
"""
from __future__ import annotations

import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Shared helpers live next to this file; make them importable whatever pytest's import mode.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
