"""Module wrappers of the regression losses.

The constructors take PyTorch 2.13's arguments. As in PyTorch, the modules do
not take the per-element ``weight`` of the functions; call the function for it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import (
    check_no_legacy_reduction,
    check_non_negative,
    check_positive,
    check_reduction,
)
from .._losses.regression import huber_loss, l1_loss, mse_loss, smooth_l1_loss

__all__ = ["HuberLoss", "L1Loss", "MSELoss", "SmoothL1Loss"]


class L1Loss(torch.nn.Module):
    """Mean absolute error; see :func:`lossgrad.l1_loss`.

    Args:
        size_average, reduce: PyTorch's deprecated arguments; must be ``None``.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``. Default: ``'mean'``.

    Example::

        >>> criterion = lossgrad.nn.L1Loss()
        >>> loss = criterion(torch.randn(3, 5, requires_grad=True), torch.randn(3, 5))
    """

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean") -> None:
        super().__init__()
        check_no_legacy_reduction(size_average, reduce)
        self.reduction = check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return l1_loss(input, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class MSELoss(torch.nn.Module):
    """Mean squared error; see :func:`lossgrad.mse_loss`.

    Args:
        size_average, reduce: PyTorch's deprecated arguments; must be ``None``.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``. Default: ``'mean'``.

    Example::

        >>> criterion = lossgrad.nn.MSELoss()
        >>> loss = criterion(torch.randn(3, 5, requires_grad=True), torch.randn(3, 5))
    """

    def __init__(self, size_average=None, reduce=None, reduction: str = "mean") -> None:
        super().__init__()
        check_no_legacy_reduction(size_average, reduce)
        self.reduction = check_reduction(reduction)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return mse_loss(input, target, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}"


class HuberLoss(torch.nn.Module):
    """Huber loss; see :func:`lossgrad.huber_loss`.

    Args:
        reduction: ``'none'``, ``'mean'`` or ``'sum'``. Default: ``'mean'``.
        delta: δ > 0, where the loss turns from quadratic to linear. Default: ``1.0``.

    Example::

        >>> criterion = lossgrad.nn.HuberLoss(delta=0.5)
        >>> loss = criterion(torch.randn(3, 5, requires_grad=True), torch.randn(3, 5))
    """

    def __init__(self, reduction: str = "mean", delta: float = 1.0) -> None:
        super().__init__()
        self.reduction = check_reduction(reduction)
        self.delta = check_positive("delta", delta)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return huber_loss(input, target, reduction=self.reduction, delta=self.delta)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, delta={self.delta}"


class SmoothL1Loss(torch.nn.Module):
    """Smooth L1 loss; see :func:`lossgrad.smooth_l1_loss`.

    Args:
        size_average, reduce: PyTorch's deprecated arguments; must be ``None``.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``. Default: ``'mean'``.
        beta: β ≥ 0, the width of the quadratic zone; ``0`` gives L1. Default: ``1.0``.

    Example::

        >>> criterion = lossgrad.nn.SmoothL1Loss(beta=0.5)
        >>> loss = criterion(torch.randn(3, 5, requires_grad=True), torch.randn(3, 5))
    """

    def __init__(
        self, size_average=None, reduce=None, reduction: str = "mean", beta: float = 1.0
    ) -> None:
        super().__init__()
        check_no_legacy_reduction(size_average, reduce)
        self.reduction = check_reduction(reduction)
        self.beta = check_non_negative("beta", beta)

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return smooth_l1_loss(input, target, reduction=self.reduction, beta=self.beta)

    def extra_repr(self) -> str:
        return f"reduction={self.reduction!r}, beta={self.beta}"
