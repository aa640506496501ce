"""Classification losses: softmax cross-entropy and the two binary cross-entropies.

Each loss computes its value and its closed-form gradient in one forward pass
and saves only the gradient. Backward multiplies that gradient by
``grad_output`` and by the reduction factor, unless the forward pass has
applied that factor already (cross_entropy on CPU).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._autograd import refuse_double_backward
from .._checks import (
    check_class_indices,
    check_class_weight,
    check_float_tensor,
    check_in_range,
    check_no_legacy_reduction,
    check_reduction,
    check_same_shape,
    check_tensor,
    should_validate_values,
    to_input_dtype,
)
from .._formula import Formula, documented
from .._kernels import triton_ops
from .._kernels.cross_entropy_rule import can_read_values, cross_entropy_rule, mean_denominator
from .._kernels.rows import fused_rows
from .._reduction import accumulate_dtype, grad_scale, reduce_loss, safe_denominator

__all__ = ["binary_cross_entropy", "binary_cross_entropy_with_logits", "cross_entropy"]

# PyTorch clamps the logarithms of binary_cross_entropy at -100 and divides its
# gradient by max(p (1 - p), 1e-12), with 1e-12 held as a float32 constant
# (9.99999996e-13) in every dtype (ATen's Loss.cpp, PyTorch 2.13).
_BCE_LOG_MIN = -100.0
_BCE_GRAD_EPS = float(torch.tensor(1e-12, dtype=torch.float32))


# Shared pieces of the three Functions.


def _reduce(loss: Tensor, reduction: str, denominator: Tensor, dtype: torch.dtype) -> Tensor:
    """Reduce per-row losses; a ``mean`` over nothing (denominator 0) is 0."""
    value = reduce_loss(loss, reduction, denominator)
    if reduction == "mean":
        value = value * (denominator > 0)
    return value.to(dtype)


def _output_scale(ctx, grad_output: Tensor, compute: torch.dtype) -> Tensor:
    """Return the factor of the saved gradient: ``grad_output`` over the normaliser."""
    scale = grad_scale(grad_output, ctx.reduction, ctx.denominator, dtype=compute)
    if ctx.reduction == "mean":
        scale = scale * (ctx.denominator > 0)
    return scale


def _scale_gradient(grad: Tensor, scale: Tensor, unit: bool = False) -> Tensor:
    """Multiply the saved gradient by ``scale`` in the compute dtype.

    The product overwrites the saved gradient when this backward is its last
    use, which saves a tensor of the input's size. When the graph is kept
    (``retain_graph=True``, ``gradcheck``, ``torch.func.vjp``) a new tensor
    is returned so that the saved gradient survives for the next backward.
    ``unit`` means that ``scale`` is 1 everywhere: the last backward then
    returns the saved gradient without a pass over it. A kept graph still
    gets a copy, because the caller may add to the returned tensor in place
    (a leaf's ``.grad`` accumulates into it).
    """
    compute = accumulate_dtype(grad.dtype)
    if unit:
        return grad if _is_last_backward() else grad.clone()
    if _is_last_backward():
        if grad.dtype == compute:
            return grad.mul_(scale)
        return grad.copy_(grad.to(compute).mul_(scale))
    if grad.dtype == compute:
        return grad * scale
    return (grad.to(compute) * scale).to(grad.dtype)


def _all_ones(grad_output: Tensor) -> bool:
    """Return whether every entry of ``grad_output`` is exactly 1.

    The values are read only where that is cheap and allowed (CPU, eager, no
    torch.func transform). Elsewhere the result is False, so the caller
    multiplies as usual.
    """
    if not can_read_values(grad_output):
        return False
    if grad_output.numel() == 1:
        return grad_output.item() == 1
    return bool((grad_output == 1).all())


def _is_last_backward() -> bool:
    """Return whether the running backward frees the graph after itself.

    NOTE: this reads a private PyTorch hook, present in 2.13 where the
    torch.compile runtime uses it too, and returns False when it is missing.
    It also returns False under torch.compile, which cannot trace the hook
    and plans the memory itself, and under torch.func transforms.
    """
    keep_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if keep_graph is None or torch.compiler.is_compiling():
        return False
    if torch._C._are_functorch_transforms_active():
        return False
    return not keep_graph()


def _check_no_grad_required(name: str, tensor: Tensor | None) -> None:
    if tensor is not None and tensor.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            f"{name}: gradients with respect to {name} are not supported; expected a "
            f"tensor that does not require grad, got requires_grad=True. Pass {name}.detach()"
        )


def _check_element_weight(name: str, tensor: Tensor | None, input: Tensor) -> None:
    """Raise unless ``tensor`` is None or a float tensor that broadcasts to the input.

    On the CPU it must also be non-negative. Elsewhere the values are not read,
    because that would synchronise with the host.
    """
    if tensor is None:
        return
    check_float_tensor(name, tensor)
    if tensor.numel() and should_validate_values(tensor, None) and bool((tensor < 0).any()):
        bad = tensor[tensor < 0].flatten()[0].item()
        raise ValueError(f"{name}: expected non-negative weights, got {bad}")
    try:
        shape = torch.broadcast_shapes(tensor.shape, input.shape)
    except RuntimeError:
        shape = None
    if shape != input.shape:
        raise ValueError(
            f"{name}: expected a shape that broadcasts to the input's shape "
            f"{tuple(input.shape)}, got {tuple(tensor.shape)}"
        )


# Softmax cross-entropy.

# Size of one chunk of rows for the CPU row kernel, in float32 bytes. Its
# passes then run in a per-core L2 cache of 1-2 MiB, and the chunk is large
# enough that the Python overhead of about ten tensor ops stays small next to
# the work. With N = 4096 and V = 32000 on a 2-core Xeon, 0.5 and 1 MiB timed
# about the same and 2 MiB and more were slower (scratch benchmark, not in
# the repository).
_CHUNK_BYTES = 1024 * 1024


def _mean_factor(reduction: str, denominator: Tensor) -> Tensor | None:
    """Return 1 / the normaliser of ``mean`` (0 when nothing counts), else None."""
    if reduction != "mean":
        return None
    return (denominator > 0) / safe_denominator(denominator)


def _batched_like_inputs(logits: Tensor, target: Tensor, weight: Tensor | None) -> Tensor:
    """Return a copy of ``logits`` that vmap batches wherever any input is batched.

    The row rule writes values computed from the targets and weights into the
    gradient buffer in place. Under vmap that buffer must therefore be batched
    even when only the targets or the weights are vmapped.
    """
    zeros = torch.zeros_like(target, dtype=logits.dtype)
    if not target.is_floating_point():
        zeros = zeros.unsqueeze(-1)  # R x 1
    logits = logits + zeros
    if weight is not None:
        logits = logits + torch.zeros_like(weight, dtype=logits.dtype)
    return logits


class _CrossEntropyFunction(torch.autograd.Function):
    """Cross-entropy over rows of logits (``R x C``), loss and gradient in one pass."""

    generate_vmap_rule = True

    @staticmethod
    def forward(logits, target, weight, ignore_index, label_smoothing, reduction, inplace):
        compute = accumulate_dtype(logits.dtype)
        if torch._C._are_functorch_transforms_active():
            logits = _batched_like_inputs(logits, target, weight)
        denominator = mean_denominator(target, weight, ignore_index, compute)
        if triton_ops.use_triton(logits):
            row_loss, grad = triton_ops.cross_entropy_rows(
                logits,
                target,
                weight,
                ignore_index=ignore_index,
                label_smoothing=label_smoothing,
                inplace=inplace,
            )
        else:
            # The gradient leaves the forward pass already divided by the
            # normaliser of mean, so a grad_output of 1 needs no pass in backward.
            rule = cross_entropy_rule(
                target,
                weight,
                ignore_index,
                label_smoothing,
                grad_scale=_mean_factor(reduction, denominator),
                fused=True,
            )
            row_loss, grad = fused_rows(
                logits,
                rule,
                inplace=inplace,
                chunk_bytes=_CHUNK_BYTES,
                huge_pages=True,
                parallel=True,
            )
        loss = _reduce(row_loss, reduction, denominator, logits.dtype)
        if inplace:
            # The gradient now lives in ``logits``; setup_context keeps that tensor.
            grad = logits.new_empty(0)
        return loss, grad, denominator

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, target, weight, _, label_smoothing, reduction, inplace = inputs
        _, grad, denominator = output
        ctx.mark_non_differentiable(grad, denominator)
        # Autograd would otherwise fill an N x C tensor of zeros as the unused
        # gradient of ``grad``, a full pass over memory in every backward.
        ctx.set_materialize_grads(False)
        ctx.reduction = reduction
        ctx.label_smoothing = label_smoothing
        ctx.denominator = denominator
        ctx.inplace = inplace
        ctx.prescaled = not triton_ops.use_triton(logits)
        if inplace:
            # Kept on ctx rather than saved, so that backward checks the version
            # itself and raises an error that names inplace_backward.
            ctx.logits = logits
            ctx.logits_version = logits._version
        else:
            ctx.save_for_backward(grad)
        if ctx.needs_input_grad[1]:
            # The target gradient (probability targets) needs the logits again.
            ctx.weight = weight
            ctx.logits_for_target = logits
            ctx.target_dtype = target.dtype

    @staticmethod
    def backward(ctx, grad_loss, _grad_of_grad, _grad_of_denominator):
        refuse_double_backward("cross_entropy")
        if grad_loss is None:  # the loss got no gradient: every input's is zero
            return (None,) * 7
        compute = accumulate_dtype(grad_loss.dtype)
        scale = _output_scale(ctx, grad_loss, compute)
        # The CPU forward has divided the saved gradient by the normaliser already.
        logits_scale = grad_loss.to(compute) if ctx.prescaled else scale
        if ctx.reduction == "none":
            scale = scale.unsqueeze(-1)  # R x 1, one upstream gradient per row
            logits_scale = logits_scale.unsqueeze(-1)
        unit = ctx.prescaled and _all_ones(grad_loss)

        grad_logits = None
        if ctx.needs_input_grad[0]:
            if ctx.inplace:
                if ctx.logits._version != ctx.logits_version:
                    raise RuntimeError(
                        "cross_entropy(inplace_backward=True): the logits tensor, which "
                        "holds the gradient after the forward pass, was modified before "
                        "backward. Leave it untouched until backward, or use "
                        "inplace_backward=False"
                    )
                grad_logits = _scale_gradient(ctx.logits, logits_scale, unit)
            else:
                (grad,) = ctx.saved_tensors
                grad_logits = _scale_gradient(grad, logits_scale, unit)

        grad_target = None
        if ctx.needs_input_grad[1]:
            # ∂ℓ/∂y_c = (1 − ε) w_c (lse − x_c) = −(1 − ε) w_c log p_c
            logits = ctx.logits_for_target
            log_p = torch.log_softmax(logits.to(compute), dim=-1)
            grad_target = log_p.mul_(-(1.0 - ctx.label_smoothing) * scale)
            if ctx.weight is not None:
                grad_target = grad_target * ctx.weight.to(compute)
            grad_target = grad_target.to(ctx.target_dtype)
        return grad_logits, grad_target, None, None, None, None, None


def _check_inplace(input: Tensor, target: Tensor) -> None:
    """Raise unless the gradient can be written over ``input`` safely."""
    if input.requires_grad and input.is_leaf:
        raise ValueError(
            "inplace_backward: expected logits computed by an operation, got a leaf "
            "tensor that requires grad; overwriting it would destroy a parameter. "
            "Use inplace_backward=False"
        )
    if input.dim() != 2 or input.stride(-1) != 1:
        raise ValueError(
            "inplace_backward: expected 2-D logits (N, C) with contiguous rows, got shape "
            f"{tuple(input.shape)} and strides {input.stride()}; use inplace_backward=False"
        )
    if target.requires_grad:
        raise ValueError(
            "inplace_backward: the target gradient needs the logits, which the gradient "
            "overwrites; expected a target that does not require grad"
        )
    if torch._C._are_functorch_transforms_active() or torch.compiler.is_compiling():
        raise ValueError(
            "inplace_backward: not supported under torch.func transforms or "
            "torch.compile; use inplace_backward=False"
        )


def _check_class_weight_values(weight: Tensor | None, validate: bool | None) -> None:
    """Check the weight signs off the CPU too when ``validate=True``."""
    if weight is None or weight.device.type == "cpu" or not validate:
        return
    if bool((weight < 0).any()):
        bad = weight[weight < 0][0].item()
        raise ValueError(f"weight: expected non-negative class weights, got {bad}")


@documented(
    Formula(
        name="cross_entropy",
        summary="ℓ = −Σ_c w_c q_c log softmax(x)_c, q the (smoothed) target distribution",
        loss=(
            "class index y:     ℓ = (1 − ε) w_y (−log p_y) + (ε/K) Σ_c w_c (−log p_c)\n"
            "probabilities y:   ℓ = Σ_c w_c q_c (−log p_c),  q_c = (1 − ε) y_c + ε/K\n"
            "p = softmax(x);  the sums and ε/K run over the K classes with x_c ≠ −∞"
        ),
        gradient=(
            "∂ℓ/∂x_j = p_j Σ_c w_c q_c − w_j q_j\n"
            "class index y:  (1 − ε) w_y (p_j − [j = y]) + (ε/K)(p_j Σ_c w_c − w_j)\n"
            "∂ℓ/∂y_c = −(1 − ε) w_c log p_c   (probability targets)"
        ),
        symbols=(
            ("x", "logits of one row (C classes)"),
            ("y", "target class index, or target probabilities"),
            ("q", "target distribution, q_c = (1 − ε)[c = y] + ε/K for a class index"),
            ("w", "class weights (all 1 without weight)"),
            ("ε", "label_smoothing"),
            ("K", "number of classes whose logit is not −∞ (C without masking)"),
            ("[j = y]", "1 if j = y, else 0"),
        ),
    )
)
def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    inplace_backward: bool = False,
    validate: bool | None = None,
) -> Tensor:
    """Softmax cross-entropy between logits and class indices or class probabilities.

    {formula}

    Reductions:
        ``none``: the loss of each row, in the batch shape (``N`` or
        ``N, d1, ...``; a 0-dim tensor for a ``(C,)`` input).
        ``sum``: the sum over rows.
        ``mean``: the sum divided by Σ w_{y_n} over the rows whose target is
        not ``ignore_index`` (their number without ``weight``). For
        probability targets it divides by the number of rows whatever the
        weights, as PyTorch does. When that normaliser is 0 (an empty batch,
        every row ignored, a zero total weight) the result is 0 with a zero
        gradient, still connected to the graph.

    Args:
        input: logits, unnormalised.
        target: class indices (integer dtype) in ``[0, C)`` or equal to
            ``ignore_index``, or probabilities (floating dtype) of the input's
            shape.
        weight: class weights of shape ``(C,)``, non-negative. Default: ``None``.
        size_average: deprecated in PyTorch; must be ``None``.
        ignore_index: target value whose rows get loss 0 and gradient 0
            (class indices only). Default: ``-100``.
        reduce: deprecated in PyTorch; must be ``None``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        label_smoothing: ``ε`` in ``[0, 1]``. Default: ``0.0``.
        inplace_backward: write the gradient over ``input`` in the forward
            pass instead of a new buffer, saving one ``N x C`` tensor. The
            logits are destroyed: after the call ``input`` contains the
            gradient for ``grad_output`` 1 (on CUDA, before the division by
            the normaliser of ``mean``). Backward scales it (in place unless
            the graph is retained) and passes it on as the gradient of the
            logits.
            Allowed only for 2-D logits with contiguous rows that are the
            output of an operation (not a leaf that requires grad), and not
            under ``torch.func`` transforms or ``torch.compile``. If an operation before the loss saved the
            logits for its own backward (``exp``, ``tanh``), that backward
            raises PyTorch's in-place modification error. Modifying ``input``
            between the forward and the backward raises a RuntimeError.
            Default: ``False``.
        validate: check the values of ``target`` (class indices in range).
            ``None`` checks on CPU only, because on CUDA reading values
            synchronises with the host; pass ``True`` to check on CUDA too
            (the signs of a CUDA ``weight`` are then checked as well) and
            ``False`` to skip the target check. The signs of a CPU ``weight``
            are always checked. Default: ``None``.

    Shape:
        - input: ``(C)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``.
        - target: class indices ``()``, ``(N)`` or ``(N, d1, ..., dK)``;
          probabilities the same shape as input.
        - output: a scalar, or for ``reduction="none"`` the target's batch
          shape ``()``, ``(N)`` or ``(N, d1, ..., dK)``.

        where N is the batch size, C the number of classes and d1 ... dK
        further dimensions (pixels, tokens).

    Example::

        >>> import lossgrad
        >>> logits = torch.randn(4, 10, requires_grad=True)
        >>> target = torch.tensor([1, 0, 9, -100])
        >>> loss = lossgrad.cross_entropy(logits, target, label_smoothing=0.1)
        >>> loss.backward()

    Differences from PyTorch 2.13:
        - Logits of ``-inf`` mark classes as impossible: they get probability
          0 and gradient 0, and label smoothing spreads its mass over the
          other K classes only (PyTorch spreads it over all C and returns
          inf). A row whose target logit is ``-inf`` has loss ``+inf`` and a
          finite gradient. An ignored row has gradient exactly 0 for any logits
          that are finite or ``-inf`` (a NaN or ``+inf`` logit in it still
          gives NaN in its gradient row, though not in the loss).
          With probability targets a class with w_c q_c = 0 adds 0 even where
          its logit is ``-inf`` (PyTorch returns NaN).
        - ``mean`` over nothing is 0, not NaN.
        - ``size_average``/``reduce`` other than ``None`` raise ValueError.
        - Gradients with respect to ``weight`` are not supported, and
          double backward raises.
        - float16 and bfloat16 logits are computed and summed in float32 and
          the loss is returned in the input's dtype, so a float16 mean is
          finite whenever the mean itself fits in float16.
        - Under ``torch.autocast``, PyTorch runs cross_entropy in float32.
          lossgrad's function is not on autocast's lists, so it receives the
          logits in whatever dtype the autocast region produced (float16 or
          bfloat16 from a matmul), computes in float32 either way, and returns
          the loss and the gradient in that dtype.
    """
    # 1. Arguments and options.
    check_float_tensor("input", input)
    check_tensor("target", target)
    check_no_legacy_reduction(size_average, reduce)
    check_reduction(reduction)
    eps = check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    if input.dim() == 0:
        raise ValueError(
            "input: expected logits of shape (C), (N, C) or (N, C, d1, ...), got a 0-dim tensor"
        )
    class_dim = 0 if input.dim() == 1 else 1
    C = input.shape[class_dim]
    if C == 0:
        raise ValueError(f"input: expected at least one class, got shape {tuple(input.shape)}")
    batch_shape = input.shape[:class_dim] + input.shape[class_dim + 1 :]

    # 2. Targets and weights.
    probabilities = target.is_floating_point() and target.shape == input.shape
    if target.is_floating_point() and target.shape not in (input.shape, batch_shape):
        raise ValueError(
            f"target: expected probabilities of the input's shape {tuple(input.shape)} or "
            f"class indices of shape {tuple(batch_shape)}, got a {target.dtype} tensor of "
            f"shape {tuple(target.shape)}"
        )
    if not probabilities:
        check_class_indices(target, C, ignore_index, validate=validate)
        if target.shape != batch_shape:
            raise ValueError(
                f"target: expected class indices of shape {tuple(batch_shape)} or "
                f"probabilities of shape {tuple(input.shape)}, got {tuple(target.shape)}"
            )
    check_class_weight(weight, C)
    _check_class_weight_values(weight, validate)
    _check_no_grad_required("weight", weight)
    if inplace_backward:
        _check_inplace(input, target)

    # 3. Rows of logits (R x C): the class dimension last, the rest flattened.
    if input.dim() == 1:
        rows = input.unsqueeze(0)
        target_rows = target.unsqueeze(0) if probabilities else target.reshape(1)
    elif input.dim() == 2:
        rows, target_rows = input, target
    else:
        rows = input.movedim(1, -1).reshape(-1, C)
        target_rows = target.movedim(1, -1).reshape(-1, C) if probabilities else target.reshape(-1)
    if rows.stride(-1) != 1:
        rows = rows.contiguous()

    # 4. Loss and gradient in one pass.
    loss, _, _ = _CrossEntropyFunction.apply(
        rows, target_rows, weight, ignore_index, eps, reduction, inplace_backward
    )
    if reduction == "none":
        loss = loss.reshape(batch_shape)
    return loss


# Binary cross-entropy on logits.


def _log_sigmoid_of_abs(x: Tensor) -> Tensor:
    """Return log σ(|x|) = −log1p(e^(−|x|)) in a new tensor, accurate for any x.

    softplus with β = −1 is (1/β)·log1p(e^(β·|x|)), which is this value, and
    β·|x| ≤ 0 keeps it off softplus's linear branch. Written over |x|, it
    takes two passes and one buffer. The op count matters because on a
    loaded 2-core machine every parallel op can wait for a descheduled
    thread. NOTE: ``out=`` comes from the native binding behind
    ``F.softplus`` (PyTorch 2.13), whose documentation does not list it.
    """
    magnitude = x.abs()
    return torch.nn.functional.softplus(magnitude, beta=-1, out=magnitude)


def _bce_with_logits_unguarded(
    x: Tensor,
    y: Tensor,
    pos_weight: Tensor | None,
    weight: Tensor | None,
    keep_elements: bool,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Return Σℓ, the per-element loss ℓ (``None`` unless ``keep_elements``) and ∂ℓ/∂x.

    With a = log1p(e^(−|x|)), softplus(x) = relu(x) + a and
    softplus(−x) = relu(−x) + a, so ℓ = w·[(pw·y + 1 − y)·a + hinge], where
    hinge is relu(x) − y·x, or (1 − y)·relu(x) + pw·y·relu(−x) with
    pos_weight. Both parts are sums of non-negative products (for targets
    in [0, 1]), so neither part nor their sum cancels, and a hard label
    gives exactly a plus one relu. Without ``keep_elements`` the two parts
    are summed apart, which lets one buffer hold the a term, the hinge and
    then the gradient. A logit of ±inf makes 0 · ∞, which is NaN: the caller
    then uses :func:`_bce_with_logits_guarded`. The ops work in place on
    temporaries, which vmap cannot batch, so this runs only where
    :func:`can_read_values` holds.
    """
    scratch = _log_sigmoid_of_abs(x)  # −a
    if pos_weight is not None:
        positive = pos_weight * y  # pw·y
        negative = 1 - y
        coefficient = positive + negative  # pw·y + 1 − y
        scratch.mul_(coefficient)
    if weight is not None:
        scratch.mul_(weight)
    if keep_elements:
        hinge = x.clamp(min=0)
    else:
        negative_tail_total = scratch.sum()
        hinge = torch.clamp(x, min=0, out=scratch)
    if pos_weight is None:
        hinge.addcmul_(y, x, value=-1)
    else:
        hinge.mul_(negative).addcmul_(x.clamp(max=0), positive, value=-1)
    if weight is not None:
        hinge.mul_(weight)
    if keep_elements:
        loss = hinge.sub_(scratch)
        total = loss.sum()
        grad = torch.sigmoid(x, out=scratch)  # −a is no longer needed
    else:
        loss = None
        total = hinge.sum() - negative_tail_total
        grad = torch.sigmoid(x, out=hinge)  # the hinge is summed already
    # ∂ℓ/∂x = w·[(pw·y + 1 − y)·σ(x) − pw·y], which is w·(σ(x) − y) without pos_weight
    if pos_weight is None:
        grad.sub_(y)
    else:
        grad.mul_(coefficient).sub_(positive)
    if weight is not None:
        grad.mul_(weight)
    return total, loss, grad


def _bce_with_logits_guarded(
    x: Tensor, y: Tensor, pos_weight: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Return the per-element loss and ∂ℓ/∂x, with 0 · softplus(±∞) taken as 0."""
    # softplus(±x) = relu(±x) + log1p(exp(−|x|)): −log σ(x) = softplus(−x)
    # and −log(1 − σ(x)) = softplus(x), finite for any finite x.
    tail = x.abs().neg_().exp_().log1p_()
    softplus_neg = torch.relu(-x).add_(tail)
    softplus_pos = torch.relu(x).add_(tail)
    sigmoid = torch.sigmoid(x)
    positive = y if pos_weight is None else pos_weight * y
    negative = 1 - y
    # A term whose coefficient is 0 is 0 even where its softplus is +inf
    # (x = ±inf with the matching label), so the loss is 0 there, not NaN.
    loss = torch.where(positive == 0, 0.0, positive * softplus_neg)
    loss += torch.where(negative == 0, 0.0, negative * softplus_pos)
    # ∂ℓ/∂x = −pw·y·σ(−x) + (1 − y)·σ(x) = (pw·y + 1 − y)·σ(x) − pw·y
    grad = (positive + negative).mul_(sigmoid).sub_(positive)
    return loss, grad


class _BCEWithLogitsFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight, pos_weight, reduction):
        compute = accumulate_dtype(input.dtype)
        x = input.to(compute)
        y = target.to(compute)
        pw = None if pos_weight is None else pos_weight.to(compute)
        w = None if weight is None else weight.to(compute)
        denominator = torch.full((), x.numel(), dtype=compute, device=x.device)
        if can_read_values(x):
            # The unguarded form is NaN only where a logit is ±inf or an input
            # is NaN. A non-finite total therefore sends the call to the
            # guarded form, which gives those elements their value.
            total, loss, grad = _bce_with_logits_unguarded(x, y, pw, w, reduction == "none")
            if math.isfinite(total.item()):
                # The sum of a 0-d tensor is itself, so _reduce reuses the total.
                summed = loss if reduction == "none" else total
                value = _reduce(summed, reduction, denominator, input.dtype)
                return value, grad.to(input.dtype), denominator
        loss, grad = _bce_with_logits_guarded(x, y, pw)
        if w is not None:
            loss = loss * w
            grad = grad * w
        return _reduce(loss, reduction, denominator, input.dtype), grad.to(input.dtype), denominator

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, pos_weight, reduction = inputs
        _, grad, denominator = output
        ctx.mark_non_differentiable(grad, denominator)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for ``grad``
        ctx.reduction = reduction
        ctx.denominator = denominator
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(grad, input, weight, pos_weight)
        else:
            ctx.save_for_backward(grad)

    @staticmethod
    def backward(ctx, grad_loss, _grad_of_grad, _grad_of_denominator):
        refuse_double_backward("binary_cross_entropy_with_logits")
        if grad_loss is None:  # the loss got no gradient: every input's is zero
            return (None,) * 5
        compute = accumulate_dtype(grad_loss.dtype)
        scale = _output_scale(ctx, grad_loss, compute)
        saved = ctx.saved_tensors
        grad_input = None
        if ctx.needs_input_grad[0]:
            # A sum's gradient is the saved one when grad_output is exactly 1.
            unit = ctx.reduction == "sum" and _all_ones(grad_loss)
            grad_input = _scale_gradient(saved[0], scale, unit)

        grad_target = None
        if ctx.needs_input_grad[1]:
            # ∂ℓ/∂y = w·(pw·softplus(−x) − softplus(x))
            _, input, weight, pos_weight = saved
            x = input.to(compute)
            softplus_neg = torch.nn.functional.softplus(-x)
            if pos_weight is not None:
                softplus_neg = softplus_neg * pos_weight.to(compute)
            grad_target = softplus_neg - torch.nn.functional.softplus(x)
            if weight is not None:
                grad_target = grad_target * weight.to(compute)
            grad_target = (grad_target * scale).to(input.dtype)
        return grad_input, grad_target, None, None, None


@documented(
    Formula(
        name="binary_cross_entropy_with_logits",
        summary="ℓ = w [pw·y·softplus(−x) + (1 − y)·softplus(x)]",
        loss=(
            "ℓ = −w [pw·y·log σ(x) + (1 − y)·log(1 − σ(x))]\n"
            "  = w [pw·y·softplus(−x) + (1 − y)·softplus(x)]"
        ),
        gradient=(
            "∂ℓ/∂x = w [(pw·y + 1 − y)·σ(x) − pw·y]\n"
            "∂ℓ/∂y = w [pw·softplus(−x) − softplus(x)]"
        ),
        symbols=(
            ("x", "logit of one element"),
            ("y", "target in [0, 1] (soft labels allowed)"),
            ("σ", "the logistic sigmoid 1/(1 + e^(−x))"),
            ("softplus", "softplus(x) = log(1 + e^x) = −log(1 − σ(x))"),
            ("w", "weight, broadcast to the input (1 without weight)"),
            ("pw", "pos_weight, broadcast over the last dimension (1 without it)"),
        ),
    )
)
def binary_cross_entropy_with_logits(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Binary cross-entropy between logits and targets, one independent label per element.

    {formula}

    Derivation of the gradient: dσ/dx = σ(1 − σ), so ∂(−log σ(x))/∂x = σ(x) − 1
    and ∂(−log(1 − σ(x)))/∂x = σ(x); then
    ∂ℓ/∂x = w [pw·y·(σ − 1) + (1 − y)·σ] = w [(pw·y + 1 − y)·σ − pw·y].
    The loss is computed from softplus, never from log σ, so it stays finite
    and accurate at |x| = 1e4.

    Reductions:
        ``none``: the loss of each element, in the input's shape.
        ``sum``: the sum over elements.
        ``mean``: the sum divided by the number of elements (the weights do
        not enter the normaliser). An empty input gives 0 with a zero
        gradient, not NaN.

    Args:
        input: logits.
        target: targets of the input's shape; integer and boolean targets
            are cast to the input's dtype.
        weight: weights that broadcast to the input's shape. Default: ``None``.
        size_average: deprecated in PyTorch; must be ``None``.
        reduce: deprecated in PyTorch; must be ``None``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        pos_weight: weights of the positive term, usually one per class of
            shape ``(C,)``, broadcast over the last dimension of the input.
            Default: ``None``.

    Shape:
        - input: ``(*)``, usually ``(N, C)``.
        - target: ``(*)``, the same shape as input.
        - output: a scalar, or ``(*)`` for ``reduction="none"``.

        where N is the batch size, C the number of labels and ``*`` any
        number of dimensions.

    Example::

        >>> import lossgrad
        >>> logits = torch.randn(4, 3, requires_grad=True)
        >>> target = torch.randint(0, 2, (4, 3))
        >>> loss = lossgrad.binary_cross_entropy_with_logits(
        ...     logits, target, pos_weight=torch.tensor([1.0, 2.0, 4.0]))
        >>> loss.backward()

    Differences from PyTorch 2.13:
        - The target must have the input's shape (PyTorch also requires it);
          integer targets are accepted and cast.
        - ``mean`` over an empty input is 0, not NaN.
        - Gradients with respect to ``weight`` and ``pos_weight`` are not
          supported (PyTorch raises too); double backward raises.
        - float16 and bfloat16 inputs are computed and summed in float32 and
          the loss is returned in the input's dtype. Under ``torch.autocast``
          the function receives the input in whatever dtype the autocast
          region produced and computes in float32 either way, where PyTorch
          autocasts this loss to float32.
        - Negative values of ``weight`` and ``pos_weight`` raise (checked on
          the CPU only, where reading them needs no host synchronisation).
          Targets outside [0, 1] are not checked and give the formula's value.
    """
    check_float_tensor("input", input)
    target = to_input_dtype("target", target, input)
    check_same_shape(input, target)
    check_no_legacy_reduction(size_average, reduce)
    check_reduction(reduction)
    _check_element_weight("weight", weight, input)
    _check_element_weight("pos_weight", pos_weight, input)
    _check_no_grad_required("weight", weight)
    _check_no_grad_required("pos_weight", pos_weight)
    loss, _, _ = _BCEWithLogitsFunction.apply(input, target, weight, pos_weight, reduction)
    return loss


# Binary cross-entropy on probabilities.


class _BCEFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(input, target, weight, reduction):
        compute = accumulate_dtype(input.dtype)
        p = input.to(compute)
        y = target.to(compute)
        log_p = torch.log(p).clamp(min=_BCE_LOG_MIN)
        log_not_p = torch.log1p(-p).clamp(min=_BCE_LOG_MIN)
        loss = torch.lerp(log_not_p, log_p, y).neg_()  # −(y log p + (1 − y) log(1 − p))
        # ∂ℓ/∂p = −y/p + (1 − y)/(1 − p) = (p − y)/(p (1 − p)), with the
        # denominator floored at 1e-12 as PyTorch does. At p = 0 or 1 this
        # gives 0 when y equals p and ±1e12·|p − y| otherwise, PyTorch's value,
        # rather than the 0 that the clamped loss would have.
        grad = (p - y).div_((p * (1 - p)).clamp(min=_BCE_GRAD_EPS))
        if weight is not None:
            w = weight.to(compute)
            loss = loss * w
            grad = grad * w
        denominator = torch.full((), loss.numel(), dtype=compute, device=loss.device)
        return _reduce(loss, reduction, denominator, input.dtype), grad.to(input.dtype), denominator

    @staticmethod
    def setup_context(ctx, inputs, output):
        input, target, weight, reduction = inputs
        _, grad, denominator = output
        ctx.mark_non_differentiable(grad, denominator)
        ctx.set_materialize_grads(False)  # no zero-filled gradient for ``grad``
        ctx.reduction = reduction
        ctx.denominator = denominator
        if ctx.needs_input_grad[1]:
            ctx.save_for_backward(grad, input, weight)
        else:
            ctx.save_for_backward(grad)

    @staticmethod
    def backward(ctx, grad_loss, _grad_of_grad, _grad_of_denominator):
        refuse_double_backward("binary_cross_entropy")
        if grad_loss is None:  # the loss got no gradient: every input's is zero
            return (None,) * 4
        compute = accumulate_dtype(grad_loss.dtype)
        scale = _output_scale(ctx, grad_loss, compute)
        saved = ctx.saved_tensors
        grad_input = _scale_gradient(saved[0], scale) if ctx.needs_input_grad[0] else None

        grad_target = None
        if ctx.needs_input_grad[1]:
            # ∂ℓ/∂y = w (log(1 − p) − log p) with both logs clamped at −100, the
            # exact derivative of the clamped loss, which is linear in y.
            _, input, weight = saved
            p = input.to(compute)
            log_p = torch.log(p).clamp(min=_BCE_LOG_MIN)
            grad_target = torch.log1p(-p).clamp(min=_BCE_LOG_MIN).sub_(log_p)
            if weight is not None:
                grad_target = grad_target * weight.to(compute)
            grad_target = (grad_target * scale).to(input.dtype)
        return grad_input, grad_target, None, None


@documented(
    Formula(
        name="binary_cross_entropy",
        summary="ℓ = −w [y·log p + (1 − y)·log(1 − p)], logs clamped at −100",
        loss="ℓ = −w [y·max(log p, −100) + (1 − y)·max(log(1 − p), −100)]",
        gradient=(
            "∂ℓ/∂p = w (p − y) / max(p (1 − p), 10⁻¹²)\n"
            "∂ℓ/∂y = w [max(log(1 − p), −100) − max(log p, −100)]"
        ),
        symbols=(
            ("p", "predicted probability in [0, 1]"),
            ("y", "target in [0, 1]"),
            ("w", "weight, broadcast to the input (1 without weight)"),
        ),
        subgradient=(
            "at p = 0 and p = 1, where the clamp is active, ∂ℓ/∂p is PyTorch's "
            "w (p − y)/10⁻¹²: 0 when y = p, ±10¹²·w·|p − y| otherwise"
        ),
    )
)
def binary_cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    validate: bool | None = None,
) -> Tensor:
    """Binary cross-entropy between predicted probabilities and targets.

    {formula}

    Reductions:
        ``none``: the loss of each element, in the input's shape.
        ``sum``: the sum over elements.
        ``mean``: the sum divided by the number of elements. An empty input
        gives 0 with a zero gradient, not NaN.

    Args:
        input: probabilities in ``[0, 1]``, usually the output of a sigmoid.
        target: targets of the input's shape; integer and boolean targets
            are cast to the input's dtype.
        weight: weights that broadcast to the input's shape. Default: ``None``.
        size_average: deprecated in PyTorch; must be ``None``.
        reduce: deprecated in PyTorch; must be ``None``.
        reduction: ``"none"``, ``"mean"`` or ``"sum"``. Default: ``"mean"``.
        validate: check that the input lies in ``[0, 1]``. ``None`` checks
            on CPU only; pass ``True`` to check on CUDA too. Default: ``None``.

    Shape:
        - input: ``(*)``.
        - target: ``(*)``, the same shape as input.
        - output: a scalar, or ``(*)`` for ``reduction="none"``.

        where ``*`` is any number of dimensions.

    Example::

        >>> import lossgrad
        >>> p = torch.rand(4, 3, requires_grad=True)
        >>> loss = lossgrad.binary_cross_entropy(p, torch.randint(0, 2, (4, 3)))
        >>> loss.backward()

    Differences from PyTorch 2.13:
        - log(1 − p) is computed as log1p(−p), which is more accurate for
          small p; the values agree to float rounding elsewhere.
        - The target gradient is the derivative of the clamped loss, so it
          is finite (±100·w) at p = 0 and p = 1, where PyTorch returns ±inf.
        - ``mean`` over an empty input is 0, not NaN.
        - Gradients with respect to ``weight`` are not supported (PyTorch
          raises too); double backward raises.
        - float16 and bfloat16 inputs are computed and summed in float32 and
          the loss is returned in the input's dtype. Under ``torch.autocast``
          PyTorch refuses this loss in float16; lossgrad receives the input
          in whatever dtype the autocast region produced and computes in
          float32 either way. Prefer ``binary_cross_entropy_with_logits``,
          which is stable for any logit.
    """
    check_float_tensor("input", input)
    target = to_input_dtype("target", target, input)
    check_same_shape(input, target)
    check_no_legacy_reduction(size_average, reduce)
    check_reduction(reduction)
    _check_element_weight("weight", weight, input)
    _check_no_grad_required("weight", weight)
    if input.numel() and should_validate_values(input, validate):
        outside = ~((input >= 0) & (input <= 1))
        if bool(outside.any()):
            bad = input[outside][0].item()
            raise ValueError(f"input: expected probabilities in [0, 1], got {bad}")
    loss, _, _ = _BCEFunction.apply(input, target, weight, reduction)
    return loss
