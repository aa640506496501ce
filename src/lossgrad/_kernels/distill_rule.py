"""Row rules of the distillation losses for :func:`lossgrad._kernels.rows.fused_rows`.

:func:`kd_rule` and :func:`js_rule` turn a teacher's logits (and optional class
targets) into a :data:`~lossgrad._kernels.rows.RowRule` over the student's
logits, so the loss and the gradient of each row come out of one pass. Any loss
that compares a student softmax with a teacher softmax row by row (``kd_loss``,
``js_div``, a fused linear head with a distillation loss) can reuse them. The
rules are plain tensor code without autograd. Their inputs are not validated
here: the public functions do that.

Notation, per row: ``s`` student logits, ``t`` teacher logits, ``T`` the
temperature, ``p_s = softmax(s/T)``, ``p_t = softmax(t/T)``. Every term of the
form ``p_c · (…)`` is exactly 0 where ``p_c = 0``, even where ``(…)`` is
infinite, which is the convention 0 · log 0 = 0 of the KL divergence.
"""

from __future__ import annotations

import math
import threading

import torch
from torch import Tensor

from .._reduction import accumulate_dtype
from .rows import RowRule

__all__ = ["js_rule", "kd_rule", "log_softmax_pair"]

# Above this log-ratio d = log p_t − log p_s the JS rule takes log(p_s/M) as a
# plain difference of logs, because exp(d) would overflow float32 near d = 88.
# For d > 40 and β above machine epsilon (smaller β uses the KL limit), M/p_s
# exceeds 50, so the difference of logs keeps its relative precision.
_LOG_RATIO_LIMIT = 40.0


def log_softmax_pair(x: Tensor, temperature: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """Return (log softmax, softmax, log-sum-exp) of each row of ``x / temperature``.

    The first two are new ``chunk x V`` tensors, so ``x`` may be overwritten
    afterwards. The log-probability is formed as ``(x/T − m) − log Σ exp(x/T − m)``
    with the row maximum ``m``, which keeps its absolute error at rounding level
    for logits of any magnitude. Entries equal to ``-inf`` get probability 0 and
    log-probability ``-inf``; a row of ``-inf`` gets all zeros, all ``-inf`` and
    a log-sum-exp of ``-inf``. The log-sum-exp (``chunk``) is NaN or ``+inf``
    exactly for rows with a NaN or ``+inf`` logit.
    """
    log_p = x / temperature if temperature != 1.0 else x.clone()
    m = log_p.amax(dim=-1, keepdim=True)  # chunk x 1, NaN if the row has a NaN
    shift = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    log_p.sub_(shift)
    p = log_p.exp()
    total = p.sum(dim=-1, keepdim=True)  # chunk x 1, at least 1 if a logit is finite
    lse = (m + total.log()).squeeze(-1)
    total = torch.where(total > 0, total, torch.ones_like(total))
    p.div_(total)
    log_p.sub_(total.log())
    return log_p, p, lse


def _weighted(p: Tensor, value: Tensor) -> Tensor:
    """Return ``p · value`` with exactly 0 where ``p = 0``, whatever ``value`` is.

    A NaN product comes from 0 · ±inf (a zero probability against an infinite
    log-ratio) or from a NaN logit. Both become 0 here, and the callers mark
    rows with NaN logits through :func:`_poison`. ``nan_to_num_`` is
    used because on CPU it is several times faster than a comparison and
    ``torch.where`` over the chunk.
    """
    inf = float("inf")
    return (p * value).nan_to_num_(nan=0.0, posinf=inf, neginf=-inf)


class _Buffers:
    """Chunk-sized buffers that a rule reuses from chunk to chunk.

    A fresh ``chunk x V`` tensor per operation costs an allocation and, for
    a size above glibc's mmap threshold, page faults on every first touch.
    Under torch.compile and torch.func transforms :meth:`take` returns None
    and the rules use out-of-place operations instead. Each thread gets its
    own buffers, so that a rule may run chunks in several threads at once.
    """

    def __init__(self) -> None:
        # Made on first use, because torch.compile cannot trace threading.local.
        self._local: threading.local | None = None

    def take(self, name: str, like: Tensor) -> Tensor | None:
        """Return a buffer with the shape, dtype and device of ``like``, or None."""
        if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
            return None
        if self._local is None:
            self._local = threading.local()
        buffers = self._local.__dict__.setdefault("buffers", {})
        buffer = buffers.get(name)
        if (
            buffer is None
            or buffer.shape[0] < like.shape[0]
            or buffer.shape[1:] != like.shape[1:]
            or buffer.dtype != like.dtype
            or buffer.device != like.device
        ):
            buffer = torch.empty_like(like, memory_format=torch.contiguous_format)
            buffers[name] = buffer
        return buffer[: like.shape[0]]


def _shifted(
    x: Tensor, temperature: float, buffers: _Buffers, name: str
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return (z, exp z, Σ exp z, row maximum) of ``z = (x − m) / T`` for each row of ``x``.

    ``m`` is the row maximum, replaced by 0 in a row whose maximum is not
    finite, so that ``z ≤ 0`` in every row with a finite maximum and the sum
    is at least 1 there. ``z`` and ``exp z`` are ``chunk x V`` buffers named
    after ``name``, so ``x`` may be overwritten afterwards. The returned
    maximum (``chunk x 1``) is the raw one: NaN or ``+inf`` for rows with a
    NaN or ``+inf`` logit, which :func:`_poison` reads.
    """
    m = x.amax(dim=-1, keepdim=True)  # chunk x 1
    shift = m.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).mul_(-1.0 / temperature)
    # One pass: z = x/T − m/T.
    z = buffers.take(name + " z", x)
    if z is None:
        z = torch.add(shift, x, alpha=1.0 / temperature)
        e = z.exp()
    else:
        torch.add(shift, x, alpha=1.0 / temperature, out=z)
        e = buffers.take(name + " exp z", x)
        torch.exp(z, out=e)
    return z, e, e.sum(dim=-1, keepdim=True), m


def _poison(*maxima: Tensor) -> Tensor:
    """Return ``chunk x 1``: NaN where any row maximum is NaN or ``+inf``, else 0.

    Added to a row's loss, it marks rows with a NaN or ``+inf`` logit, whose
    NaN products :func:`_weighted_` would otherwise turn into 0.
    """
    total = None
    for m in maxima:
        clamped = m.clamp_min(0.0)  # −inf → 0, NaN and +inf stay
        term = clamped - clamped  # NaN for NaN and +inf, else 0
        total = term if total is None else total.add_(term)
    return total


def _weighted_(e: Tensor, value: Tensor) -> Tensor:
    """Overwrite ``value`` with ``e · value``, exactly 0 where ``e = 0``; return it.

    A NaN product comes from 0 · ±inf (a zero probability against an infinite
    log-ratio) or from a NaN logit, and becomes 0; rows with NaN logits are
    marked by :func:`_poison`.
    """
    inf = float("inf")
    return value.mul_(e).nan_to_num_(nan=0.0, posinf=inf, neginf=-inf)


def _teacher_chunk(teacher: Tensor, rows: slice, x: Tensor, buffers: _Buffers) -> Tensor:
    """Return the teacher rows of this chunk in the dtype of ``x``.

    Under torch.func transforms they are batched like ``x``, because the
    rules update buffers made from them in place with values made from ``x``.
    """
    chunk = teacher[rows]
    if torch._C._are_functorch_transforms_active():
        return chunk.to(x.dtype) + torch.zeros_like(x)
    if chunk.dtype == x.dtype:
        return chunk
    converted = buffers.take("teacher", x)
    return chunk.to(x.dtype) if converted is None else converted.copy_(chunk)


def _store(operation, *args, out: Tensor) -> None:
    """Write ``operation(*args)`` into ``out``, in one pass where vmap allows ``out=``.

    vmap has no batching rule for ``out=`` variants, so under torch.func
    transforms the result is made first and copied.
    """
    if torch._C._are_functorch_transforms_active():
        out.copy_(operation(*args))
    else:
        operation(*args, out=out)


def _add_product(out: Tensor, e: Tensor, factor: Tensor) -> None:
    """Add ``e · factor`` (``factor`` per row) to ``out`` in one pass.

    vmap has no batching rule for ``addcmul_``, so under torch.func
    transforms the product is made first.
    """
    if torch._C._are_functorch_transforms_active():
        out.add_(e * factor)
    else:
        out.addcmul_(e, factor)


def _dot_(e: Tensor, value: Tensor) -> Tensor:
    """Return Σ_j e_j · value_j per row (``chunk x 1``), a term with e_j = 0 adding 0.

    On the CPU it is one fused pass. A NaN in that dot product comes from
    0 · ±inf or from a NaN logit, so only when the row results contain a
    NaN is the sum redone with :func:`_weighted_`, which overwrites
    ``value``. Off the CPU and under torch.compile or torch.func the masked
    sum is always used.
    """
    reads_values = e.device.type == "cpu" and not (
        torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
    )
    if reads_values:
        dot = torch.linalg.vecdot(e, value).unsqueeze(-1)
        if not bool(dot.isnan().any()):
            return dot
    return _weighted_(e, value).sum(dim=-1, keepdim=True)


def _safe(total: Tensor) -> Tensor:
    """Replace a zero row sum (a row of ``-inf``) by 1, so that it divides to 0, not NaN."""
    return total + (total == 0)


def _counted_weights(target: Tensor | None, ignore_index: int, dtype: torch.dtype) -> Tensor | None:
    """Return ``N`` row weights, 1 for a counted row and 0 for an ignored one, or None."""
    return None if target is None else (target != ignore_index).to(dtype)


def _may_ignore(weights: Tensor | None) -> bool:
    """Return whether some row may be ignored, reading the weights only on the CPU.

    Under torch.compile and torch.func transforms, and off the CPU, it returns
    True without reading values.
    """
    if weights is None:
        return False
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return True
    if weights.device.type != "cpu":
        return True
    return not bool(weights.all())


def _finish_rows(
    loss: Tensor, out: Tensor, weights: Tensor | None, mask_rows: bool
) -> Tensor:
    """Give ignored rows exactly 0 in loss and gradient; return the ``chunk`` loss.

    The gradient of an ignored row is already 0 through its row factor unless
    the row has a NaN or ``+inf`` logit, so the pass over ``out`` runs only
    when some row may be ignored.
    """
    loss = loss.squeeze(-1)
    if weights is None:
        return loss
    counted = weights.squeeze(-1) > 0  # chunk
    loss = torch.where(counted, loss, torch.zeros_like(loss))
    if mask_rows:
        out.masked_fill_(~counted.unsqueeze(-1), 0.0)
    return loss


def kd_rule(
    teacher: Tensor,
    target: Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    ignore_index: int = -100,
    scale: Tensor | float = 1.0,
) -> RowRule:
    """Build the row rule of the distillation loss.

    Args:
        teacher: ``N x V`` teacher logits, one row per row of student logits.
        target: ``N`` class indices, or ``None`` for the soft term alone.
        temperature: ``T > 0``.
        alpha: weight of the soft term in ``[0, 1]``; ignored without a target.
        ignore_index: class index whose rows get loss 0 and gradient 0.
        scale: factor of the gradient (not of the loss), such as the
            reduction's 1/denominator, so that backward has nothing left to
            do for a ``grad_output`` of 1.

    Per row, with a target ``y`` (``α`` = alpha)::

        loss = α T² KL(p_t ‖ p_s) + (1 − α) (−log softmax(s)_y)
        ∂loss/∂s = α T (p_s − p_t) + (1 − α) (softmax(s) − onehot(y))

    and without a target ``loss = T² KL(p_t ‖ p_s)``, ``∂loss/∂s = T (p_s − p_t)``.
    The hard term has the semantics of ``cross_entropy`` with class indices
    and ``ignore_index``, without class weights or label smoothing.
    """
    soft_weight = 1.0 if target is None else alpha
    hard_weight = 0.0 if target is None else 1.0 - alpha
    weights_all = _counted_weights(target, ignore_index, accumulate_dtype(teacher.dtype))
    mask_rows = _may_ignore(weights_all)
    safe_target_all = None
    if target is not None:
        safe_target_all = torch.where(weights_all > 0, target, torch.zeros_like(target))
    T = temperature
    buffers = _Buffers()

    def rule(rows: slice, x: Tensor, out: Tensor) -> Tensor:
        # Every term reads x before out (which may be x) is written. The
        # gradient is a sum of row-scaled exponentials, written once at the
        # end: out = a·exp(z_s) + b·exp(z_t) + c·exp(x − m) − h·onehot(y).
        weights = None if weights_all is None else weights_all[rows].unsqueeze(-1)  # chunk x 1
        row_scale = scale if weights is None else weights * scale
        loss = out.new_zeros(out.shape[0], 1)  # chunk x 1
        e_s = e_t = a = b = None
        m_s = x.amax(dim=-1, keepdim=True) if soft_weight == 0 else None

        # 1. Soft term T² KL(p_t ‖ p_s) with p = softmax(z), z = (· − m)/T. With
        #    S = Σ exp z, log p = z − log S and Σ p_t = 1:
        #    KL = Σ exp(z_t) (z_t − z_s) / S_t + log S_s − log S_t.
        #    Its gradient is T² · (1/T) (p_s − p_t): 1/T from the chain rule.
        if soft_weight > 0:
            z_s, e_s, total_s, m_s = _shifted(x, T, buffers, "student")
            teacher_rows = _teacher_chunk(teacher, rows, x, buffers)
            z_t, e_t, total_t, m_t = _shifted(teacher_rows, T, buffers, "teacher")
            safe_s, safe_t = _safe(total_s), _safe(total_t)
            dot = _dot_(e_t, z_t.sub_(z_s))
            # A teacher row of -inf has no mass (total_t = 0) and adds 0.
            kl = (dot + total_t * (safe_s.log() - safe_t.log())) / safe_t
            loss = loss + (soft_weight * T * T) * kl + _poison(m_s, m_t)
            a = (soft_weight * T) * row_scale / safe_s
            b = (-soft_weight * T) * row_scale / safe_t

        # 2. Hard term at temperature 1: −log softmax(s)_y = log S − (s_y − m),
        #    gradient softmax(s) − onehot(y). It is +inf when s_y = −inf.
        if hard_weight > 0:
            y = safe_target_all[rows].unsqueeze(-1)  # chunk x 1
            shift = m_s.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)
            z_y = x.gather(-1, y) - shift
            if soft_weight > 0 and T == 1.0:
                total = safe_s
                _store(torch.mul, e_s, a + hard_weight * row_scale / total, out=out)
            else:
                _store(torch.sub, x, shift, out=out)
                out.exp_()
                total = _safe(out.sum(dim=-1, keepdim=True))
                out.mul_(hard_weight * row_scale / total)
                if e_s is not None:
                    _add_product(out, e_s, a)
            if e_t is not None:
                _add_product(out, e_t, b)
            loss = loss + hard_weight * (total.log() - z_y)
            h = weights * (-hard_weight * scale)  # chunk x 1
            out.scatter_add_(-1, y, h.to(out.dtype))
        else:
            _store(torch.mul, e_s, a, out=out)
            _add_product(out, e_t, b)

        # 3. An ignored row gets exactly 0 in loss and gradient.
        return _finish_rows(loss, out, weights, mask_rows)

    return rule


# The mixed JSD form is taken directly, as log p − log M, for β in
# [_DIRECT_BETA, 1 − _DIRECT_BETA]. Closer to an end log(p/M) tends to 0 and
# the difference of logs loses relative precision (a factor of about 1/β), so
# the log1p/expm1 form of _normalised_js_ is used there.
_DIRECT_BETA = 0.05


def js_rule(
    teacher: Tensor,
    target: Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
    scale: Tensor | float = 1.0,
) -> RowRule:
    """Build the row rule of the generalised Jensen-Shannon divergence.

    Args:
        teacher: ``N x V`` teacher logits, one row per row of student logits.
        target: ``N`` class indices, used only to drop the rows equal to
            ``ignore_index``; ``None`` counts every row.
        beta: ``β`` in ``[0, 1]``, the teacher's weight in the mixture.
        temperature: ``T > 0``.
        ignore_index: class index whose rows get loss 0 and gradient 0.
        scale: factor of the gradient (not of the loss), as in :func:`kd_rule`.

    Per row, with ``M = β p_t + (1 − β) p_s`` and ``0 < β < 1``::

        loss = T² (β KL(p_t ‖ M) + (1 − β) KL(p_s ‖ M))

    ``β = 0`` is defined as ``T² KL(p_t ‖ p_s)`` and ``β = 1`` as
    ``T² KL(p_s ‖ p_t)``. Those are not the limits of the formula, which tends
    to 0 at both ends: the loss jumps at ``β = 0`` and ``β = 1`` by design.
    """
    weights_all = _counted_weights(target, ignore_index, accumulate_dtype(teacher.dtype))
    mask_rows = _may_ignore(weights_all)
    T = temperature
    buffers = _Buffers()

    def rule(rows: slice, x: Tensor, out: Tensor) -> Tensor:
        weights = None if weights_all is None else weights_all[rows].unsqueeze(-1)  # chunk x 1
        row_scale = scale if weights is None else weights * scale
        eps = torch.finfo(x.dtype).eps
        z_s, e_s, total_s, m_s = _shifted(x, T, buffers, "student")
        teacher_rows = _teacher_chunk(teacher, rows, x, buffers)
        z_t, e_t, total_t, m_t = _shifted(teacher_rows, T, buffers, "teacher")
        safe_s, safe_t = _safe(total_s), _safe(total_t)
        # Within machine epsilon of an end, dividing by β or 1 − β is not
        # safe because β may be subnormal. There the first-order term
        # β(1 − β) · KL is used, which differs from the formula by a relative O(β).
        weight = 1.0 if beta in (0.0, 1.0) else beta * (1.0 - beta)

        # The branches give J and ∂J/∂z at z = s/T. The loss is T² J, and
        # ∂(T² J)/∂s = T² · (1/T) ∂J/∂z = T ∂J/∂z.
        if beta < eps:
            # J = KL(p_t ‖ p_s), ∂J/∂z = p_s − p_t, as in kd_rule's soft term.
            dot = _dot_(e_t, z_t.sub_(z_s))
            loss = weight * (dot + total_t * (safe_s.log() - safe_t.log())) / safe_t
            factor = (weight * T) * row_scale
            _store(torch.mul, e_s, factor / safe_s, out=out)
            _add_product(out, e_t, -factor / safe_t)
        elif 1.0 - beta < eps:
            # J = KL(p_s ‖ p_t) = W/S_s − (log S_s − log S_t) with
            # W = Σ exp(z_s) (z_s − z_t); ∂J/∂z = p_s (ℓ − J) with
            # ℓ = log p_s − log p_t, which is (exp(z_s) (z_s − z_t) − exp(z_s) W/S_s)/S_s.
            w = _weighted_(e_s, z_s.sub_(z_t))
            total_w = w.sum(dim=-1, keepdim=True)
            loss = weight * (total_w - total_s * (safe_s.log() - safe_t.log())) / safe_s
            factor = (weight * T) * row_scale / safe_s
            _store(torch.mul, w, factor, out=out)
            _add_product(out, e_s, -factor * total_w / safe_s)
        elif _DIRECT_BETA <= beta <= 1.0 - _DIRECT_BETA:
            mixture = buffers.take("mixture", x)
            loss = _direct_js_(
                z_s, e_s, safe_s, z_t, e_t, safe_t, beta, out, T * row_scale, mixture
            )
        else:
            log_p_s, p_s, _ = log_softmax_pair(x, T)
            log_p_t, p_t, _ = log_softmax_pair(teacher[rows].to(x.dtype), T)
            loss = _normalised_js_(log_p_s, p_s, log_p_t, p_t, beta, out).unsqueeze(-1)
            loss = loss * weight
            out.mul_((weight * T) * row_scale)
        loss = loss * (T * T) + _poison(m_s, m_t)
        return _finish_rows(loss, out, weights, mask_rows)

    return rule


def _direct_js_(
    z_s: Tensor, e_s: Tensor, total_s: Tensor, z_t: Tensor, e_t: Tensor, total_t: Tensor,
    beta: float, out: Tensor, factor: Tensor | float, mixture: Tensor | None,
) -> Tensor:
    """Write ``factor`` · ∂(JSD)/∂z into ``out``; return the JSD per row (``chunk x 1``).

    With p = exp(z)/S (``total_*`` is S with 0 replaced by 1) and
    M = β p_t + (1 − β) p_s, the product M S_s = (1 − β) exp(z_s) + β (S_s/S_t) exp(z_t)
    gives r_s = log(p_s/M) = z_s − log(M S_s) and r_t = log(p_t/M) = r_s + z_t − z_s
    − log S_t + log S_s without a log of a probability. Then
    JSD = β Σ p_t r_t + (1 − β) Σ p_s r_s and, as in :func:`_normalised_js_`,
    ∂JSD/∂z_j = (1 − β) p_s,j (r_s,j − Σ_i p_s,i r_s,i).
    """
    # chunk x V, M S_s, in the ``mixture`` buffer when one is given.
    if mixture is None:
        log_mixture = torch.mul(e_t, beta * total_s / total_t)
    else:
        log_mixture = torch.mul(e_t, beta * total_s / total_t, out=mixture)
    log_mixture.add_(e_s, alpha=1.0 - beta).log_()
    r_t = z_t.sub_(log_mixture).add_(total_s.log() - total_t.log())
    r_s = z_s.sub_(log_mixture)
    # M ≥ β p_t and M ≥ (1 − β) p_s bound r_t ≤ −log β and r_s ≤ −log(1 − β).
    # The bounds matter where M underflows to 0 (β times a subnormal
    # exp(z)), which would make r infinite against a positive p.
    r_t.clamp_max_(-math.log(beta))
    r_s.clamp_max_(-math.log1p(-beta))
    teacher_part = _dot_(e_t, r_t) / total_t
    w = _weighted_(e_s, r_s)  # chunk x V, exp(z_s) r_s
    student_sum = w.sum(dim=-1, keepdim=True) / total_s  # Σ p_s r_s
    coefficient = (1.0 - beta) * factor / total_s
    _store(torch.mul, w, coefficient, out=out)
    _add_product(out, e_s, -coefficient * student_sum)
    return beta * teacher_part + (1.0 - beta) * student_sum


def _softmax_backward_(p_s: Tensor, g: Tensor, out: Tensor) -> Tensor:
    """Write ``p_s,j (g_j − Σ_i p_s,i g_i)`` into ``out``; return ``Σ_i p_s,i g_i``.

    This is the chain rule through a softmax: for a loss J(p_s), g = ∂J/∂p_s
    gives ∂J/∂z_j with p_s = softmax(z). Terms with p_s = 0 are exactly 0.
    """
    weighted = _weighted(p_s, g)  # chunk x V
    total = weighted.sum(dim=-1, keepdim=True)  # chunk x 1
    out.copy_(weighted.sub_(p_s * total))
    return total.squeeze(-1)


def _log_mixture_ratio(
    d: Tensor, log_p: Tensor, log_m: Tensor, weight: float
) -> Tensor:
    """Return ``log(p/M) / weight`` where ``M/p = 1 + weight · expm1(d)``.

    ``d`` is log(p_other/p) and ``weight`` the other distribution's share of M.
    For moderate ``d``, ``−log1p(weight · expm1(d)) / weight`` keeps full
    relative precision as ``weight → 0``, where log(p/M) itself tends to 0.
    For large ``d`` the ratio is far from 1 and the difference of logs is
    accurate. The result is NaN or infinite where p = 0, so callers multiply
    it by p with :func:`_weighted`.
    """
    small = -torch.log1p(torch.expm1(d.clamp(max=_LOG_RATIO_LIMIT)) * weight)
    return torch.where(d <= _LOG_RATIO_LIMIT, small, log_p - log_m).div_(weight)


def _normalised_js_(
    log_p_s: Tensor, p_s: Tensor, log_p_t: Tensor, p_t: Tensor, beta: float, out: Tensor
) -> Tensor:
    """Write ∂J/∂(s/T) into ``out``; return J per row, J the normalised JSD.

    J = (β KL(p_t ‖ M) + (1 − β) KL(p_s ‖ M)) / (β (1 − β)), M = β p_t + (1 − β) p_s
      = Σ p_t ψ_t + Σ p_s ψ_s,  ψ_t = log(p_t/M) / (1 − β),  ψ_s = log(p_s/M) / β.
    Unnormalised, ∂/∂p_s,i of β KL(p_t ‖ M) is −β(1 − β) p_t,i / M_i and of
    (1 − β) KL(p_s ‖ M) is (1 − β)(log(p_s,i/M_i) + 1 − (1 − β) p_s,i / M_i);
    their sum is (1 − β) log(p_s,i/M_i) because β p_t + (1 − β) p_s = M.
    After dividing by β(1 − β), ∂J/∂p_s = ψ_s, and through the softmax
    ∂J/∂z_j = p_s,j (ψ_s,j − Σ_i p_s,i ψ_s,i).
    """
    log_m = torch.logaddexp(log_p_t + math.log(beta), log_p_s + math.log1p(-beta))
    d = log_p_t - log_p_s  # log(p_t/p_s); NaN where both are 0, masked below
    psi_s = _log_mixture_ratio(d, log_p_s, log_m, beta)
    psi_t = _log_mixture_ratio(d.neg_(), log_p_t, log_m, 1.0 - beta)
    teacher_part = _weighted(p_t, psi_t).sum(dim=-1)
    student_part = _softmax_backward_(p_s, psi_s, out)
    return teacher_part + student_part
