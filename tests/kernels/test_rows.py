"""Tests of the CPU row kernel's options: threads and huge-page buffers."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from helpers import assert_close

from lossgrad._kernels.cross_entropy_rule import cross_entropy_rule
from lossgrad._kernels.rows import empty_like_huge_pages, fused_rows


def _case(dtype=torch.float32):
    generator = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(37, 50, generator=generator)).to(dtype)
    target = torch.randint(0, 50, (37,), generator=generator)
    target[5] = -100
    logits[9] = -float("inf")  # a chunk that takes the masking rule
    return logits, target


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Set PyTorch's intra-op thread count for a block, whatever the machine has."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inplace", [False, True])
def test_fused_rows_threads_match_one_thread(dtype, inplace):
    logits, target = _case(dtype)
    results = []
    for parallel in (False, True):
        rule = cross_entropy_rule(target, grad_scale=torch.tensor(0.5), fused=True)
        source = logits.clone()
        with intra_op_threads(3):
            loss, grad = fused_rows(
                source, rule, inplace=inplace, chunk_bytes=4 * 50 * 2, parallel=parallel
            )
        assert (grad is source) == inplace
        results.append((loss, grad))
    (loss_one, grad_one), (loss_threads, grad_threads) = results
    assert torch.equal(loss_one, loss_threads)
    assert torch.equal(grad_one, grad_threads)


def test_fused_rows_threads_restore_setting():
    logits, target = _case()
    rule = cross_entropy_rule(target, fused=True)
    with intra_op_threads(2):
        fused_rows(logits, rule, chunk_bytes=4 * 50 * 2, parallel=True)
        assert torch.get_num_threads() == 2


def test_fused_rows_threads_keep_grad_mode_off():
    """Worker threads run the rule with the caller's grad mode, so out= ops work."""
    logits, target = _case()
    logits.requires_grad_(True)
    rule = cross_entropy_rule(target, fused=True)
    with torch.no_grad(), intra_op_threads(2):
        loss, grad = fused_rows(logits, rule, chunk_bytes=4 * 50 * 2, parallel=True)
    assert not grad.requires_grad
    assert torch.isfinite(loss[torch.arange(37) != 9]).all()


def test_fused_rows_grad_scale_scales_gradient_only():
    logits, target = _case(torch.float64)
    for fused in (False, True):
        plain_loss, plain_grad = fused_rows(logits, cross_entropy_rule(target, fused=fused))
        scale = torch.tensor(0.25, dtype=torch.float64)
        rule = cross_entropy_rule(target, grad_scale=scale, fused=fused)
        loss, grad = fused_rows(logits, rule)
        assert_close(loss, plain_loss, f"loss (fused={fused})")
        assert_close(grad, 0.25 * plain_grad, f"grad (fused={fused})")


def test_empty_like_huge_pages_is_a_usable_buffer():
    small = torch.zeros(3, 4)
    buffer = empty_like_huge_pages(small)
    assert buffer.shape == small.shape
    assert buffer.dtype == small.dtype
    large = torch.empty(64 * 1024 * 1024 // 4 + 3, dtype=torch.float32)
    buffer = empty_like_huge_pages(large)
    buffer.fill_(2.0)
    assert buffer.shape == large.shape
    assert (buffer == 2.0).all()
