"""The public losses on the Triton path agree with the PyTorch path.

``force_triton(True)`` routes CPU tensors through the Triton kernels under
``TRITON_INTERPRET=1``, which is how the dispatch that CUDA tensors take is
tested here: every loss that has a kernel is run both ways on the same inputs,
in float32 and bfloat16, and its value and input gradients are compared.
"""

from __future__ import annotations

import os
import pytest
import torch

from helpers import assert_close
from triton_cases import CASES

pytest.importorskip("triton", reason="Triton is not installed (optional extra)")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("TRITON_INTERPRET=1 must be set before Triton is imported", allow_module_level=True)

from lossgrad._kernels import triton_ops  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

def run_loss(name: str, dtype: torch.dtype, triton: bool):
    generator = torch.Generator().manual_seed(7)
    inputs, call = CASES[name](generator)
    inputs = [x.to(dtype).requires_grad_() for x in inputs]
    triton_ops.force_triton(triton)
    try:
        loss = call(*inputs)
        upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape).to(loss.dtype)
        grads = torch.autograd.grad(loss, inputs, upstream)
    finally:
        triton_ops.force_triton(False)
    return loss, grads


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_triton_path_matches_pytorch_path(name, dtype):
    triton_ops.launch_counts.clear()
    loss, grads = run_loss(name, dtype, triton=True)
    launched = sum(triton_ops.launch_counts.values())
    expected_loss, expected_grads = run_loss(name, dtype, triton=False)

    assert launched > 0, f"{name}: no Triton kernel ran on the forced Triton path"
    assert sum(triton_ops.launch_counts.values()) == launched, "the PyTorch path ran a kernel"
    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {}
    assert_close(loss, expected_loss, f"{name} value", **tolerance)
    for i, (got, expected) in enumerate(zip(grads, expected_grads)):
        assert_close(got, expected, f"{name} grad {i}", kind="grad", **tolerance)


def test_force_triton_requires_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_ops.force_triton(True)


def test_disable_switch(monkeypatch):
    triton_ops.force_triton(True)
    try:
        monkeypatch.setenv("LOSSGRAD_DISABLE_TRITON", "1")
        assert not triton_ops.use_triton(torch.zeros(1))
    finally:
        triton_ops.force_triton(False)
