"""Triton kernels for nnspec's hot path (imported as ``nnspec.kernels``).

Public API (semantics of torch.nn.functional; PyTorch is the oracle):

* :func:`linear_leaky_relu`     - fused Linear + LeakyReLU
* :func:`softmax_cross_entropy` - fused softmax cross-entropy (+ optional accuracy count)
* :func:`batch_norm`            - batch normalisation with in-kernel statistics
* :func:`triton_available`      - whether the Triton backend can run in this process

Files - one module per op, read top to bottom: why it is shaped this way (docstring), the
Triton kernels, the launch wrappers, the ``nnspec::*`` custom ops with fake kernels and
autograd formula, the public function, the PyTorch reference (the ``backend="torch"`` path):

* ``linear_leaky_relu_op.py`` - fused Linear + LeakyReLU
* ``cross_entropy_op.py``     - softmax cross-entropy
* ``batch_norm_op.py``        - batch normalisation
* ``_triton.py``   - the deferred ``triton`` / ``tl`` the op modules write their kernels
  with, and the helpers they share (fp32-pair scalars, accumulation dtypes)
* ``_dispatch.py`` - backend resolution, activation of an op's kernels on first Triton use

Each public function lives in its op module rather than in a shared ``functional.py``: its
argument checks are the contract the kernels rely on (shapes, dtypes, which gradients
exist), so they belong beside the kernels and the autograd formula.  What the three share -
the routing - is in ``_dispatch``: backend "auto" means Triton for CUDA tensors and PyTorch
otherwise ("triton" / "torch" force one); eager calls that resolve to PyTorch call
torch.nn.functional directly (no custom op, no dispatcher detour, no triton import);
everything else (Triton, or any tracing: torch.compile, torch.export, make_fx, fake
tensors) goes through the custom ops, so graphs hold one opaque node per op.

Importing this package imports torch only, and so does the whole CPU path: the op modules
register their custom ops at import but hold their kernels as deferred stand-ins, which
``_dispatch.load`` turns into real Triton kernels - importing triton - on the first Triton
launch (see ``_triton``).  The package is a leaf: it imports torch and triton, nothing of
nnspec.

The op modules end in ``_op`` so that no module shares its name with a public function:
``nnspec.kernels.batch_norm`` is the function, ``nnspec.kernels.batch_norm_op`` its module
(a submodule of the same name would replace the function on the package as soon as
anything imported it).
"""
from ._dispatch import triton_available

# Importing each op module registers its custom ops.
from .batch_norm_op import batch_norm  # noqa: E402
from .cross_entropy_op import softmax_cross_entropy  # noqa: E402
from .linear_leaky_relu_op import linear_leaky_relu  # noqa: E402

__all__ = ["batch_norm", "linear_leaky_relu", "softmax_cross_entropy", "triton_available"]
