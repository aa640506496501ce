"""Modules for the embedding losses: each stores its options and calls the function."""

from __future__ import annotations

from torch import Tensor, nn

from .._checks import (
    check_choice,
    check_finite_number,
    check_no_legacy_reduction,
    check_non_negative,
    check_positive,
    check_reduction,
)
from .._losses import embedding as F
from .._losses.distance import DISTANCE_NAMES

__all__ = [
    "ContrastiveLoss",
    "CosineEmbeddingLoss",
    "CosineSimilarityLoss",
    "NegativePairLoss",
    "TripletMarginLoss",
]


class CosineEmbeddingLoss(nn.Module):
    """Module form of :func:`lossgrad.cosine_embedding_loss`, with PyTorch's constructor."""

    def __init__(
        self,
        margin: float = 0.0,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        check_no_legacy_reduction(size_average, reduce)
        self.margin = check_finite_number("margin", margin)
        self.reduction = check_reduction(reduction)

    def forward(self, input1: Tensor, input2: Tensor, target: Tensor) -> Tensor:
        return F.cosine_embedding_loss(
            input1, input2, target, margin=self.margin, reduction=self.reduction
        )


class CosineSimilarityLoss(nn.Module):
    """Module form of :func:`lossgrad.cosine_similarity_loss`."""

    def __init__(self, *, eps: float = 1e-8, reduction: str = "mean") -> None:
        super().__init__()
        self.eps = check_positive("eps", eps)
        self.reduction = check_reduction(reduction)

    def forward(self, x1: Tensor, x2: Tensor, score: Tensor | None = None) -> Tensor:
        return F.cosine_similarity_loss(x1, x2, score, eps=self.eps, reduction=self.reduction)


class NegativePairLoss(nn.Module):
    """Module form of :func:`lossgrad.negative_pair_loss`."""

    def __init__(
        self, *, margin: float = 1.0, distance: str = "euclidean", reduction: str = "mean"
    ) -> None:
        super().__init__()
        self.margin = check_non_negative("margin", margin)
        self.distance = check_choice("distance", distance, DISTANCE_NAMES)
        self.reduction = check_reduction(reduction)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        return F.negative_pair_loss(
            x1, x2, margin=self.margin, distance=self.distance, reduction=self.reduction
        )


class ContrastiveLoss(nn.Module):
    """Module form of :func:`lossgrad.contrastive_loss`."""

    def __init__(
        self,
        *,
        pos_margin: float = 0.0,
        neg_margin: float = 1.0,
        distance: str = "euclidean",
        squared: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        self.pos_margin = check_non_negative("pos_margin", pos_margin)
        self.neg_margin = check_non_negative("neg_margin", neg_margin)
        self.distance = check_choice("distance", distance, DISTANCE_NAMES)
        self.squared = squared
        self.reduction = check_reduction(reduction)

    def forward(self, x1: Tensor, x2: Tensor, target: Tensor) -> Tensor:
        return F.contrastive_loss(
            x1,
            x2,
            target,
            pos_margin=self.pos_margin,
            neg_margin=self.neg_margin,
            distance=self.distance,
            squared=self.squared,
            reduction=self.reduction,
        )


class TripletMarginLoss(nn.Module):
    """Module form of :func:`lossgrad.triplet_margin_loss`, PyTorch's constructor plus ``distance``."""

    def __init__(
        self,
        margin: float = 1.0,
        p: float = 2.0,
        eps: float = 1e-6,
        swap: bool = False,
        size_average: bool | None = None,
        reduce: bool | None = None,
        reduction: str = "mean",
        *,
        distance: str | None = None,
    ) -> None:
        super().__init__()
        check_no_legacy_reduction(size_average, reduce)
        self.margin = check_positive("margin", margin)
        self.p = F.check_norm_order(p)
        self.eps = check_non_negative("eps", eps)
        self.swap = swap
        self.reduction = check_reduction(reduction)
        if distance is not None:
            check_choice("distance", distance, DISTANCE_NAMES)
        self.distance = distance

    def forward(self, anchor: Tensor, positive: Tensor, negative: Tensor) -> Tensor:
        return F.triplet_margin_loss(
            anchor,
            positive,
            negative,
            margin=self.margin,
            p=self.p,
            eps=self.eps,
            swap=self.swap,
            reduction=self.reduction,
            distance=self.distance,
        )
