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

import torch
from torch import Tensor

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
    exactly for rows with a NaN or ``+inf`` logit, which :func:`_invalid_rows` reads.
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


def _invalid_rows(*lses: Tensor) -> Tensor:
    """Return the rows (``chunk``) where any log-sum-exp is NaN or ``+inf``.

    Those rows have a NaN or ``+inf`` logit. Their loss is set to NaN, because
    :func:`_weighted` replaces NaN products by 0 and would otherwise hide them.
    """
    valid = lses[0] < float("inf")
    for lse in lses[1:]:
        valid &= lse < float("inf")
    return ~valid


def _weighted(p: Tensor, value: Tensor) -> Tensor:
    """Return ``p · value`` with exactly 0 where ``p = 0``, whatever ``value`` is.

    A NaN product comes from 0 · ±inf (a zero probability against an infinite
    log-ratio) or from a NaN logit. Both become 0 here, and the callers mark
    rows with NaN logits through :func:`_invalid_rows`. ``nan_to_num_`` is
    used because on CPU it is several times faster than a comparison and
    ``torch.where`` over the chunk.
    """
    inf = float("inf")
    return (p * value).nan_to_num_(nan=0.0, posinf=inf, neginf=-inf)


def _forward_kl(log_p_t: Tensor, p_t: Tensor, log_p_s: Tensor) -> Tensor:
    """Return KL(p_t ‖ p_s) of each row (``chunk``)."""
    return _weighted(p_t, log_p_t - log_p_s).sum(dim=-1)


def _mark_invalid(loss: Tensor, invalid: Tensor) -> Tensor:
    """Set the loss of rows with a NaN or ``+inf`` logit to NaN."""
    return torch.where(invalid, torch.full_like(loss, float("nan")), loss)


def _counted_rows(target: Tensor | None, ignore_index: int) -> Tensor | None:
    """Return the ``N`` mask of rows that count, or None when every row counts."""
    return None if target is None else target != ignore_index


def kd_rule(
    teacher: Tensor,
    target: Tensor | None = None,
    *,
    temperature: float = 4.0,
    alpha: float = 0.9,
    ignore_index: int = -100,
) -> RowRule:
    """Build the row rule of the distillation loss.

    Args:
        teacher: ``N x V`` teacher logits, one row per row of student logits.
        target: ``N`` class indices, or ``None`` for the soft term alone.
        temperature: ``T > 0``.
        alpha: weight of the soft term in ``[0, 1]``; ignored without a target.
        ignore_index: class index whose rows get loss 0 and gradient 0.

    Per row, with a target ``y`` (``α`` = alpha)::

        loss = α T² KL(p_t ‖ p_s) + (1 − α) (−log softmax(s)_y)
        ∂loss/∂s = α T (p_s − p_t) + (1 − α) (softmax(s) − onehot(y))

    and without a target ``loss = T² KL(p_t ‖ p_s)``, ``∂loss/∂s = T (p_s − p_t)``.
    The hard term has the semantics of ``cross_entropy`` with class indices
    and ``ignore_index``, without class weights or label smoothing.
    """
    counted_all = _counted_rows(target, ignore_index)
    soft_weight = 1.0 if target is None else alpha
    hard_weight = 0.0 if target is None else 1.0 - alpha
    safe_target_all = None
    if target is not None:
        safe_target_all = torch.where(counted_all, target, torch.zeros_like(target))

    def rule(rows: slice, x: Tensor, out: Tensor) -> Tensor:
        # Every term reads x before out (which may be x) is written. The loss
        # is summed out of place, which vmap needs when only some inputs are batched.
        loss = out.new_zeros(out.shape[0])  # chunk
        grad = None

        # 1. Soft term: KL(p_t ‖ p_s) with p = softmax(·/T). Its gradient is
        #    T² · (1/T) (p_s − p_t): the 1/T is the chain rule through s/T.
        if soft_weight > 0:
            log_p_s, p_s, lse_s = log_softmax_pair(x, temperature)
            log_p_t, p_t, lse_t = log_softmax_pair(teacher[rows].to(x.dtype), temperature)
            soft_loss = (soft_weight * temperature**2) * _forward_kl(log_p_t, p_t, log_p_s)
            loss = _mark_invalid(loss + soft_loss, _invalid_rows(lse_s, lse_t))
            grad = p_s.sub_(p_t).mul_(soft_weight * temperature)  # chunk x V

        # 2. Hard term: −log softmax(s)_y, gradient softmax(s) − onehot(y), at
        #    temperature 1. It is +inf when s_y = −inf, as in cross_entropy.
        if hard_weight > 0:
            y = safe_target_all[rows].unsqueeze(-1)  # chunk x 1
            log_p, p, _ = log_softmax_pair(x)
            loss = loss - hard_weight * log_p.gather(-1, y).squeeze(-1)
            p.scatter_add_(-1, y, torch.full_like(y, -1.0, dtype=p.dtype))
            grad = p.mul_(hard_weight) if grad is None else grad.add_(p, alpha=hard_weight)

        # 3. An ignored row gets exactly 0 in loss and gradient, even where a
        #    term above is infinite.
        out.copy_(grad)
        if counted_all is not None:
            counted = counted_all[rows]  # chunk
            loss = torch.where(counted, loss, torch.zeros_like(loss))
            out.masked_fill_(~counted.unsqueeze(-1), 0.0)
        return loss

    return rule


def js_rule(
    teacher: Tensor,
    target: Tensor | None = None,
    *,
    beta: float = 0.5,
    temperature: float = 1.0,
    ignore_index: int = -100,
) -> RowRule:
    """Build the row rule of the generalised Jensen-Shannon divergence.

    Args:
        teacher: ``N x V`` teacher logits, one row per row of student logits.
        target: ``N`` class indices, used only to drop the rows equal to
            ``ignore_index``; ``None`` counts every row.
        beta: ``β`` in ``[0, 1]``, the teacher's weight in the mixture.
        temperature: ``T > 0``.
        ignore_index: class index whose rows get loss 0 and gradient 0.

    Per row, with ``M = β p_t + (1 − β) p_s`` and ``0 < β < 1``::

        loss = T² (β KL(p_t ‖ M) + (1 − β) KL(p_s ‖ M))

    ``β = 0`` is defined as ``T² KL(p_t ‖ p_s)`` and ``β = 1`` as
    ``T² KL(p_s ‖ p_t)``. Those are not the limits of the formula, which tends
    to 0 at both ends: the loss jumps at ``β = 0`` and ``β = 1`` by design.
    """
    counted_all = _counted_rows(target, ignore_index)

    def rule(rows: slice, x: Tensor, out: Tensor) -> Tensor:
        log_p_s, p_s, lse_s = log_softmax_pair(x, temperature)
        log_p_t, p_t, lse_t = log_softmax_pair(teacher[rows].to(x.dtype), temperature)
        if beta == 0.0:
            loss = _forward_kl(log_p_t, p_t, log_p_s)
            # ∂KL(p_t ‖ p_s)/∂z = p_s − p_t.
            out.copy_(p_s.sub_(p_t))
        elif beta == 1.0:
            loss = _reverse_kl_(log_p_s, p_s, log_p_t, out)
        else:
            # The mixed form is computed divided by β(1 − β), whose log-ratios
            # keep full precision near the ends, then scaled back. Within
            # machine epsilon of an end, where dividing by β or 1 − β is not
            # safe (β may be subnormal), the first-order term β(1 − β) · KL is
            # used; it differs from the formula by a relative O(β).
            eps = torch.finfo(x.dtype).eps
            if beta < eps:
                loss = _forward_kl(log_p_t, p_t, log_p_s)
                out.copy_(p_s.sub_(p_t))
            elif 1.0 - beta < eps:
                loss = _reverse_kl_(log_p_s, p_s, log_p_t, out)
            else:
                loss = _normalised_js_(log_p_s, p_s, log_p_t, p_t, beta, out)
            weight = beta * (1.0 - beta)
            loss = loss.mul_(weight)
            out.mul_(weight)
        # The branches give J and ∂J/∂z at z = s/T. The loss is T² J, and
        # ∂(T² J)/∂s = T² · (1/T) ∂J/∂z = T ∂J/∂z.
        loss = _mark_invalid(loss.mul_(temperature**2), _invalid_rows(lse_s, lse_t))
        out.mul_(temperature)
        if counted_all is not None:
            counted = counted_all[rows]  # chunk
            loss = torch.where(counted, loss, torch.zeros_like(loss))
            out.masked_fill_(~counted.unsqueeze(-1), 0.0)
        return loss

    return rule


def _softmax_backward_(p_s: Tensor, g: Tensor, out: Tensor) -> Tensor:
    """Write ``p_s,j (g_j − Σ_i p_s,i g_i)`` into ``out``; return ``Σ_i p_s,i g_i``.

    This is the chain rule through a softmax: for a loss J(p_s), g = ∂J/∂p_s
    gives ∂J/∂z_j with p_s = softmax(z). Terms with p_s = 0 are exactly 0.
    """
    weighted = _weighted(p_s, g)  # chunk x V
    total = weighted.sum(dim=-1, keepdim=True)  # chunk x 1
    out.copy_(weighted.sub_(p_s * total))
    return total.squeeze(-1)


def _reverse_kl_(log_p_s: Tensor, p_s: Tensor, log_p_t: Tensor, out: Tensor) -> Tensor:
    """Write ∂KL(p_s ‖ p_t)/∂(s/T) into ``out``; return KL(p_s ‖ p_t) per row.

    J = Σ p_s (log p_s − log p_t) gives ∂J/∂p_s,i = log p_s,i − log p_t,i + 1.
    The constant 1 cancels in the softmax chain rule, which leaves
    ∂J/∂z_j = p_s,j (ℓ_j − J) with ℓ = log p_s − log p_t. The value is +inf
    (and the gradient NaN) where p_t = 0 < p_s: the divergence is infinite.
    """
    return _softmax_backward_(p_s, log_p_s - log_p_t, out)


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
