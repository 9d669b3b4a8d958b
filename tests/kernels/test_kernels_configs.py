"""Which autotune configs the Linear+LeakyReLU pruner keeps, per operand class (fast, no compiling).

Whether the kept ones spill is test_kernels_spills.py's job; this checks the selection itself
on the launches nnspec's wrappers really make (recorded, not run).
"""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from nnspec.bench import precompile as P  # noqa: E402


def _kept(job: P.Job) -> dict[str, set]:
    lin = P._linear_module()
    return {la.kernel: {lin._tile(c) for c in la.configs} for la in P.record_launches(job)}


def test_unaligned_mnist_layer_keeps_no_large_tiles():
    lin = P._linear_module()
    kept = _kept(P.Job(128, 784, 200, "bfloat16"))  # N = 200 is not a multiple of 16
    assert kept["fwd"] == set(lin.KEPT[("16-bit", False)]["fwd"])
    assert kept["dx"] == kept["dw"] == set(lin.KEPT[("16-bit", False)]["bwd"])
    assert all(bm * bn <= 128 * 64 for bm, bn, *_ in kept["fwd"] | kept["dx"] | kept["dw"])


def test_aligned_large_layer_keeps_the_large_tiles_that_fit():
    kept = _kept(P.Job(4096, 4096, 4096, "bfloat16"))
    assert (256, 128, 64, 8, 3) in kept["fwd"] and (128, 128, 64, 8, 3) in kept["dx"]
    # 256 x 128 x 64 in 3 stages needs more than sm_90's 227 KiB for dx's operand tiles
    assert (256, 128, 64, 8, 3) not in kept["dx"]


def test_ieee_float32_backward_keeps_only_small_tiles():
    kept = _kept(P.Job(4096, 4096, 4096, "float32", "ieee"))
    assert kept["dx"] == kept["dw"] == {(64, 64, 32, 8, 4), (32, 64, 32, 4, 5)}
    assert (128, 128, 32, 8, 4) in kept["fwd"]


def test_operand_class_reads_alignment_like_triton():
    lin = P._linear_module()
    x = torch.empty(64, 32, dtype=torch.bfloat16)
    w = torch.empty(48, 32, dtype=torch.bfloat16)
    assert lin.operand_class({"x_ptr": x, "w_ptr": w, "M": 64, "N": 48, "K": 32, "s": 1}, "ieee") == ("16-bit", True)
    assert lin.operand_class({"x_ptr": x, "w_ptr": w, "M": 64, "N": 200, "K": 32}, "ieee") == ("16-bit", False)
    shifted = torch.empty(65 * 32, dtype=torch.bfloat16)[1:].view(-1)  # 2 bytes off 16-byte alignment
    assert lin.operand_class({"x_ptr": shifted, "w_ptr": w, "M": 64}, "ieee")[1] is False
    f32 = w.float()
    assert lin.operand_class({"x_ptr": f32, "w_ptr": f32}, "tf32") == ("tf32", True)
    assert lin.operand_class({"x_ptr": f32, "w_ptr": f32}, "ieee") == ("ieee", True)


def test_every_class_keeps_a_config_for_every_kernel():
    lin = P._linear_module()
    for key, lists in lin.KEPT.items():
        assert lists["fwd"] and lists["bwd"], key
    union = {lin._tile(c) for c in lin._configs()}
    assert union == {t for lists in lin.KEPT.values() for tiles in lists.values() for t in tiles}


def test_ptxas_log_is_read():
    log = ("ptxas info    : Compiling entry function 'k' for 'sm_90a'\n"
           "ptxas info    : Function properties for k\n"
           "    152 bytes stack frame, 36 bytes spill stores, 24 bytes spill loads\n"
           "ptxas info    : Used 255 registers, used 1 barriers, 8 bytes smem, 400 bytes cmem[0]\n")  # fmt: skip
    assert P.ptxas_stats(log) == {"regs": 255, "spill_stores": 36, "spill_loads": 24, "shared": 8}
