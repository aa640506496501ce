"""Divergence losses: KL divergence, knowledge distillation and Jensen-Shannon.

``kl_div`` is pointwise, like PyTorch's. ``kd_loss`` and ``js_div`` compare a
student softmax with a teacher softmax row by row and go through the shared
row kernel with the rules of :mod:`lossgrad._kernels.distill_rule`, which
return each row's loss and gradient from one pass.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._autograd import refuse_double_backward
from .._checks import (
    REDUCTIONS_WITH_BATCHMEAN,
    check_class_indices,
    check_float_tensor,
    check_in_range,
    check_no_legacy_reduction,
    check_positive,
    check_reduction,
    check_same_shape,
    check_tensor,
)
from .._formula import Formula, documented
from .._kernels.distill_rule import js_rule, kd_rule
from .._kernels import triton_ops
from .._kernels.rows import RowRule, fused_rows
from .._reduction import accumulate_dtype, grad_scale, reduce_loss, safe_denominator

__all__ = ["js_div", "kd_loss", "kl_div"]

# Reductions of the row losses. "mean" is left out because PyTorch's KL "mean"
# divides by every element (rows × classes), which is rarely what is meant.
ROW_REDUCTIONS = ("none", "sum", "batchmean")


# ---------------------------------------------------------------------------
# kl_div
# ---------------------------------------------------------------------------


def _target_probability(target: Tensor, log_target: bool) -> Tensor:
    """Return the target probability ``q``: ``exp(t)`` for log targets, else ``t``."""
    return target.exp() if log_target else target


def _kl_pointwise(input: Tensor, target: Tensor, log_target: bool) -> Tensor:
    """Return ``q (log q − x)`` elementwise, exactly 0 where ``q = 0``."""
    q = _target_probability(target, log_target)
    log_q = target if log_target else target.log()
    # A negative q (invalid for a probability) gives NaN through log, as in PyTorch.
    return torch.where(q == 0, torch.zeros_like(q), q * (log_q - input))


def _kl_denominator(input: Tensor, reduction: str) -> int:
    """Return what ``mean`` (every element) and ``batchmean`` (``input.size(0)``) divide by."""
    if reduction == "mean":
        return input.numel()
    return input.shape[0] if input.dim() > 0 else 1


class KLDivFunction(torch.autograd.Function):
    """Pointwise KL divergence with a closed-form backward for input and target."""

    generate_vmap_rule = True

    @staticmethod
    def forward(input: Tensor, target: Tensor, reduction: str, log_target: bool) -> Tensor:
        out_dtype = torch.promote_types(input.dtype, target.dtype)
        dtype = accumulate_dtype(out_dtype)
        if triton_ops.use_triton(input) and input.shape == target.shape:
            loss, _ = triton_ops.kl_div_pointwise(input, target, log_target=log_target)
        else:
            loss = _kl_pointwise(input.to(dtype), target.to(dtype), log_target)
        return reduce_loss(loss, reduction, _kl_denominator(input, reduction), dtype=out_dtype)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        input, target, reduction, log_target = inputs
        ctx.save_for_backward(input, target)
        ctx.reduction = reduction
        ctx.log_target = log_target
        ctx.denominator = _kl_denominator(input, reduction)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        refuse_double_backward("kl_div")
        input, target = ctx.saved_tensors
        dtype = accumulate_dtype(torch.promote_types(input.dtype, target.dtype))
        scale = grad_scale(grad_output, ctx.reduction, ctx.denominator, dtype=dtype)
        x, t = input.to(dtype), target.to(dtype)
        q = _target_probability(t, ctx.log_target)
        grad_input = grad_target = None

        # ∂ℓ/∂x = −q, which is exactly 0 where q = 0.
        if ctx.needs_input_grad[0]:
            grad_input = (-q * scale).to(input.dtype)

        # ∂ℓ/∂t = log t − x + 1                for probabilities (ℓ = t (log t − x))
        # ∂ℓ/∂t = exp(t) (t − x + 1)           for log-probabilities (ℓ = exp(t) (t − x))
        # Both are set to 0 where q = 0: the one-sided derivative of t log t at
        # t = 0 is −∞, and a zero-probability target is treated as a constant 0.
        if ctx.needs_input_grad[1]:
            if ctx.log_target:
                slope = q * (t - x + 1)
            else:
                slope = t.log() - x + 1
            slope = torch.where(q == 0, torch.zeros_like(slope), slope)
            grad_target = (slope * scale).to(target.dtype)
        return grad_input, grad_target, None, None


class KLDivSavedGradFunction(torch.autograd.Function):
    """Reduced KL divergence whose input gradient is formed in the forward pass.

    The CPU fast path of :func:`kl_div` for a reduced loss whose target needs
    no gradient. ``forward`` returns the value and ``−q / denominator``, the
    input gradient for a ``grad_output`` of 1, so backward only scales it.
    """

    @staticmethod
    def forward(input: Tensor, target: Tensor, reduction: str, log_target: bool):
        denominator = 1 if reduction == "sum" else _kl_denominator(input, reduction)
        factor = -1.0 / safe_denominator(denominator)
        # Rows of the last dimension go through the row kernel in chunks, so
        # the temporaries stay chunk-sized and the chunks may run in threads.
        width = input.shape[-1] if input.dim() > 0 and input.shape[-1] > 0 else 1
        targets = target.reshape(-1, width)

        def rule(rows: slice, x: Tensor, out: Tensor) -> Tensor:
            t = targets[rows]
            # Σ q (log q − x) per row, by torch.sum, whose blockwise summation
            # keeps float32 accurate over long rows. A NaN comes from
            # 0 · (±inf) where q = 0 (which must add 0) or from a NaN
            # input; only then is the elementwise form with its q = 0 rule used.
            if log_target:
                q = torch.exp(t, out=out)
                difference = torch.sub(t, x)
            else:
                q = t
                difference = torch.log(t).sub_(x)
            loss = difference.mul_(q).sum(dim=-1)
            if bool(loss.isnan().any()):
                loss = _kl_pointwise(x, t, log_target).sum(dim=-1)
            torch.mul(q, factor, out=out)  # −q / denominator
            return loss

        row_loss, grad = fused_rows(
            input.reshape(-1, width), rule, huge_pages=True, parallel=True
        )
        # Row totals are summed in float64: with N rows of float32 sums the
        # rounding then does not grow with N.
        total = row_loss.sum(dtype=torch.float64).to(input.dtype)
        return total * -factor, grad.view(input.shape)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, grad = output
        ctx.mark_non_differentiable(grad)
        # Without this, autograd passes backward a zero tensor of the input's
        # size as the gradient of ``grad``, which nothing differentiates.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad)

    @staticmethod
    def backward(ctx, grad_output: Tensor, _grad_of_grad: Tensor):
        refuse_double_backward("kl_div")
        if grad_output is None or not ctx.needs_input_grad[0]:
            return None, None, None, None
        (grad,) = ctx.saved_tensors
        return _scale_by_grad_output(grad, grad_output.to(grad.dtype)), None, None, None


def _kl_saved_grad_applies(input: Tensor, target: Tensor, reduction: str) -> bool:
    """Return whether :class:`KLDivSavedGradFunction` computes this call."""
    if reduction == "none" or input.device.type != "cpu" or target.device != input.device:
        return False
    if input.dtype not in (torch.float32, torch.float64) or target.dtype != input.dtype:
        return False
    if target.requires_grad and torch.is_grad_enabled():
        return False
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    return True


@documented(
    Formula(
        name="kl_div",
        summary="ℓ = q (log q − x): KL divergence from log-probabilities x to target q",
        loss=(
            "ℓᵢ = qᵢ (log qᵢ − xᵢ),   qᵢ = tᵢ, or exp(tᵢ) when log_target\n"
            "ℓᵢ = 0 where qᵢ = 0, whatever xᵢ is (0 · log 0 = 0, also for xᵢ = −∞)"
        ),
        gradient=(
            "∂ℓᵢ/∂xᵢ = −qᵢ\n"
            "∂ℓᵢ/∂tᵢ = log tᵢ − xᵢ + 1            (probabilities)\n"
            "∂ℓᵢ/∂tᵢ = exp(tᵢ) (tᵢ − xᵢ + 1)      (log_target)"
        ),
        symbols=(
            ("xᵢ", "input, a log-probability"),
            ("tᵢ", "target, a probability or (log_target) a log-probability"),
            ("qᵢ", "target probability"),
        ),
        subgradient="∂ℓᵢ/∂tᵢ is set to 0 where qᵢ = 0, because d(q log q)/dq is −∞ there",
    )
)
def kl_div(
    input: Tensor,
    target: Tensor,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    log_target: bool = False,
) -> Tensor:
    """Compute the Kullback-Leibler divergence loss, pointwise, as PyTorch does.

    ``input`` contains log-probabilities (a ``log_softmax`` output), and
    ``target`` probabilities, or log-probabilities with ``log_target=True``.

    {formula}

    Reductions:

    - ``'none'``: the pointwise losses, with the input's shape.
    - ``'mean'`` (default, as in PyTorch): the sum divided by the number of
      elements, ``input.numel()``. This is the KL divergence divided by the
      number of classes too, so it warns, as PyTorch does.
    - ``'batchmean'``: the sum divided by ``input.size(0)``, the mean KL
      divergence per row when rows are distributions. Use it for the
      textbook value.
    - ``'sum'``: the sum.

    Args:
        input: log-probabilities.
        target: probabilities, or log-probabilities with ``log_target``; it
            gets a gradient too when it requires grad.
        size_average, reduce: deprecated in PyTorch; must be ``None``.
        reduction: ``'none'``, ``'mean'``, ``'batchmean'`` or ``'sum'``.
            Default: ``'mean'``.
        log_target: ``target`` contains log-probabilities. Default: ``False``.

    Shape:
        - input: any shape ``(*)``, usually ``(N, C)``.
        - target: the same shape as input.
        - output: a scalar, or ``(*)`` for ``'none'``.

        where N is the batch size and C the number of classes.

    Example::

        >>> log_q = torch.randn(4, 5).log_softmax(dim=-1)
        >>> p = torch.randn(4, 5).softmax(dim=-1)
        >>> loss = lossgrad.kl_div(log_q, p, reduction="batchmean")

    Notes:
        Differences from PyTorch 2.13: a zero target probability contributes
        exactly 0 to the value and to both gradients, where PyTorch gives NaN
        against an input of ``-inf``. Shapes must be equal (no
        broadcasting), and ``'mean'`` over an empty input returns 0, not NaN.
        A log target whose probability ``exp(t)`` underflows to 0 in the
        compute dtype counts as a zero probability.
    """
    check_no_legacy_reduction(size_average, reduce)
    check_float_tensor("input", input)
    check_float_tensor("target", target)
    check_same_shape(input, target)
    reduction = check_reduction(reduction, REDUCTIONS_WITH_BATCHMEAN)
    if not isinstance(log_target, bool):
        raise TypeError(f"log_target: expected a bool, got {type(log_target).__name__}")
    if reduction == "mean":
        warnings.warn(
            "kl_div: reduction='mean' divides the sum by every element (batch size "
            "× number of classes); use reduction='batchmean' for the KL divergence "
            "averaged over the rows",
            UserWarning,
            stacklevel=2,
        )
    if _kl_saved_grad_applies(input, target, reduction):
        value, _ = KLDivSavedGradFunction.apply(input, target.detach(), reduction, log_target)
        return value
    return KLDivFunction.apply(input, target, reduction, log_target)


# ---------------------------------------------------------------------------
# kd_loss and js_div: row losses over a student and a teacher softmax
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _RowLoss:
    """The options of one row loss: its name, row rule, ignored index and reduction.

    ``make_rule(teacher_rows, target_rows, scale)`` builds the row rule from
    the ``N x V`` teacher logits, the ``N`` class targets (or ``None``) and
    the factor of the gradient.
    """

    name: str
    make_rule: Callable[[Tensor, Tensor | None, Tensor | float], RowRule]
    # The same loss on the Triton kernels: (student, teacher, target rows,
    # gradient factor, inplace) to (loss per row, scaled gradient per row),
    # used where triton_ops.use_triton returns True.
    triton_rows: Callable[[Tensor, Tensor, Tensor | None, Tensor, bool], tuple[Tensor, Tensor]]
    ignore_index: int
    reduction: str


def _as_rows(tensor: Tensor) -> Tensor:
    """View ``(*, V)`` as ``N x V`` rows, copying only if a row is not contiguous."""
    rows = tensor.reshape(-1, tensor.shape[-1])
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _batched_like(student: Tensor, teacher: Tensor, target: Tensor | None) -> Tensor:
    """Return a copy of ``student`` that vmap batches wherever any input is batched.

    The row rule writes values computed from the teacher and the targets into
    the gradient buffer in place. Under vmap that buffer, made like the student
    logits, must be batched even when only the teacher or the targets are.
    """
    student = student + torch.zeros_like(teacher)
    if target is not None:
        student = student + torch.zeros_like(target, dtype=student.dtype).unsqueeze(-1)
    return student


def _is_last_backward() -> bool:
    """Return whether the running backward frees the graph after itself.

    NOTE: reads a private PyTorch hook (present in 2.13); without it this
    returns False. Under torch.compile and torch.func it returns False as
    well, because the compiler cannot trace the hook.
    """
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if keep_graph is None or torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    return not keep_graph()


def _is_one(factor: Tensor) -> bool:
    """Return whether a scalar ``factor`` is exactly 1, reading it only where that is free.

    On the CPU ``item()`` is no host synchronisation. Under torch.compile and
    torch.func transforms the value is not read and this returns False. On
    CUDA it returns False too, because the Triton scale kernel skips a factor
    of 1 on the device.
    """
    if factor.device.type != "cpu" or factor.numel() != 1:
        return False
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    return factor.item() == 1.0


def _scale_by_grad_output(grad: Tensor, factor: Tensor) -> Tensor:
    """Multiply the saved gradient by ``factor`` (scalar or ``N x 1``) in the compute dtype.

    When this backward is the saved gradient's last use (no retained graph)
    it is scaled in place and returned, or returned as it is for a scalar
    factor of exactly 1. A retained graph (``retain_graph=True``,
    ``gradcheck``, ``torch.func.vjp``) gets a new tensor, so that the saved
    gradient survives for the next backward.
    """
    compute = accumulate_dtype(grad.dtype)
    if not _is_last_backward():
        return (grad.to(compute) * factor).to(grad.dtype)
    if _is_one(factor):
        return grad
    if triton_ops.use_triton(grad):
        return triton_ops.scale_rows_(grad, factor)
    if grad.dtype == compute:
        return grad.mul_(factor)
    return grad.copy_(grad.to(compute).mul_(factor))


# Size of one chunk of student rows for the CPU row kernel, in float32 bytes.
# A distillation rule makes about ten tensor operations per chunk over four
# chunk-sized buffers, so with smaller chunks the Python overhead of those
# operations dominates. With N = 4096, V = 32000 and 2 threads on a 2-core
# AMD EPYC VM (2 MiB L2 per core), kd_loss's rule took 0.75 s per call with
# 0.5 MiB chunks, 0.52 s with 1 or 2 MiB and 0.41 s with 4 MiB, medians of 4
# on a shared machine (scratch benchmark, not in the repository).
_CHUNK_BYTES = 2 * 1024 * 1024


class DistillRowsFunction(torch.autograd.Function):
    """A student-teacher row loss (``kd_loss``, ``js_div``) with a saved gradient.

    ``forward`` returns the reduced loss, the gradient of the reduced loss with
    respect to the student logits for a ``grad_output`` of 1, and the number
    of counted rows. With ``inplace`` the gradient is written over the
    student logits and an empty tensor is returned in its place. The last two are not differentiable and
    only feed ``backward``, which multiplies the gradient by ``grad_output``.
    The teacher gets no gradient.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        student: Tensor, teacher: Tensor, target: Tensor | None, loss: _RowLoss, inplace: bool
    ):
        rows_shape = student.shape[:-1]
        student_rows = _as_rows(student)  # N x V
        teacher_rows = _as_rows(teacher)
        target_rows = None if target is None else target.reshape(-1)  # N
        if torch._C._are_functorch_transforms_active():
            student_rows = _batched_like(student_rows, teacher_rows, target_rows)
        dtype = accumulate_dtype(student.dtype)
        if target_rows is None:
            count = torch.full((), student_rows.shape[0], dtype=dtype, device=student.device)
        else:
            count = (target_rows != loss.ignore_index).sum().to(dtype)

        # The reduction's 1/denominator is known here, so the saved gradient
        # is that of the reduced loss and a grad_output of 1 leaves it as is.
        scale = 1.0 / safe_denominator(count) if loss.reduction == "batchmean" else 1.0
        if triton_ops.use_triton(student_rows):
            scale = torch.as_tensor(scale, dtype=dtype, device=student.device)
            row_loss, grad = loss.triton_rows(
                student_rows, teacher_rows, target_rows, scale, inplace
            )
        else:
            # The rules keep their chunk buffers per thread, so the chunks
            # may be spread over one Python thread per intra-op thread.
            rule = loss.make_rule(teacher_rows, target_rows, scale)
            row_loss, grad = fused_rows(
                student_rows,
                rule,
                inplace=inplace,
                chunk_bytes=_CHUNK_BYTES,
                huge_pages=True,
                parallel=True,
            )
        row_loss = row_loss.reshape(rows_shape)
        value = reduce_loss(row_loss, loss.reduction, count, dtype=student.dtype)
        if inplace:
            # The gradient now lives in ``student``; setup_context keeps that tensor.
            grad = student.new_empty(0)
        return value, grad, count

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        student, _, _, loss, inplace = inputs
        _, grad, count = output
        ctx.mark_non_differentiable(grad, count)
        # Without this, autograd passes backward a zero tensor of the logits'
        # size as the gradient of ``grad``, which nothing differentiates.
        ctx.set_materialize_grads(False)
        ctx.loss = loss
        ctx.student_shape = student.shape
        ctx.inplace = inplace
        if inplace:
            # Kept on ctx rather than saved, so that backward checks the version
            # itself and raises an error that names inplace_backward.
            ctx.student = student
            ctx.student_version = student._version
        else:
            ctx.save_for_backward(grad)

    @staticmethod
    def backward(ctx, grad_value: Tensor, _grad_rows: Tensor, _grad_count: Tensor):
        refuse_double_backward(ctx.loss.name)
        if grad_value is None or not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        if ctx.inplace:
            if ctx.student._version != ctx.student_version:
                raise RuntimeError(
                    f"{ctx.loss.name}(inplace_backward=True): the student logits tensor, "
                    "which holds the gradient after the forward pass, was modified before "
                    "backward. Leave it untouched until backward, or use "
                    "inplace_backward=False"
                )
            grad = ctx.student.view(-1, ctx.student_shape[-1])
        else:
            (grad,) = ctx.saved_tensors
        # The saved gradient is that of the reduced loss for a grad_output of
        # 1: ∂(c·L)/∂s = c·∂L/∂s, and for 'none' row n is scaled by its own
        # grad_output[n].
        factor = grad_value.to(accumulate_dtype(grad.dtype))
        if ctx.loss.reduction == "none":
            factor = factor.reshape(-1, 1)  # N x 1
        grad_student = _scale_by_grad_output(grad, factor)
        return grad_student.reshape(ctx.student_shape), None, None, None, None


def _check_inplace(student: Tensor) -> None:
    """Raise unless the gradient can be written over ``student`` safely."""
    if torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
        raise ValueError(
            "inplace_backward: not supported under torch.func transforms or "
            "torch.compile; use inplace_backward=False"
        )
    if student.requires_grad and student.is_leaf:
        raise ValueError(
            "inplace_backward: expected student logits computed by an operation, got a "
            "leaf tensor that requires grad; overwriting it would destroy a parameter. "
            "Use inplace_backward=False"
        )
    if not student.is_contiguous():
        raise ValueError(
            "inplace_backward: expected contiguous student logits (*, C), got shape "
            f"{tuple(student.shape)} and strides {student.stride()}; use "
            "inplace_backward=False"
        )


def check_row_reduction(name: str, reduction: object) -> str:
    """Raise ValueError unless ``reduction`` is 'none', 'sum' or 'batchmean'."""
    if reduction == "mean":
        raise ValueError(
            f"reduction: {name} does not support 'mean', which in PyTorch's kl_div "
            "divides by every element (rows × classes); use 'batchmean' for the "
            "mean over the counted rows, or 'sum' or 'none'"
        )
    return check_reduction(reduction, ROW_REDUCTIONS)


def _check_student_teacher(student: Tensor, teacher: Tensor) -> None:
    """Raise unless both are floating logits of one shape ``(*, C)`` with C ≥ 1."""
    check_float_tensor("student_logits", student)
    check_float_tensor("teacher_logits", teacher)
    if student.dim() == 0 or student.shape[-1] == 0:
        raise ValueError(
            "student_logits: expected shape (*, C) with at least one class, "
            f"got {tuple(student.shape)}"
        )
    if student.shape != teacher.shape:
        raise ValueError(
            f"teacher_logits: expected the shape of student_logits "
            f"{tuple(student.shape)}, got {tuple(teacher.shape)}"
        )


def _check_ignore_index(ignore_index: object) -> int:
    """Raise TypeError unless ``ignore_index`` is a Python integer."""
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(
            f"ignore_index: expected an int, got {type(ignore_index).__name__}"
        )
    return ignore_index


def _check_row_target(target: object, student: Tensor) -> Tensor:
    """Raise unless ``target`` is an integer tensor with the row shape of ``student``."""
    target = check_tensor("target", target)
    if target.is_floating_point() or target.is_complex() or target.dtype == torch.bool:
        raise TypeError(
            f"target: expected integer class indices (torch.long), got dtype {target.dtype}"
        )
    if target.shape != student.shape[:-1]:
        raise ValueError(
            f"target: expected shape {tuple(student.shape[:-1])} (student_logits "
            f"{tuple(student.shape)} without its class dimension), got {tuple(target.shape)}"
        )
    return target


@documented(
    Formula(
        name="kd_loss",
        summary="ℓ = α T² KL(softmax(t/T) ‖ softmax(s/T)) + (1 − α) CE(s, y)",
        loss=(
            "ℓ = α T² Σⱼ pᵗⱼ (log pᵗⱼ − log pˢⱼ) + (1 − α) (−log softmax(s)ᵧ)\n"
            "ℓ = T² Σⱼ pᵗⱼ (log pᵗⱼ − log pˢⱼ)        without a target (α is not used)\n"
            "ℓ = 0 for a row whose target is ignore_index; pᵗⱼ = 0 adds 0"
        ),
        gradient=(
            "∂ℓ/∂sⱼ = α T (pˢⱼ − pᵗⱼ) + (1 − α) (softmax(s)ⱼ − [j = y])\n"
            "∂ℓ/∂sⱼ = T (pˢⱼ − pᵗⱼ)                  without a target\n"
            "∂ℓ/∂t = 0: the teacher is a constant"
        ),
        symbols=(
            ("s, t", "student and teacher logits of one row"),
            ("pˢ, pᵗ", "softmax(s/T) and softmax(t/T)"),
            ("T", "temperature; T² keeps the soft gradient's scale independent of T"),
            ("α", "alpha, the weight of the soft term"),
            ("y", "the row's class index"),
        ),
    )
)
def kd_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    inplace_backward: bool = False,
) -> Tensor:
    """Compute the knowledge-distillation loss of Hinton et al. (2015), fused.

    The soft term is the KL divergence from the teacher's softened
    distribution to the student's, times ``T²`` so that its gradient keeps
    its size when the temperature changes. With a target it is mixed with
    the cross-entropy of the student on the hard labels, which has the
    semantics of :func:`lossgrad.cross_entropy` with class indices and
    ``ignore_index``. Each row's loss and gradient come from one pass.

    {formula}

    Reductions (a row is every position of the leading dimensions):

    - ``'batchmean'`` (default): the sum divided by the number of counted
      rows, those whose target is not ``ignore_index`` (every row without
      a target). When no row counts the result is 0 with a zero gradient.
    - ``'sum'``: the sum over the rows.
    - ``'none'``: the loss of each row, with the leading shape of the
      logits; ignored rows hold 0.

    ``'mean'`` raises ValueError, because PyTorch's KL ``'mean'`` divides by
    every element (rows × classes) and would be a different loss.

    Args:
        student_logits: the student's logits; the only input with a gradient.
        teacher_logits: the teacher's logits. They are detached: no gradient
            flows to them, and their ``.grad`` stays ``None`` even when they
            require grad.
        target: class indices for the hard term, or ``None`` for the soft
            term alone (then ``alpha`` is not used and the loss is
            ``T² KL``). Default: ``None``.
        temperature: ``T > 0``, the softmax temperature of the soft term.
            The hard term always uses temperature 1. Default: ``4.0``.
        alpha: weight of the soft term in ``[0, 1]``; the hard term gets
            ``1 − alpha``. Default: ``0.9``.
        ignore_index: rows whose target equals it drop out of both terms and
            of the ``'batchmean'`` count. Default: ``-100``.
        reduction: ``'batchmean'``, ``'sum'`` or ``'none'``.
            Default: ``'batchmean'``.
        inplace_backward: write the gradient over ``student_logits`` in the
            forward pass instead of a new buffer, saving one tensor of the
            logits' size. The logits are destroyed: after the call
            ``student_logits`` contains the gradient of the reduced loss,
            which backward multiplies by ``grad_output`` (in place unless the
            graph is retained) and passes on as the gradient of the logits,
            so a later read of them returns the gradient. Allowed only for
            contiguous logits that are the output of an operation (not a leaf
            that requires grad), and not under ``torch.func`` transforms or
            ``torch.compile``; otherwise ValueError. If an operation before
            the loss saved the logits for its own backward (``exp``,
            ``tanh``), that backward raises PyTorch's in-place modification
            error. Modifying ``student_logits`` between the forward and the
            backward raises a RuntimeError. Default: ``False``.

    Shape:
        - student_logits: ``(N, C)`` or ``(B, L, C)``; generally ``(*, C)``.
        - teacher_logits: the same shape as student_logits.
        - target: ``(N)`` or ``(B, L)``, the shape without the last dimension.
        - output: a scalar, or the shape of target for ``'none'``.

        where N is the batch size of a classifier, B and L are the batch size
        and sequence length of a sequence model, and C is the number of classes.

    Example::

        >>> student = torch.randn(8, 10, requires_grad=True)
        >>> teacher = torch.randn(8, 10)
        >>> target = torch.randint(10, (8,))
        >>> loss = lossgrad.kd_loss(student, teacher, target, temperature=2.0)
        >>> loss.backward()

    Notes:
        The computation runs in float32 for float16, bfloat16 and float32
        logits and in float64 for float64 logits. A student logit of
        ``-inf`` (a masked class) where the teacher probability is 0 adds 0
        to the loss and gets gradient 0; where the teacher probability is
        positive the loss is ``+inf``. Class indices are range-checked on
        CPU only, because the check reads the values.
    """
    _check_student_teacher(student_logits, teacher_logits)
    temperature = check_positive("temperature", temperature)
    alpha = check_in_range("alpha", alpha, 0.0, 1.0)
    ignore_index = _check_ignore_index(ignore_index)
    reduction = check_row_reduction("kd_loss", reduction)
    if target is not None:
        target = _check_row_target(target, student_logits)
        check_class_indices(target, student_logits.shape[-1], ignore_index)

    def make_rule(teacher_rows: Tensor, target_rows: Tensor | None, scale) -> RowRule:
        return kd_rule(
            teacher_rows,
            target_rows,
            temperature=temperature,
            alpha=alpha,
            ignore_index=ignore_index,
            scale=scale,
        )

    def triton_rows(student_rows, teacher_rows, target_rows, scale, inplace):
        return triton_ops.kd_rows(
            student_rows,
            teacher_rows,
            target_rows,
            temperature=temperature,
            alpha=alpha,
            ignore_index=ignore_index,
            scale=scale,
            inplace=inplace,
        )

    loss = _RowLoss("kd_loss", make_rule, triton_rows, ignore_index, reduction)
    if inplace_backward:
        _check_inplace(student_logits)
    value, _, _ = DistillRowsFunction.apply(
        student_logits, teacher_logits.detach(), target, loss, inplace_backward
    )
    return value


@documented(
    Formula(
        name="js_div",
        summary="ℓ = T² (β KL(pᵗ ‖ M) + (1 − β) KL(pˢ ‖ M)), M = β pᵗ + (1 − β) pˢ",
        loss=(
            "M = β pᵗ + (1 − β) pˢ\n"
            "ℓ = T² (β KL(pᵗ ‖ M) + (1 − β) KL(pˢ ‖ M))    0 < β < 1\n"
            "ℓ = T² KL(pᵗ ‖ pˢ)    β = 0 (forward KL, by definition)\n"
            "ℓ = T² KL(pˢ ‖ pᵗ)    β = 1 (reverse KL, by definition)\n"
            "ℓ = 0 for a row whose target is ignore_index; a zero probability adds 0"
        ),
        gradient=(
            "∂ℓ/∂sⱼ = T pˢⱼ (ψⱼ − Σᵢ pˢᵢ ψᵢ),   ψⱼ = (1 − β) log(pˢⱼ / Mⱼ)    0 < β < 1\n"
            "∂ℓ/∂sⱼ = T (pˢⱼ − pᵗⱼ)                                      β = 0\n"
            "∂ℓ/∂sⱼ = T pˢⱼ (ψⱼ − Σᵢ pˢᵢ ψᵢ),   ψⱼ = log(pˢⱼ / pᵗⱼ)      β = 1\n"
            "∂ℓ/∂t = 0: the teacher is a constant"
        ),
        symbols=(
            ("s, t", "student and teacher logits of one row"),
            ("pˢ, pᵗ", "softmax(s/T) and softmax(t/T)"),
            ("T", "temperature"),
            ("β", "beta, the teacher's weight in the mixture M"),
        ),
    )
)
def js_div(
    student_logits: Tensor,
    teacher_logits: Tensor,
    target: Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    reduction: str = "batchmean",
    inplace_backward: bool = False,
) -> Tensor:
    """Compute the generalised Jensen-Shannon divergence between student and teacher.

    The divergence of each distribution from their mixture ``M``, weighted by
    ``β``. At the ends the loss is defined as a KL divergence: the forward
    ``KL(pᵗ ‖ pˢ)`` at ``β = 0`` and the reverse ``KL(pˢ ‖ pᵗ)`` at ``β = 1``.
    Each row's loss and gradient come from one pass.

    {formula}

    Reductions (a row is every position of the leading dimensions):

    - ``'batchmean'`` (default): the sum divided by the number of counted
      rows, those whose target is not ``ignore_index`` (every row without
      a target). When no row counts the result is 0 with a zero gradient.
    - ``'sum'``: the sum over the rows.
    - ``'none'``: the loss of each row, with the leading shape of the
      logits; ignored rows hold 0.

    ``'mean'`` raises ValueError, as in :func:`kd_loss`.

    Args:
        student_logits: the student's logits; the only input with a gradient.
        teacher_logits: the teacher's logits. They are detached: no gradient
            flows to them, and their ``.grad`` stays ``None``.
        target: class indices, used only to drop the rows whose target is
            ``ignore_index``. No hard-label term is added, and the other
            values are neither used nor range-checked. Default: ``None``
            (every row counts).
        beta: ``β`` in ``[0, 1]``, the teacher's weight in the mixture.
            Default: ``0.5``.
        temperature: ``T > 0``, the softmax temperature of both
            distributions; the loss is scaled by ``T²``. Default: ``1.0``.
        ignore_index: rows whose target equals it drop out. Default: ``-100``.
        reduction: ``'batchmean'``, ``'sum'`` or ``'none'``.
            Default: ``'batchmean'``.
        inplace_backward: write the gradient over ``student_logits`` in the
            forward pass instead of a new buffer, saving one tensor of the
            logits' size. The logits are destroyed: after the call
            ``student_logits`` contains the gradient of the reduced loss,
            which backward multiplies by ``grad_output`` (in place unless the
            graph is retained) and passes on as the gradient of the logits,
            so a later read of them returns the gradient. Allowed only for
            contiguous logits that are the output of an operation (not a leaf
            that requires grad), and not under ``torch.func`` transforms or
            ``torch.compile``; otherwise ValueError. If an operation before
            the loss saved the logits for its own backward (``exp``,
            ``tanh``), that backward raises PyTorch's in-place modification
            error. Modifying ``student_logits`` between the forward and the
            backward raises a RuntimeError. Default: ``False``.

    Shape:
        - student_logits: ``(N, C)`` or ``(B, L, C)``; generally ``(*, C)``.
        - teacher_logits: the same shape as student_logits.
        - target: ``(N)`` or ``(B, L)``, the shape without the last dimension.
        - output: a scalar, or the shape of target for ``'none'``.

        where N is the batch size of a classifier, B and L are the batch size
        and sequence length of a sequence model, and C is the number of classes.

    Example::

        >>> student = torch.randn(8, 10, requires_grad=True)
        >>> teacher = torch.randn(8, 10)
        >>> loss = lossgrad.js_div(student, teacher, beta=0.5)
        >>> loss.backward()

    Notes:
        The mixed form tends to 0 at both ends of ``β``, so the loss jumps
        at ``β = 0`` and ``β = 1``, where it is defined as the KL divergences
        above. Divide by ``β (1 − β)`` for a form that is continuous in
        ``β``. Near the ends each log-ratio is computed with ``log1p`` and
        ``expm1``, so the value stays accurate as ``β`` approaches 0 or 1;
        within the compute dtype's machine epsilon of an end the first-order
        term ``β (1 − β) KL`` is used.
        For ``β = 1`` the loss is ``+inf`` (and the gradient NaN) where the
        teacher probability is 0 and the student's is not. The computation
        runs in float32 for half and float32 logits, float64 for float64.
    """
    _check_student_teacher(student_logits, teacher_logits)
    beta = check_in_range("beta", beta, 0.0, 1.0)
    temperature = check_positive("temperature", temperature)
    ignore_index = _check_ignore_index(ignore_index)
    reduction = check_row_reduction("js_div", reduction)
    if target is not None:
        target = _check_row_target(target, student_logits)

    def make_rule(teacher_rows: Tensor, target_rows: Tensor | None, scale) -> RowRule:
        return js_rule(
            teacher_rows,
            target_rows,
            beta=beta,
            temperature=temperature,
            ignore_index=ignore_index,
            scale=scale,
        )

    def triton_rows(student_rows, teacher_rows, target_rows, scale, inplace):
        return triton_ops.js_rows(
            student_rows,
            teacher_rows,
            target_rows,
            temperature=temperature,
            beta=beta,
            ignore_index=ignore_index,
            scale=scale,
            inplace=inplace,
        )

    loss = _RowLoss("js_div", make_rule, triton_rows, ignore_index, reduction)
    if inplace_backward:
        _check_inplace(student_logits)
    value, _, _ = DistillRowsFunction.apply(
        student_logits, teacher_logits.detach(), target, loss, inplace_backward
    )
    return value
