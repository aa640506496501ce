"""InfoNCE: contrastive loss over the similarity matrix of a batch.

Query ``i`` is scored against every key; key ``i`` is its positive and the
other keys (and optional hard negatives) are its negatives. Each row of the
similarity matrix is a cross-entropy with class index ``i``, so the rows go
through the shared row kernel with the cross-entropy rule.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .. import distributed
from .._autograd import graph_is_kept, refuse_double_backward
from .._checks import (
    REDUCTIONS,
    check_choice,
    check_float_tensor,
    check_positive,
    check_reduction,
    check_same_shape,
    should_validate_values,
)
from .._formula import Formula, documented
from .._kernels import triton_ops
from .._kernels.cross_entropy_rule import cross_entropy_rule
from .._kernels.rows import fused_rows
from .._reduction import accumulate_dtype, grad_scale, reduce_loss

__all__ = ["info_nce"]

SIMILARITIES = ("cosine", "dot")

# Norms below this are clamped before dividing, as in
# torch.nn.functional.cosine_similarity: a zero vector has similarity 0 with
# everything instead of NaN. Its gradient is then the upstream gradient
# divided by EPS, which is large but finite.
EPS = 1e-8


class _Embeddings(NamedTuple):
    """Embeddings in the compute dtype: ``hat`` is x̂, ``norm`` is |x| (cosine only)."""

    hat: Tensor
    norm: Tensor | None


def _normalize(x: Tensor) -> tuple[Tensor, Tensor]:
    """Return ``x / max(|x|, EPS)`` along the last dim and the unclamped norm ``|x|``."""
    norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    return x / norm.clamp_min(EPS), norm


def _normalize_backward(x_hat: Tensor, norm: Tensor, grad_hat: Tensor) -> Tensor:
    """Carry ``∂ℓ/∂x̂`` through ``x̂ = x / max(|x|, EPS)`` back to ``x``."""
    # |x| > EPS: ∂x̂/∂x = (I − x̂x̂ᵀ) / |x|, so ∂ℓ/∂x = (g − x̂ (x̂·g)) / |x|.
    # |x| ≤ EPS: x̂ = x / EPS is linear, so ∂ℓ/∂x = g / EPS.
    radial = (x_hat * grad_hat).sum(dim=-1, keepdim=True)
    tangential = torch.where(norm > EPS, grad_hat - x_hat * radial, grad_hat)
    return tangential / norm.clamp_min(EPS)


def _cross_entropy_rows_(logits: Tensor, positive: Tensor) -> tuple[Tensor, Tensor]:
    """Return each row's cross-entropy with class ``positive[i]``, gradient written over ``logits``.

    CUDA tensors take the Triton row kernel when Triton is installed; others
    take the chunked PyTorch row kernel.
    """
    if triton_ops.use_triton(logits):
        return triton_ops.cross_entropy_rows(
            logits, positive, None, ignore_index=-100, label_smoothing=0.0, inplace=True
        )
    return fused_rows(logits, cross_entropy_rule(positive, fused=True), inplace=True)


class InfoNCEFunction(torch.autograd.Function):
    """InfoNCE over the rows of one rank's queries, with a closed-form backward.

    ``query`` and ``key`` may be larger than the rows whose loss is computed:
    under ``gather=True`` they contain the whole global batch. The ``n`` computed
    rows are query rows ``query_offset + i``, whose positive is key
    ``key_offset + i``, and, with ``symmetric``, key rows ``key_offset + i``,
    whose positive is query ``query_offset + i``.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(
        query: Tensor,
        key: Tensor,
        hard_negatives: Tensor | None,
        temperature: Tensor | float,
        query_offset: int,
        key_offset: int,
        n: int,
        symmetric: bool,
        cosine: bool,
        reduction: str,
        denominator: float,
    ) -> tuple[Tensor, Tensor, Tensor]:
        # 1. Embeddings in the compute dtype (float32 for half types), normalised.
        dtype = accumulate_dtype(query.dtype)
        q, k, h = _prepare(query, key, hard_negatives, dtype, cosine)
        tau = torch.as_tensor(temperature, dtype=dtype, device=query.device).reshape(())
        query_rows = slice(query_offset, query_offset + n)
        key_rows = slice(key_offset, key_offset + n)
        index = torch.arange(n, device=query.device)

        # 2. Query to key: s = q̂ᵢ · [k̂ ; ĥ]ᵀ / τ, positive at column key_offset + i.
        logits = _query_logits(q.hat[query_rows], k.hat, h) / tau  # n x (N_k + M)
        loss, grad_qk = _cross_entropy_rows_(logits, index + key_offset)

        # 3. Key to query: t = k̂ᵢ · q̂ᵀ / τ, positive at column query_offset + i.
        if symmetric:
            logits_kq = k.hat[key_rows] @ q.hat.T / tau  # n x N_q
            loss_kq, grad_kq = _cross_entropy_rows_(logits_kq, index + query_offset)
            loss = 0.5 * (loss + loss_kq)
        else:
            grad_kq = logits.new_zeros(0)

        value = reduce_loss(loss, reduction, denominator, dtype=query.dtype)
        return value, grad_qk, grad_kq

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (query, key, hard_negatives, temperature, query_offset, key_offset, n,
         symmetric, cosine, reduction, denominator) = inputs
        _, grad_qk, grad_kq = output
        ctx.mark_non_differentiable(grad_qk, grad_kq)
        tau = temperature if isinstance(temperature, Tensor) else None
        ctx.save_for_backward(query, key, hard_negatives, tau, grad_qk, grad_kq)
        ctx.temperature = temperature
        ctx.options = (query_offset, key_offset, n, symmetric, cosine, reduction, denominator)

    @staticmethod
    def backward(ctx, grad_output: Tensor, _grad_qk: Tensor, _grad_kq: Tensor):
        refuse_double_backward("info_nce")
        query, key, hard_negatives, tau_input, grad_qk, grad_kq = ctx.saved_tensors
        query_offset, key_offset, n, symmetric, cosine, reduction, denominator = ctx.options
        dtype = grad_qk.dtype
        temperature = ctx.temperature if tau_input is None else tau_input
        tau = torch.as_tensor(temperature, dtype=dtype, device=query.device).reshape(())
        q, k, h = _prepare(query, key, hard_negatives, dtype, cosine)
        q_hat, k_hat = q.hat, k.hat
        query_rows = slice(query_offset, query_offset + n)
        key_rows = slice(key_offset, key_offset + n)
        N_k = k_hat.shape[0]

        # 1. Upstream factor per row: grad_output, / denominator for mean, and
        #    ½ for each direction of the symmetric loss.
        scale = grad_scale(grad_output, reduction, denominator, dtype=dtype)
        if reduction == "none":
            scale = scale.reshape(n, 1)
        if symmetric:
            scale = 0.5 * scale

        # 2. Query to key, with G = scale · (softmax(s) − onehot) and s = q̂ᵢ·c/τ:
        #   ∂/∂q̂ᵢ = Σⱼ Gᵢⱼ cⱼ / τ     over keys and hard negatives c
        #   ∂/∂k̂ⱼ = Σᵢ Gᵢⱼ q̂ᵢ / τ      ∂/∂ĥ likewise with its columns of G
        #   ∂/∂τ  = −Σᵢⱼ Gᵢⱼ sᵢⱼ / τ = −Σᵢ q̂ᵢ · (∂/∂q̂ᵢ) / τ
        # The last form needs no copy of s, which the row kernel overwrote.
        # The saved gradients are scaled in place unless a later backward
        # (retain_graph=True) needs them intact.
        in_place = not graph_is_kept()
        G = grad_qk.mul_(scale) if in_place else grad_qk * scale  # n x (N_k + M)
        G_keys = G[:, :N_k]  # n x N_k
        G_hard = G[:, N_k:]  # n x M, or n x K per query
        q_rows = q_hat[query_rows]  # n x D
        grad_q_rows = G_keys @ k_hat
        if h is not None and h.hat.dim() == 2:
            grad_q_rows += G_hard @ h.hat
        elif h is not None:
            grad_q_rows += torch.einsum("nk,nkd->nd", G_hard, h.hat)
        grad_q_rows /= tau
        grad_tau = -(q_rows * grad_q_rows).sum() / tau
        grad_q_hat = torch.zeros_like(q_hat)
        grad_q_hat[query_rows] = grad_q_rows
        grad_k_hat = G_keys.T @ q_rows / tau  # N_k x D
        grad_h_hat = None
        if h is not None and ctx.needs_input_grad[2]:
            if h.hat.dim() == 2:
                grad_h_hat = G_hard.T @ q_rows / tau  # M x D
            else:
                grad_h_hat = G_hard.unsqueeze(2) * q_rows.unsqueeze(1) / tau  # n x K x D

        # 3. Key to query, the same rules with the roles of q̂ and k̂ swapped:
        #   ∂/∂k̂ᵢ = Σⱼ G'ᵢⱼ q̂ⱼ / τ,  ∂/∂q̂ⱼ = Σᵢ G'ᵢⱼ k̂ᵢ / τ,  ∂/∂τ = −Σᵢ k̂ᵢ·(∂/∂k̂ᵢ) / τ
        if symmetric:
            G_kq = grad_kq.mul_(scale) if in_place else grad_kq * scale  # n x N_q
            k_rows = k_hat[key_rows]
            grad_k_rows = G_kq @ q_hat / tau
            grad_tau = grad_tau - (k_rows * grad_k_rows).sum() / tau
            grad_k_hat[key_rows] += grad_k_rows
            grad_q_hat += G_kq.T @ k_rows / tau

        # 4. Through the normalisation x̂ = x / max(|x|, ε) for cosine similarity.
        grad_query = grad_key = grad_hard = grad_temperature = None
        if ctx.needs_input_grad[0]:
            grad_query = _to_input(grad_q_hat, q, query.dtype)
        if ctx.needs_input_grad[1]:
            grad_key = _to_input(grad_k_hat, k, key.dtype)
        if grad_h_hat is not None:
            grad_hard = _to_input(grad_h_hat, h, hard_negatives.dtype)
        if ctx.needs_input_grad[3]:
            grad_temperature = grad_tau.reshape(tau_input.shape).to(tau_input.dtype)
        return (grad_query, grad_key, grad_hard, grad_temperature,
                None, None, None, None, None, None, None)


def _prepare(
    query: Tensor, key: Tensor, hard_negatives: Tensor | None, dtype: torch.dtype, cosine: bool
) -> tuple[_Embeddings, _Embeddings, _Embeddings | None]:
    """Cast the embeddings to ``dtype`` and, for cosine similarity, normalise them."""

    def prepare(x: Tensor) -> _Embeddings:
        x = x.to(dtype)
        return _Embeddings(*_normalize(x)) if cosine else _Embeddings(x, None)

    h = None if hard_negatives is None else prepare(hard_negatives)
    return prepare(query), prepare(key), h


def _query_logits(q_rows: Tensor, k_hat: Tensor, h: _Embeddings | None) -> Tensor:
    """Return q̂ᵢ · [k̂ ; ĥ]ᵀ for each query row: keys first, then hard negatives."""
    scores = q_rows @ k_hat.T  # n x N_k
    if h is None:
        return scores
    if h.hat.dim() == 2:
        hard = q_rows @ h.hat.T  # n x M, shared by all queries
    else:
        hard = torch.einsum("nd,nkd->nk", q_rows, h.hat)  # n x K, one set per query
    return torch.cat([scores, hard], dim=1)


def _to_input(grad_hat: Tensor, x: _Embeddings, dtype: torch.dtype) -> Tensor:
    """Return the gradient of the input embeddings in their dtype, given ``∂ℓ/∂x̂``."""
    grad = grad_hat if x.norm is None else _normalize_backward(x.hat, x.norm, grad_hat)
    return grad.to(dtype)


def _check_embeddings(query: object, key: object, hard_negatives: object) -> None:
    query = check_float_tensor("query", query)
    key = check_float_tensor("key", key)
    if query.dim() != 2:
        raise ValueError(
            f"query: expected a 2-D tensor of shape (N, D), got shape {tuple(query.shape)}"
        )
    check_same_shape(query, key, ("query", "key"))
    if key.dtype != query.dtype:
        raise TypeError(f"key: expected dtype {query.dtype} like query, got {key.dtype}")
    if hard_negatives is None:
        return
    hard = check_float_tensor("hard_negatives", hard_negatives)
    N, D = query.shape
    if hard.dtype != query.dtype:
        raise TypeError(
            f"hard_negatives: expected dtype {query.dtype} like query, got {hard.dtype}"
        )
    shared = hard.dim() == 2 and hard.shape[1] == D
    per_query = hard.dim() == 3 and hard.shape[0] == N and hard.shape[2] == D
    if not (shared or per_query):
        raise ValueError(
            f"hard_negatives: expected shape (M, {D}) or ({N}, K, {D}), "
            f"got {tuple(hard.shape)}"
        )


def _check_temperature(temperature: object) -> Tensor | float:
    if not isinstance(temperature, Tensor):
        return check_positive("temperature", temperature)
    if not temperature.is_floating_point():
        raise TypeError(
            f"temperature: expected a floating-point tensor, got dtype {temperature.dtype}"
        )
    if temperature.numel() != 1:
        raise ValueError(
            f"temperature: expected a tensor with one element, got shape "
            f"{tuple(temperature.shape)}"
        )
    if should_validate_values(temperature, None):
        value = float(temperature.detach())
        if not value > 0 or value == float("inf"):
            raise ValueError(f"temperature: expected a finite value > 0, got {value}")
    return temperature


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return value


@documented(
    Formula(
        name="info_nce",
        summary="ℓᵢ = −log softmax(q̂ᵢ·k̂ᵀ/τ)ᵢ, the positive key i against the batch",
        loss=(
            "sᵢⱼ = q̂ᵢ · cⱼ / τ      over the keys cⱼ = k̂ⱼ, then the hard negatives ĥ\n"
            "ℓᵢ = log Σⱼ exp(sᵢⱼ) − sᵢᵢ\n"
            "symmetric: ½ (ℓᵢ + ℓ'ᵢ) with ℓ'ᵢ = log Σⱼ exp(k̂ᵢ·q̂ⱼ/τ) − k̂ᵢ·q̂ᵢ/τ"
        ),
        gradient=(
            "∂ℓᵢ/∂sᵢⱼ = pᵢⱼ − [j = i],   pᵢⱼ = exp(sᵢⱼ) / Σₘ exp(sᵢₘ)\n"
            "∂ℓ/∂q̂ᵢ = Σⱼ (pᵢⱼ − [j = i]) cⱼ / τ\n"
            "∂ℓ/∂k̂ⱼ = Σᵢ (pᵢⱼ − [j = i]) q̂ᵢ / τ\n"
            "∂ℓ/∂τ = −Σᵢⱼ (pᵢⱼ − [j = i]) sᵢⱼ / τ\n"
            "∂ℓ/∂x = (I − x̂x̂ᵀ) ∂ℓ/∂x̂ / |x|   (cosine, |x| > ε; else ∂ℓ/∂x̂ / ε)"
        ),
        symbols=(
            ("q̂ᵢ, k̂ⱼ", "query i and key j, divided by max(|x|, ε) for cosine"),
            ("ĥ", "hard negatives: shared by every query, or query i's own"),
            ("τ", "temperature"),
            ("pᵢⱼ", "softmax of row i of s"),
            ("ε", "1e-8, the smallest norm divided by"),
        ),
    )
)
def info_nce(
    query: Tensor,
    key: Tensor,
    *,
    temperature: float | Tensor = 0.07,
    similarity: str = "cosine",
    hard_negatives: Tensor | None = None,
    symmetric: bool = False,
    gather: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """InfoNCE contrastive loss: each query must pick its own key out of the batch.

    Query ``i``'s positive is key ``i``. Its negatives are every other key in
    the batch and the optional hard negatives. Each row of the similarity
    matrix is a cross-entropy whose class index is the row's own position.

    {formula}

    Reductions: ``'none'`` returns ``ℓᵢ`` per query, ``'sum'`` their sum and
    ``'mean'`` their sum divided by ``N`` (see ``gather`` for the divisor
    across processes).

    Args:
        query: query embeddings, shape ``(N, D)``.
        key: key embeddings, shape ``(N, D)``. Key ``i`` is query ``i``'s positive.
        temperature: ``τ > 0``, which divides every similarity. A float, or a
            one-element tensor, which then receives the gradient ``∂ℓ/∂τ``. To
            keep a learned ``τ`` positive, learn ``log τ`` and pass its ``exp``.
            Default: ``0.07``.
        similarity: ``'cosine'`` (embeddings divided by ``max(|x|, 1e-8)``
            inside, so a zero vector scores 0 instead of NaN) or ``'dot'``.
            Default: ``'cosine'``.
        hard_negatives: extra negatives, shape ``(M, D)`` shared by every
            query, or ``(N, K, D)``, where row ``i`` contains query ``i``'s own
            ``K`` negatives. They add columns to the query-to-key direction
            only. Default: ``None``.
        symmetric: average the query-to-key loss and the key-to-query loss, in
            which key ``i`` must pick query ``i`` out of the queries.
            Default: ``False``.
        gather: use the keys of every process as negatives through
            :func:`lossgrad.distributed.all_gather`, and under ``symmetric``
            also the queries. Query ``i`` of rank ``r`` pairs with global key
            ``offset_r + i``, where ``offset_r`` is the number of rows of ranks
            before ``r``. Shared hard negatives ``(M, D)`` are gathered too,
            so every rank must pass them (``M`` may be 0 on some ranks).
            Per-query ones stay with their queries. ``'mean'`` divides the
            rank's sum by ``N / W`` (global rows over world size), so that DDP's
            average of the parameter gradients equals the gradient of the mean
            over the concatenated batch in one process. With equal batch sizes
            that divisor is the rank's own ``N_r``, so the value is the mean
            over the rank's queries. With unequal sizes the mean over ranks of
            the values is the global mean. ``'sum'`` and ``'none'`` are not
            rescaled, so DDP then averages the sums of the ranks. Requires an
            initialised process group. Default: ``False``.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - query, key: ``(N, D)``, N batch, D embedding.
        - hard_negatives: ``(M, D)`` or ``(N, K, D)``, M shared and K
          per-query negatives.
        - temperature: a float or a one-element tensor.
        - Output: scalar, or ``(N,)`` with ``reduction='none'``.

    Computation is in float32 for float16 and bfloat16 inputs (float64 stays
    float64), and the row softmax subtracts the row maximum, so small
    temperatures such as 0.01 stay finite. The ``N x (N + M)`` gradient of the
    similarity matrix is kept from the forward pass to the backward pass.

    Example::

        >>> query = torch.randn(8, 32, requires_grad=True)
        >>> key = torch.randn(8, 32, requires_grad=True)
        >>> loss = lossgrad.info_nce(query, key, temperature=0.1, symmetric=True)
        >>> loss.backward()

    Differences from other implementations: PyTorch has no InfoNCE loss.
    With ``similarity='cosine'`` the value equals
    ``F.cross_entropy(F.normalize(q, eps=1e-8) @ F.normalize(k, eps=1e-8).T / τ,
    torch.arange(N))``.
    """
    _check_embeddings(query, key, hard_negatives)
    temperature = _check_temperature(temperature)
    similarity = check_choice("similarity", similarity, SIMILARITIES)
    symmetric = _check_flag("symmetric", symmetric)
    gather = _check_flag("gather", gather)
    reduction = check_reduction(reduction, REDUCTIONS)
    n = query.shape[0]
    if not gather:
        return InfoNCEFunction.apply(
            query, key, hard_negatives, temperature, 0, 0, n,
            symmetric, similarity == "cosine", reduction, float(n),
        )[0]

    # With gather=True the Function receives the global tensors. The backward
    # of each gather returns to each rank the summed gradient of its own rows.
    distributed.require_process_group("gather")
    D = query.shape[1]
    if symmetric:
        both, sizes = distributed.all_gather_with_sizes(torch.cat([query, key], dim=1))
        all_queries, all_keys = both[:, :D], both[:, D:]
    else:
        all_keys, sizes = distributed.all_gather_with_sizes(key)
        all_queries = query
    offset = sum(sizes[: torch.distributed.get_rank()])
    query_offset = offset if symmetric else 0
    if hard_negatives is not None and hard_negatives.dim() == 2:
        hard_negatives = distributed.all_gather(hard_negatives)
    return InfoNCEFunction.apply(
        all_queries, all_keys, hard_negatives, temperature, query_offset, offset, n,
        symmetric, similarity == "cosine", reduction,
        distributed.ddp_mean_denominator(sizes),
    )[0]
