"""The row kernel shared by the softmax family, CPU version.

Cross-entropy, distillation, JSD, the linear + loss heads and InfoNCE all work
on a matrix of logits one row at a time: a log-sum-exp over the row, a loss for
the row and a gradient over the row. :func:`fused_rows` walks the rows in
chunks small enough to stay in cache, hands each chunk to a loss-specific
``rule`` in at least float32, and writes the gradient that the rule leaves behind into
one output buffer, so the loss and its gradient come out of a single pass.

A rule has the signature ``rule(rows, x, out) -> loss``:

- ``rows`` is the ``slice`` of rows in this chunk, for indexing per-row data
  such as targets;
- ``x`` is the chunk of logits in the compute dtype (``chunk x V``): float32
  for float16, bfloat16 and float32 input, float64 for float64. It may be the
  same memory as ``out``, so a rule must read what it needs from ``x`` before
  it writes ``out``;
- ``out`` is a ``chunk x V`` buffer in the compute dtype that must hold the
  gradient of each row's loss with respect to that row's logits when the rule
  returns;
- the return value is the loss of each row in the chunk, in the compute dtype.

The gradient left in ``out`` is for the unreduced per-row loss; the caller
scales it by the reduction and ``grad_output`` in backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from .._reduction import accumulate_dtype

__all__ = ["CHUNK_BYTES", "RowRule", "fused_rows", "row_chunks", "softmax_"]

# About half of a typical per-core L2 cache: the float32 chunk and its
# gradient then stay in cache between the passes of a rule.
CHUNK_BYTES = 512 * 1024

RowRule = Callable[[slice, Tensor, Tensor], Tensor]


def row_chunks(n_rows: int, n_cols: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[slice]:
    """Yield slices of rows whose float32 data is about ``chunk_bytes``."""
    step = max(1, chunk_bytes // max(1, 4 * n_cols))
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def softmax_(x: Tensor, out: Tensor) -> Tensor:
    """Write the softmax of each row of ``x`` into ``out`` and return its log-sum-exp.

    ``out`` may be ``x`` itself. Entries equal to ``-inf`` get probability 0.
    A row whose entries are all ``-inf`` gets an all-zero row (not NaN) and a
    log-sum-exp of ``-inf``. Subtracting the row maximum ``m`` first keeps
    ``exp`` in range for logits of any magnitude: lse = m + log Σ exp(x - m).
    """
    m = x.amax(dim=-1, keepdim=True)  # chunk x 1
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    torch.sub(x, m, out=out)
    out.exp_()
    total = out.sum(dim=-1, keepdim=True)
    out.div_(torch.where(total > 0, total, torch.ones_like(total)))
    return (m + total.log()).squeeze(-1)


def fused_rows(
    logits: Tensor,
    rule: RowRule,
    *,
    inplace: bool = False,
    chunk_bytes: int = CHUNK_BYTES,
) -> tuple[Tensor, Tensor]:
    """Apply ``rule`` to ``logits`` chunk by chunk; return (loss per row, gradient).

    Args:
        logits: ``N x V`` floating tensor. Its rows need not be contiguous
            with each other, but each row must be.
        rule: computes one chunk's loss and gradient (see the module docs).
        inplace: write the gradient over ``logits`` instead of a new buffer.
        chunk_bytes: target size of one float32 chunk.

    Returns:
        ``loss`` of shape ``N`` in the compute dtype and ``grad`` with the shape and dtype
        of ``logits`` (the ``logits`` tensor itself when ``inplace``).
    """
    N, V = logits.shape
    compute_dtype = accumulate_dtype(logits.dtype)
    grad = logits if inplace else torch.empty_like(logits)
    # Per-chunk losses are concatenated rather than written into a buffer
    # made here, which vmap could not write batched values into.
    losses = []
    direct = logits.dtype == compute_dtype
    for rows in row_chunks(N, V, chunk_bytes):
        if direct:
            x = logits[rows]  # chunk x V, a view
            out = grad[rows]
        else:
            x = logits[rows].to(compute_dtype)  # chunk x V, a float32 copy
            out = x
        losses.append(rule(rows, x, out))
        if not direct:
            grad[rows].copy_(out)
    if not losses:
        return logits.new_zeros(0, dtype=compute_dtype), grad
    return torch.cat(losses), grad
