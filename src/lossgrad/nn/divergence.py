"""Module wrappers of the divergence losses: ``kl_div``, ``kd_loss`` and ``js_div``."""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import (
    REDUCTIONS_WITH_BATCHMEAN,
    check_in_range,
    check_no_legacy_reduction,
    check_positive,
    check_reduction,
)
from .._losses.divergence import check_row_reduction, js_div, kd_loss, kl_div

__all__ = ["JSDivLoss", "KDLoss", "KLDivLoss"]


class KLDivLoss(torch.nn.Module):
    """Pointwise KL divergence; see :func:`lossgrad.kl_div`.

    Args:
        size_average, reduce: deprecated in PyTorch; must be ``None``.
        reduction: ``'none'``, ``'mean'``, ``'batchmean'`` or ``'sum'``.
            Default: ``'mean'``, as in PyTorch, which divides by every element
            and warns; ``'batchmean'`` gives the KL divergence per row.
        log_target: ``target`` contains log-probabilities. Default: ``False``.

    ``forward(input, target)`` takes log-probabilities ``input`` and a
    ``target`` of the same shape.

    Example::

        >>> criterion = lossgrad.nn.KLDivLoss(reduction="batchmean")
        >>> loss = criterion(torch.randn(4, 5).log_softmax(-1), torch.rand(4, 5).softmax(-1))
    """

    def __init__(
        self,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        log_target: bool = False,
    ) -> None:
        super().__init__()
        check_no_legacy_reduction(size_average, reduce)
        self.reduction = check_reduction(reduction, REDUCTIONS_WITH_BATCHMEAN)
        self.log_target = log_target

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return kl_div(input, target, reduction=self.reduction, log_target=self.log_target)


class KDLoss(torch.nn.Module):
    """Knowledge-distillation loss; see :func:`lossgrad.kd_loss`.

    Args:
        temperature: ``T > 0``. Default: ``4.0``.
        alpha: weight of the soft term in ``[0, 1]``, not used without a
            target. Default: ``0.9``.
        ignore_index: rows whose target equals it drop out. Default: ``-100``.
        reduction: ``'batchmean'``, ``'sum'`` or ``'none'``.
            Default: ``'batchmean'``.
        inplace_backward: write the gradient over the student logits in the
            forward pass, which destroys them; see :func:`lossgrad.kd_loss`.
            Default: ``False``.

    ``forward(student_logits, teacher_logits, target=None)`` takes the shapes
    of :func:`lossgrad.kd_loss`.

    Example::

        >>> criterion = lossgrad.nn.KDLoss(temperature=2.0, alpha=0.5)
        >>> loss = criterion(torch.randn(8, 10), torch.randn(8, 10), torch.randint(10, (8,)))
    """

    def __init__(
        self,
        temperature: float = 4.0,
        alpha: float = 0.9,
        ignore_index: int = -100,
        reduction: str = "batchmean",
        *,
        inplace_backward: bool = False,
    ) -> None:
        super().__init__()
        self.temperature = check_positive("temperature", temperature)
        self.alpha = check_in_range("alpha", alpha, 0.0, 1.0)
        self.ignore_index = ignore_index
        self.reduction = check_row_reduction("kd_loss", reduction)
        self.inplace_backward = inplace_backward

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor | None = None
    ) -> Tensor:
        return kd_loss(
            student_logits,
            teacher_logits,
            target,
            temperature=self.temperature,
            alpha=self.alpha,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            inplace_backward=self.inplace_backward,
        )


class JSDivLoss(torch.nn.Module):
    """Generalised Jensen-Shannon divergence; see :func:`lossgrad.js_div`.

    Args:
        beta: ``β`` in ``[0, 1]``, the teacher's weight in the mixture;
            0 gives the forward and 1 the reverse KL divergence. Default: ``0.5``.
        temperature: ``T > 0``. Default: ``1.0``.
        ignore_index: rows whose target equals it drop out. Default: ``-100``.
        reduction: ``'batchmean'``, ``'sum'`` or ``'none'``.
            Default: ``'batchmean'``.
        inplace_backward: write the gradient over the student logits in the
            forward pass, which destroys them; see :func:`lossgrad.js_div`.
            Default: ``False``.

    ``forward(student_logits, teacher_logits, target=None)`` takes the shapes
    of :func:`lossgrad.js_div`.

    Example::

        >>> criterion = lossgrad.nn.JSDivLoss(beta=0.1)
        >>> loss = criterion(torch.randn(8, 10), torch.randn(8, 10))
    """

    def __init__(
        self,
        beta: float = 0.5,
        temperature: float = 1.0,
        ignore_index: int = -100,
        reduction: str = "batchmean",
        *,
        inplace_backward: bool = False,
    ) -> None:
        super().__init__()
        self.beta = check_in_range("beta", beta, 0.0, 1.0)
        self.temperature = check_positive("temperature", temperature)
        self.ignore_index = ignore_index
        self.reduction = check_row_reduction("js_div", reduction)
        self.inplace_backward = inplace_backward

    def forward(
        self, student_logits: Tensor, teacher_logits: Tensor, target: Tensor | None = None
    ) -> Tensor:
        return js_div(
            student_logits,
            teacher_logits,
            target,
            beta=self.beta,
            temperature=self.temperature,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            inplace_backward=self.inplace_backward,
        )
