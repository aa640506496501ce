"""Triton kernels of the softmax family: one program per row, gradient written in forward.

Every kernel here walks one row of logits in blocks of ``BLOCK`` columns. The
first pass keeps an online maximum ``m`` and a running sum ``s`` of
``exp(x - m)`` per lane (Milakov and Gimelshein, "Online normalizer calculation
for softmax", 2018), reduced to the row's log-sum-exp at the end. The last pass
reads the row again and writes the gradient of the row's loss times the
factor at ``scale_ptr`` (``1/denominator`` for a mean, 1 otherwise), so that
backward only has to multiply by ``grad_output``, and skips even that when it
is 1. Everything is computed in float32 whatever the input dtype.

Masked classes (``-inf`` logits) are handled without ``inf - inf``: a lane whose
maximum is still ``-inf`` keeps a zero sum, and ``exp`` of a ``-inf`` logit is
written as 0 explicitly.

This module imports Triton; :mod:`lossgrad._kernels.triton_ops` imports it only
when Triton is installed.
"""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = [
    "JS_FORWARD_KL",
    "JS_MIXED",
    "JS_REVERSE_KL",
    "cross_entropy_rows_kernel",
    "js_rows_kernel",
    "kd_rows_kernel",
    "kl_div_kernel",
    "scale_rows_kernel",
]

NEG_INF: tl.constexpr = tl.constexpr(float("-inf"))

# The cases of js_rows_kernel's MODE.
JS_MIXED: tl.constexpr = tl.constexpr(0)
JS_FORWARD_KL: tl.constexpr = tl.constexpr(1)
JS_REVERSE_KL: tl.constexpr = tl.constexpr(2)


@triton.jit
def _online_update(m, s, x):
    # One block of the online softmax: rescale the running sum to the new
    # maximum, then add this block. Lanes whose maximum is still -inf have
    # s = 0 and must not compute exp(-inf - -inf).
    new_m = tl.maximum(m, x)
    safe_m = tl.where(new_m == NEG_INF, 0.0, new_m)
    s = s * tl.exp(m - safe_m) + tl.where(x == NEG_INF, 0.0, tl.exp(x - safe_m))
    return new_m, s


@triton.jit
def _finish_lse(m, s):
    # Reduce the per-lane (m, s) pairs to the row's log-sum-exp, returned as
    # (row maximum M, log Σ exp(x − M)). Keeping the two apart lets callers
    # form x − lse as (x − M) − log_total, which stays exact for logits of
    # 1e8, where M + log_total would round away the log term in float32.
    row_max = tl.max(m, 0)
    safe_max = tl.where(row_max == NEG_INF, 0.0, row_max)
    total = tl.sum(tl.where(m == NEG_INF, 0.0, s * tl.exp(m - safe_max)), 0)
    return safe_max, tl.log(total)


@triton.jit
def _log_prob(x, row_max, log_total):
    return (x - row_max) - log_total


@triton.jit
def _prob(x, row_max, log_total):
    # p = exp(x − lse), exactly 0 for a masked class.
    return tl.where(x == NEG_INF, 0.0, tl.exp(_log_prob(x, row_max, log_total)))


@triton.jit
def cross_entropy_rows_kernel(
    logits_ptr,
    logits_row_stride,
    target_ptr,
    target_row_stride,
    weight_ptr,
    grad_ptr,
    grad_row_stride,
    loss_ptr,
    scale_ptr,
    n_cols,
    ignore_index,
    smoothing,
    PROB_TARGET: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Cross-entropy of one row: its loss and the gradient of that loss.

    With target distribution q and class weights w (1 without weights), both
    kinds of target reduce to two row sums, A = Σ_c w_c q_c and
    B = Σ_c w_c q_c x_c, so that

        loss = A · lse − B
        ∂loss/∂x_j = A · p_j − w_j q_j.

    Class index y with smoothing ε over the F finite classes:
    q = (1 − ε)·onehot(y) + (ε/F)·[x_c finite]. Probability targets: q as given,
    smoothed as (1 − ε)·q + ε/C. A row whose index is ``ignore_index`` gets
    loss 0 and an all-zero gradient row.
    """
    row = tl.program_id(0).to(tl.int64)
    x_row = logits_ptr + row * logits_row_stride
    g_row = grad_ptr + row * grad_row_stride
    lanes = tl.arange(0, BLOCK)

    # 1. Online log-sum-exp, plus the row sums that A needs.
    m = tl.full([BLOCK], NEG_INF, tl.float32)
    s = tl.zeros([BLOCK], tl.float32)
    wq_sum = tl.zeros([BLOCK], tl.float32)
    finite = tl.zeros([BLOCK], tl.float32)
    w_finite = tl.zeros([BLOCK], tl.float32)
    # NaN where a logit is NaN, else 0: added to the loss, so that a NaN logit
    # anywhere in a counted row gives a NaN loss whatever tl.maximum does with NaN.
    poison = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + lanes
        inside = cols < n_cols
        x = tl.load(x_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        poison += tl.where(x == x, 0.0, x)
        m, s = _online_update(m, s, x)
        if HAS_WEIGHT:
            w = tl.load(weight_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        else:
            w = tl.where(inside, 1.0, 0.0)
        if PROB_TARGET:
            q = tl.load(target_ptr + row * target_row_stride + cols, mask=inside, other=0.0)
            q = (1.0 - smoothing) * q.to(tl.float32) + tl.where(inside, smoothing / n_cols, 0.0)
            wq_sum += w * q
        else:
            is_finite = x != NEG_INF
            finite += tl.where(is_finite, 1.0, 0.0)
            w_finite += tl.where(is_finite, w, 0.0)
    row_max, log_total = _finish_lse(m, s)

    # B − A·M is accumulated in pass 2 from x − M, so the loss
    # A·lse − B = A·log_total − Σ_c w_c q_c (x_c − M) never subtracts two
    # large numbers.
    if PROB_TARGET:
        a = tl.sum(wq_sum, 0)
        keep = 1.0
        y = 0
        w_y = 0.0
        spread = 0.0
        target_term = 0.0
    else:
        y = tl.load(target_ptr + row * target_row_stride)
        ignored = y == ignore_index
        keep = tl.where(ignored, 0.0, 1.0)
        y = tl.where(ignored, 0, y)
        x_y = tl.load(x_row + y).to(tl.float32)
        if HAS_WEIGHT:
            w_y = tl.load(weight_ptr + y).to(tl.float32)
        else:
            w_y = 1.0
        spread = smoothing / tl.maximum(tl.sum(finite, 0), 1.0)
        a = keep * ((1.0 - smoothing) * w_y + spread * tl.sum(w_finite, 0))
        target_term = (1.0 - smoothing) * w_y * (x_y - row_max)

    # 2. The gradient A·p_j − w_j q_j, scaled by the reduction, written over
    #    the row; and Σ_c w_c q_c (x_c − M) for the loss.
    scale = tl.load(scale_ptr).to(tl.float32)
    shifted = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + lanes
        inside = cols < n_cols
        x = tl.load(x_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        p = _prob(x, row_max, log_total)
        if HAS_WEIGHT:
            w = tl.load(weight_ptr + cols, mask=inside, other=0.0).to(tl.float32)
        else:
            w = 1.0
        if PROB_TARGET:
            q = tl.load(target_ptr + row * target_row_stride + cols, mask=inside, other=0.0)
            q = (1.0 - smoothing) * q.to(tl.float32) + smoothing / n_cols
            wq = tl.where(inside, w * q, 0.0)
            shifted += tl.where(wq == 0.0, 0.0, wq * (x - row_max))
        else:
            is_finite = (x != NEG_INF) & inside
            smooth_wq = tl.where(is_finite, spread * w, 0.0)
            shifted += tl.where(is_finite, smooth_wq * (x - row_max), 0.0)
            wq = keep * (tl.where(cols == y, (1.0 - smoothing) * w_y, 0.0) + smooth_wq)
        grad = (a * p - wq) * scale
        tl.store(g_row + cols, grad.to(grad_ptr.dtype.element_ty), mask=inside)
    loss = a * log_total - target_term - tl.sum(shifted, 0) + tl.sum(poison, 0)
    tl.store(loss_ptr + row, tl.where(keep == 0.0, 0.0, loss))


@triton.jit
def kd_rows_kernel(
    student_ptr,
    student_row_stride,
    teacher_ptr,
    teacher_row_stride,
    target_ptr,
    grad_ptr,
    grad_row_stride,
    loss_ptr,
    scale_ptr,
    n_cols,
    inv_temperature,
    temperature,
    alpha,
    ignore_index,
    HAS_TARGET: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Hinton's distillation loss of one row and its gradient wrt the student.

    With p = softmax(s/T), q = softmax(t/T) and, given a target y,
    p¹ = softmax(s):

        loss = α·T²·Σ_j q_j (log q_j − log p_j) + (1 − α)·(−log p¹_y)
        ∂loss/∂s_j = α·T·(p_j − q_j) + (1 − α)·(p¹_j − [j = y])

    A zero q_j contributes 0 whatever p_j is. Without a target the hard
    term is absent and the caller passes α = 1.
    """
    row = tl.program_id(0).to(tl.int64)
    s_row = student_ptr + row * student_row_stride
    t_row = teacher_ptr + row * teacher_row_stride
    g_row = grad_ptr + row * grad_row_stride
    lanes = tl.arange(0, BLOCK)

    # 1. Three online log-sum-exps: student at T, teacher at T, student at 1.
    m_s = tl.full([BLOCK], NEG_INF, tl.float32)
    z_s = tl.zeros([BLOCK], tl.float32)
    m_t = tl.full([BLOCK], NEG_INF, tl.float32)
    z_t = tl.zeros([BLOCK], tl.float32)
    m_1 = tl.full([BLOCK], NEG_INF, tl.float32)
    z_1 = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + lanes
        inside = cols < n_cols
        s = tl.load(s_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        t = tl.load(t_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        m_s, z_s = _online_update(m_s, z_s, s * inv_temperature)
        m_t, z_t = _online_update(m_t, z_t, t * inv_temperature)
        if HAS_TARGET:
            m_1, z_1 = _online_update(m_1, z_1, s)
    max_s, log_z_s = _finish_lse(m_s, z_s)
    max_t, log_z_t = _finish_lse(m_t, z_t)

    keep = 1.0
    hard = 0.0
    y = -1
    if HAS_TARGET:
        max_1, log_z_1 = _finish_lse(m_1, z_1)
        y = tl.load(target_ptr + row)
        ignored = y == ignore_index
        keep = tl.where(ignored, 0.0, 1.0)
        y = tl.where(ignored, 0, y)
        hard = -_log_prob(tl.load(s_row + y).to(tl.float32), max_1, log_z_1)

    # 2. The KL sum and the gradient, in one more pass.
    keep_scale = keep * tl.load(scale_ptr).to(tl.float32)
    kl = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + lanes
        inside = cols < n_cols
        s = tl.load(s_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        t = tl.load(t_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        log_p = _log_prob(s * inv_temperature, max_s, log_z_s)
        log_q = _log_prob(t * inv_temperature, max_t, log_z_t)
        q = _prob(t * inv_temperature, max_t, log_z_t)
        kl += tl.where(q == 0.0, 0.0, q * (log_q - log_p))
        grad = alpha * temperature * (_prob(s * inv_temperature, max_s, log_z_s) - q)
        if HAS_TARGET:
            p1 = _prob(s, max_1, log_z_1)
            grad += (1.0 - alpha) * (p1 - tl.where(cols == y, 1.0, 0.0))
        grad = grad * keep_scale
        tl.store(g_row + cols, grad.to(grad_ptr.dtype.element_ty), mask=inside)
    loss = alpha * temperature * temperature * tl.sum(kl, 0) + (1.0 - alpha) * hard
    tl.store(loss_ptr + row, tl.where(keep == 0.0, 0.0, loss))


@triton.jit
def js_rows_kernel(
    student_ptr,
    student_row_stride,
    teacher_ptr,
    teacher_row_stride,
    target_ptr,
    grad_ptr,
    grad_row_stride,
    loss_ptr,
    scale_ptr,
    n_cols,
    inv_temperature,
    temperature,
    beta,
    ignore_index,
    HAS_TARGET: tl.constexpr,
    MODE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Generalised Jensen-Shannon divergence of one row and its student gradient.

    With p = softmax(s/T), q = softmax(t/T) and M = β·q + (1 − β)·p:

        loss = T²·(β·KL(q‖M) + (1 − β)·KL(p‖M))
        ∂loss/∂p_j = (1 − β)·log(p_j/M_j)          (the other terms cancel)
        ∂loss/∂s_j = T·p_j·(g_j − Σ_k p_k g_k),    g = ∂loss/∂p / T²

    ``MODE`` selects the case: ``JS_MIXED`` for 0 < β < 1, ``JS_FORWARD_KL``
    for β = 0, defined as KL(q‖p) with gradient T·(p − q), and
    ``JS_REVERSE_KL`` for β = 1, defined as KL(p‖q) with g = log p − log q.
    A target only masks rows equal to ``ignore_index``.
    """
    row = tl.program_id(0).to(tl.int64)
    s_row = student_ptr + row * student_row_stride
    t_row = teacher_ptr + row * teacher_row_stride
    g_row = grad_ptr + row * grad_row_stride
    lanes = tl.arange(0, BLOCK)

    # 1. Online log-sum-exps of student and teacher at T.
    m_s = tl.full([BLOCK], NEG_INF, tl.float32)
    z_s = tl.zeros([BLOCK], tl.float32)
    m_t = tl.full([BLOCK], NEG_INF, tl.float32)
    z_t = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + lanes
        inside = cols < n_cols
        s = tl.load(s_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        t = tl.load(t_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        m_s, z_s = _online_update(m_s, z_s, s * inv_temperature)
        m_t, z_t = _online_update(m_t, z_t, t * inv_temperature)
    max_s, log_z_s = _finish_lse(m_s, z_s)
    max_t, log_z_t = _finish_lse(m_t, z_t)

    keep = 1.0
    if HAS_TARGET:
        y = tl.load(target_ptr + row)
        keep = tl.where(y == ignore_index, 0.0, 1.0)

    # 2. The loss and Σ_k p_k g_k.
    loss_acc = tl.zeros([BLOCK], tl.float32)
    pg_acc = tl.zeros([BLOCK], tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + lanes
        inside = cols < n_cols
        s = tl.load(s_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        t = tl.load(t_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        log_p = _log_prob(s * inv_temperature, max_s, log_z_s)
        log_q = _log_prob(t * inv_temperature, max_t, log_z_t)
        p = _prob(s * inv_temperature, max_s, log_z_s)
        q = _prob(t * inv_temperature, max_t, log_z_t)
        mix = beta * q + (1.0 - beta) * p
        log_mix = tl.log(tl.where(mix == 0.0, 1.0, mix))
        if MODE == JS_FORWARD_KL:
            term = tl.where(q == 0.0, 0.0, q * (log_q - log_p))
            g = tl.zeros([BLOCK], tl.float32)
        elif MODE == JS_REVERSE_KL:
            term = tl.where(p == 0.0, 0.0, p * (log_p - log_q))
            g = tl.where(p == 0.0, 0.0, log_p - log_q)
        else:
            term = beta * tl.where(q == 0.0, 0.0, q * (log_q - log_mix))
            term += (1.0 - beta) * tl.where(p == 0.0, 0.0, p * (log_p - log_mix))
            g = tl.where(p == 0.0, 0.0, (1.0 - beta) * (log_p - log_mix))
        loss_acc += term
        pg_acc += p * g
    pg = tl.sum(pg_acc, 0)
    loss = temperature * temperature * tl.sum(loss_acc, 0)
    tl.store(loss_ptr + row, tl.where(keep == 0.0, 0.0, loss))

    # 3. The gradient through the softmax at T.
    keep_scale = keep * tl.load(scale_ptr).to(tl.float32)
    for start in range(0, n_cols, BLOCK):
        cols = start + lanes
        inside = cols < n_cols
        s = tl.load(s_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        t = tl.load(t_row + cols, mask=inside, other=NEG_INF).to(tl.float32)
        log_p = _log_prob(s * inv_temperature, max_s, log_z_s)
        log_q = _log_prob(t * inv_temperature, max_t, log_z_t)
        p = _prob(s * inv_temperature, max_s, log_z_s)
        q = _prob(t * inv_temperature, max_t, log_z_t)
        if MODE == JS_FORWARD_KL:
            grad = temperature * (p - q)
        else:
            if MODE == JS_REVERSE_KL:
                g = tl.where(p == 0.0, 0.0, log_p - log_q)
            else:
                mix = beta * q + (1.0 - beta) * p
                log_mix = tl.log(tl.where(mix == 0.0, 1.0, mix))
                g = tl.where(p == 0.0, 0.0, (1.0 - beta) * (log_p - log_mix))
            grad = temperature * p * (g - pg)
        grad = grad * keep_scale
        tl.store(g_row + cols, grad.to(grad_ptr.dtype.element_ty), mask=inside)


@triton.jit
def kl_div_kernel(
    input_ptr,
    target_ptr,
    loss_ptr,
    grad_ptr,
    n_elements,
    LOG_TARGET: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Pointwise KL term t·(log t − x) and its gradient −t, 0 wherever t = 0."""
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n_elements
    x = tl.load(input_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    t = tl.load(target_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
    if LOG_TARGET:
        prob = tl.exp(t)
        log_t = t
    else:
        prob = t
        log_t = tl.log(tl.where(t > 0.0, t, 1.0))
    loss = tl.where(prob == 0.0, 0.0, prob * (log_t - x))
    tl.store(loss_ptr + offsets, loss, mask=inside)
    tl.store(grad_ptr + offsets, (-prob).to(grad_ptr.dtype.element_ty), mask=inside)


@triton.jit
def scale_rows_kernel(
    grad_ptr,
    grad_row_stride,
    scale_ptr,
    scale_stride,
    n_cols,
    BLOCK: tl.constexpr,
):
    """Multiply each gradient row in place by its upstream factor.

    The factor is read on the device, and a row whose factor is exactly 1 is
    left untouched, so ``loss.backward()`` (upstream gradient 1) costs no pass
    over the gradient and no host synchronisation.
    """
    row = tl.program_id(0).to(tl.int64)
    factor = tl.load(scale_ptr + row * scale_stride).to(tl.float32)
    if factor != 1.0:
        g_row = grad_ptr + row * grad_row_stride
        for start in range(0, n_cols, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < n_cols
            g = tl.load(g_row + cols, mask=inside, other=0.0).to(tl.float32)
            tl.store(g_row + cols, (g * factor).to(grad_ptr.dtype.element_ty), mask=inside)
