"""The deferred Triton of nnspec.kernels._triton: op modules import without triton, and
activation turns their kernels into real Triton objects."""
from __future__ import annotations

import pytest
import torch

import nnspec.kernels as K
from nnspec_kernel_helpers import INTERPRETER, run_python

OPS = ("batch_norm_op", "cross_entropy_op", "linear_leaky_relu_op")


def test_op_modules_import_without_triton():
    code = """
        import importlib, sys
        import pytest
        from nnspec.kernels import _triton
        mods = [importlib.import_module(f"nnspec.kernels.{n}") for n in %r]
        assert "triton" not in sys.modules
        LIN = mods[2]
        for obj in (LIN._fwd_kernel, LIN._fwd_tuned, LIN.join_f64, mods[0]._apply_kernel, mods[1]._ce_fwd_kernel):
            assert isinstance(obj, _triton.Deferred), obj
        assert all(isinstance(c, _triton.Deferred) for c in LIN._fwd_tuned.kwargs["configs"])
        with pytest.raises(RuntimeError, match="activate"):
            LIN._fwd_kernel[(1,)]
        with pytest.raises(RuntimeError, match="activate"):
            LIN.tl.float32
        assert not hasattr(LIN._fwd_kernel, "__wrapped__")  # probes get AttributeError
        assert "triton" not in sys.modules
        print("ok")
    """ % (OPS,)
    out = run_python(code)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_activation_builds_real_kernels_once():
    pytest.importorskip("triton")
    # Interpreter off, as on a GPU machine: activation needs no GPU, only launching does.
    code = """
        import torch, triton
        from triton.runtime.autotuner import Autotuner
        from triton.runtime.jit import JITFunction
        from nnspec.kernels import _dispatch, _triton
        from nnspec.kernels.linear_leaky_relu_op import _fwd_kernel as early  # still deferred
        BN, CE, LIN = (_dispatch.load(n, torch.device("cuda")) for n in %r)
        assert _triton.INTERPRET is False and LIN.INTERPRET is False
        assert LIN.triton is triton and LIN.tl is triton.language and _triton.tl is triton.language
        for k in (LIN._fwd_kernel, LIN._bwd_dx_kernel, LIN._swizzle, LIN._mma, CE._ce_bwd_kernel,
                  BN._stats_finalize_kernel, BN._load_tile, _triton.join_f64):
            assert isinstance(k, JITFunction), k
        for tuned, raw in ((LIN._fwd_tuned, LIN._fwd_kernel), (LIN._dw_tuned, LIN._bwd_dw_kernel)):
            assert isinstance(tuned, Autotuner) and tuned.fn is raw
            assert len(tuned.configs) == len(LIN._configs()) and all(isinstance(c, triton.Config) for c in tuned.configs)
        # one helper kernel, one JITFunction, whichever module imported it
        assert LIN.join_f64 is CE.join_f64 is BN.join_f64 is _triton.join_f64
        # a reference taken before activation forwards to the real kernel
        assert isinstance(early, _triton.Deferred) and early.built is LIN._fwd_kernel
        assert early.arg_names == LIN._fwd_kernel.arg_names
        assert _dispatch.load("batch_norm_op", torch.device("cuda")) is BN  # activated once
        print("ok")
    """ % (OPS,)
    out = run_python(code, TRITON_INTERPRET=None)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.skipif(not INTERPRETER, reason="checks the interpreter build")
def test_activation_under_the_interpreter():
    pytest.importorskip("triton")
    from triton.runtime.interpreter import InterpretedFunction

    from nnspec.kernels import _dispatch, _triton

    K.softmax_cross_entropy(torch.randn(3, 5), torch.tensor([0, 1, 4]), backend="triton")
    CE = _dispatch.load("cross_entropy_op", torch.device("cpu"))
    assert _triton.INTERPRET and CE.INTERPRET
    assert isinstance(CE._ce_fwd_kernel, InterpretedFunction)
    assert isinstance(_triton.join_f64, InterpretedFunction) and CE.join_f64 is _triton.join_f64


def test_interpreter_refuses_triton_before_3_7_with_numpy_2_4():
    from nnspec.kernels._triton import interpreter_numpy_problem

    problem = interpreter_numpy_problem("3.6.0", "2.4.1")
    assert problem and "numpy<2.4" in problem and "triton>=3.7" in problem
    assert interpreter_numpy_problem("3.6.0", "2.5.2")
    assert interpreter_numpy_problem("3.2.0+git4a1b2c", "2.4.0rc1")
    for ok in (("3.6.0", "2.3.5"), ("3.7.0", "2.4.1"), ("3.9.0", "2.5.2"), ("3.6.0", None)):
        assert interpreter_numpy_problem(*ok) is None, ok


def test_interpreter_activation_says_which_versions_clash():
    # The check runs where the interpreter is switched on, before any kernel is interpreted.
    code = """
        import numpy, triton
        triton.__version__, numpy.__version__ = "3.6.0", "2.4.2"
        import torch
        import nnspec.kernels as K
        try:
            K.linear_leaky_relu(torch.ones(2, 3), torch.ones(4, 3), backend="triton")
        except RuntimeError as e:
            print("REFUSED", e)
    """
    proc = run_python(code, TRITON_INTERPRET="1")
    assert "REFUSED Triton 3.6.0's interpreter (TRITON_INTERPRET=1) fails with NumPy 2.4.2" in proc.stdout, \
        proc.stdout + proc.stderr
