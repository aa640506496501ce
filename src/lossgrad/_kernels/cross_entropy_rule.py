"""The cross-entropy row rule for :func:`lossgrad._kernels.rows.fused_rows`.

:func:`cross_entropy_rule` turns the targets and options of a cross-entropy
into a :data:`~lossgrad._kernels.rows.RowRule`. Any loss that ends in a
softmax cross-entropy over rows of logits (``cross_entropy`` itself, a fused
linear + cross-entropy head) then gets each row's loss and gradient from one
pass over that row. The rule is plain tensor code without autograd.

Each row has a target distribution ``q`` over the C classes, and the classes
have weights ``w`` (all ones without weights)::

    loss = Σ_c w_c q_c (lse − z_c)            lse = log Σ_c exp z_c
    ∂loss/∂z_j = p_j Σ_c w_c q_c − w_j q_j     p = softmax(z)

For a class index ``y`` with label smoothing ``ε`` over the ``K`` classes whose
logit is not ``-inf``, ``q_c = (1 − ε)[c = y] + ε/K``; for probability targets
``y``, ``q_c = (1 − ε) y_c + ε/K``. Classes whose logit is ``-inf`` (masked
classes) get no smoothing mass and probability 0, so their gradient is 0
unless a probability target puts mass on them (then the loss is ``+inf``).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .rows import RowRule

__all__ = ["can_read_values", "cross_entropy_rule", "mean_denominator"]


def mean_denominator(
    target: Tensor, weight: Tensor | None, ignore_index: int, dtype: torch.dtype
) -> Tensor:
    """Return what ``reduction="mean"`` divides by, as a 0-dim tensor of ``dtype``.

    Class indices (``target`` of shape ``N``): the sum of ``w[y_n]`` over the
    rows that are not ignored, or the number of those rows without weights, as
    PyTorch does. Probability targets (``N x C``): the number of rows, because
    PyTorch 2.13 leaves the class weights out of the normaliser for them.
    """
    if target.is_floating_point():
        return torch.full((), target.shape[0], dtype=dtype, device=target.device)
    kept = target != ignore_index
    if weight is None:
        return kept.sum().to(dtype)
    safe = torch.where(kept, target, 0).long()  # uint8 would index as a mask
    return (weight.to(dtype)[safe] * kept).sum()


def cross_entropy_rule(
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    *,
    grad_scale: Tensor | None = None,
    fused: bool = False,
) -> RowRule:
    """Build the row rule of a softmax cross-entropy.

    Args:
        target: class indices of shape ``N`` (integer dtype), or target
            probabilities of shape ``N x C`` (floating dtype), one row per
            row of logits.
        weight: class weights of shape ``C``, or ``None``.
        ignore_index: class index whose rows get loss 0 and gradient 0 (class
            index targets only).
        label_smoothing: ``ε`` in ``[0, 1]``.
        grad_scale: a 0-dim factor of the gradient (not of the loss), such as
            1 / the normaliser of ``mean``. The rules fold it into their
            per-row coefficients, so it costs no extra pass in most cases.
        fused: take the faster rule of :func:`_fused_class_index_rule` for
            class indices without weights or smoothing. That rule reads one
            value per chunk on the host, so it is taken only where
            :func:`can_read_values` allows it, and the general rule elsewhere.

    The returned rule writes the gradient of each row's unreduced loss, times
    ``grad_scale``, into ``out`` and returns each row's loss; the caller
    applies the reduction. The inputs are not validated here: class indices
    out of range give wrong results or an indexing error.
    """
    if target.is_floating_point():
        return _probability_rule(target, weight, label_smoothing, grad_scale)
    general = _class_index_rule(target, weight, ignore_index, label_smoothing, grad_scale)
    if fused and weight is None and label_smoothing == 0 and can_read_values(target):
        return _fused_class_index_rule(target, ignore_index, grad_scale, general)
    return general


def can_read_values(tensor: Tensor) -> bool:
    """Return whether reading ``tensor``'s values on the host is cheap and allowed.

    True for CPU tensors in eager mode. False on other devices, where a read
    waits for the device, under torch.compile, which cannot trace a read,
    and under torch.func transforms, where values are batched.
    """
    if tensor.device.type != "cpu" or torch.compiler.is_compiling():
        return False
    return not torch._C._are_functorch_transforms_active()


def _shift_(x: Tensor, out: Tensor) -> None:
    """Write ``x − m`` into ``out``, ``m`` being the row maximum.

    ``m`` is the symbol of the usual max-subtraction, lse = m + log Σ exp(x − m),
    which keeps ``exp`` in range at any magnitude. A row without a finite
    logit uses m = 0.
    """
    m = x.amax(dim=-1, keepdim=True)  # chunk x 1
    m = torch.where(torch.isfinite(m), m, 0.0)
    if torch._C._are_functorch_transforms_active():
        # vmap has no batching rule for out= variants.
        out.copy_(x).sub_(m)
    else:
        torch.sub(x, m, out=out)


def _exponentiate_(out: Tensor) -> Tensor:
    """Replace ``x − m`` in ``out`` by exp(x − m) in place; return the row sums.

    The sum is at least 1 when the row has a finite logit (its maximum gives
    exp 0 = 1). A row of ``-inf`` sums to 0 and gets 1 instead, so that its
    all-zero row divides to probabilities 0 and its log-sum is 0, not NaN.
    A row with a NaN logit keeps its NaN sum, so its loss is NaN, as in PyTorch.
    Probabilities are ``out / total``; the rules fold that division into the
    gradient's row factor to save a pass over the chunk.
    """
    out.exp_()
    total = out.sum(dim=-1, keepdim=True)  # chunk x 1
    return torch.where(total == 0, 1.0, total)


def _finite_mask(shifted: Tensor, out: Tensor | None = None) -> Tensor:
    """Return 1.0 where ``shifted`` is finite and 0.0 where it is −inf, in float.

    (x − m)·0 + 1 is 1 for finite x and NaN for −inf, and NaN then becomes 0.
    Float ops are used because bool tensors are several times slower than
    float ones on CPU. ``out`` is an optional scratch buffer of the same shape.
    """
    mask = shifted.mul(0.0) if out is None else out.copy_(shifted).mul_(0.0)
    return mask.add_(1.0).nan_to_num_(nan=0.0)


def _smoothing_terms(shifted: Tensor, w: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return the label-smoothing sums of each row over its finite classes.

    The result is (K, Σ w_c, Σ w_c (x_c − m), w_c [x_c finite]), the first
    three per row (``chunk x 1``) and the last per class (``chunk x C``).
    ``K`` is the number of finite logits of the row, at least 1 so that it
    can divide. The sums and the mask share one scratch buffer.
    """
    scratch = torch.nan_to_num(shifted, neginf=0.0)  # chunk x C, x − m or 0
    shifted_sum = (
        scratch.sum(dim=-1, keepdim=True) if w is None else (scratch @ w).unsqueeze(-1)
    )
    mask = _finite_mask(shifted, out=scratch)
    count = mask.sum(dim=-1, keepdim=True).clamp(min=1)
    if w is None:
        return count, count, shifted_sum, mask
    smooth_weight = mask.mul_(w)
    return count, smooth_weight.sum(dim=-1, keepdim=True), shifted_sum, smooth_weight


def _class_index_rule(
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    eps: float,
    grad_scale: Tensor | None,
) -> RowRule:
    kept_all = target != ignore_index  # N
    safe_all = torch.where(kept_all, target, 0).long()  # gather needs int64

    def rule(rows: slice, x: Tensor, out: Tensor) -> Tensor:
        # 1. Per-row target data: y, whether the row counts, and the target
        #    coefficient a = (1 − ε) w_y (0 for an ignored row).
        y = safe_all[rows].unsqueeze(-1)  # chunk x 1
        kept = kept_all[rows].unsqueeze(-1)
        w = None if weight is None else weight.to(x.dtype)
        w_y = kept.to(x.dtype) if w is None else w[y] * kept
        a = (1.0 - eps) * w_y

        # 2. Shifted logits and their exponentials; z_y is read before out
        #    overwrites x.
        _shift_(x, out)
        z_y = out.gather(-1, y)  # chunk x 1, x_y − m
        if eps > 0:
            count, weight_sum, shifted_sum, smooth_weight = _smoothing_terms(out, w)
        total = _exponentiate_(out)
        log_total = total.log()

        # 3. Loss. −log p_y = log_total − (x_y − m), which is +inf when x_y is
        #    −inf. A zero coefficient keeps 0 · inf out of the result.
        nll = log_total - z_y
        loss = torch.where(a > 0, a * nll, 0.0)
        s = a  # Σ_c w_c q_c, the factor of p in the gradient
        if eps > 0:
            # Σ_{c finite} w_c (lse − x_c) = Σw · log_total − Σ w_c (x_c − m),
            # two non-negative terms, so no cancellation at large logits.
            b = (eps / count) * kept  # chunk x 1
            loss = loss + b * (weight_sum * log_total - shifted_sum)
            s = a + b * weight_sum
        if grad_scale is not None:
            # The gradient is linear in a, b and s; the loss above used them unscaled.
            a = a * grad_scale
            s = s * grad_scale
            if eps > 0:
                b = b * grad_scale

        # 4. Gradient: p_j Σ_c w_c q_c − w_j q_j.
        #    target term  (1 − ε) w_y (p_j − [j = y])
        #    smoothing    (ε/K) (p_j Σ_{c finite} w_c − w_j [x_j finite])
        #    An ignored row has s = 0 and a = b = 0, so its gradient is exactly
        #    0 whenever its probabilities are not NaN (no NaN or +inf logit).
        out.mul_(s / total)  # exp(x − m) / total = p
        if eps > 0:
            out.sub_(smooth_weight.mul_(b))
        out.scatter_add_(-1, y, -a)
        return torch.where(kept, loss, 0.0).squeeze(-1)

    return rule


def _probability_rule(
    target: Tensor, weight: Tensor | None, eps: float, grad_scale: Tensor | None
) -> RowRule:
    def rule(rows: slice, x: Tensor, out: Tensor) -> Tensor:
        # 1. Target distribution q = (1 − ε) y + ε/K on the finite classes,
        #    times the class weights: wq (chunk x C).
        _shift_(x, out)
        wq = target[rows].to(x.dtype)
        if eps > 0:
            mask = _finite_mask(out)  # chunk x C
            count = mask.sum(dim=-1, keepdim=True).clamp(min=1)
            wq = (1.0 - eps) * wq + mask.mul_(eps / count)
        if weight is not None:
            wq = wq * weight.to(x.dtype)
        s = wq.sum(dim=-1, keepdim=True)  # Σ_c w_c q_c

        # 2. Loss Σ_c w_c q_c (log_total − (x_c − m)). A class with w_c q_c = 0
        #    adds 0 even where its logit is −inf: nansum drops the 0 · (−inf).
        shifted_sum = torch.nansum(wq * out, dim=-1, keepdim=True)
        total = _exponentiate_(out)
        loss = s * total.log() - shifted_sum

        # 3. Gradient p_j Σ_c w_c q_c − w_j q_j, with p = exp(x − m) / total.
        if grad_scale is not None:
            s = s * grad_scale
            wq = wq * grad_scale
        out.mul_(s / total).sub_(wq)
        return loss.squeeze(-1)

    return rule


def _fused_class_index_rule(
    target: Tensor, ignore_index: int, grad_scale: Tensor | None, general: RowRule
) -> RowRule:
    """Build the rule for class indices without weights or smoothing, on ``torch.softmax``.

    The passes over a chunk are the row maximum m, PyTorch's softmax kernel
    written into ``out``, the row maximum of ``out`` and one multiply by the per-row
    factor c, which is 0 for an ignored row and ``grad_scale`` otherwise. The
    one-hot term −c goes in by a scatter on one entry per row. The softmax
    kernel computes exp(x − m) / Σ exp(x − m), so the probability at the
    row's maximum is 1 / Σ exp(x − m), rounded once. The loss
    lse − x_y = log Σ exp(x − m) − (x_y − m) is formed from it and from
    x_y − m, which keeps its precision at logits of 1e8 and where p_y
    underflows.

    No masking is needed when every row maximum is finite: an entry of −inf
    then gives probability 0 and gradient 0, and a target logit of −inf gives
    loss +inf and gradient −c. A chunk with a row maximum of ±inf or NaN (a
    row of only −inf, a +inf or NaN logit) goes to ``general``. That test
    reads one value per chunk on the host, before anything is written to
    ``out``.
    """
    kept_all = target != ignore_index  # N
    safe_all = torch.where(kept_all, target, 0).long().unsqueeze(-1)  # N x 1, int64 for gather
    ignored_all = ~kept_all.unsqueeze(-1)  # N x 1
    factors: dict[torch.dtype, Tensor] = {}  # the factor c per row (N x 1) by dtype

    def rule(rows: slice, x: Tensor, out: Tensor) -> Tensor:
        m = x.amax(dim=-1, keepdim=True)  # chunk x 1
        if not math.isfinite(m.sum().item()):
            return general(rows, x, out)
        factor = factors.get(x.dtype)
        if factor is None:
            # Made on the first call, when the dtype is known. Two threads may
            # both make it; setdefault keeps one of the equal results.
            factor = kept_all.to(x.dtype).unsqueeze(-1)
            if grad_scale is not None:
                factor = factor * grad_scale
            factor = factors.setdefault(x.dtype, factor)
        c = factor[rows]  # chunk x 1
        y = safe_all[rows]

        z_y = x.gather(-1, y).sub_(m)  # chunk x 1, x_y − m, read before out is written
        torch.softmax(x, dim=-1, out=out)  # x is not read after this
        # log Σ exp(x − m) = −log of the largest probability. (amax and a
        # second amax read less time than one max with indices.)
        log_total = out.amax(dim=-1, keepdim=True).log_().neg_()

        # Gradient c (p_j − [j = y]).
        out.mul_(c)
        out.scatter_add_(-1, y, c.neg())

        # Loss lse − x_y. An ignored row gives 0 even where its x_0 is −inf.
        return log_total.sub_(z_y).masked_fill_(ignored_all[rows], 0.0).squeeze(-1)

    return rule
