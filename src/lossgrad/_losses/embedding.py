"""Embedding losses: pairs and triplets of rows compared through a distance.

Every loss here is a per-row function ``ℓ(d)`` of one or more distances
``d`` between paired rows (see :mod:`.distance`). ``forward`` computes ``d``
and ``∂ℓ/∂d`` per row in float32 or float64; ``backward`` scales ``∂ℓ/∂d`` by
the upstream gradient and hands it to the distance's ``vjp``. Inputs are
``(N, D)`` rows or single ``(D,)`` vectors, and ``mean`` divides by the number
of rows (pairs or triplets) N.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from .._autograd import refuse_double_backward
from .._checks import (
    check_choice,
    check_finite_number,
    check_float_tensor,
    check_labels,
    check_ndim,
    check_no_legacy_reduction,
    check_non_negative,
    check_positive,
    check_reduction,
    check_same_dtype,
    check_same_shape,
    check_shape,
    check_tensor,
    check_values_in_range,
)
from .._formula import Formula, documented
from .._reduction import accumulate_dtype, grad_scale, reduce_loss
from .distance import (
    DISTANCE_NAMES,
    Cosine,
    Distance,
    Euclidean,
    PNorm,
    SmoothCosine,
    distance_by_name,
)

__all__ = [
    "contrastive_loss",
    "cosine_embedding_loss",
    "cosine_similarity_loss",
    "negative_pair_loss",
    "triplet_margin_loss",
]

# PyTorch's default eps of triplet_margin_loss; any other value raises a warning
# because lossgrad does not shift the distance by eps.
TRIPLET_EPS = 1e-6

ROWS = "(N, D) or (D,)"


# 1. Shared validation and backward steps.


def _check_rows(tensors: dict[str, object]) -> list[Tensor]:
    """Check that the named inputs are float tensors of one shape and dtype."""
    names = list(tensors)
    first = check_float_tensor(names[0], tensors[names[0]])
    check_ndim(names[0], first, (1, 2), ROWS)
    checked = [first]
    for name in names[1:]:
        tensor = check_float_tensor(name, tensors[name])
        check_same_shape(first, tensor, (names[0], name))
        check_same_dtype(first, tensor, (names[0], name))
        checked.append(tensor)
    return checked


def _check_row_labels(
    name: str, target: object, rows: Tensor, labels: tuple[float, ...], first: str
) -> Tensor:
    """Check that ``target`` contains one label from ``labels`` per row of ``rows``."""
    tensor = check_tensor(name, target)
    if tensor.is_complex():
        raise TypeError(f"{name}: expected a real tensor, got dtype {tensor.dtype}")
    check_shape(name, tensor, tuple(rows.shape[:-1]), f"one label per row of {first}")
    check_labels(name, tensor, labels)
    return tensor


def _to_input_dtype(grad: Tensor | None, like: Tensor) -> Tensor | None:
    return None if grad is None else grad.to(like.dtype)


def _pair_backward(ctx, grad_loss: Tensor, distance: Distance) -> tuple[Tensor | None, ...]:
    """Return the gradients of x1 and x2 for a loss of one distance per row.

    The saved tensors are ``x1, x2`` and a stack of ``d`` and ``∂ℓ/∂d``.
    """
    x1, x2, per_row = ctx.saved_tensors
    d, dloss_dd = per_row.unbind(0)
    scale = grad_scale(grad_loss, ctx.reduction, d.numel(), dtype=d.dtype)
    grad_x1, grad_x2 = distance.vjp(
        x1.to(d.dtype), x2.to(d.dtype), d, scale * dloss_dd, ctx.needs_input_grad[:2]
    )
    return _to_input_dtype(grad_x1, x1), _to_input_dtype(grad_x2, x2)


def _save_pair(ctx, x1: Tensor, x2: Tensor, per_row: Tensor, reduction: str) -> None:
    ctx.mark_non_differentiable(per_row)
    ctx.save_for_backward(x1, x2, per_row)
    ctx.reduction = reduction


# 2. cosine_embedding_loss: PyTorch's loss on its own smoothed cosine.


class CosineEmbeddingFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x1, x2, target, margin: float, reduction: str):
        acc = accumulate_dtype(x1.dtype)
        cos, m1, m2 = SmoothCosine().similarity_and_norms(x1.to(acc), x2.to(acc))
        y = target.to(acc)
        pull = y == 1
        push = y == -1
        loss = torch.where(pull, 1 - cos, 0) + torch.where(push, (cos - margin).clamp_min(0), 0)
        # ∂ℓ/∂cos = −1 for y = 1, [cos > margin] for y = −1, and 0 for any other label.
        dloss_dcos = (push & (cos > margin)).to(acc) - pull.to(acc)
        # The squared norms travel to backward, which then reads x1 and x2
        # only to form the gradients.
        per_row = torch.stack([cos, dloss_dcos, m1, m2])
        return reduce_loss(loss, reduction, loss.numel(), dtype=x1.dtype), per_row

    @staticmethod
    def setup_context(ctx, inputs, output):
        x1, x2, _, _, reduction = inputs
        _save_pair(ctx, x1, x2, output[1], reduction)

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_row):
        refuse_double_backward("cosine_embedding_loss")
        x1, x2, per_row = ctx.saved_tensors
        cos, dloss_dcos, m1, m2 = per_row.unbind(0)
        acc = cos.dtype
        scale = grad_scale(grad_loss, ctx.reduction, cos.numel(), dtype=acc)
        grad_x1, grad_x2 = SmoothCosine().similarity_vjp(
            x1.to(acc), x2.to(acc), cos, scale * dloss_dcos, ctx.needs_input_grad[:2], (m1, m2)
        )
        # No gradient for target, margin and reduction.
        return _to_input_dtype(grad_x1, x1), _to_input_dtype(grad_x2, x2), None, None, None


@documented(
    Formula(
        name="cosine_embedding_loss",
        summary="ℓ = 1 − cos(x₁, x₂) if y = 1, max(0, cos(x₁, x₂) − margin) if y = −1",
        loss=(
            "ℓ = 1 − cos                     if y = 1\n"
            "ℓ = max(0, cos − margin)        if y = −1\n"
            "cos = x₁·x₂ / √((‖x₁‖² + ε)(‖x₂‖² + ε)),  ε = 1e-12"
        ),
        gradient=(
            "∂cos/∂x₁ = x₂/√(m₁m₂) − cos · x₁/m₁,  ∂cos/∂x₂ = x₁/√(m₁m₂) − cos · x₂/m₂\n"
            "∂ℓ/∂xᵢ = −∂cos/∂xᵢ                if y = 1\n"
            "∂ℓ/∂xᵢ = [cos > margin] ∂cos/∂xᵢ   if y = −1"
        ),
        symbols=(
            ("x₁, x₂", "one row of input1 and input2"),
            ("y", "the label of the pair, 1 (similar) or −1 (dissimilar)"),
            ("mᵢ", "‖xᵢ‖² + ε, the squared norm smoothed as PyTorch does"),
        ),
        subgradient="at cos = margin for y = −1 the gradient is 0",
    )
)
def cosine_embedding_loss(
    input1: Tensor,
    input2: Tensor,
    target: Tensor,
    margin: float = 0,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
) -> Tensor:
    """Pull pairs labelled 1 together and push pairs labelled −1 apart by cosine.

    {formula}

    Reductions: ``'none'`` returns ℓ per pair, ``'sum'`` the sum, ``'mean'``
    the sum divided by the number of pairs N.

    Args:
        input1: the first embeddings.
        input2: the second embeddings, same shape and dtype as ``input1``.
        target: one label per pair, 1 or −1 (any real dtype).
        margin: the cosine above which a dissimilar pair pays. Default: 0.
        size_average, reduce: PyTorch's deprecated arguments, rejected
            unless None.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - input1, input2: ``(N, D)`` or ``(D,)``, N pairs of D-dimensional
          embeddings.
        - target: ``(N,)`` or ``()``.
        - output: a scalar, or ``(N,)`` / ``()`` with ``reduction='none'``.

    Example::

        >>> x1, x2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
        >>> loss = cosine_embedding_loss(x1, x2, torch.tensor([1, -1, 1, -1]))
        >>> loss.backward()

    Differences from ``torch.nn.functional.cosine_embedding_loss``: the
    cosine is PyTorch's own (ε on the squared norms, no clamp into
    [−1, 1]), so values and gradients agree with it, except that a pair
    labelled −1 with cos = margin exactly gets the gradient 0 where PyTorch
    passes the gradient of cos − margin. A label other than 1 or
    −1 raises ValueError on CPU, where PyTorch silently gives it loss 0; on
    other devices the check is skipped and such a pair contributes 0.
    float16 and bfloat16 inputs are computed in float32. This cosine differs
    from the one of :func:`cosine_similarity_loss`, which clamps each norm at
    eps = 1e-8 as ``torch.nn.functional.cosine_similarity`` does.
    """
    check_no_legacy_reduction(size_average, reduce)
    reduction = check_reduction(reduction)
    x1, x2 = _check_rows({"input1": input1, "input2": input2})
    target = _check_row_labels("target", target, x1, (-1.0, 1.0), "input1")
    margin = check_finite_number("margin", margin)
    return CosineEmbeddingFunction.apply(x1, x2, target, margin, reduction)[0]


# 3. cosine_similarity_loss: 1 − cos, or (cos − score)² against a target score.


class CosineSimilarityFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x1, x2, score, cosine: Cosine, reduction: str):
        acc = accumulate_dtype(x1.dtype)
        cos = cosine.similarity(x1.to(acc), x2.to(acc))
        if score is None:
            loss = 1 - cos
            # ∂ℓ/∂cos = −1.
            dloss_dcos = torch.full_like(cos, -1.0)
        else:
            residual = cos - score.to(acc)
            loss = residual * residual
            # ∂ℓ/∂cos = 2 (cos − s) = −∂ℓ/∂s.
            dloss_dcos = 2 * residual
        per_row = torch.stack([cos, dloss_dcos])
        return reduce_loss(loss, reduction, loss.numel(), dtype=x1.dtype), per_row

    @staticmethod
    def setup_context(ctx, inputs, output):
        x1, x2, score, cosine, reduction = inputs
        per_row = output[1]
        ctx.mark_non_differentiable(per_row)
        ctx.save_for_backward(x1, x2, per_row)
        ctx.cosine = cosine
        ctx.reduction = reduction
        ctx.score_dtype = None if score is None else score.dtype

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_row):
        refuse_double_backward("cosine_similarity_loss")
        x1, x2, per_row = ctx.saved_tensors
        cos, dloss_dcos = per_row.unbind(0)
        scale = grad_scale(grad_loss, ctx.reduction, cos.numel(), dtype=cos.dtype)
        grad_cos = scale * dloss_dcos
        grad_x1, grad_x2 = ctx.cosine.similarity_vjp(
            x1.to(cos.dtype), x2.to(cos.dtype), cos, grad_cos, ctx.needs_input_grad[:2]
        )
        grad_score = None
        if ctx.score_dtype is not None and ctx.needs_input_grad[2]:
            grad_score = (-grad_cos).to(ctx.score_dtype)
        # No gradient for the cosine options and reduction.
        return _to_input_dtype(grad_x1, x1), _to_input_dtype(grad_x2, x2), grad_score, None, None


@documented(
    Formula(
        name="cosine_similarity_loss",
        summary="ℓ = 1 − cos(x₁, x₂), or (cos(x₁, x₂) − s)² with a target score s",
        loss=(
            "ℓ = 1 − cos                 without score\n"
            "ℓ = (cos − s)²              with score s\n"
            "cos = clamp(x₁·x₂ / (c₁c₂), −1, 1),  cᵢ = max(‖xᵢ‖, eps)"
        ),
        gradient=(
            "∂cos/∂x₁ = x₂/(c₁c₂) − cos · k₁ x₁,  ∂cos/∂x₂ = x₁/(c₁c₂) − cos · k₂ x₂\n"
            "∂ℓ/∂xᵢ = −∂cos/∂xᵢ                 without score\n"
            "∂ℓ/∂xᵢ = 2 (cos − s) ∂cos/∂xᵢ,  ∂ℓ/∂s = −2 (cos − s)   with score s"
        ),
        symbols=(
            ("x₁, x₂", "one row of x1 and x2"),
            ("s", "the target similarity of the pair, in [−1, 1]"),
            ("cᵢ", "the norm of xᵢ clamped below at eps"),
            ("kᵢ", "1/‖xᵢ‖² where ‖xᵢ‖ ≥ eps, 0 where the clamp makes cᵢ constant"),
        ),
        subgradient=(
            "where the clamp of cos into [−1, 1] is active (rounding at parallel "
            "vectors) ∂cos/∂xᵢ = 0, which is also the exact gradient there"
        ),
    )
)
def cosine_similarity_loss(
    x1: Tensor,
    x2: Tensor,
    score: Tensor | None = None,
    *,
    eps: float = 1e-8,
    reduction: str = "mean",
) -> Tensor:
    """Pull paired embeddings to cosine 1, or to a target similarity score.

    {formula}

    Without ``score`` the gradient is the gradient of the objective −cos.
    With a score per pair (often a similarity rating rescaled to [−1, 1]),
    this is the cosine regression loss of sentence-embedding training.

    Reductions: ``'none'`` returns ℓ per pair, ``'sum'`` the sum, ``'mean'``
    the sum divided by the number of pairs N.

    Args:
        x1: the first embeddings.
        x2: the second embeddings, same shape and dtype as ``x1``.
        score: optional target similarity per pair in [−1, 1]; values
            outside raise ValueError on CPU (the check is skipped on other
            devices). It receives a gradient if it requires one.
        eps: lower clamp of each norm, keyword-only. Default: 1e-8.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``, keyword-only.
            Default: ``'mean'``.

    Shape:
        - x1, x2: ``(N, D)`` or ``(D,)``, N pairs of D-dimensional embeddings.
        - score: ``(N,)`` or ``()``, floating point.
        - output: a scalar, or ``(N,)`` / ``()`` with ``reduction='none'``.

    Example::

        >>> x1, x2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
        >>> loss = cosine_similarity_loss(x1, x2, torch.tensor([1.0, 0.5, 0.0, -0.2]))
        >>> loss.backward()

    PyTorch has no such loss. ``1 - F.cosine_similarity(x1, x2, eps=eps)``
    gives the same value, except that lossgrad clamps cos into [−1, 1]
    against rounding. A zero vector gives cos = 0 and a finite gradient
    of size about ``1/eps``. Where a norm is below ``eps`` the gradient
    treats the clamped norm as the constant eps, whereas PyTorch's
    ``cosine_similarity`` differentiates the unclamped norm there. float16
    and bfloat16 inputs are computed in float32.
    """
    reduction = check_reduction(reduction)
    x1, x2 = _check_rows({"x1": x1, "x2": x2})
    eps = check_positive("eps", eps)
    if score is not None:
        score = check_float_tensor("score", score)
        check_shape("score", score, tuple(x1.shape[:-1]), "one score per row of x1")
        check_values_in_range("score", score, -1.0, 1.0)
    return CosineSimilarityFunction.apply(x1, x2, score, Cosine(eps), reduction)[0]


# 4. negative_pair_loss: a hinge that pushes pairs at least margin apart.


class NegativePairFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(x1, x2, distance: Distance, margin: float, reduction: str):
        acc = accumulate_dtype(x1.dtype)
        d = distance.value(x1.to(acc), x2.to(acc))
        loss = (margin - d).clamp_min(0)
        # ∂ℓ/∂d = −1 where d < margin, and 0 where d ≥ margin.
        dloss_dd = -(d < margin).to(acc)
        per_row = torch.stack([d, dloss_dd])
        return reduce_loss(loss, reduction, loss.numel(), dtype=x1.dtype), per_row

    @staticmethod
    def setup_context(ctx, inputs, output):
        x1, x2, distance, _, reduction = inputs
        _save_pair(ctx, x1, x2, output[1], reduction)
        ctx.distance = distance

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_row):
        refuse_double_backward("negative_pair_loss")
        grad_x1, grad_x2 = _pair_backward(ctx, grad_loss, ctx.distance)
        # No gradient for distance, margin and reduction.
        return grad_x1, grad_x2, None, None, None


@documented(
    Formula(
        name="negative_pair_loss",
        summary="ℓ = max(margin − d(x₁, x₂), 0)",
        loss="ℓ = max(margin − d, 0),  d = d(x₁, x₂)",
        gradient=(
            "∂ℓ/∂xᵢ = −∂d/∂xᵢ   where d < margin\n"
            "∂ℓ/∂xᵢ = 0          where d ≥ margin\n"
            "euclidean:          ∂d/∂x₁ = (x₁ − x₂)/d = −∂d/∂x₂\n"
            "squared_euclidean:  ∂d/∂x₁ = 2 (x₁ − x₂) = −∂d/∂x₂\n"
            "cosine:             ∂d/∂xᵢ = −∂cos/∂xᵢ (see cosine_similarity_loss)"
        ),
        symbols=(
            ("x₁, x₂", "one row of x1 and x2, a pair that should be apart"),
            ("d", "the chosen distance: ‖x₁ − x₂‖, ‖x₁ − x₂‖² or 1 − cos"),
        ),
        subgradient=(
            "0 at d = margin; for the euclidean distance at coincident points "
            "(x₁ = x₂) ∂d/∂xᵢ = 0, so such a pair pays margin but gets no gradient"
        ),
    )
)
def negative_pair_loss(
    x1: Tensor,
    x2: Tensor,
    *,
    margin: float = 1.0,
    distance: str = "euclidean",
    reduction: str = "mean",
) -> Tensor:
    """Push pairs of embeddings at least ``margin`` apart.

    {formula}

    Reductions: ``'none'`` returns ℓ per pair, ``'sum'`` the sum, ``'mean'``
    the sum divided by the number of pairs N.

    Args:
        x1: the first embeddings.
        x2: the second embeddings, same shape and dtype as ``x1``.
        margin: the distance beyond which a pair pays nothing, ≥ 0.
            Default: 1.0.
        distance: ``'euclidean'`` | ``'squared_euclidean'`` | ``'cosine'``
            (1 − cos, norms clamped at 1e-8). Default: ``'euclidean'``.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - x1, x2: ``(N, D)`` or ``(D,)``, N pairs of D-dimensional embeddings.
        - output: a scalar, or ``(N,)`` / ``()`` with ``reduction='none'``.

    Example::

        >>> x1, x2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
        >>> negative_pair_loss(x1, x2, margin=2.0).backward()

    PyTorch has no such loss; it is the dissimilar half of
    :func:`contrastive_loss`. The euclidean distance is exact (PyTorch's
    ``pairwise_distance`` adds eps = 1e-6 to the difference), so exactly
    coincident points get the subgradient 0 rather than a gradient along
    the all-ones direction. float16 and bfloat16 inputs are computed in
    float32.
    """
    reduction = check_reduction(reduction)
    x1, x2 = _check_rows({"x1": x1, "x2": x2})
    margin = check_non_negative("margin", margin)
    metric = distance_by_name(check_choice("distance", distance, DISTANCE_NAMES))
    return NegativePairFunction.apply(x1, x2, metric, margin, reduction)[0]


# 5. contrastive_loss: hinges on similar and dissimilar pairs.


class ContrastiveFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(
        x1,
        x2,
        target,
        distance: Distance,
        pos_margin: float,
        neg_margin: float,
        squared: bool,
        reduction: str,
    ):
        acc = accumulate_dtype(x1.dtype)
        d = distance.value(x1.to(acc), x2.to(acc))
        y = target.to(acc)
        pull = (d - pos_margin).clamp_min(0)
        push = (neg_margin - d).clamp_min(0)
        if squared:
            loss = y * pull * pull + (1 - y) * push * push
            # ∂ℓ/∂d = 2 y h₊ − 2 (1 − y) h₋, which is 0 at both kinks.
            dloss_dd = 2 * y * pull - 2 * (1 - y) * push
        else:
            loss = y * pull + (1 - y) * push
            # ∂ℓ/∂d = y [d > m₊] − (1 − y) [d < m₋].
            dloss_dd = y * (d > pos_margin).to(acc) - (1 - y) * (d < neg_margin).to(acc)
        per_row = torch.stack([d, dloss_dd])
        return reduce_loss(loss, reduction, loss.numel(), dtype=x1.dtype), per_row

    @staticmethod
    def setup_context(ctx, inputs, output):
        x1, x2, _, distance, _, _, _, reduction = inputs
        _save_pair(ctx, x1, x2, output[1], reduction)
        ctx.distance = distance

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_row):
        refuse_double_backward("contrastive_loss")
        grad_x1, grad_x2 = _pair_backward(ctx, grad_loss, ctx.distance)
        # No gradient for target, distance, both margins, squared and reduction.
        return grad_x1, grad_x2, None, None, None, None, None, None


@documented(
    Formula(
        name="contrastive_loss",
        summary="ℓ = y·max(d − m₊, 0) + (1 − y)·max(m₋ − d, 0), each hinge squared if asked",
        loss=(
            "ℓ = y · h₊ + (1 − y) · h₋             (squared=False)\n"
            "ℓ = y · h₊² + (1 − y) · h₋²           (squared=True)\n"
            "h₊ = max(d − m₊, 0),  h₋ = max(m₋ − d, 0),  d = d(x₁, x₂)"
        ),
        gradient=(
            "∂ℓ/∂d = y [d > m₊] − (1 − y) [d < m₋]   (squared=False)\n"
            "∂ℓ/∂d = 2 y h₊ − 2 (1 − y) h₋           (squared=True)\n"
            "∂ℓ/∂xᵢ = ∂ℓ/∂d · ∂d/∂xᵢ, with ∂d/∂xᵢ as in negative_pair_loss"
        ),
        symbols=(
            ("x₁, x₂", "one row of x1 and x2"),
            ("y", "1 for a similar pair, 0 for a dissimilar pair"),
            ("m₊, m₋", "pos_margin and neg_margin"),
            ("d", "the chosen distance: ‖x₁ − x₂‖, ‖x₁ − x₂‖² or 1 − cos"),
        ),
        subgradient=(
            "0 at d = m₊ and at d = m₋; for the euclidean distance at coincident "
            "points ∂d/∂xᵢ = 0"
        ),
    )
)
def contrastive_loss(
    x1: Tensor,
    x2: Tensor,
    target: Tensor,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    distance: str = "euclidean",
    squared: bool = False,
    reduction: str = "mean",
) -> Tensor:
    """Pull similar pairs within ``pos_margin`` and push dissimilar pairs beyond ``neg_margin``.

    {formula}

    With ``squared=True``, ``pos_margin=0`` and the euclidean distance this is
    the loss of Hadsell, Chopra and LeCun, "Dimensionality Reduction by
    Learning an Invariant Mapping" (CVPR 2006), without its factor ½ and
    with the label flipped: there Y = 0 marks a similar pair, here
    ``target = 1`` does.

    Reductions: ``'none'`` returns ℓ per pair, ``'sum'`` the sum, ``'mean'``
    the sum divided by the number of pairs N (similar and dissimilar
    together).

    Args:
        x1: the first embeddings.
        x2: the second embeddings, same shape and dtype as ``x1``.
        target: 1 (similar) or 0 (dissimilar) per pair; bool, integer or
            floating point. Other values raise ValueError on CPU (the check is
            skipped on other devices).
        pos_margin: the distance below which a similar pair pays nothing,
            ≥ 0. Default: 0.0.
        neg_margin: the distance beyond which a dissimilar pair pays
            nothing, ≥ 0. Default: 1.0.
        distance: ``'euclidean'`` | ``'squared_euclidean'`` | ``'cosine'``
            (1 − cos, norms clamped at 1e-8). Default: ``'euclidean'``.
        squared: square each hinge. Default: False.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.

    Shape:
        - x1, x2: ``(N, D)`` or ``(D,)``, N pairs of D-dimensional embeddings.
        - target: ``(N,)`` or ``()``.
        - output: a scalar, or ``(N,)`` / ``()`` with ``reduction='none'``.

    Example::

        >>> x1, x2 = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8)
        >>> contrastive_loss(x1, x2, torch.tensor([1, 0, 1, 0])).backward()

    PyTorch has no such loss. The euclidean distance is exact, without the
    eps shift of ``pairwise_distance``. float16 and bfloat16 inputs are
    computed in float32.
    """
    reduction = check_reduction(reduction)
    x1, x2 = _check_rows({"x1": x1, "x2": x2})
    target = _check_row_labels("target", target, x1, (0.0, 1.0), "x1")
    pos_margin = check_non_negative("pos_margin", pos_margin)
    neg_margin = check_non_negative("neg_margin", neg_margin)
    if not isinstance(squared, bool):
        raise TypeError(f"squared: expected a bool, got {type(squared).__name__}")
    metric = distance_by_name(check_choice("distance", distance, DISTANCE_NAMES))
    return ContrastiveFunction.apply(
        x1, x2, target, metric, pos_margin, neg_margin, squared, reduction
    )[0]


# 6. triplet_margin_loss: anchor closer to its positive than to its negative.


class TripletMarginFunction(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(
        anchor, positive, negative, distance: Distance, margin: float, swap: bool, reduction: str
    ):
        acc = accumulate_dtype(anchor.dtype)
        a, p, n = anchor.to(acc), positive.to(acc), negative.to(acc)
        d_ap = distance.value(a, p)
        d_an = distance.value(a, n)
        if swap:
            # Balntas et al. (BMVC 2016): the harder of the two negative distances.
            d_pn = distance.value(p, n)
            use_pn = (d_pn < d_an).to(acc)
            d_neg = torch.where(d_pn < d_an, d_pn, d_an)
        else:
            d_pn = torch.zeros_like(d_an)
            use_pn = torch.zeros_like(d_an)
            d_neg = d_an
        raw = d_ap - d_neg + margin
        loss = raw.clamp_min(0)
        active = (raw > 0).to(acc)
        per_row = torch.stack([d_ap, d_an, d_pn, active, use_pn])
        return reduce_loss(loss, reduction, loss.numel(), dtype=anchor.dtype), per_row

    @staticmethod
    def setup_context(ctx, inputs, output):
        anchor, positive, negative, distance, _, swap, reduction = inputs
        per_row = output[1]
        ctx.mark_non_differentiable(per_row)
        ctx.save_for_backward(anchor, positive, negative, per_row)
        ctx.distance = distance
        ctx.swap = swap
        ctx.reduction = reduction

    @staticmethod
    def backward(ctx, grad_loss, _grad_per_row):
        refuse_double_backward("triplet_margin_loss")
        anchor, positive, negative, per_row = ctx.saved_tensors
        d_ap, d_an, d_pn, active, use_pn = per_row.unbind(0)
        acc = d_ap.dtype
        a, p, n = anchor.to(acc), positive.to(acc), negative.to(acc)
        need_a, need_p, need_n = ctx.needs_input_grad[:3]
        g = grad_scale(grad_loss, ctx.reduction, d_ap.numel(), dtype=acc) * active

        # ℓ = max(d(a,p) − d⁻ + m, 0), d⁻ = d(a,n), or d(p,n) where swap takes it:
        #   ∂ℓ/∂d(a,p) = [ℓ > 0]
        #   ∂ℓ/∂d(a,n) = −[ℓ > 0] (1 − s),  ∂ℓ/∂d(p,n) = −[ℓ > 0] s,  s = [d(p,n) < d(a,n)]
        distance = ctx.distance
        grad_a, grad_p = distance.vjp(a, p, d_ap, g, (need_a, need_p))
        grad_a_an, grad_n = distance.vjp(a, n, d_an, -g * (1 - use_pn), (need_a, need_n))
        # The vjp results are fresh tensors, so they are summed in place.
        if need_a:
            grad_a = grad_a.add_(grad_a_an)
        if ctx.swap:
            grad_p_pn, grad_n_pn = distance.vjp(p, n, d_pn, -g * use_pn, (need_p, need_n))
            if need_p:
                grad_p = grad_p.add_(grad_p_pn)
            if need_n:
                grad_n = grad_n.add_(grad_n_pn)
        # No gradient for distance, margin, swap and reduction.
        return (
            _to_input_dtype(grad_a, anchor),
            _to_input_dtype(grad_p, positive),
            _to_input_dtype(grad_n, negative),
            None,
            None,
            None,
            None,
        )


def check_norm_order(p: object) -> float:
    """Raise unless ``p`` is a finite number >= 1, the order of a p-norm distance; return it."""
    order = check_finite_number("p", p)
    if order < 1:
        raise ValueError(f"p: expected a finite number >= 1, got {order}")
    return order


@documented(
    Formula(
        name="triplet_margin_loss",
        summary="ℓ = max(d(a, p) − d(a, n) + margin, 0)",
        loss=(
            "ℓ = max(d(a, p) − d⁻ + margin, 0)\n"
            "d⁻ = d(a, n), or min(d(a, n), d(p, n)) with swap=True"
        ),
        gradient=(
            "where ℓ > 0:  ∂ℓ/∂a = ∂d(a, p)/∂a − ∂d⁻/∂a\n"
            "              ∂ℓ/∂p = ∂d(a, p)/∂p − ∂d⁻/∂p\n"
            "              ∂ℓ/∂n = −∂d⁻/∂n\n"
            "where ℓ = 0:  all gradients are 0\n"
            "p-norm:  ∂‖u‖ₚ/∂uⱼ = sign(uⱼ) (|uⱼ| / ‖u‖ₚ)^(p−1),  u = x₁ − x₂"
        ),
        symbols=(
            ("a, p, n", "one row of anchor, positive and negative"),
            ("d", "‖x₁ − x₂‖ₚ by default (exact, p = 2 is euclidean), or the chosen distance"),
        ),
        subgradient=(
            "0 where d(a, p) − d⁻ + margin = 0; the distance at coincident points "
            "has the subgradient 0 (a = p gives no gradient through d(a, p)); "
            "with swap, a tie d(p, n) = d(a, n) uses d(a, n)"
        ),
    )
)
def triplet_margin_loss(
    anchor: Tensor,
    positive: Tensor,
    negative: Tensor,
    margin: float = 1.0,
    p: float = 2,
    eps: float = 1e-6,
    swap: bool = False,
    size_average: bool | None = None,
    reduce: bool | None = None,
    reduction: str = "mean",
    *,
    distance: str | None = None,
) -> Tensor:
    """Make each anchor closer to its positive than to its negative by ``margin``.

    {formula}

    Reductions: ``'none'`` returns ℓ per triplet, ``'sum'`` the sum,
    ``'mean'`` the sum divided by the number of triplets N.

    Args:
        anchor, positive, negative: the three embeddings of each triplet,
            one shape and dtype.
        margin: the required gap, > 0 as in PyTorch. Default: 1.0.
        p: the order of the p-norm distance used when ``distance`` is None,
            a finite number ≥ 1. Default: 2.
        eps: accepted for PyTorch's signature and not used: the distance is
            exact, without PyTorch's shift by eps. A value other than 1e-6
            raises a UserWarning. Default: 1e-6.
        swap: use min(d(a, n), d(p, n)) as the negative distance, the
            distance swap of Balntas et al., "Learning local feature
            descriptors with triplets and shallow convolutional neural
            networks" (BMVC 2016). Default: False.
        size_average, reduce: PyTorch's deprecated arguments, rejected
            unless None.
        reduction: ``'none'`` | ``'mean'`` | ``'sum'``. Default: ``'mean'``.
        distance: keyword-only, ``None`` (the p-norm distance) |
            ``'euclidean'`` | ``'squared_euclidean'`` | ``'cosine'`` (1 − cos,
            norms clamped at 1e-8). With a named distance, ``p`` must stay 2.
            Default: None.

    Shape:
        - anchor, positive, negative: ``(N, D)`` or ``(D,)``, N triplets of
          D-dimensional embeddings.
        - output: a scalar, or ``(N,)`` / ``()`` with ``reduction='none'``.

    Example::

        >>> a, p, n = (torch.randn(4, 8, requires_grad=True) for _ in range(3))
        >>> triplet_margin_loss(a, p, n, margin=0.5).backward()

    Difference from ``torch.nn.functional.triplet_margin_loss``: PyTorch
    computes ``‖x₁ − x₂ + eps‖ₚ``, which is never 0 and whose gradient when
    the anchor equals the positive points along the all-ones direction.
    lossgrad computes ``‖x₁ − x₂‖ₚ``, so the default path already gives the
    subgradient 0 at coincident points, and values differ from PyTorch's by
    about ``eps · √D``. ``p < 1`` and ``p = inf`` are not supported. A triplet
    with ``ℓ = 0`` exactly gets the gradient 0 (PyTorch passes the gradient
    there). float16 and bfloat16 inputs are computed in float32.
    """
    check_no_legacy_reduction(size_average, reduce)
    reduction = check_reduction(reduction)
    anchor, positive, negative = _check_rows(
        {"anchor": anchor, "positive": positive, "negative": negative}
    )
    margin = check_positive("margin", margin)
    p = check_norm_order(p)
    eps = check_non_negative("eps", eps)
    if eps != TRIPLET_EPS:
        warnings.warn(
            f"eps: lossgrad.triplet_margin_loss computes the exact distance and does "
            f"not add eps, so eps={eps} has no effect",
            UserWarning,
            stacklevel=2,
        )
    if not isinstance(swap, bool):
        raise TypeError(f"swap: expected a bool, got {type(swap).__name__}")
    if distance is None:
        metric: Distance = Euclidean() if p == 2 else PNorm(p)
    else:
        metric = distance_by_name(check_choice("distance", distance, DISTANCE_NAMES))
        if p != 2:
            raise ValueError(
                f"p: applies only to distance=None; expected 2 with "
                f"distance={distance!r}, got {p:g}"
            )
    return TripletMarginFunction.apply(
        anchor, positive, negative, metric, margin, swap, reduction
    )[0]
