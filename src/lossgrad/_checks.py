"""Input validation shared by every loss.

Each check raises ``ValueError`` for a bad value or shape and ``TypeError`` for a
bad type, with a message that names the argument, the expected value and the
actual one. Checks that read tensor values (class indices in range, labels in
{0, 1}) run eagerly only on CPU tensors, or anywhere when the caller passes
``validate=True``: on CUDA they would force a host synchronisation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "REDUCTIONS",
    "REDUCTIONS_WITH_BATCHMEAN",
    "check_choice",
    "check_class_indices",
    "check_class_weight",
    "check_dim_size",
    "check_finite_number",
    "check_float_tensor",
    "check_in_range",
    "check_ndim",
    "check_labels",
    "check_no_legacy_reduction",
    "check_non_negative",
    "check_positive",
    "check_positive_int",
    "check_positive_scalar",
    "check_reduction",
    "check_same_dtype",
    "check_same_shape",
    "check_shape",
    "check_tensor",
    "check_values_in_range",
    "should_validate_values",
    "to_input_dtype",
]

REDUCTIONS = ("none", "mean", "sum")
REDUCTIONS_WITH_BATCHMEAN = ("none", "mean", "sum", "batchmean")


def check_tensor(name: str, value: object) -> Tensor:
    """Raise TypeError unless ``value`` is a tensor; return it."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def check_float_tensor(name: str, value: object) -> Tensor:
    """Raise TypeError unless ``value`` is a floating-point tensor; return it."""
    tensor = check_tensor(name, value)
    if not tensor.is_floating_point():
        raise TypeError(
            f"{name}: expected a floating-point tensor, got dtype {tensor.dtype}"
        )
    return tensor


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Raise ValueError unless ``value`` is one of ``choices``; return it."""
    if not isinstance(value, str) or value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{name}: expected one of {allowed}, got {value!r}")
    return value


def check_reduction(reduction: object, choices: Sequence[str] = REDUCTIONS) -> str:
    """Raise ValueError unless ``reduction`` is a known reduction mode."""
    return check_choice("reduction", reduction, choices)


def check_no_legacy_reduction(size_average: object, reduce: object) -> None:
    """Reject PyTorch's deprecated ``size_average`` and ``reduce`` arguments.

    PyTorch still accepts them and maps them onto ``reduction``; lossgrad does
    not, because the mapping silently overrides an explicit ``reduction``.
    """
    for name, value in (("size_average", size_average), ("reduce", reduce)):
        if value is not None:
            raise ValueError(
                f"{name}: deprecated in PyTorch and not supported by lossgrad; "
                f"expected None, got {value!r}. Use reduction='none', 'mean' or 'sum'"
            )


def check_finite_number(name: str, value: object) -> float:
    """Raise unless ``value`` is a finite real number; return it as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, Tensor) and value.numel() == 1:
            raise TypeError(
                f"{name}: expected a Python number, got a tensor; pass float(tensor)"
            )
        raise TypeError(f"{name}: expected a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    return float(value)


def check_positive(name: str, value: object) -> float:
    """Raise ValueError unless ``value`` is a finite number > 0."""
    number = check_finite_number(name, value)
    if number <= 0:
        raise ValueError(f"{name}: expected a value > 0, got {number}")
    return number


def check_non_negative(name: str, value: object) -> float:
    """Raise ValueError unless ``value`` is a finite number >= 0."""
    number = check_finite_number(name, value)
    if number < 0:
        raise ValueError(f"{name}: expected a value >= 0, got {number}")
    return number


def check_in_range(name: str, value: object, low: float, high: float) -> float:
    """Raise ValueError unless ``low <= value <= high``."""
    number = check_finite_number(name, value)
    if not low <= number <= high:
        raise ValueError(f"{name}: expected a value in [{low}, {high}], got {number}")
    return number


def check_same_shape(
    input: Tensor, target: Tensor, names: tuple[str, str] = ("input", "target")
) -> None:
    """Raise ValueError unless two tensors have exactly the same shape.

    Elementwise losses never broadcast: an ``(N, 1)`` prediction against an
    ``(N,)`` target would silently compare every pair.
    """
    if input.shape != target.shape:
        raise ValueError(
            f"{names[1]}: expected the same shape as {names[0]} "
            f"{tuple(input.shape)}, got {tuple(target.shape)}"
        )


def to_input_dtype(name: str, target: Tensor, input: Tensor) -> Tensor:
    """Cast an integer or boolean target to the input's floating dtype.

    Regression and binary losses accept integer targets as a convenience;
    a floating target of another dtype is cast too, so that the arithmetic
    happens in one dtype.
    """
    check_tensor(name, target)
    if target.is_complex():
        raise TypeError(f"{name}: expected a real tensor, got dtype {target.dtype}")
    if target.dtype != input.dtype:
        target = target.to(input.dtype)
    return target


def should_validate_values(tensor: Tensor, validate: bool | None) -> bool:
    """Decide whether a check that reads tensor values may run.

    ``validate=None`` (the default) checks on CPU and skips on other devices,
    where reading values would synchronise with the host; ``True`` and
    ``False`` force the choice.
    """
    if validate is None:
        if torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
            # Under vmap, torch.func.grad or torch.compile the values are not
            # available to Python; the checks ran on the eager call, if any.
            return False
        return tensor.device.type == "cpu"
    return bool(validate)


def check_class_indices(
    target: Tensor,
    num_classes: int,
    ignore_index: int | None,
    *,
    validate: bool | None = None,
    name: str = "target",
) -> None:
    """Raise unless ``target`` holds integer class indices in ``[0, C)``.

    Entries equal to ``ignore_index`` are allowed. The range check reads the
    values and so follows :func:`should_validate_values`.
    """
    check_tensor(name, target)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"{name}: expected integer class indices (torch.long), got dtype "
            f"{target.dtype}; pass probabilities with the input's shape instead"
        )
    if target.numel() == 0 or not should_validate_values(target, validate):
        return
    counted = target if ignore_index is None else target[target != ignore_index]
    if counted.numel() == 0:
        return
    low, high = int(counted.min()), int(counted.max())
    if low < 0 or high >= num_classes:
        bad = low if low < 0 else high
        raise ValueError(
            f"{name}: expected class indices in [0, {num_classes - 1}] or "
            f"ignore_index={ignore_index}, got {bad}"
        )


def check_labels(
    name: str,
    target: Tensor,
    allowed: tuple[float, ...],
    *,
    validate: bool | None = None,
) -> None:
    """Raise ValueError unless every entry of ``target`` is one of ``allowed``."""
    if target.numel() == 0 or not should_validate_values(target, validate):
        return
    ok = torch.zeros_like(target, dtype=torch.bool)
    for label in allowed:
        ok |= target == label
    if not bool(ok.all()):
        bad = target[~ok].flatten()[0].item()
        labels = ", ".join(f"{v:g}" for v in allowed)
        raise ValueError(f"{name}: expected labels in {{{labels}}}, got {bad:g}")


def check_class_weight(
    weight: Tensor | None, num_classes: int, *, name: str = "weight"
) -> Tensor | None:
    """Raise unless ``weight`` is None or a non-negative float vector of length C."""
    if weight is None:
        return None
    check_float_tensor(name, weight)
    if weight.dim() != 1 or weight.shape[0] != num_classes:
        raise ValueError(
            f"{name}: expected a 1-D tensor of {num_classes} class weights, "
            f"got shape {tuple(weight.shape)}"
        )
    if should_validate_values(weight, None) and bool((weight < 0).any()):
        bad = weight[weight < 0][0].item()
        raise ValueError(f"{name}: expected non-negative class weights, got {bad}")
    return weight


def check_positive_int(name: str, value: object) -> int:
    """Raise unless ``value`` is a Python integer > 0; return it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected a positive integer, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name}: expected an integer > 0, got {value}")
    return value


def check_dim_size(name: str, tensor: Tensor, dim: int, size: int, meaning: str) -> None:
    """Raise ValueError unless ``tensor.shape[dim] == size``.

    ``meaning`` names where the expected size comes from, such as
    ``"H, the last dimension of input"``.
    """
    if tensor.shape[dim] != size:
        raise ValueError(
            f"{name}: expected size {size} ({meaning}) in dimension {dim}, "
            f"got shape {tuple(tensor.shape)}"
        )


def check_positive_scalar(name: str, value: object) -> float | Tensor:
    """Raise unless ``value`` is a number > 0 or a one-element tensor > 0.

    A tensor is accepted so that a count computed on the device (such as a
    token count) needs no host synchronisation; its value is checked only
    where :func:`should_validate_values` allows it.
    """
    if not isinstance(value, Tensor):
        return check_positive(name, value)
    if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
        raise TypeError(
            f"{name}: expected a number or a one-element real tensor, got a "
            f"{value.dtype} tensor of shape {tuple(value.shape)}"
        )
    if should_validate_values(value, None) and not bool(value.reshape(()) > 0):
        raise ValueError(f"{name}: expected a value > 0, got {value.reshape(()).item()}")
    return value


def check_ndim(name: str, tensor: Tensor, allowed: tuple[int, ...], meaning: str) -> None:
    """Raise ValueError unless ``tensor.dim()`` is one of ``allowed``.

    ``meaning`` names the accepted layouts, such as ``"(N, D) or (D,)"``.
    """
    if tensor.dim() not in allowed:
        raise ValueError(
            f"{name}: expected shape {meaning}, got {tuple(tensor.shape)} "
            f"({tensor.dim()} dimensions)"
        )


def check_shape(name: str, tensor: Tensor, shape: tuple[int, ...], meaning: str) -> None:
    """Raise ValueError unless ``tensor`` has exactly ``shape``.

    ``meaning`` says where the expected shape comes from, such as
    ``"one entry per row of input1"``.
    """
    if tuple(tensor.shape) != tuple(shape):
        raise ValueError(
            f"{name}: expected shape {tuple(shape)} ({meaning}), got {tuple(tensor.shape)}"
        )


def check_same_dtype(
    first: Tensor, second: Tensor, names: tuple[str, str] = ("input", "target")
) -> None:
    """Raise TypeError unless two tensors have the same dtype."""
    if first.dtype != second.dtype:
        raise TypeError(
            f"{names[1]}: expected the dtype of {names[0]} ({first.dtype}), "
            f"got {second.dtype}"
        )


def check_values_in_range(
    name: str,
    tensor: Tensor,
    low: float,
    high: float,
    *,
    validate: bool | None = None,
) -> None:
    """Raise ValueError unless every entry of ``tensor`` is in ``[low, high]``.

    The check reads the values and so follows :func:`should_validate_values`.
    """
    if tensor.numel() == 0 or not should_validate_values(tensor, validate):
        return
    outside = (tensor < low) | (tensor > high) | tensor.isnan()
    if bool(outside.any()):
        bad = tensor[outside].flatten()[0].item()
        raise ValueError(f"{name}: expected values in [{low:g}, {high:g}], got {bad:g}")
