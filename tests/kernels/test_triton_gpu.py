"""The Triton path on a real CUDA device, against the PyTorch path on the CPU.

These tests run only where CUDA and Triton are present (the GPU benchmark
script runs them first); elsewhere they skip with the reason.
"""

from __future__ import annotations

import pytest
import torch

from helpers import assert_close
from triton_cases import CASES

pytest.importorskip("triton", reason="Triton is not installed (optional extra)")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device", allow_module_level=True)

from lossgrad._kernels import triton_ops  # noqa: E402


def run_loss(name: str, dtype: torch.dtype, device: str):
    generator = torch.Generator().manual_seed(11)
    inputs, call = CASES[name](generator)
    inputs = [x.to(device=device, dtype=dtype).requires_grad_() for x in inputs]
    with torch.device(device):
        loss = call(*inputs)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), device=device).reshape(loss.shape)
    grads = torch.autograd.grad(loss, inputs, upstream.to(loss.dtype))
    return loss.cpu(), [g.cpu() for g in grads]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(CASES))
def test_cuda_matches_cpu(name, dtype):
    triton_ops.launch_counts.clear()
    loss, grads = run_loss(name, dtype, "cuda")
    assert sum(triton_ops.launch_counts.values()) > 0, f"{name}: no Triton kernel ran on CUDA"
    expected_loss, expected_grads = run_loss(name, dtype, "cpu")

    tolerance = {"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16 else {"rtol": 1e-5, "atol": 1e-6}
    assert_close(loss, expected_loss, f"{name} value", **tolerance)
    for i, (got, expected) in enumerate(zip(grads, expected_grads)):
        assert_close(got, expected, f"{name} grad {i}", kind="grad", **tolerance)
