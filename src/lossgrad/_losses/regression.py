"""Regression losses: L1, squared error, Huber and smooth L1.

Each loss is a pointwise penalty ρ of the residual r = x − y, optionally times a
per-element weight. One Function serves the family. Its ``forward`` computes r
once in the accumulation dtype and saves r, or a slope that is the gradient up
to a constant: the clipped residual for Huber and smooth L1, sign(r) for an
unweighted L1 sum or mean. An unweighted squared-error sum or mean saves
nothing and recomputes r. Its ``backward`` multiplies the penalty's derivative
ρ'(r) by the upstream gradient, in place on the saved slope when the graph is
freed afterwards.
"""

from __future__ import annotations

import enum

import torch
from torch import Tensor

from .._autograd import graph_is_kept, refuse_double_backward
from .._checks import (
    check_float_tensor,
    check_no_legacy_reduction,
    check_non_negative,
    check_positive,
    check_reduction,
    check_same_shape,
    check_tensor,
    should_validate_values,
    to_input_dtype,
)
from .._formula import Formula, documented
from .._reduction import accumulate_dtype, grad_scale, reduce_loss

__all__ = ["huber_loss", "l1_loss", "mse_loss", "smooth_l1_loss"]


class Penalty(enum.Enum):
    """A pointwise penalty ρ(r) of the residual, with its derivative ρ'(r).

    ``threshold`` is Huber's δ or smooth L1's β, and is unused by the others.
    Huber and smooth L1 are computed from the clipped residual
    c = clamp(r, −δ, δ), which is also their gradient (over β for smooth L1),
    so ``forward`` saves c and ``backward`` is one multiplication. Only
    :meth:`total_and_slope` modifies its argument.
    """

    L1 = "l1_loss"
    SQUARED = "mse_loss"
    HUBER = "huber_loss"
    SMOOTH_L1 = "smooth_l1_loss"

    def is_absolute(self, threshold: float, dtype: torch.dtype) -> bool:
        """Tell whether ρ(r) = |r|: L1, or smooth L1 with a β that is 0 in ``dtype``."""
        if self is Penalty.L1:
            return True
        # A β below the dtype's smallest normal number is taken as 0, because
        # dividing by it would overflow. The loss then differs from L1 by < β/2.
        return self is Penalty.SMOOTH_L1 and threshold < torch.finfo(dtype).tiny

    def is_clipped(self, threshold: float, dtype: torch.dtype) -> bool:
        """Tell whether the penalty is computed from the clipped residual c."""
        clipped = self in (Penalty.HUBER, Penalty.SMOOTH_L1)
        return clipped and not self.is_absolute(threshold, dtype)

    def clip(self, r: Tensor, threshold: float) -> Tensor:
        """Return c = clamp(r, −δ, δ), or an empty tensor where ρ does not use it."""
        if self.is_clipped(threshold, r.dtype):
            return r.clamp(-threshold, threshold)
        return r.new_empty(0)

    def evaluate(self, r: Tensor, threshold: float, c: Tensor) -> Tensor:
        """Return ρ(r) elementwise, given c from :meth:`clip`."""
        if self.is_absolute(threshold, r.dtype):
            return r.abs()
        if self is Penalty.SQUARED:
            return r.square()
        # c (r − c/2) is r²/2 where |r| ≤ δ and δ (|r| − δ/2) beyond, which is
        # Huber's loss. Smooth L1 is Huber's loss with δ = β, divided by β.
        huber = torch.sub(r, c, alpha=0.5).mul_(c)
        return huber if self is Penalty.HUBER else huber.div_(threshold)

    def total_and_slope(self, r: Tensor, threshold: float, c: Tensor) -> tuple[Tensor, Tensor]:
        """Return Σ ρ(r) and s, where ρ'(r) = s · :meth:`slope_factor`; overwrites ``r``.

        For L1 (and smooth L1 with β = 0) s is sign(r), for Huber and smooth
        L1 it is c from :meth:`clip`. Squared error is not handled here.
        """
        if self.is_absolute(threshold, r.dtype):
            slope = r.sign()
            return r.abs_().sum(), slope
        huber = r.sub_(c, alpha=0.5).mul_(c).sum()
        return (huber if self is Penalty.HUBER else huber / threshold), c

    def slope_factor(self, threshold: float, dtype: torch.dtype) -> float:
        """Return the constant that turns the slope s of :meth:`total_and_slope` into ρ'(r)."""
        if self is Penalty.SMOOTH_L1 and not self.is_absolute(threshold, dtype):
            return 1 / threshold
        return 1.0

    def scaled_derivative(
        self, r: Tensor, threshold: float, c: Tensor, scale: Tensor, *, overwrite: bool
    ) -> Tensor:
        """Return ρ'(r) · scale elementwise, with the subgradient 0 at the kink of |r|.

        ``overwrite`` allows writing the result over ``r``, a temporary of the caller.
        """
        # Under vmap, r may be unbatched while scale is batched, and then the
        # product cannot be written into r in place.
        overwrite = overwrite and not torch._C._are_functorch_transforms_active()
        if self is Penalty.SQUARED:
            return r.mul_(2 * scale) if overwrite else r * (2 * scale)
        if self.is_absolute(threshold, r.dtype):
            # sign(0) = 0. Smooth L1 with β = 0 is exactly L1 and never divides by β.
            return r.sign_().mul_(scale) if overwrite else r.sign() * scale
        # Huber: r inside |r| ≤ δ, δ·sign(r) beyond, which is c.
        # Smooth L1: r/β inside |r| < β, sign(r) beyond, which is c/β.
        return c * scale if self is Penalty.HUBER else c * (scale / threshold)


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
    ) -> tuple[Tensor, Tensor, Tensor]:
        dtype = accumulate_dtype(input.dtype)
        x, y = input.to(dtype), target.to(dtype)
        denominator = _denominator(x, weight, reduction, weight_sum_mean)
        if _reduces_by_distance(penalty, weight, reduction):
            # No residual in memory: backward recomputes it from input and target.
            total = torch.dist(x, y).square()
            value = reduce_loss(total, reduction, denominator, dtype=input.dtype)
            return value, x.new_empty(0), x.new_empty(0)
        r = x - y
        c = penalty.clip(r, threshold)
        if weight is None and reduction != "none":
            # L1, Huber or smooth L1, whose backward needs only the slope:
            # r is free to overwrite, and the slope is returned in place of c.
            total, slope = penalty.total_and_slope(r, threshold, c)
            value = reduce_loss(total, reduction, denominator, dtype=input.dtype)
            return value, x.new_empty(0), slope
        loss = penalty.evaluate(r, threshold, c)
        if weight is not None:
            loss = loss * weight.to(dtype)
        return reduce_loss(loss, reduction, denominator, dtype=input.dtype), r, c

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        input, target, weight, penalty, threshold, reduction, weight_sum_mean = inputs
        value, r, c = output
        ctx.mark_non_differentiable(r, c)
        # No zero-filled gradients for r and c, which nothing differentiates.
        ctx.set_materialize_grads(False)
        dtype = r.dtype
        if _reduces_by_distance(penalty, weight, reduction):
            ctx.save_for_backward(input, target, None, c, weight, value)
        elif weight is None and reduction != "none":
            # c is the slope of Penalty.total_and_slope.
            ctx.save_for_backward(None, None, None, c, None, value)
        else:
            # Huber and smooth L1 need only c, unless the weight's gradient needs ρ(r).
            weight_grad = weight is not None and ctx.needs_input_grad[2]
            keep_r = weight_grad or not penalty.is_clipped(threshold, dtype)
            ctx.save_for_backward(None, None, r if keep_r else None, c, weight, value)
        ctx.options = (penalty, threshold, reduction, weight_sum_mean)
        ctx.dtypes = (input.dtype, target.dtype, dtype)

    @staticmethod
    def backward(ctx, grad_output: Tensor, _grad_r: Tensor, _grad_c: Tensor):
        refuse_double_backward(ctx.options[0].value)
        if grad_output is None:
            # Without materialized gradients an unused loss arrives as None.
            return None, None, None, None, None, None, None
        input, target, r, c, weight, value = ctx.saved_tensors
        penalty, threshold, reduction, weight_sum_mean = ctx.options
        input_dtype, target_dtype, dtype = ctx.dtypes
        recomputed = input is not None
        if recomputed:
            r = input.to(dtype) - target.to(dtype)
        # Only the shape, dtype and device of r are used when r was not saved.
        residual = r if r is not None else c
        denominator = _denominator(residual, weight, reduction, weight_sum_mean)
        scale = grad_scale(grad_output, reduction, denominator, dtype=dtype)

        # With L = Σᵢ wᵢ ρ(rᵢ) / D and rᵢ = xᵢ − yᵢ:
        #   ∂L/∂xᵢ = wᵢ ρ'(rᵢ) / D
        #   ∂L/∂yᵢ = −∂L/∂xᵢ
        # where D is 1 for sum and none (none scales each element by its own
        # grad_output), and N or Σw for mean.
        grad_input = grad_target = grad_weight = None
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            if r is None:
                # c is the slope s with ρ'(r) = s · factor. Without a weight
                # gradient and a kept graph, this is its last use.
                factor = scale * penalty.slope_factor(threshold, dtype)
                overwrite = weight is None and not graph_is_kept()
                grad_r = c.mul_(factor) if overwrite else c * factor
            else:
                grad_r = penalty.scaled_derivative(r, threshold, c, scale, overwrite=recomputed)
            if weight is not None:
                grad_r = grad_r * weight.to(dtype)
            if ctx.needs_input_grad[0]:
                grad_input = grad_r.to(input_dtype)
            if ctx.needs_input_grad[1]:
                grad_target = grad_r.neg().to(target_dtype)

        # The weight, with L the reduced value:
        #   sum, none: ∂L/∂wᵢ = ρ(rᵢ)
        #   mean over N: ∂L/∂wᵢ = ρ(rᵢ) / N
        #   mean over Σw: ∂L/∂wᵢ = (ρ(rᵢ) − L) / Σw, since ∂(Σw)/∂wᵢ = 1
        if weight is not None and ctx.needs_input_grad[2]:
            rho = penalty.evaluate(r, threshold, c)
            if reduction == "mean" and weight_sum_mean:
                rho = rho - value.to(dtype)
            grad_weight = (rho * scale).to(weight.dtype)
        return grad_input, grad_target, grad_weight, None, None, None, None


def _reduces_by_distance(penalty: Penalty, weight: Tensor | None, reduction: str) -> bool:
    """Tell whether the loss is an unweighted squared-error sum or mean, ‖x − y‖₂²."""
    return penalty is Penalty.SQUARED and weight is None and reduction != "none"


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
    """Validate the arguments shared by the family and apply the Function.

    Like PyTorch, L1, MSE and smooth L1 promote a floating input and target of
    different dtypes to their common dtype (float32 and float64 give a float64
    loss); Huber, as in PyTorch, casts the target to the input's dtype.
    """
    check_float_tensor("input", input)
    check_tensor("target", target)
    if penalty is not Penalty.HUBER and target.is_floating_point():
        common = torch.promote_types(input.dtype, target.dtype)
        input, target = input.to(common), target.to(common)
    target = to_input_dtype("target", target, input)
    check_same_shape(input, target)
    check_reduction(reduction)
    if weight is not None:
        check_float_tensor("weight", weight)
        check_same_shape(input, weight, ("input", "weight"))
        if should_validate_values(weight, None) and bool((weight < 0).any()):
            bad = weight[weight < 0].flatten()[0].item()
            raise ValueError(f"weight: expected non-negative weights, got {bad}")
    value, _, _ = RegressionFunction.apply(
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
        - target: ``(*)``, the input's shape. Integer targets are cast to the input's dtype.
          A floating target of another dtype promotes both, as in PyTorch.
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
        - target: ``(*)``, the input's shape. Integer targets are cast to the input's dtype.
          A floating target of another dtype promotes both, as in PyTorch.
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
        - target: ``(*)``, the input's shape. Integer targets are cast to the input's dtype.
          A floating target of another dtype promotes both, as in PyTorch.
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
