"""Triton kernels registered as PyTorch custom operators, and the GPU dispatch.

Each kernel launch is wrapped in a ``torch.library.custom_op`` with a fake
(meta) implementation, so that ``torch.compile(fullgraph=True)`` traces a loss
that calls it as one opaque node instead of breaking the graph. (``triton_op``
would let the compiler look inside, but it does not run under the Triton
interpreter, which is how these kernels are tested on CPU.)

The losses call :func:`use_triton` on their input: it is true for CUDA tensors
when Triton is installed, and on CPU tensors only when a test forces it while
``TRITON_INTERPRET=1``. Importing this module never fails: without Triton,
:data:`HAS_TRITON` is false and the ops are not registered.
"""

from __future__ import annotations

import os
from collections import Counter

import torch
from torch import Tensor

__all__ = [
    "HAS_TRITON",
    "combine_rows",
    "cross_entropy_rows",
    "force_triton",
    "js_rows",
    "kd_rows",
    "kl_div_pointwise",
    "pair_stats",
    "scale_rows_",
    "use_triton",
]

try:
    import triton

    from . import triton_pairs as pair_kernels
    from . import triton_softmax as kernels
except ImportError:  # Triton is an optional extra.
    HAS_TRITON = False
else:
    HAS_TRITON = True

_forced = False

# Kernel launches by kernel name, so that tests can tell that a loss really
# took the Triton path.
launch_counts: Counter[str] = Counter()


def force_triton(enabled: bool) -> None:
    """Route CPU tensors through the Triton kernels too (tests under the interpreter)."""
    global _forced
    if enabled and not HAS_TRITON:
        raise RuntimeError("force_triton(True): Triton is not installed")
    if enabled and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(
            "force_triton(True): CPU tensors need TRITON_INTERPRET=1, set before "
            "Triton is imported"
        )
    _forced = enabled


def use_triton(tensor: Tensor) -> bool:
    """Decide whether ``tensor``'s loss runs on the Triton kernels.

    The kernels compute in float32, so float64 tensors take the PyTorch path,
    which keeps float64. So do tensors under ``torch.func`` transforms,
    because the custom ops have no batching rule. ``LOSSGRAD_DISABLE_TRITON=1``
    turns the kernels off.
    """
    if not HAS_TRITON or os.environ.get("LOSSGRAD_DISABLE_TRITON") == "1":
        return False
    if tensor.dtype == torch.float64:
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    return tensor.is_cuda or _forced


def _block_and_warps(n_cols: int) -> tuple[int, int]:
    # A block of up to 4096 columns keeps the per-lane accumulators of the
    # widest kernel (seven float32 vectors) within the register file.
    block = min(triton.next_power_of_2(max(n_cols, 1)), 4096)
    return block, 8 if block >= 2048 else 4


def _scale_tensor(scale: Tensor | float, like: Tensor) -> Tensor:
    if isinstance(scale, Tensor):
        return scale.to(device=like.device, dtype=torch.float32).reshape(1)
    return torch.full((1,), float(scale), dtype=torch.float32, device=like.device)


def _launch_cross_entropy(logits, target, weight, scale, grad, ignore_index, label_smoothing):
    launch_counts["cross_entropy_rows"] += 1
    N, V = logits.shape
    loss = torch.empty(N, dtype=torch.float32, device=logits.device)
    if N == 0:
        return loss
    block, warps = _block_and_warps(V)
    kernels.cross_entropy_rows_kernel[(N,)](
        logits,
        logits.stride(0),
        target,
        target.stride(0),
        weight if weight is not None else logits,
        grad,
        grad.stride(0),
        loss,
        scale,
        V,
        ignore_index,
        label_smoothing,
        PROB_TARGET=target.is_floating_point(),
        HAS_WEIGHT=weight is not None,
        BLOCK=block,
        num_warps=warps,
    )
    return loss


def _launch_kd(student, teacher, target, scale, grad, temperature, alpha, ignore_index):
    launch_counts["kd_rows"] += 1
    N, V = student.shape
    loss = torch.empty(N, dtype=torch.float32, device=student.device)
    if N == 0:
        return loss
    block, warps = _block_and_warps(V)
    kernels.kd_rows_kernel[(N,)](
        student,
        student.stride(0),
        teacher,
        teacher.stride(0),
        target if target is not None else student,
        grad,
        grad.stride(0),
        loss,
        scale,
        V,
        1.0 / temperature,
        temperature,
        alpha if target is not None else 1.0,
        ignore_index,
        HAS_TARGET=target is not None,
        BLOCK=block,
        num_warps=warps,
    )
    return loss


def _launch_js(student, teacher, target, scale, grad, temperature, beta, ignore_index):
    launch_counts["js_rows"] += 1
    N, V = student.shape
    loss = torch.empty(N, dtype=torch.float32, device=student.device)
    if N == 0:
        return loss
    block, warps = _block_and_warps(V)
    if beta == 0.0:
        mode = kernels.JS_FORWARD_KL
    elif beta == 1.0:
        mode = kernels.JS_REVERSE_KL
    else:
        mode = kernels.JS_MIXED
    kernels.js_rows_kernel[(N,)](
        student,
        student.stride(0),
        teacher,
        teacher.stride(0),
        target if target is not None else student,
        grad,
        grad.stride(0),
        loss,
        scale,
        V,
        1.0 / temperature,
        temperature,
        beta,
        ignore_index,
        HAS_TARGET=target is not None,
        MODE=mode,
        BLOCK=block,
        num_warps=warps,
    )
    return loss


def _row_loss_like(logits: Tensor) -> Tensor:
    return logits.new_empty(logits.shape[0], dtype=torch.float32)


if HAS_TRITON:
    # Each row kernel is registered twice: a functional op that returns a new
    # gradient, and an in-place op that writes the gradient over the logits.
    # One op taking the logits and a gradient buffer that may be the same
    # tensor would be wrong under torch.compile, whose functionalisation
    # assumes that the arguments of a custom op do not alias each other.

    @torch.library.custom_op("lossgrad::cross_entropy_rows", mutates_args=())
    def _cross_entropy_rows(
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        scale: Tensor,
        ignore_index: int,
        label_smoothing: float,
    ) -> tuple[Tensor, Tensor]:
        grad = torch.empty_like(logits)
        loss = _launch_cross_entropy(
            logits, target, weight, scale, grad, ignore_index, label_smoothing
        )
        return loss, grad

    @_cross_entropy_rows.register_fake
    def _(logits, target, weight, scale, ignore_index, label_smoothing):
        return _row_loss_like(logits), torch.empty_like(logits)

    @torch.library.custom_op("lossgrad::cross_entropy_rows_", mutates_args=("logits",))
    def _cross_entropy_rows_(
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        scale: Tensor,
        ignore_index: int,
        label_smoothing: float,
    ) -> Tensor:
        return _launch_cross_entropy(
            logits, target, weight, scale, logits, ignore_index, label_smoothing
        )

    @_cross_entropy_rows_.register_fake
    def _(logits, target, weight, scale, ignore_index, label_smoothing):
        return _row_loss_like(logits)

    @torch.library.custom_op("lossgrad::kd_rows", mutates_args=())
    def _kd_rows(
        student: Tensor,
        teacher: Tensor,
        target: Tensor | None,
        scale: Tensor,
        temperature: float,
        alpha: float,
        ignore_index: int,
    ) -> tuple[Tensor, Tensor]:
        grad = torch.empty_like(student)
        loss = _launch_kd(
            student, teacher, target, scale, grad, temperature, alpha, ignore_index
        )
        return loss, grad

    @_kd_rows.register_fake
    def _(student, teacher, target, scale, temperature, alpha, ignore_index):
        return _row_loss_like(student), torch.empty_like(student)

    @torch.library.custom_op("lossgrad::kd_rows_", mutates_args=("student",))
    def _kd_rows_(
        student: Tensor,
        teacher: Tensor,
        target: Tensor | None,
        scale: Tensor,
        temperature: float,
        alpha: float,
        ignore_index: int,
    ) -> Tensor:
        return _launch_kd(
            student, teacher, target, scale, student, temperature, alpha, ignore_index
        )

    @_kd_rows_.register_fake
    def _(student, teacher, target, scale, temperature, alpha, ignore_index):
        return _row_loss_like(student)

    @torch.library.custom_op("lossgrad::js_rows", mutates_args=())
    def _js_rows(
        student: Tensor,
        teacher: Tensor,
        target: Tensor | None,
        scale: Tensor,
        temperature: float,
        beta: float,
        ignore_index: int,
    ) -> tuple[Tensor, Tensor]:
        grad = torch.empty_like(student)
        loss = _launch_js(
            student, teacher, target, scale, grad, temperature, beta, ignore_index
        )
        return loss, grad

    @_js_rows.register_fake
    def _(student, teacher, target, scale, temperature, beta, ignore_index):
        return _row_loss_like(student), torch.empty_like(student)

    @torch.library.custom_op("lossgrad::js_rows_", mutates_args=("student",))
    def _js_rows_(
        student: Tensor,
        teacher: Tensor,
        target: Tensor | None,
        scale: Tensor,
        temperature: float,
        beta: float,
        ignore_index: int,
    ) -> Tensor:
        return _launch_js(
            student, teacher, target, scale, student, temperature, beta, ignore_index
        )

    @_js_rows_.register_fake
    def _(student, teacher, target, scale, temperature, beta, ignore_index):
        return _row_loss_like(student)

    @torch.library.custom_op("lossgrad::kl_div_pointwise", mutates_args=())
    def _kl_div_pointwise(
        input: Tensor, target: Tensor, log_target: bool
    ) -> tuple[Tensor, Tensor]:
        launch_counts["kl_div_pointwise"] += 1
        flat_input = input.contiguous().view(-1)
        flat_target = target.contiguous().view(-1)
        loss = torch.empty(flat_input.shape, dtype=torch.float32, device=input.device)
        grad = torch.empty_like(flat_input)
        n = flat_input.numel()
        if n:
            block = 1024
            kernels.kl_div_kernel[(triton.cdiv(n, block),)](
                flat_input, flat_target, loss, grad, n, LOG_TARGET=log_target, BLOCK=block
            )
        return loss.view(input.shape), grad.view(input.shape)

    @_kl_div_pointwise.register_fake
    def _(input, target, log_target):
        return input.new_empty(input.shape, dtype=torch.float32), torch.empty_like(input)

    @torch.library.custom_op("lossgrad::scale_rows_", mutates_args=("grad",))
    def _scale_rows_(grad: Tensor, factor: Tensor) -> None:
        launch_counts["scale_rows"] += 1
        N, V = grad.shape
        if N == 0:
            return
        factor = factor.to(torch.float32).reshape(-1)
        stride = 0 if factor.numel() == 1 else factor.stride(0)
        block, warps = _block_and_warps(V)
        kernels.scale_rows_kernel[(N,)](
            grad, grad.stride(0), factor, stride, V, BLOCK=block, num_warps=warps
        )

    @_scale_rows_.register_fake
    def _(grad, factor):
        return None

    @torch.library.custom_op("lossgrad::pair_stats", mutates_args=())
    def _pair_stats(a: Tensor, b: Tensor) -> Tensor:
        launch_counts["pair_stats"] += 1
        N, D = a.shape
        stats = torch.empty(N, 4, dtype=torch.float32, device=a.device)
        if N:
            block, warps = _block_and_warps(D)
            pair_kernels.pair_stats_kernel[(N,)](
                a, a.stride(0), b, b.stride(0), stats, D, BLOCK=block, num_warps=warps
            )
        return stats

    @_pair_stats.register_fake
    def _(a, b):
        return a.new_empty(a.shape[0], 4, dtype=torch.float32)

    @torch.library.custom_op("lossgrad::combine_rows", mutates_args=())
    def _combine_rows(
        x: Tensor, y: Tensor, z: Tensor | None, coef: Tensor
    ) -> list[Tensor]:
        launch_counts["combine_rows"] += 1
        N, D = x.shape
        gx, gy = torch.empty_like(x), torch.empty_like(y)
        gz = torch.empty_like(z) if z is not None else gx
        if N:
            block, warps = _block_and_warps(D)
            pair_kernels.combine_rows_kernel[(N,)](
                x, y, z if z is not None else x, x.stride(0), coef, gx, gy, gz, D,
                HAS_Z=z is not None, BLOCK=block, num_warps=warps,
            )
        return [gx, gy, gz] if z is not None else [gx, gy]

    @_combine_rows.register_fake
    def _(x, y, z, coef):
        outs = [torch.empty_like(x), torch.empty_like(y)]
        return outs + [torch.empty_like(z)] if z is not None else outs


def cross_entropy_rows(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    *,
    ignore_index: int,
    label_smoothing: float,
    scale: Tensor | float = 1.0,
    inplace: bool = False,
) -> tuple[Tensor, Tensor]:
    """Return (loss per row, scaled gradient) of cross-entropy over ``N x V`` logits.

    ``target`` contains class indices (N,) or probabilities (N, V). The gradient
    is written over ``logits`` when ``inplace``.
    """
    scale = _scale_tensor(scale, logits)
    if inplace:
        loss = torch.ops.lossgrad.cross_entropy_rows_(
            logits, target, weight, scale, ignore_index, label_smoothing
        )
        return loss, logits
    return torch.ops.lossgrad.cross_entropy_rows(
        logits, target, weight, scale, ignore_index, label_smoothing
    )


def kd_rows(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    *,
    temperature: float,
    alpha: float,
    ignore_index: int,
    scale: Tensor | float = 1.0,
    inplace: bool = False,
) -> tuple[Tensor, Tensor]:
    """Return (loss per row, scaled student gradient) of the distillation loss."""
    scale = _scale_tensor(scale, student)
    if inplace:
        loss = torch.ops.lossgrad.kd_rows_(
            student, teacher, target, scale, temperature, alpha, ignore_index
        )
        return loss, student
    return torch.ops.lossgrad.kd_rows(
        student, teacher, target, scale, temperature, alpha, ignore_index
    )


def js_rows(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    *,
    temperature: float,
    beta: float,
    ignore_index: int,
    scale: Tensor | float = 1.0,
    inplace: bool = False,
) -> tuple[Tensor, Tensor]:
    """Return (loss per row, scaled student gradient) of the generalised JSD."""
    scale = _scale_tensor(scale, student)
    if inplace:
        loss = torch.ops.lossgrad.js_rows_(
            student, teacher, target, scale, temperature, beta, ignore_index
        )
        return loss, student
    return torch.ops.lossgrad.js_rows(
        student, teacher, target, scale, temperature, beta, ignore_index
    )


def kl_div_pointwise(input: Tensor, target: Tensor, *, log_target: bool) -> tuple[Tensor, Tensor]:
    """Return (pointwise KL loss in float32, gradient wrt input)."""
    return torch.ops.lossgrad.kl_div_pointwise(input, target, log_target)


def scale_rows_(grad: Tensor, factor: Tensor) -> Tensor:
    """Multiply the rows of ``grad`` in place by ``factor`` (scalar or one per row)."""
    torch.ops.lossgrad.scale_rows_(grad, factor)
    return grad


def pair_stats(a: Tensor, b: Tensor) -> Tensor:
    """Return ``N x 4`` float32 rows (a·b, |a|², |b|², |a − b|²) of contiguous ``N x D`` rows."""
    return torch.ops.lossgrad.pair_stats(a.contiguous(), b.contiguous())


def combine_rows(rows: list[Tensor], coef: Tensor) -> list[Tensor]:
    """Return, for each input row, Σ_k coef[n, 3i + k]·rows[k][n] (see triton_pairs)."""
    rows = [r.contiguous() for r in rows]
    z = rows[2] if len(rows) == 3 else None
    coef = coef.to(torch.float32).contiguous()
    return list(torch.ops.lossgrad.combine_rows(rows[0], rows[1], z, coef))
