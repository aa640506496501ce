"""Regression losses: L1, squared error, Huber and smooth L1.

Each loss is a pointwise penalty ρ of the residual r = x − y, optionally times a
per-element weight. One Function serves the family: ``forward`` computes r once
in the accumulation dtype and saves it, and ``backward`` multiplies the penalty's
derivative ρ'(r) by the upstream gradient.
"""

from __future__ import annotations

import enum

import torch
from torch import Tensor

from .._autograd import refuse_double_backward
from .._checks import (
    check_float_tensor,
    check_no_legacy_reduction,
    check_non_negative,
    check_positive,
    check_reduction,
    check_same_shape,
    should_validate_values,
    to_input_dtype,
)
from .._formula import Formula, documented
from .._reduction import accumulate_dtype, grad_scale, reduce_loss

__all__ = ["huber_loss", "l1_loss", "mse_loss", "smooth_l1_loss"]


class Penalty(enum.Enum):
    """A pointwise penalty ρ(r) of the residual, with its derivative ρ'(r).

    ``threshold`` is Huber's δ or smooth L1's β, and is unused by the others.
    """

    L1 = "l1_loss"
    SQUARED = "mse_loss"
    HUBER = "huber_loss"
    SMOOTH_L1 = "smooth_l1_loss"

    def evaluate(self, r: Tensor, threshold: float) -> Tensor:
        """Return ρ(r) elementwise."""
        if self is Penalty.L1 or (self is Penalty.SMOOTH_L1 and threshold == 0):
            return r.abs()
        if self is Penalty.SQUARED:
            return r.square()
        a = r.abs()
        if self is Penalty.HUBER:
            # With q = min(|r|, δ): q(|r| − q/2) is r²/2 inside and δ(|r| − δ/2) outside.
            q = a.clamp(max=threshold)
            return q * (a - 0.5 * q)
        return torch.where(a < threshold, 0.5 * a * a / threshold, a - 0.5 * threshold)

    def derivative(self, r: Tensor, threshold: float) -> Tensor:
        """Return ρ'(r) elementwise, with the subgradient 0 at the kink of |r|."""
        if self is Penalty.L1 or (self is Penalty.SMOOTH_L1 and threshold == 0):
            # sign(0) = 0. Smooth L1 with β = 0 is exactly L1 and never divides by β.
            return r.sign()
        if self is Penalty.SQUARED:
            return 2 * r
        if self is Penalty.HUBER:
            # r inside |r| ≤ δ, δ·sign(r) outside: r clipped to [−δ, δ].
            return r.clamp(-threshold, threshold)
        # r/β inside |r| < β, sign(r) outside. A β below the dtype's smallest
        # subnormal compares as 0, so every element takes sign(r), as in evaluate.
        return torch.where(r.abs() < threshold, r / threshold, r.sign())


class RegressionFunction(torch.autograd.Function):
    """A pointwise penalty of ``input − target``, optionally weighted, reduced.

    ``weight_sum_mean`` selects what a weighted ``mean`` divides by: the sum of
    the weights (``l1_loss``, ``mse_loss``) or the number of elements
    (``huber_loss``), as PyTorch 2.13 does for each.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        target: Tensor,
        weight: Tensor | None,
        penalty: Penalty,
        threshold: float,
        reduction: str,
        weight_sum_mean: bool,
    ) -> tuple[Tensor, Tensor]:
        dtype = accumulate_dtype(input.dtype)
        r = input.to(dtype) - target.to(dtype)
        loss = penalty.evaluate(r, threshold)
        if weight is not None:
            loss = loss * weight.to(dtype)
        denominator = _denominator(r, weight, reduction, weight_sum_mean)
        return reduce_loss(loss, reduction, denominator, dtype=input.dtype), r

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        input, target, weight, penalty, threshold, reduction, weight_sum_mean = inputs
        value, r = output
        ctx.mark_non_differentiable(r)
        ctx.save_for_backward(r, weight, value)
        ctx.options = (penalty, threshold, reduction, weight_sum_mean)
        ctx.dtypes = (input.dtype, target.dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor, _grad_r: Tensor):
        refuse_double_backward(ctx.options[0].value)
        r, weight, value = ctx.saved_tensors
        penalty, threshold, reduction, weight_sum_mean = ctx.options
        input_dtype, target_dtype = ctx.dtypes
        denominator = _denominator(r, weight, reduction, weight_sum_mean)
        scale = grad_scale(grad_output, reduction, denominator, dtype=r.dtype)

        # With L = Σᵢ wᵢ ρ(rᵢ) / D and rᵢ = xᵢ − yᵢ:
        #   ∂L/∂xᵢ = wᵢ ρ'(rᵢ) / D
        #   ∂L/∂yᵢ = −∂L/∂xᵢ
        # where D is 1 for sum and none (none scales each element by its own
        # grad_output), and N or Σw for mean.
        grad_input = grad_target = grad_weight = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            # Out of place: under vmap, r may be unbatched while scale is batched.
            grad_r = penalty.derivative(r, threshold) * scale
            if weight is not None:
                grad_r = grad_r * weight.to(r.dtype)
            if ctx.needs_input_grad[0]:
                grad_input = grad_r.to(input_dtype)
            if ctx.needs_input_grad[1]:
                grad_target = grad_r.neg().to(target_dtype)

        # The weight, with L the reduced value:
        #   sum, none: ∂L/∂wᵢ = ρ(rᵢ)
        #   mean over N: ∂L/∂wᵢ = ρ(rᵢ) / N
        #   mean over Σw: ∂L/∂wᵢ = (ρ(rᵢ) − L) / Σw, since ∂(Σw)/∂wᵢ = 1
        if weight is not None and ctx.needs_input_grad[2]:
            rho = penalty.evaluate(r, threshold)
            if reduction == "mean" and weight_sum_mean:
                rho = rho - value.to(r.dtype)
            grad_weight = (rho * scale).to(weight.dtype)
        return grad_input, grad_target, grad_weight, None, None, None, None


def _denominator(
    r: Tensor, weight: Tensor | None, reduction: str, weight_sum_mean: bool
) -> Tensor | float | None:
    """Return what ``mean`` divides by: the weight sum or the element count."""
    if reduction != "mean":
        return None
    if weight is not None and weight_sum_mean:
        return weight.to(r.dtype).sum()
    return float(r.numel())


def _apply(
    penalty: Penalty,
    input: Tensor,
    target: Tensor,
    reduction: str,
    threshold: float = 0.0,
    weight: Tensor | None = None,
    weight_sum_mean: bool = True,
) -> Tensor:
    """Validate the arguments shared by the family and apply the Function."""
    check_float_tensor("input", input)
    target = to_input_dtype("target", target, input)
    check_same_shape(input, target)
    check_reduction(reduction)
    if weight is not None:
        check_float_tensor("weight", weight)
        check_same_shape(input, weight, ("input", "weight"))
        if should_validate_values(weight, None) and bool((weight < 0).any()):
            bad = weight[weight < 0].flatten()[0].item()
            raise ValueError(f"weight: expected non-negative weights, got {bad}")
    value, _ = RegressionFunction.apply(
        input, target, weight, penalty, threshold, reduction, weight_sum_mean
    )
    return value


@documented(
    Formula(
        name="l1_loss",
        summary="ℓᵢ = wᵢ |xᵢ − yᵢ|",
        loss="ℓᵢ = wᵢ |xᵢ − yᵢ|",
        gradient="∂ℓᵢ/∂xᵢ = wᵢ sign(xᵢ − yᵢ)\n∂ℓᵢ/∂yᵢ = −∂ℓᵢ/∂xᵢ",
        symbols=(
            ("xᵢ", "the prediction (input)"),
            ("yᵢ", "the target"),
            ("wᵢ", "the element's weight, 1 without weight"),
        ),
        subgradient="sign(0) = 0, so an element with xᵢ = yᵢ gets no gradient",
    )
)
def l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Mean absolute error between ``input`` and ``target``, optionally weighted.

    {formula}

    Reductions:
        ``'none'``: the per-element losses ℓᵢ, in the input's shape.
        ``'sum'``: Σᵢ ℓᵢ.
        ``'mean'``: Σᵢ ℓᵢ / N over the N elements, or Σᵢ ℓᵢ / Σᵢ wᵢ with ``weight``.
        When the divisor is 0 (an empty input, all weights 0) the result is 0
        with a zero gradient.

    Args:
        input: the prediction.
        target: the target value of each element.
        size_average, reduce: PyTorch's deprecated arguments; must be ``None``.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``. Default: ``'mean'``.
        weight: a non-negative weight per element. Default: ``None``.

    Shape:
        - input: ``(*)``, any number of dimensions.
        - target: ``(*)``, the input's shape; integer targets are cast to the input's dtype.
        - weight: ``(*)``, the input's shape.
        - output: a scalar, or ``(*)`` with ``reduction='none'``.

    Example::

        >>> input = torch.randn(3, 5, requires_grad=True)
        >>> loss = lossgrad.l1_loss(input, torch.randn(3, 5))
        >>> loss.backward()

    Differences from PyTorch: shapes must match (PyTorch broadcasts with a
    warning), negative weights raise, and an empty ``mean`` is 0, not NaN.
    """
    check_no_legacy_reduction(size_average, reduce)
    return _apply(Penalty.L1, input, target, reduction, weight=weight)


@documented(
    Formula(
        name="mse_loss",
        summary="ℓᵢ = wᵢ (xᵢ − yᵢ)²",
        loss="ℓᵢ = wᵢ (xᵢ − yᵢ)²",
        gradient="∂ℓᵢ/∂xᵢ = 2 wᵢ (xᵢ − yᵢ)\n∂ℓᵢ/∂yᵢ = −∂ℓᵢ/∂xᵢ",
        symbols=(
            ("xᵢ", "the prediction (input)"),
            ("yᵢ", "the target"),
            ("wᵢ", "the element's weight, 1 without weight"),
        ),
    )
)
def mse_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    weight: Tensor | None = None,
) -> Tensor:
    """Mean squared error between ``input`` and ``target``, optionally weighted.

    {formula}

    Reductions:
        ``'none'``: the per-element losses ℓᵢ, in the input's shape.
        ``'sum'``: Σᵢ ℓᵢ.
        ``'mean'``: Σᵢ ℓᵢ / N over the N elements, or Σᵢ ℓᵢ / Σᵢ wᵢ with ``weight``.
        When the divisor is 0 (an empty input, all weights 0) the result is 0
        with a zero gradient.

    Args:
        input: the prediction.
        target: the target value of each element.
        size_average, reduce: PyTorch's deprecated arguments; must be ``None``.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``. Default: ``'mean'``.
        weight: a non-negative weight per element. Default: ``None``.

    Shape:
        - input: ``(*)``, any number of dimensions.
        - target: ``(*)``, the input's shape; integer targets are cast to the input's dtype.
        - weight: ``(*)``, the input's shape.
        - output: a scalar, or ``(*)`` with ``reduction='none'``.

    Example::

        >>> input = torch.randn(3, 5, requires_grad=True)
        >>> loss = lossgrad.mse_loss(input, torch.randn(3, 5))
        >>> loss.backward()

    Differences from PyTorch: shapes must match (PyTorch broadcasts with a
    warning), negative weights raise, and an empty ``mean`` is 0, not NaN.
    """
    check_no_legacy_reduction(size_average, reduce)
    return _apply(Penalty.SQUARED, input, target, reduction, weight=weight)


@documented(
    Formula(
        name="huber_loss",
        summary="ℓᵢ = rᵢ²/2 for |rᵢ| ≤ δ, δ(|rᵢ| − δ/2) beyond",
        loss=(
            "ℓᵢ = wᵢ rᵢ²/2              if |rᵢ| ≤ δ\n"
            "ℓᵢ = wᵢ δ (|rᵢ| − δ/2)     otherwise"
        ),
        gradient=(
            "∂ℓᵢ/∂xᵢ = wᵢ rᵢ            if |rᵢ| ≤ δ\n"
            "∂ℓᵢ/∂xᵢ = wᵢ δ sign(rᵢ)    otherwise\n"
            "∂ℓᵢ/∂yᵢ = −∂ℓᵢ/∂xᵢ"
        ),
        symbols=(
            ("rᵢ", "xᵢ − yᵢ, the prediction minus the target"),
            ("δ", "delta, where the quadratic zone ends (δ > 0)"),
            ("wᵢ", "the element's weight, 1 without weight"),
        ),
    )
)
def huber_loss(
    input: Tensor,
    target: Tensor,
    reduction: str = "mean",
    delta: float = 1.0,
    weight: Tensor | None = None,
) -> Tensor:
    """Huber loss: squared error near the target, δ-scaled absolute error beyond δ.

    {formula}

    Reductions:
        ``'none'``: the per-element losses ℓᵢ, in the input's shape.
        ``'sum'``: Σᵢ ℓᵢ.
        ``'mean'``: Σᵢ ℓᵢ / N over the N elements, with or without ``weight``.
        This is what PyTorch 2.13's ``huber_loss`` divides by, unlike its
        ``l1_loss`` and ``mse_loss``, which divide a weighted sum by Σᵢ wᵢ.
        An empty input gives 0 with a zero gradient.

    Args:
        input: the prediction.
        target: the target value of each element.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``. Default: ``'mean'``.
        delta: δ > 0, where the loss turns from quadratic to linear. Default: ``1.0``.
        weight: a non-negative weight per element. Default: ``None``.

    Shape:
        - input: ``(*)``, any number of dimensions.
        - target: ``(*)``, the input's shape; integer targets are cast to the input's dtype.
        - weight: ``(*)``, the input's shape.
        - output: a scalar, or ``(*)`` with ``reduction='none'``.

    Example::

        >>> input = torch.randn(3, 5, requires_grad=True)
        >>> loss = lossgrad.huber_loss(input, torch.randn(3, 5), delta=0.5)
        >>> loss.backward()

    Differences from PyTorch: shapes must match (PyTorch broadcasts with a
    warning), negative weights raise, and an empty ``mean`` is 0, not NaN.
    """
    delta = check_positive("delta", delta)
    return _apply(
        Penalty.HUBER, input, target, reduction, delta, weight=weight, weight_sum_mean=False
    )


@documented(
    Formula(
        name="smooth_l1_loss",
        summary="ℓᵢ = rᵢ²/(2β) for |rᵢ| < β, |rᵢ| − β/2 beyond",
        loss=(
            "ℓᵢ = rᵢ²/(2β)       if |rᵢ| < β\n"
            "ℓᵢ = |rᵢ| − β/2     otherwise\n"
            "ℓᵢ = |rᵢ|           if β = 0"
        ),
        gradient=(
            "∂ℓᵢ/∂xᵢ = rᵢ/β        if |rᵢ| < β\n"
            "∂ℓᵢ/∂xᵢ = sign(rᵢ)    otherwise, and always if β = 0\n"
            "∂ℓᵢ/∂yᵢ = −∂ℓᵢ/∂xᵢ"
        ),
        symbols=(
            ("rᵢ", "xᵢ − yᵢ, the prediction minus the target"),
            ("β", "beta, the width of the quadratic zone (β ≥ 0)"),
        ),
        subgradient=(
            "sign(0) = 0 when β = 0, so an element with xᵢ = yᵢ gets no gradient; "
            "β = 0 never divides by β"
        ),
    )
)
def smooth_l1_loss(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    beta: float = 1.0,
) -> Tensor:
    """Smooth L1 loss: squared error scaled by 1/β near the target, absolute error beyond.

    {formula}

    Reductions:
        ``'none'``: the per-element losses ℓᵢ, in the input's shape.
        ``'sum'``: Σᵢ ℓᵢ.
        ``'mean'``: Σᵢ ℓᵢ / N over the N elements. An empty input gives 0 with a
        zero gradient.

    Args:
        input: the prediction.
        target: the target value of each element.
        size_average, reduce: PyTorch's deprecated arguments; must be ``None``.
        reduction: ``'none'``, ``'mean'`` or ``'sum'``. Default: ``'mean'``.
        beta: β ≥ 0, where the loss turns from quadratic to linear; ``0`` gives
            exactly :func:`l1_loss`. Default: ``1.0``.

    Shape:
        - input: ``(*)``, any number of dimensions.
        - target: ``(*)``, the input's shape; integer targets are cast to the input's dtype.
        - output: a scalar, or ``(*)`` with ``reduction='none'``.

    Example::

        >>> input = torch.randn(3, 5, requires_grad=True)
        >>> loss = lossgrad.smooth_l1_loss(input, torch.randn(3, 5), beta=0.5)
        >>> loss.backward()

    Differences from PyTorch: shapes must match (PyTorch broadcasts with a
    warning), and an empty ``mean`` is 0, not NaN.
    """
    check_no_legacy_reduction(size_average, reduce)
    beta = check_non_negative("beta", beta)
    return _apply(Penalty.SMOOTH_L1, input, target, reduction, beta)
