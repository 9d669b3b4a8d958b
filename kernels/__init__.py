"""Triton kernels for nnspec's hot path (imported as ``nnspec.kernels``).

Public API (semantics of torch.nn.functional; PyTorch is the oracle):

* :func:`linear_leaky_relu`     - fused Linear + LeakyReLU
* :func:`softmax_cross_entropy` - fused softmax cross-entropy (+ optional accuracy count)
* :func:`batch_norm`            - batch normalisation with in-kernel statistics
* :func:`triton_available`      - whether the Triton backend can run in this process

Importing this package imports torch only; triton is imported the first time a Triton
kernel actually runs.  The ops are registered as ``torch.ops.nnspec.*`` custom ops.
"""
from ._dispatch import triton_available

# The op modules first (they import without triton, see _triton), so that the public
# functions bound next, not the submodules of the same name, are the package attributes.
from . import batch_norm as _batch_norm_module  # noqa: F401  (isort: skip)
from . import cross_entropy as _cross_entropy_module  # noqa: F401
from . import linear_leaky_relu as _linear_leaky_relu_module  # noqa: F401
from .functional import batch_norm, linear_leaky_relu, softmax_cross_entropy  # noqa: E402

__all__ = ["batch_norm", "linear_leaky_relu", "softmax_cross_entropy", "triton_available"]
