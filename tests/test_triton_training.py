"""A compiled spec trained through the Triton kernels follows the PyTorch fallback's loss curve.

On a CPU-only machine the kernels run under Triton's interpreter (tests/conftest.py
sets TRITON_INTERPRET=1 before triton is imported), so this checks the whole
path — fusion pass, fused Linear+LeakyReLU, BatchNorm with running statistics,
fused softmax cross-entropy, and every backward — on every machine, CI included.
"""

from __future__ import annotations

import os

import pytest
import torch

import nnspec
from nnspec.compiler.modules import TritonBatchNorm1d

pytestmark = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available(),
    reason="needs a GPU or Triton's interpreter",
)

SPEC = """
nnspec: 1
name: triton-vs-torch
input: [20]
model:
  - linear: 24
  - leaky_relu: 0.1
  - batch_norm
  - linear: 16
  - relu
  - linear: 5
loss: {cross_entropy: {label_smoothing: 0.1}}
"""


def _train(kernels: str, state: dict, x: torch.Tensor, y: torch.Tensor, steps: int) -> tuple[list[float], torch.nn.Module]:
    spec = nnspec.loads_spec(SPEC)
    model = nnspec.build(spec, kernels=kernels)
    model.load_state_dict(state)
    loss_fn = nnspec.build_loss(spec, kernels=kernels)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(steps):  # one fixed batch: the loss must fall, so the curves are worth comparing
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, model


def test_triton_kernels_follow_the_torch_loss_curve() -> None:
    torch.manual_seed(0)
    reference = nnspec.build(nnspec.loads_spec(SPEC), kernels="torch")
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    x = torch.randn(32, 20)
    y = torch.randint(0, 5, (32,))

    torch_losses, torch_model = _train("torch", state, x, y, steps=6)
    triton_losses, triton_model = _train("triton", state, x, y, steps=6)

    # The triton build really runs the kernels: fused steps and the Triton BatchNorm module.
    assert any(step.fused_with for step in triton_model.program)
    assert isinstance(triton_model.batch_norm_2, TritonBatchNorm1d)
    assert nnspec.build_loss(nnspec.loads_spec(SPEC), kernels="triton").kernel != "torch"

    assert torch_losses[-1] < 0.8 * torch_losses[0]
    torch.testing.assert_close(torch.tensor(triton_losses), torch.tensor(torch_losses), rtol=1e-4, atol=1e-5)
    triton_state, torch_state = triton_model.state_dict(), torch_model.state_dict()
    assert triton_state.keys() == torch_state.keys()  # fusion never changes state_dict keys
    for key in torch_state:
        torch.testing.assert_close(triton_state[key].float(), torch_state[key].float(), rtol=1e-4, atol=1e-5, msg=key)


def test_triton_eval_uses_running_statistics() -> None:
    torch.manual_seed(1)
    spec = nnspec.loads_spec(SPEC)
    torch_model = nnspec.build(spec, kernels="torch")
    triton_model = nnspec.build(spec, kernels="triton")
    triton_model.load_state_dict(torch_model.state_dict())
    x = torch.randn(32, 20)
    for model in (torch_model, triton_model):
        model.train()
        model(x)  # one training pass updates the running statistics
        model.eval()
    torch.testing.assert_close(triton_model.batch_norm_2.running_mean, torch_model.batch_norm_2.running_mean)
    torch.testing.assert_close(triton_model.batch_norm_2.running_var, torch_model.batch_norm_2.running_var)
    assert int(triton_model.batch_norm_2.num_batches_tracked) == 1
    single = torch.randn(1, 20)  # a batch of one only works with running statistics
    torch.testing.assert_close(triton_model(single), torch_model(single), rtol=1e-4, atol=1e-5)
