"""Modules of the classification losses: they store the options and call the functions."""

from __future__ import annotations

from torch import Tensor, nn

from .._checks import (
    check_float_tensor,
    check_in_range,
    check_no_legacy_reduction,
    check_reduction,
)
from .._losses.classification import (
    binary_cross_entropy,
    binary_cross_entropy_with_logits,
    cross_entropy,
)

__all__ = ["BCELoss", "BCEWithLogitsLoss", "CrossEntropyLoss"]


class CrossEntropyLoss(nn.Module):
    """Softmax cross-entropy; see :func:`lossgrad.cross_entropy`.

    ``weight`` is registered as a buffer, so it follows ``.to(device)`` and is
    saved in the ``state_dict``.
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        ignore_index: int = -100,
        reduce=None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        _check_options(size_average, reduce, reduction, weight=weight)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(
                f"ignore_index: expected an int, got {type(ignore_index).__name__}"
            )
        check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
        self.register_buffer("weight", weight)
        self.size_average = size_average
        self.reduce = reduce
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            size_average=self.size_average,
            ignore_index=self.ignore_index,
            reduce=self.reduce,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
        )


class BCEWithLogitsLoss(nn.Module):
    """Binary cross-entropy on logits; see :func:`lossgrad.binary_cross_entropy_with_logits`.

    ``weight`` and ``pos_weight`` are registered as buffers.
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        reduce=None,
        reduction: str = "mean",
        pos_weight: Tensor | None = None,
    ) -> None:
        super().__init__()
        _check_options(size_average, reduce, reduction, weight=weight, pos_weight=pos_weight)
        self.register_buffer("weight", weight)
        self.register_buffer("pos_weight", pos_weight)
        self.size_average = size_average
        self.reduce = reduce
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy_with_logits(
            input,
            target,
            weight=self.weight,
            size_average=self.size_average,
            reduce=self.reduce,
            reduction=self.reduction,
            pos_weight=self.pos_weight,
        )


class BCELoss(nn.Module):
    """Binary cross-entropy on probabilities; see :func:`lossgrad.binary_cross_entropy`.

    ``weight`` is registered as a buffer.
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average=None,
        reduce=None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        _check_options(size_average, reduce, reduction, weight=weight)
        self.register_buffer("weight", weight)
        self.size_average = size_average
        self.reduce = reduce
        self.reduction = reduction

    def forward(self, input: Tensor, target: Tensor) -> Tensor:
        return binary_cross_entropy(
            input,
            target,
            weight=self.weight,
            size_average=self.size_average,
            reduce=self.reduce,
            reduction=self.reduction,
        )


def _check_options(size_average, reduce, reduction: object, **tensors: Tensor | None) -> None:
    """Check a module's options when it is built, not first at its first call.

    Shapes that depend on the input (the number of classes) are checked by
    the function at each call.
    """
    check_no_legacy_reduction(size_average, reduce)
    check_reduction(reduction)
    for name, tensor in tensors.items():
        if tensor is not None:
            check_float_tensor(name, tensor)
