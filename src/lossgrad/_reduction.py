"""Reductions shared by every loss, forward and backward.

A loss computes its per-element (or per-row) loss in float32, then calls
:func:`reduce_loss`; its backward calls :func:`grad_scale` to turn the incoming
``grad_output`` into the factor that multiplies the per-element gradient.
Both take the same ``denominator``, so the value and the gradient can never
disagree about what ``mean`` divides by.

What each mode divides by is decided by the loss and passed in:

- ``none``: nothing; the per-element losses are returned.
- ``sum``: nothing; the sum is returned.
- ``mean``: the number of counted elements, or the sum of the counted weights
  when the loss is weighted (as PyTorch does for class weights).
- ``batchmean``: the number of counted rows.

"Nothing counts" rule: when the denominator is 0 (an empty batch, every
target ignored, a zero total weight) the numerator is 0 as well, and the result
is 0 with a zero gradient that stays connected to the graph, never ``0/0``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "accumulate_dtype",
    "grad_scale",
    "reduce_loss",
    "safe_denominator",
]


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return the dtype in which to compute and accumulate: at least float32."""
    if dtype in (torch.float16, torch.bfloat16):
        return torch.float32
    return dtype


def safe_denominator(denominator: Tensor | float) -> Tensor | float:
    """Replace a zero denominator by 1, without reading the value on the host."""
    if isinstance(denominator, Tensor):
        return torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    return denominator if denominator > 0 else 1.0


def reduce_loss(
    loss: Tensor,
    reduction: str,
    denominator: Tensor | float | None = None,
    *,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Reduce per-element losses and cast the result to ``dtype``.

    ``loss`` is expected in the accumulation dtype (float32 or float64); the sum
    is taken there and only the final value is cast, so a float16 mean whose sum
    exceeds float16's range still comes out finite. ``denominator`` is required
    for ``mean`` and ``batchmean``.
    """
    dtype = loss.dtype if dtype is None else dtype
    if reduction == "none":
        return loss.to(dtype)
    total = loss.sum()
    if reduction == "sum":
        return total.to(dtype)
    if denominator is None:
        raise ValueError(f"reduction={reduction!r} needs a denominator")
    return (total / safe_denominator(denominator)).to(dtype)


def grad_scale(
    grad_output: Tensor,
    reduction: str,
    denominator: Tensor | float | None = None,
    *,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Turn ``grad_output`` into the factor for the per-element gradient.

    For ``none`` the result has the shape of the unreduced loss (one upstream
    gradient per element, honoured exactly); otherwise it is a scalar:
    ``grad_output`` for ``sum`` and ``grad_output / denominator`` for ``mean``
    and ``batchmean``.
    """
    scale = grad_output.to(dtype)
    if reduction in ("none", "sum"):
        return scale
    if denominator is None:
        raise ValueError(f"reduction={reduction!r} needs a denominator")
    return scale / safe_denominator(denominator)
