"""Linear + loss heads: the projection to the vocabulary fused with the loss.

A language model's last layer maps hidden states ``X`` (``N x H``) to logits
``Z = X Wᵀ + b`` (``N x V``) and a softmax loss reads them. For a large
vocabulary ``Z`` and its gradient dominate the memory of a training step. The
heads here walk the rows in chunks instead:

1. the logits of one chunk (``chunk x V``) come from one ``addmm``;
2. the shared row kernel (:func:`~lossgrad._kernels.rows.fused_rows`) turns
   them into each row's loss and, in place, ``∂ℓ/∂z`` of each row;
3. ``dZ W`` gives the input gradient of the chunk, and ``dZᵀ X`` and
   ``Σ dZ`` are added to the weight and bias gradients.

The full ``N x V`` logits never exist. For a scalar loss (``mean``, ``sum``,
distillation's ``batchmean``) all gradients are computed in the forward pass
and backward only multiplies them by the scalar upstream gradient. For
``reduction="none"`` the upstream gradient differs per row and is unknown in
the forward pass, so backward recomputes each chunk's logits and scales
each row's ``∂ℓ/∂z`` by its own upstream gradient before the matmuls.

NOTE: on CUDA the chunks run the same plain tensor ops (the shared CPU row
rules, not the Triton kernels); that path has not been run on a GPU.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .._autograd import graph_is_kept, refuse_double_backward
from .._checks import (
    REDUCTIONS,
    check_choice,
    check_class_indices,
    check_class_weight,
    check_dim_size,
    check_float_tensor,
    check_in_range,
    check_non_negative,
    check_positive,
    check_positive_int,
    check_positive_scalar,
    check_reduction,
    check_tensor,
)
from .._formula import Formula, documented
from .._kernels import triton_ops
from .._kernels.cross_entropy_rule import cross_entropy_rule, mean_denominator
from .._kernels.distill_rule import js_rule, kd_rule
from .._kernels.rows import RowRule, fused_rows
from .._reduction import accumulate_dtype, grad_scale, reduce_loss

__all__ = ["linear_cross_entropy", "linear_kd_loss"]

DIVERGENCES = ("kl", "js")

# The default chunk aims at this many bytes of float32 logits, small next to
# the N x V logits of a language-model batch. The chunk's matmuls lose
# efficiency as it shrinks: at N = 2048, H = 512, V = 32000 with 2 threads on
# a 2-core AMD EPYC VM, forward + backward took about 1.72 s with 128-row
# (16 MiB) chunks, 1.41-1.54 s with 256 rows (32 MiB) and 1.36-1.46 s with
# 512 rows, against 1.38 s for the three whole matmuls (scratch benchmark,
# medians of 5, not in the repository).
CHUNK_LOGITS_BYTES = 32 * 1024 * 1024
# The weight gradient adds a (V x chunk)(chunk x H) product per chunk, which
# reads and writes all of V x H; with fewer rows that traffic dominates.
MIN_CHUNK_ROWS = 64


def default_chunk_size(n_rows: int, vocab_size: int, hidden_size: int) -> int:
    """Return the default number of rows per chunk for ``N x H`` inputs and ``V`` classes.

    The chunk's logits take at most about 32 MiB in float32 (``chunk·V·4``
    bytes), or the size of the input ``N x H`` where that is larger, since
    the input is in memory anyway. The chunk has at least 64 rows and at
    most ``N``, and the rows are spread evenly over the chunks.
    """
    budget = max(CHUNK_LOGITS_BYTES, 4 * n_rows * hidden_size)
    rows = max(MIN_CHUNK_ROWS, budget // (4 * max(1, vocab_size)))
    rows = min(rows, max(1, n_rows))
    n_chunks = math.ceil(max(1, n_rows) / rows)
    return math.ceil(max(1, n_rows) / n_chunks)


# ---------------------------------------------------------------------------
# The chunk walk shared by both heads
# ---------------------------------------------------------------------------


@dataclass
class _Gradients:
    """Gradient accumulators of one chunk walk; ``None`` where not requested."""

    input: Tensor | None
    weight: Tensor | None
    bias: Tensor | None


def _new_gradients(
    input: Tensor, weight: Tensor, bias: Tensor | None, needs: tuple[bool, bool, bool]
) -> _Gradients:
    compute = accumulate_dtype(input.dtype)
    return _Gradients(
        input=torch.empty_like(input) if needs[0] else None,
        # Weight and bias gradients are sums over all chunks, so they are
        # accumulated in at least float32 whatever the parameter dtype. The
        # first chunk overwrites the weight gradient, which stays 0 without rows.
        weight=(
            _zeros_or_empty(weight.shape, input.shape[0] == 0, compute, weight.device)
            if needs[1]
            else None
        ),
        bias=(
            torch.zeros(bias.shape, dtype=compute, device=bias.device)
            if needs[2] and bias is not None
            else None
        ),
    )


def _zeros_or_empty(
    shape: torch.Size, zero: bool, dtype: torch.dtype, device: torch.device
) -> Tensor:
    if zero:
        return torch.zeros(shape, dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _functional() -> bool:
    """Return whether a torch.func transform is active, under which ``out=`` ops fail."""
    return torch._C._are_functorch_transforms_active()


def _project(x: Tensor, weight: Tensor, bias: Tensor | None, out: Tensor) -> Tensor:
    """Write the logits ``x Wᵀ + b`` of a chunk into ``out`` (``chunk x V``) and return them.

    Under a torch.func transform the logits are a new tensor instead.
    """
    if _functional():
        return x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())
    if bias is None:
        return torch.mm(x, weight.t(), out=out)
    return torch.addmm(bias, x, weight.t(), out=out)


def _add_chunk_gradients(
    grads: _Gradients, rows: slice, dz: Tensor, x: Tensor, weight: Tensor
) -> None:
    """Add one chunk's share of the gradients, given ``dz = ∂ℓ/∂z`` (``chunk x V``)."""
    # z = x Wᵀ + b, so ∂ℓ/∂x = dz W, ∂ℓ/∂W = dzᵀ x and ∂ℓ/∂b = Σ_rows dz.
    functional = _functional()
    if grads.input is not None:
        if functional:
            grads.input[rows].copy_(dz @ weight)
        else:
            torch.mm(dz, weight, out=grads.input[rows])
    if grads.weight is not None:
        dz_t = dz.t()
        if grads.weight.dtype != dz.dtype:
            dz_t, x = dz_t.to(grads.weight.dtype), x.to(grads.weight.dtype)
        if functional:
            grads.weight = dz_t @ x if rows.start == 0 else grads.weight + dz_t @ x
        elif rows.start == 0:
            torch.mm(dz_t, x, out=grads.weight)  # the first chunk needs no zero fill
        else:
            grads.weight.addmm_(dz_t, x)
    if grads.bias is not None:
        bias_sum = dz.sum(dim=0, dtype=grads.bias.dtype)
        grads.bias = grads.bias + bias_sum if functional else grads.bias.add_(bias_sum)


def _walk_chunks(
    input: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    chunk_size: int,
    rule_for_chunk: Callable[[slice, Tensor], RowRule],
    grads: _Gradients | None,
    triton_for_chunk: Callable[[slice, Tensor], tuple[Tensor, Tensor]] | None = None,
) -> Tensor:
    """Run the chunked head over ``input`` (``N x H``); return each row's loss.

    ``rule_for_chunk(rows, logits)`` builds the row rule of the chunk ``rows``
    once its logits are computed. ``triton_for_chunk(rows, logits)``, where
    given, computes the same (loss, ∂ℓ/∂z) with a Triton kernel in place of
    the logits and is used where ``triton_ops.use_triton`` allows it. When
    ``grads`` is given, each chunk's ``∂ℓ/∂z`` goes through the matmuls into
    it; otherwise only the losses are computed.
    """
    N = input.shape[0]
    V = weight.shape[0]
    buffer = input.new_empty((min(chunk_size, N), V))  # chunk x V, reused
    losses = []
    for start in range(0, N, chunk_size):
        rows = slice(start, min(start + chunk_size, N))
        x = input[rows]  # chunk x H
        logits = _project(x, weight, bias, buffer[: rows.stop - start])  # chunk x V
        # One rule call per chunk keeps the number of tensor ops small. For a
        # large vocabulary, cache-sized pieces are a few rows each, and on a
        # 2-core CPU their per-op overhead measured larger than the cache gain.
        if triton_for_chunk is not None and triton_ops.use_triton(logits):
            loss, dz = triton_for_chunk(rows, logits)
        else:
            loss, dz = fused_rows(
                logits,
                rule_for_chunk(rows, logits),
                inplace=True,
                chunk_bytes=4 * logits.numel(),
            )
        losses.append(loss)
        if grads is not None:
            _add_chunk_gradients(grads, rows, dz, x, weight)
    if not losses:
        return input.new_zeros(0, dtype=accumulate_dtype(input.dtype))
    return torch.cat(losses)


def _scale_gradients(
    saved: tuple[Tensor | None, ...], scale: Tensor, dtypes: tuple[torch.dtype, ...]
) -> tuple[Tensor | None, ...]:
    """Multiply gradients saved by the forward pass by ``scale``; return them in ``dtypes``.

    When the graph is freed after this backward (the usual case) the product
    is taken in place, so that the weight gradient exists once rather than
    twice at the peak. With ``retain_graph=True`` (and in ``gradcheck``) the
    saved tensors stay intact for the next backward.
    """
    in_place = not graph_is_kept()
    result = []
    for grad, dtype in zip(saved, dtypes):
        if grad is None:
            result.append(None)
        elif in_place:
            result.append(grad.mul_(scale.to(grad.dtype)).to(dtype))
        else:
            result.append((grad * scale.to(grad.dtype)).to(dtype))
    return tuple(result)


# ---------------------------------------------------------------------------
# linear_cross_entropy
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _CrossEntropyOptions:
    reduction: str
    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float | None
    chunk_size: int


def _head_rule(
    ce_rule: RowRule,
    *,
    softcap: float | None,
    z_loss: float,
    row_weight: Tensor,
    row_scale: Tensor | None,
    z_parts: list[Tensor],
) -> RowRule:
    """Wrap the cross-entropy rule with soft-capping, z-loss and a per-row scale.

    ``row_weight`` and ``row_scale`` are indexed like the chunk's rows. Each
    call appends its rows' z-loss terms to ``z_parts``.
    """
    if softcap is None and z_loss == 0 and row_scale is None:
        return ce_rule

    def rule(rows: slice, x: Tensor, out: Tensor) -> Tensor:
        # 1. Soft-capping: z̃ = s·tanh(z/s). ``t`` is kept for the chain rule.
        if softcap is not None:
            t = torch.tanh(x / softcap)  # rows x V
            capped = t * softcap
        elif z_loss:
            capped = x.clone()  # out may be x, and z-loss reads z̃ after the rule
        else:
            capped = x

        # 2. Cross-entropy loss and ∂ℓ/∂z̃ from the shared rule.
        lse = torch.logsumexp(capped, dim=-1) if z_loss else None
        loss = ce_rule(rows, capped, out)

        # 3. z-loss λ·w·lse² of each counted row; ∂/∂z̃ⱼ = 2λ·w·lse·pⱼ.
        if lse is not None:
            w = row_weight[rows]
            z_part = z_loss * w * lse.square()
            p = capped.sub_(lse.unsqueeze(-1)).exp_()
            out.addcmul_(p, (2.0 * z_loss * w * lse).unsqueeze(-1))
            loss = loss + z_part
            z_parts.append(z_part)

        # 4. Chain rule through the cap: ∂z̃/∂z = 1 − tanh²(z/s).
        if softcap is not None:
            out.mul_(t.square_().neg_().add_(1.0))
        if row_scale is not None:
            out.mul_(row_scale[rows].unsqueeze(-1))
        return loss

    return rule


def _cross_entropy_walk(
    input: Tensor,
    linear_weight: Tensor,
    linear_bias: Tensor | None,
    target: Tensor,
    weight: Tensor | None,
    options: _CrossEntropyOptions,
    row_scale: Tensor | None,
    grads: _Gradients | None,
) -> tuple[Tensor, Tensor]:
    """Walk the chunks of the cross-entropy head; return (loss, z-loss part) per row."""
    compute = accumulate_dtype(input.dtype)
    row_weight = _row_weight(target, weight, options.ignore_index, compute)
    z_parts: list[Tensor] = []

    def rule_for_chunk(rows: slice, logits: Tensor) -> RowRule:
        ce_rule = cross_entropy_rule(
            target[rows], weight, options.ignore_index, options.label_smoothing, fused=True
        )
        return _head_rule(
            ce_rule,
            softcap=options.softcap,
            z_loss=options.z_loss,
            row_weight=row_weight[rows],
            row_scale=None if row_scale is None else row_scale[rows],
            z_parts=z_parts,
        )

    def triton_for_chunk(rows: slice, logits: Tensor) -> tuple[Tensor, Tensor]:
        return triton_ops.cross_entropy_rows(
            logits,
            target[rows],
            weight,
            ignore_index=options.ignore_index,
            label_smoothing=options.label_smoothing,
            inplace=True,
        )

    # NOTE: the Triton kernel has no soft-capping, z-loss or per-row scale, so
    # heads that use one of them run their chunks through PyTorch ops on CUDA.
    plain = options.softcap is None and options.z_loss == 0 and row_scale is None
    loss = _walk_chunks(
        input,
        linear_weight,
        linear_bias,
        options.chunk_size,
        rule_for_chunk,
        grads,
        triton_for_chunk if plain else None,
    )
    z_part = torch.cat(z_parts) if z_parts else torch.zeros_like(loss)
    return loss, z_part


def _row_weight(
    target: Tensor, weight: Tensor | None, ignore_index: int, dtype: torch.dtype
) -> Tensor:
    """Return each row's z-loss weight: ``w[y]`` (1 without class weights), 0 if ignored.

    Probability targets weigh every row 1, as their ``mean`` counts every row.
    """
    if target.is_floating_point():
        return torch.ones(target.shape[0], dtype=dtype, device=target.device)
    counted = target != ignore_index
    if weight is None:
        return counted.to(dtype)
    safe = torch.where(counted, target, torch.zeros_like(target))
    return weight.to(dtype)[safe] * counted


class LinearCrossEntropyFunction(torch.autograd.Function):
    """Chunked ``cross_entropy(input @ Wᵀ + b, target)`` with closed-form gradients.

    Works on ``N x H`` input. Returns (reduced loss, reduced z-loss part,
    input gradient, weight gradient, bias gradient); the gradients are
    ``None`` for ``reduction="none"`` and where ``needs`` is false.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        input: Tensor,
        linear_weight: Tensor,
        linear_bias: Tensor | None,
        target: Tensor,
        weight: Tensor | None,
        num_items: Tensor | float | None,
        options: _CrossEntropyOptions,
        needs: tuple[bool, bool, bool],
    ) -> tuple[Tensor, ...]:
        compute = accumulate_dtype(input.dtype)
        scalar = options.reduction != "none"
        grads = _new_gradients(input, linear_weight, linear_bias, needs) if scalar else None
        loss, z_part = _cross_entropy_walk(
            input, linear_weight, linear_bias, target, weight, options, None, grads
        )
        denominator = _denominator(target, weight, options.ignore_index, num_items, compute)
        loss = reduce_loss(loss, options.reduction, denominator, dtype=input.dtype)
        z_part = reduce_loss(z_part, options.reduction, denominator, dtype=input.dtype)
        if grads is None:
            return loss, z_part, None, None, None, denominator
        return loss, z_part, grads.input, grads.weight, grads.bias, denominator

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        input, linear_weight, linear_bias, target, weight, _, options, _ = inputs
        _, z_part, grad_input, grad_weight, grad_bias, denominator = output
        ctx.mark_non_differentiable(
            *[t for t in (z_part, grad_input, grad_weight, grad_bias, denominator) if t is not None]
        )
        # Without this, autograd would pass backward a zero tensor for each
        # non-differentiable output, among them a V x H one.
        ctx.set_materialize_grads(False)
        ctx.options = options
        if options.reduction == "none":
            ctx.save_for_backward(input, linear_weight, linear_bias, target, weight)
        else:
            ctx.save_for_backward(grad_input, grad_weight, grad_bias, denominator)
            bias_dtype = linear_weight.dtype if linear_bias is None else linear_bias.dtype
            ctx.dtypes = (input.dtype, linear_weight.dtype, bias_dtype)

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *unused_grads: Tensor | None):
        refuse_double_backward("linear_cross_entropy")
        if grad_loss is None:
            return (None,) * 8
        options: _CrossEntropyOptions = ctx.options
        if options.reduction != "none":
            # mean/sum: the forward pass left ∂(Σℓ)/∂θ; ∂L/∂θ = grad_loss · that / denominator.
            grad_input, grad_weight, grad_bias, denominator = ctx.saved_tensors
            scale = grad_scale(grad_loss, options.reduction, denominator, dtype=denominator.dtype)
            grads = _scale_gradients((grad_input, grad_weight, grad_bias), scale, ctx.dtypes)
            return (*grads, None, None, None, None, None)

        # none: ∂L/∂Z has rows gᵢ·∂ℓᵢ/∂zᵢ with gᵢ the upstream gradient of row i,
        # so each chunk's logits are recomputed and scaled row by row.
        input, linear_weight, linear_bias, target, weight = ctx.saved_tensors
        needs = (
            ctx.needs_input_grad[0],
            ctx.needs_input_grad[1],
            linear_bias is not None and ctx.needs_input_grad[2],
        )
        grads = _new_gradients(input, linear_weight, linear_bias, needs)
        row_scale = grad_loss.reshape(-1).to(accumulate_dtype(input.dtype))
        _cross_entropy_walk(
            input, linear_weight, linear_bias, target, weight, options, row_scale, grads
        )
        return (
            grads.input,
            None if grads.weight is None else grads.weight.to(linear_weight.dtype),
            None if grads.bias is None else grads.bias.to(linear_bias.dtype),
            None,
            None,
            None,
            None,
            None,
        )


def _denominator(
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    num_items: Tensor | float | None,
    dtype: torch.dtype,
) -> Tensor:
    """Return what ``mean`` divides by: ``num_items`` when given, else the local count."""
    if num_items is None:
        return mean_denominator(target, weight, ignore_index, dtype)
    if isinstance(num_items, Tensor):
        return num_items.detach().reshape(()).to(dtype)
    return torch.full((), float(num_items), dtype=dtype, device=target.device)


LINEAR_CROSS_ENTROPY = Formula(
    name="linear_cross_entropy",
    summary="ℓᵢ = CE(s·tanh((W xᵢ + b)/s), yᵢ) + λ·w_yᵢ·lseᵢ², logits in chunks",
    loss=(
        "zᵢ = W xᵢ + b                          (logits of row i, one chunk at a time)\n"
        "z̃ᵢ = s·tanh(zᵢ / s)                    (z̃ᵢ = zᵢ without softcap)\n"
        "pᵢ = softmax(z̃ᵢ),  lseᵢ = log Σⱼ exp z̃ᵢⱼ\n"
        "qᵢ = (1 − ε)·e_yᵢ + ε/V                (target distribution)\n"
        "ℓᵢ = Σⱼ wⱼ qᵢⱼ (lseᵢ − z̃ᵢⱼ) + λ·w_yᵢ·lseᵢ²"
    ),
    gradient=(
        "∂ℓᵢ/∂z̃ᵢⱼ = pᵢⱼ Σₖ wₖ qᵢₖ − wⱼ qᵢⱼ + 2λ·w_yᵢ·lseᵢ·pᵢⱼ\n"
        "∂ℓᵢ/∂zᵢⱼ = ∂ℓᵢ/∂z̃ᵢⱼ · (1 − tanh²(zᵢⱼ / s))\n"
        "with G the rows cᵢ·∂ℓᵢ/∂zᵢ (cᵢ: upstream gradient / normaliser):\n"
        "∂L/∂X = G W,   ∂L/∂W = Gᵀ X,   ∂L/∂b = Σᵢ Gᵢ"
    ),
    symbols=(
        ("xᵢ", "row i of the input (hidden state), H values"),
        ("W, b", "weight (V x H) and bias (V) of the linear head"),
        ("yᵢ", "target class of row i; ignored rows have ℓᵢ = 0"),
        ("wⱼ", "class weight (1 without weight)"),
        ("ε", "label_smoothing"),
        ("λ", "z_loss"),
        ("s", "softcap"),
    ),
)


@documented(LINEAR_CROSS_ENTROPY)
def linear_cross_entropy(
    input: Tensor,
    linear_weight: Tensor,
    target: Tensor,
    *,
    linear_bias: Tensor | None = None,
    weight: Tensor | None = None,
    reduction: str = "mean",
    ignore_index: int | None = None,
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    return_z_loss: bool = False,
    num_items: Tensor | float | None = None,
    chunk_size: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Cross-entropy of a linear projection, computed in row chunks without the full logits.

    Equals ``cross_entropy(linear(input, linear_weight, linear_bias), target)``
    with the same options, while holding the logits of one chunk of rows at a
    time. Optional z-loss (PaLM, Chowdhery et al. 2022, section 5) and
    logit soft-capping (Gemma 2) apply to the logits of every chunk.

    {formula}

    Reductions: ``"none"`` returns ``ℓᵢ`` per row (0 for ignored rows), and
    ``"sum"`` returns ``Σᵢ ℓᵢ``. ``"mean"`` divides that sum by the number
    of counted rows, or by ``Σᵢ w_yᵢ`` over the counted rows with class
    weights. For probability targets it divides by ``N``. A given
    ``num_items`` replaces all of these. When nothing counts the result is
    0 with a zero gradient.

    Args:
        input (Tensor): hidden states, ``(*, H)``.
        linear_weight (Tensor): weight of the linear head, ``(V, H)``.
        target (Tensor): class indices ``(*)`` (integer dtype), or class
            probabilities ``(*, V)`` (floating dtype).
        linear_bias (Tensor, optional): bias of the linear head, ``(V)``.
            Default: ``None``.
        weight (Tensor, optional): class weights ``w``, ``(V)``.
            Default: ``None``.
        reduction (str, optional): ``"none"``, ``"mean"`` or ``"sum"``.
            Default: ``"mean"``.
        ignore_index (int, optional): target value whose rows get loss 0 and
            no gradient. ``None`` means -100 for class indices, as in
            PyTorch's ``linear_cross_entropy``; it must be ``None`` for
            probability targets. Default: ``None``.
        label_smoothing (float, optional): ``ε`` in [0, 1]. Default: 0.
        z_loss (float, optional): ``λ ≥ 0``, the weight of ``lse²`` per
            counted row. Default: 0.
        softcap (float, optional): ``s > 0``; the logits become
            ``s·tanh(z/s)`` before the softmax. Default: ``None`` (no cap).
        return_z_loss (bool, optional): also return the z-loss part of the
            loss, reduced the same way. It is detached and meant for logging,
            because its gradient already flows through the first output.
            Default: ``False``.
        num_items (int, float or Tensor, optional): the normaliser of
            ``"mean"`` in place of the local count: for gradient accumulation,
            the counted tokens of all micro-batches (the sum of their class
            weights when weighted), so that the micro-batch losses add up to
            the full-batch mean. A one-element tensor is used without a host
            sync. Only with ``reduction="mean"``. Default: ``None``.
        chunk_size (int, optional): rows per chunk. Default: ``None``, which
            picks rows for about 32 MiB of float32 logits per chunk, or as
            much as the input ``N x H`` takes when that is more, and at
            least 64 rows (see ``default_chunk_size``).

    Returns:
        The loss, a scalar or ``(*)`` for ``reduction="none"``; with
        ``return_z_loss=True`` the tuple ``(loss, z_loss_part)``.

    Shape:
        - input: ``(N, H)``, ``(*, H)`` or ``(H)``
        - linear_weight: ``(V, H)``; linear_bias and weight: ``(V)``
        - target: ``(N)``, ``(*)`` or ``()``; probabilities ``(N, V)``, ``(*, V)`` or ``(V)``
        - output: scalar, or the target's batch shape for ``reduction="none"``

        where N is the number of rows (tokens), H the hidden size and V the
        vocabulary size (number of classes).

    Example::

        >>> hidden = torch.randn(6, 16, requires_grad=True)
        >>> head = torch.nn.Linear(16, 100, bias=False)
        >>> target = torch.tensor([3, 7, -100, 0, 99, 5])
        >>> loss = linear_cross_entropy(hidden, head.weight, target, z_loss=1e-4)
        >>> loss.backward()

    Notes:
        - For ``mean`` and ``sum`` the gradients are computed in the forward
          pass and backward only scales them, in place unless the graph is
          kept (``retain_graph=True``). ``reduction="none"`` recomputes the
          logits in backward (one more matmul) so that each row can take its
          own upstream gradient.
        - Compared with PyTorch 2.13's ``linear_cross_entropy``: there is no
          ``options`` argument (chunking is always on; see ``chunk_size``),
          K-dimensional weights ``(V, d₁, …, H)`` are not supported, input of
          any leading shape ``(*, H)`` is, and probability targets get no
          gradient (pass ``target.detach()``).
        - The z-loss of a row is scaled by its target's class weight, so a
          class weight of 0 removes the row entirely.
        - Low-precision input (float16, bfloat16): the logits are rounded to
          the input dtype as in ``F.linear``, the loss and ``∂ℓ/∂z`` are
          computed in float32, and the weight and bias gradients accumulate
          in float32 over the chunks. ``torch.autocast`` does not lower the
          dtype: its CPU version leaves these ``out=`` matmuls alone.
    """
    # 1. Types and shapes.
    check_float_tensor("input", input)
    check_float_tensor("linear_weight", linear_weight)
    check_tensor("target", target)
    if input.dim() < 1:
        raise ValueError("input: expected a tensor of shape (*, H), got a 0-dim tensor")
    if linear_weight.dim() != 2:
        raise ValueError(
            f"linear_weight: expected a 2-D tensor of shape (V, H), got shape "
            f"{tuple(linear_weight.shape)}"
        )
    H = input.shape[-1]
    V = linear_weight.shape[0]
    check_dim_size("linear_weight", linear_weight, -1, H, "H, the last dimension of input")
    _check_same_dtype("linear_weight", linear_weight, input)
    if linear_bias is not None:
        check_float_tensor("linear_bias", linear_bias)
        if linear_bias.shape != (V,):
            raise ValueError(
                f"linear_bias: expected shape ({V},), one value per row of "
                f"linear_weight, got {tuple(linear_bias.shape)}"
            )
        _check_same_dtype("linear_bias", linear_bias, input)
    batch_shape = input.shape[:-1]
    probabilities = target.is_floating_point()
    if probabilities:
        _check_target_shape(target, (*batch_shape, V), "class probabilities (*, V)")
        if ignore_index is not None:
            raise ValueError(
                f"ignore_index: expected None for probability targets, got {ignore_index}"
            )
        if target.requires_grad:
            raise ValueError(
                "target: the gradient with respect to probability targets is not "
                "supported; pass target.detach()"
            )
        ignore_index = -100
    else:
        _check_target_shape(target, batch_shape, "class indices (*)")
        ignore_index = -100 if ignore_index is None else ignore_index
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(
                f"ignore_index: expected an int or None, got {type(ignore_index).__name__}"
            )

    # 2. Options.
    reduction = check_reduction(reduction, REDUCTIONS)
    weight = check_class_weight(weight, V)
    label_smoothing = check_in_range("label_smoothing", label_smoothing, 0.0, 1.0)
    z_loss = check_non_negative("z_loss", z_loss)
    if softcap is not None:
        softcap = check_positive("softcap", softcap)
    if num_items is not None:
        if reduction != "mean":
            raise ValueError(
                f"num_items: only used with reduction='mean', got reduction={reduction!r}; "
                "pass num_items=None"
            )
        num_items = check_positive_scalar("num_items", num_items)
    N = math.prod(batch_shape)
    if chunk_size is None:
        chunk_size = default_chunk_size(N, V, H)
    else:
        chunk_size = check_positive_int("chunk_size", chunk_size)

    # 3. Values (CPU only by default; see should_validate_values).
    flat_target = target.reshape(N, V) if probabilities else target.reshape(N)
    if not probabilities:
        check_class_indices(flat_target, V, ignore_index)

    # 4. The chunked Function over N x H rows.
    options = _CrossEntropyOptions(
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        chunk_size=chunk_size,
    )
    grad_enabled = torch.is_grad_enabled()
    needs = (
        grad_enabled and input.requires_grad,
        grad_enabled and linear_weight.requires_grad,
        grad_enabled and linear_bias is not None and linear_bias.requires_grad,
    )
    loss, z_part, *_ = LinearCrossEntropyFunction.apply(
        input.reshape(N, H),
        linear_weight,
        linear_bias,
        flat_target,
        weight,
        num_items,
        options,
        needs,
    )
    if reduction == "none":
        loss = loss.reshape(batch_shape)
        z_part = z_part.reshape(batch_shape)
    return (loss, z_part) if return_z_loss else loss


def _check_same_dtype(name: str, tensor: Tensor, input: Tensor) -> None:
    if tensor.dtype != input.dtype:
        raise TypeError(
            f"{name}: expected the dtype of input ({input.dtype}), got {tensor.dtype}"
        )


def _check_target_shape(target: Tensor, shape: tuple[int, ...], meaning: str) -> None:
    if tuple(target.shape) != tuple(shape):
        raise ValueError(
            f"target: expected shape {tuple(shape)} ({meaning}, matching input), "
            f"got {tuple(target.shape)}"
        )


# ---------------------------------------------------------------------------
# linear_kd_loss
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _DistillOptions:
    divergence: str
    temperature: float
    alpha: float
    beta: float
    ignore_index: int
    chunk_size: int


def _distill_walk(
    student_input: Tensor,
    student_weight: Tensor,
    teacher_input: Tensor,
    teacher_weight: Tensor,
    target: Tensor | None,
    options: _DistillOptions,
    grads: _Gradients | None,
) -> Tensor:
    """Walk the chunks of the distillation head; return each row's loss."""
    N = student_input.shape[0]
    V = teacher_weight.shape[0]
    teacher_buffer = teacher_input.new_empty((min(options.chunk_size, N), V))  # chunk x V

    def teacher_chunk(rows: slice, logits: Tensor) -> Tensor:
        return _project(
            teacher_input[rows], teacher_weight, None, teacher_buffer[: logits.shape[0]]
        )

    def triton_for_chunk(rows: slice, logits: Tensor) -> tuple[Tensor, Tensor]:
        teacher = teacher_chunk(rows, logits)
        chunk_target = None if target is None else target[rows]
        if options.divergence == "kl":
            return triton_ops.kd_rows(
                logits,
                teacher,
                chunk_target,
                temperature=options.temperature,
                alpha=options.alpha,
                ignore_index=options.ignore_index,
                inplace=True,
            )
        return triton_ops.js_rows(
            logits,
            teacher,
            chunk_target,
            temperature=options.temperature,
            beta=options.beta,
            ignore_index=options.ignore_index,
            inplace=True,
        )

    def rule_for_chunk(rows: slice, logits: Tensor) -> RowRule:
        teacher = teacher_chunk(rows, logits)
        chunk_target = None if target is None else target[rows]
        if options.divergence == "kl":
            return kd_rule(
                teacher,
                chunk_target,
                temperature=options.temperature,
                alpha=options.alpha,
                ignore_index=options.ignore_index,
            )
        return js_rule(
            teacher,
            chunk_target,
            beta=options.beta,
            temperature=options.temperature,
            ignore_index=options.ignore_index,
        )

    return _walk_chunks(
        student_input,
        student_weight,
        None,
        options.chunk_size,
        rule_for_chunk,
        grads,
        triton_for_chunk,
    )


class LinearKDFunction(torch.autograd.Function):
    """Chunked distillation loss of two linear heads; the teacher gets no gradient.

    Works on ``N x H`` student and ``N x H_t`` teacher input. Returns
    (batchmean loss, student input gradient, student weight gradient,
    number of counted rows).
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        student_input: Tensor,
        student_weight: Tensor,
        teacher_input: Tensor,
        teacher_weight: Tensor,
        target: Tensor | None,
        options: _DistillOptions,
        needs: tuple[bool, bool],
    ) -> tuple[Tensor, ...]:
        compute = accumulate_dtype(student_input.dtype)
        grads = _new_gradients(student_input, student_weight, None, (*needs, False))
        loss = _distill_walk(
            student_input, student_weight, teacher_input, teacher_weight, target, options, grads
        )
        if target is None:
            count = torch.full((), student_input.shape[0], dtype=compute)
        else:
            count = (target != options.ignore_index).sum().to(compute)
        loss = reduce_loss(loss, "batchmean", count, dtype=student_input.dtype)
        return loss, grads.input, grads.weight, count

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        student_input, student_weight = inputs[:2]
        _, grad_input, grad_weight, count = output
        ctx.mark_non_differentiable(
            *[t for t in (grad_input, grad_weight, count) if t is not None]
        )
        # No zero tensors for the gradient outputs, which are not differentiable.
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(grad_input, grad_weight, count)
        ctx.dtypes = (student_input.dtype, student_weight.dtype)

    @staticmethod
    def backward(ctx, grad_loss: Tensor, *unused_grads: Tensor | None):
        refuse_double_backward("linear_kd_loss")
        if grad_loss is None:
            return (None,) * 7
        # The forward pass left ∂(Σℓ)/∂θ; ∂L/∂θ = grad_loss · that / counted rows.
        grad_input, grad_weight, count = ctx.saved_tensors
        scale = grad_scale(grad_loss, "batchmean", count, dtype=count.dtype)
        grads = _scale_gradients((grad_input, grad_weight), scale, ctx.dtypes)
        return (*grads, None, None, None, None, None)


LINEAR_KD_LOSS = Formula(
    name="linear_kd_loss",
    summary="ℓᵢ = α·T²·KL(p_t ‖ p_s) + (1 − α)·CE, or the JSD, of two linear heads",
    loss=(
        "sᵢ = W_s xᵢ,  tᵢ = W_t x̂ᵢ               (student and teacher logits, per chunk)\n"
        "p_s = softmax(sᵢ/T),  p_t = softmax(tᵢ/T),  M = β p_t + (1 − β) p_s\n"
        "kl: ℓᵢ = α T² KL(p_t ‖ p_s) + (1 − α)(−log softmax(sᵢ)_yᵢ)\n"
        "js: ℓᵢ = T² (β KL(p_t ‖ M) + (1 − β) KL(p_s ‖ M))\n"
        "    (β = 0: T² KL(p_t ‖ p_s);  β = 1: T² KL(p_s ‖ p_t))"
    ),
    gradient=(
        "kl: ∂ℓᵢ/∂sᵢ = α T (p_s − p_t) + (1 − α)(softmax(sᵢ) − e_yᵢ)\n"
        "js: ∂ℓᵢ/∂sᵢⱼ = T (1 − β) p_s,j (φⱼ − Σₖ p_s,k φₖ),  φ = log(p_s / M)\n"
        "with G the rows ∂ℓᵢ/∂sᵢ times upstream gradient / counted rows:\n"
        "∂L/∂X = G W_s,   ∂L/∂W_s = Gᵀ X;  the teacher gets no gradient"
    ),
    symbols=(
        ("xᵢ, x̂ᵢ", "row i of the student and teacher input (hidden states)"),
        ("W_s, W_t", "student (V x H) and teacher (V x H_t) head weights"),
        ("yᵢ", "target class of row i; rows equal to ignore_index do not count"),
        ("T", "temperature"),
        ("α", "alpha, the weight of the soft term (kl)"),
        ("β", "beta, the teacher's share of the mixture M (js)"),
    ),
)


@documented(LINEAR_KD_LOSS)
def linear_kd_loss(
    student_input: Tensor,
    student_weight: Tensor,
    teacher_input: Tensor,
    teacher_weight: Tensor,
    target: Tensor | None = None,
    *,
    divergence: str = "kl",
    temperature: float = 1.0,
    alpha: float = 0.5,
    beta: float = 0.5,
    ignore_index: int = -100,
    chunk_size: int | None = None,
) -> Tensor:
    """Distillation loss of a student head against a teacher head, in row chunks.

    Equals ``kd_loss`` (``divergence="kl"``) or ``js_div``
    (``divergence="js"``) applied to ``student_input @ student_weightᵀ`` and
    ``teacher_input @ teacher_weightᵀ``, while holding the logits of one chunk
    of rows of each at a time. The teacher gets no gradient.

    {formula}

    Reduction: batchmean, the sum of ``ℓᵢ`` divided by the number of counted
    rows (rows whose target is not ``ignore_index``; every row without a
    target). When nothing counts the result is 0 with a zero gradient.

    Args:
        student_input (Tensor): student hidden states, ``(*, H)``.
        student_weight (Tensor): student head weight, ``(V, H)``.
        teacher_input (Tensor): teacher hidden states, ``(*, H_t)``, with the
            same leading shape as ``student_input``.
        teacher_weight (Tensor): teacher head weight, ``(V, H_t)``.
        target (Tensor, optional): class indices ``(*)``. With
            ``divergence="kl"`` they give the hard term; with either divergence
            rows equal to ``ignore_index`` do not count. Without a target,
            ``"kl"`` is the soft term alone (``α = 1``). Default: ``None``.
        divergence (str, optional): ``"kl"`` or ``"js"``. Default: ``"kl"``.
        temperature (float, optional): ``T > 0``. Default: 1.
        alpha (float, optional): ``α`` in [0, 1], used by ``"kl"``. Default: 0.5.
        beta (float, optional): ``β`` in [0, 1], used by ``"js"``. Default: 0.5.
        ignore_index (int, optional): target value whose rows do not count.
            Default: -100.
        chunk_size (int, optional): rows per chunk. Default: ``None``, which
            picks it as ``linear_cross_entropy`` does.

    Shape:
        - student_input: ``(N, H)``, ``(*, H)`` or ``(H)``
        - student_weight: ``(V, H)``
        - teacher_input: ``(N, H_t)``, ``(*, H_t)`` or ``(H_t)``
        - teacher_weight: ``(V, H_t)``
        - target: ``(N)``, ``(*)`` or ``()``
        - output: scalar

        where N is the number of rows (tokens), H and H_t the hidden sizes of
        student and teacher, and V the vocabulary size.

    Example::

        >>> student = torch.randn(6, 16, requires_grad=True)
        >>> teacher = torch.randn(6, 32)
        >>> w_s = torch.randn(100, 16, requires_grad=True)
        >>> w_t = torch.randn(100, 32)
        >>> target = torch.tensor([3, 7, -100, 0, 99, 5])
        >>> loss = linear_kd_loss(student, w_s, teacher, w_t, target, temperature=2.0)
        >>> loss.backward()

    Note:
        The gradients are computed in the forward pass and backward only
        scales them, in place unless the graph is kept (``retain_graph=True``).
    """
    # 1. Types and shapes.
    for name, tensor in (
        ("student_input", student_input),
        ("student_weight", student_weight),
        ("teacher_input", teacher_input),
        ("teacher_weight", teacher_weight),
    ):
        check_float_tensor(name, tensor)
    for name, tensor in (("student_weight", student_weight), ("teacher_weight", teacher_weight)):
        if tensor.dim() != 2:
            raise ValueError(
                f"{name}: expected a 2-D tensor of shape (V, H), got shape {tuple(tensor.shape)}"
            )
    if student_input.dim() < 1 or teacher_input.dim() < 1:
        raise ValueError("student_input, teacher_input: expected tensors of shape (*, H)")
    H = student_input.shape[-1]
    V = student_weight.shape[0]
    check_dim_size("student_weight", student_weight, -1, H, "H, the last dimension of student_input")
    check_dim_size(
        "teacher_weight", teacher_weight, -1, teacher_input.shape[-1],
        "H_t, the last dimension of teacher_input",
    )
    check_dim_size("teacher_weight", teacher_weight, 0, V, "V, the rows of student_weight")
    _check_same_dtype("student_weight", student_weight, student_input)
    _check_same_dtype("teacher_weight", teacher_weight, teacher_input)
    batch_shape = student_input.shape[:-1]
    if teacher_input.shape[:-1] != batch_shape:
        raise ValueError(
            f"teacher_input: expected leading shape {tuple(batch_shape)} (as student_input), "
            f"got shape {tuple(teacher_input.shape)}"
        )
    N = math.prod(batch_shape)
    flat_target = None
    if target is not None:
        check_tensor("target", target)
        _check_target_shape(target, batch_shape, "class indices (*)")
        flat_target = target.reshape(N)
        check_class_indices(flat_target, V, ignore_index)

    # 2. Options.
    divergence = check_choice("divergence", divergence, DIVERGENCES)
    temperature = check_positive("temperature", temperature)
    alpha = check_in_range("alpha", alpha, 0.0, 1.0)
    beta = check_in_range("beta", beta, 0.0, 1.0)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index: expected an int, got {type(ignore_index).__name__}")
    if chunk_size is None:
        chunk_size = default_chunk_size(N, V, H)
    else:
        chunk_size = check_positive_int("chunk_size", chunk_size)

    # 3. The chunked Function over N x H rows; the teacher is detached.
    options = _DistillOptions(
        divergence=divergence,
        temperature=temperature,
        alpha=alpha,
        beta=beta,
        ignore_index=ignore_index,
        chunk_size=chunk_size,
    )
    grad_enabled = torch.is_grad_enabled()
    needs = (
        grad_enabled and student_input.requires_grad,
        grad_enabled and student_weight.requires_grad,
    )
    loss, *_ = LinearKDFunction.apply(
        student_input.reshape(N, H),
        student_weight,
        teacher_input.detach().reshape(N, teacher_input.shape[-1]),
        teacher_weight.detach(),
        flat_target,
        options,
        needs,
    )
    return loss
