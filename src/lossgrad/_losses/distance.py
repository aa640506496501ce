"""Distances between paired rows of two embedding matrices, with their gradients.

Each distance is a small object with two methods:

- ``value(x1, x2)`` maps rows ``x1, x2`` of shape ``(N, D)``, or single vectors
  of shape ``(D,)``, to ``d`` of shape ``(N,)`` or ``()``;
- ``vjp(x1, x2, d, grad_d)`` returns ``grad_d · ∂d/∂x1`` and
  ``grad_d · ∂d/∂x2`` row by row, the closed form that a loss's ``backward``
  scales by its upstream gradient.

Both expect ``x1`` and ``x2`` in the accumulation dtype (float32 or float64)
and contain no Python branch on tensor values, so they run under ``vmap``,
``torch.func.grad`` and ``torch.compile``. Where a distance is not
differentiable (the euclidean distance at coincident points), ``vjp`` returns
the subgradient 0.

On CUDA with Triton installed, the euclidean, squared euclidean and cosine
distances read their rows through two kernels instead
(:mod:`lossgrad._kernels.triton_pairs`): one pass for the row statistics
(x1·x2, ‖x1‖², ‖x2‖², ‖x1 − x2‖²) and one pass that writes each gradient row
as a combination of x1 and x2 with per-row coefficients. The formulas are the
same; only the passes over ``D`` move to the GPU kernels.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from .._kernels import triton_ops

__all__ = [
    "DISTANCE_NAMES",
    "Cosine",
    "Distance",
    "Euclidean",
    "PNorm",
    "SmoothCosine",
    "SquaredEuclidean",
    "distance_by_name",
]

DISTANCE_NAMES = ("euclidean", "squared_euclidean", "cosine")

# Default clamp of each norm in the cosine distance, as in
# torch.nn.functional.cosine_similarity (PyTorch 2.13).
COSINE_EPS = 1e-8

Grads = tuple[Tensor | None, Tensor | None]


def _per_row(factor: Tensor) -> Tensor:
    """Add a trailing axis so that a per-row factor multiplies whole rows."""
    return factor.unsqueeze(-1)


def _dot(x1: Tensor, x2: Tensor) -> Tensor:
    return (x1 * x2).sum(dim=-1)


def _divide_by_both(value: Tensor, c1: Tensor, c2: Tensor) -> Tensor:
    """Return ``value / (c1 c2)`` without forming ``c1 c2``.

    The product of two norms clamped at a small eps underflows in float32
    (1e-20 squared is 0). Dividing by the larger one first keeps the result
    the same when c1 and c2 are swapped.
    """
    return value / torch.maximum(c1, c2) / torch.minimum(c1, c2)


def _combine(x: Tensor, a: Tensor, y: Tensor, b: Tensor) -> Tensor:
    """Return ``a · x + b · y`` with per-row factors ``a`` and ``b``.

    ``addcmul_`` adds into the product in place, which saves an N × D
    allocation. Under a torch.func transform the out-of-place ``addcmul`` is
    used, because ``vmap`` has no batching rule for ``addcmul_`` in PyTorch
    2.13.
    """
    product = x * _per_row(a)
    if torch._C._are_functorch_transforms_active():
        return torch.addcmul(product, y, _per_row(b))
    return product.addcmul_(y, _per_row(b))


def _scale_difference(
    direction: Tensor, factor: Tensor, needs: tuple[bool, bool]
) -> tuple[Tensor | None, Tensor | None]:
    """Return ``factor · direction`` and its negation, overwriting ``direction``.

    ``direction`` must be a temporary of the caller. Reusing its memory saves
    one N × D allocation, which costs more than the arithmetic on CPU.
    """
    grad_x2 = direction * -factor if needs[1] else None
    grad_x1 = direction.mul_(factor) if needs[0] else None
    return grad_x1, grad_x2


def _pair_stats(x1: Tensor, x2: Tensor) -> Tensor:
    """Return ``... x 4`` rows (x1·x2, ‖x1‖², ‖x2‖², ‖x1 − x2‖²) from the Triton kernel."""
    D = x1.shape[-1]
    stats = triton_ops.pair_stats(x1.reshape(-1, D), x2.reshape(-1, D))  # N x 4
    return stats.reshape(*x1.shape[:-1], 4).to(x1.dtype)


def _combine_pair(
    x1: Tensor,
    x2: Tensor,
    coefficients: tuple[Tensor, Tensor, Tensor, Tensor],
    needs: tuple[bool, bool],
) -> Grads:
    """Return ``c11 x1 + c12 x2`` and ``c21 x1 + c22 x2`` from the Triton kernel.

    Each coefficient has one entry per row.
    """
    D = x1.shape[-1]
    c11, c12, c21, c22 = (c.reshape(-1) for c in coefficients)
    zero = torch.zeros_like(c11)
    coef = torch.stack([c11, c12, zero, c21, c22, zero, zero, zero, zero], dim=1)  # N x 9
    grad_x1, grad_x2 = triton_ops.combine_rows([x1.reshape(-1, D), x2.reshape(-1, D)], coef)
    grad_x1 = grad_x1.reshape(x1.shape) if needs[0] else None
    grad_x2 = grad_x2.reshape(x2.shape) if needs[1] else None
    return grad_x1, grad_x2


class Distance(ABC):
    """A distance between paired rows, with its value and closed-form gradient."""

    name: ClassVar[str]

    @abstractmethod
    def value(self, x1: Tensor, x2: Tensor) -> Tensor:
        """Return ``d(x1, x2)`` over the last dimension."""

    @abstractmethod
    def vjp(
        self,
        x1: Tensor,
        x2: Tensor,
        d: Tensor,
        grad_d: Tensor,
        needs: tuple[bool, bool] = (True, True),
    ) -> Grads:
        """Return ``grad_d · ∂d/∂x1`` and ``grad_d · ∂d/∂x2``.

        ``d`` is the output of :meth:`value` for the same rows, and ``grad_d``
        has its shape. An entry of ``needs`` that is false returns ``None``.
        """


@dataclass(frozen=True)
class Euclidean(Distance):
    """``d = ‖x1 − x2‖₂``, exact at coincident points.

    ``d(x, x) = 0`` and its gradient there is the subgradient 0, so no NaN and
    no shift are needed. ``torch.nn.functional.pairwise_distance`` instead
    computes ``‖x1 − x2 + eps‖`` (eps = 1e-6 by default), which is never 0 and
    whose gradient at coincident points points along the all-ones direction.
    In float32 a difference below about 1e-23 squares to 0, so such rows get
    ``d = 0`` and the subgradient 0 as well.
    """

    name: ClassVar[str] = "euclidean"

    def value(self, x1: Tensor, x2: Tensor) -> Tensor:
        if triton_ops.use_triton(x1):
            return _pair_stats(x1, x2)[..., 3].sqrt()
        return torch.linalg.vector_norm(x1 - x2, dim=-1)

    def vjp(self, x1, x2, d, grad_d, needs=(True, True)) -> Grads:
        # ∂d/∂x1 = (x1 − x2)/d = −∂d/∂x2 where d > 0, and 0 where d = 0.
        positive = d > 0
        factor = torch.where(positive, grad_d / torch.where(positive, d, 1), 0)
        if triton_ops.use_triton(x1):
            return _combine_pair(x1, x2, (factor, -factor, -factor, factor), needs)
        return _scale_difference(x1 - x2, _per_row(factor), needs)


@dataclass(frozen=True)
class SquaredEuclidean(Distance):
    """``d = ‖x1 − x2‖₂²``, smooth everywhere."""

    name: ClassVar[str] = "squared_euclidean"

    def value(self, x1: Tensor, x2: Tensor) -> Tensor:
        if triton_ops.use_triton(x1):
            return _pair_stats(x1, x2)[..., 3]
        diff = x1 - x2
        return _dot(diff, diff)

    def vjp(self, x1, x2, d, grad_d, needs=(True, True)) -> Grads:
        # ∂d/∂x1 = 2 (x1 − x2) = −∂d/∂x2.
        if triton_ops.use_triton(x1):
            factor = 2 * grad_d
            return _combine_pair(x1, x2, (factor, -factor, -factor, factor), needs)
        return _scale_difference(x1 - x2, _per_row(2 * grad_d), needs)


@dataclass(frozen=True)
class PNorm(Distance):
    """``d = ‖x1 − x2‖ₚ = (Σⱼ |uⱼ|ᵖ)^(1/p)`` with ``u = x1 − x2`` and finite ``p ≥ 1``.

    The gradient is ``∂d/∂uⱼ = sign(uⱼ) (|uⱼ| / d)^(p−1)``, written with the
    ratio ``|uⱼ| / d ≤ 1`` so that no power overflows. Its subgradient is 0 for
    every component where ``uⱼ = 0`` and for the whole row where ``d = 0``.
    """

    p: float = 2.0
    name: ClassVar[str] = "p-norm"

    def value(self, x1: Tensor, x2: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x1 - x2, ord=self.p, dim=-1)

    def vjp(self, x1, x2, d, grad_d, needs=(True, True)) -> Grads:
        # ∂d/∂x1 = sign(u) (|u|/d)^(p−1) = −∂d/∂x2 where d > 0, and 0 where d = 0.
        u = x1 - x2
        safe_d = _per_row(torch.where(d > 0, d, 1))
        direction = torch.sign(u) * (u.abs() / safe_d).pow(self.p - 1)
        return _scale_difference(direction, _per_row(grad_d), needs)


@dataclass(frozen=True)
class Cosine(Distance):
    """``d = 1 − cos`` with each norm clamped: ``cos = x1·x2 / (max(‖x1‖, eps) max(‖x2‖, eps))``.

    The clamp is the one of ``torch.nn.functional.cosine_similarity`` in
    PyTorch 2.13, so a zero vector has ``cos = 0`` and a finite gradient.
    ``cos`` is then clamped into ``[−1, 1]``, which only removes rounding
    error. Where a norm is below ``eps`` the clamped norm is the constant
    ``eps``, so its derivative is 0. PyTorch instead keeps the derivative of
    the unclamped norm there, although the value it returns does not depend
    on that norm. The two gradients agree whenever both norms are at least
    ``eps``.

    NOTE: the gradient forms ``1/‖x‖²``, which overflows in float32 for a
    row whose norm is below about 1e-19; only an ``eps`` that small lets such
    a row through unclamped.
    """

    eps: float = COSINE_EPS
    name: ClassVar[str] = "cosine"

    def _clamped_norms(self, x: Tensor) -> tuple[Tensor, Tensor]:
        norm = torch.linalg.vector_norm(x, dim=-1)
        return norm, norm.clamp_min(self.eps)

    def _row_terms(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, ...]:
        """Return (x1·x2, ‖x1‖, max(‖x1‖, eps), ‖x2‖, max(‖x2‖, eps)) per row."""
        if triton_ops.use_triton(x1):
            stats = _pair_stats(x1, x2)
            dot, n1, n2 = stats[..., 0], stats[..., 1].sqrt(), stats[..., 2].sqrt()
        else:
            dot = _dot(x1, x2)
            n1 = torch.linalg.vector_norm(x1, dim=-1)
            n2 = torch.linalg.vector_norm(x2, dim=-1)
        return dot, n1, n1.clamp_min(self.eps), n2, n2.clamp_min(self.eps)

    def similarity(self, x1: Tensor, x2: Tensor) -> Tensor:
        """Return the clamped cosine similarity ``cos`` in ``[−1, 1]``."""
        dot, _, c1, _, c2 = self._row_terms(x1, x2)
        return _divide_by_both(dot, c1, c2).clamp(-1, 1)

    def similarity_vjp(
        self,
        x1: Tensor,
        x2: Tensor,
        cos: Tensor,
        grad_cos: Tensor,
        needs: tuple[bool, bool] = (True, True),
    ) -> Grads:
        """Return ``grad_cos · ∂cos/∂x1`` and ``grad_cos · ∂cos/∂x2``."""
        dot, n1, c1, n2, c2 = self._row_terms(x1, x2)
        # With cᵢ = max(‖xᵢ‖, eps):
        #   ∂cos/∂x1 = x2/(c1 c2) − cos · x1 · k1,
        #   k1 = 1/‖x1‖² where ‖x1‖ ≥ eps, and 0 where the clamped norm is constant;
        # the same with 1 and 2 swapped. Where the clamp into [−1, 1] is active
        # the gradient is 0, and so is the exact gradient of parallel vectors.
        raw = _divide_by_both(dot, c1, c2)
        inside = (raw >= -1) & (raw <= 1)
        grad = torch.where(inside, grad_cos, 0)
        shared = _divide_by_both(grad, c1, c2)
        if triton_ops.use_triton(x1):
            own1 = -grad * cos * torch.where(n1 >= self.eps, 1 / c1 / c1, 0)
            own2 = -grad * cos * torch.where(n2 >= self.eps, 1 / c2 / c2, 0)
            return _combine_pair(x1, x2, (own1, shared, shared, own2), needs)
        grad_x1 = grad_x2 = None
        if needs[0]:
            k1 = torch.where(n1 >= self.eps, 1 / c1 / c1, 0)
            grad_x1 = _combine(x2, shared, x1, -grad * cos * k1)
        if needs[1]:
            k2 = torch.where(n2 >= self.eps, 1 / c2 / c2, 0)
            grad_x2 = _combine(x1, shared, x2, -grad * cos * k2)
        return grad_x1, grad_x2

    def value(self, x1: Tensor, x2: Tensor) -> Tensor:
        return 1 - self.similarity(x1, x2)

    def vjp(self, x1, x2, d, grad_d, needs=(True, True)) -> Grads:
        # d = 1 − cos, so ∂d/∂xᵢ = −∂cos/∂xᵢ.
        return self.similarity_vjp(x1, x2, 1 - d, -grad_d, needs)


@dataclass(frozen=True)
class SmoothCosine(Distance):
    """``d = 1 − cos`` with ``cos = x1·x2 / √((‖x1‖² + ε)(‖x2‖² + ε))``, ε = 1e-12.

    This is the cosine of ``torch.nn.functional.cosine_embedding_loss``
    (PyTorch 2.13, ``EPSILON = 1e-12`` added to each squared norm), kept for
    parity with it. It is smooth everywhere and is not clamped into
    ``[−1, 1]``. It differs from :class:`Cosine` only for norms near
    ``1e-6`` or below.
    """

    eps_squared: float = 1e-12
    name: ClassVar[str] = "smooth_cosine"

    def _squared_norms(self, x: Tensor) -> Tensor:
        return _dot(x, x) + self.eps_squared

    def _row_terms(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return (x1·x2, ‖x1‖² + ε, ‖x2‖² + ε) per row."""
        if triton_ops.use_triton(x1):
            stats = _pair_stats(x1, x2)
            dot, m1, m2 = stats[..., 0], stats[..., 1], stats[..., 2]
            return dot, m1 + self.eps_squared, m2 + self.eps_squared
        return _dot(x1, x2), self._squared_norms(x1), self._squared_norms(x2)

    def similarity(self, x1: Tensor, x2: Tensor) -> Tensor:
        """Return ``cos`` as PyTorch's cosine_embedding_loss computes it."""
        return self.similarity_and_norms(x1, x2)[0]

    def similarity_and_norms(self, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Return ``cos`` and the smoothed squared norms (‖x1‖² + ε, ‖x2‖² + ε) per row."""
        dot, m1, m2 = self._row_terms(x1, x2)
        return dot / torch.sqrt(m1 * m2), m1, m2

    def similarity_vjp(
        self,
        x1: Tensor,
        x2: Tensor,
        cos: Tensor,
        grad_cos: Tensor,
        needs: tuple[bool, bool] = (True, True),
        norms: tuple[Tensor, Tensor] | None = None,
    ) -> Grads:
        """Return ``grad_cos · ∂cos/∂x1`` and ``grad_cos · ∂cos/∂x2``.

        ``norms`` are the squared norms from :meth:`similarity_and_norms`
        for the same rows; without them they are computed again.
        """
        m1, m2 = norms if norms is not None else self._row_terms(x1, x2)[1:]
        # With mᵢ = ‖xᵢ‖² + ε: ∂cos/∂x1 = x2/√(m1 m2) − cos · x1/m1, and the
        # same with 1 and 2 swapped.
        shared = grad_cos / torch.sqrt(m1 * m2)
        if triton_ops.use_triton(x1):
            own1, own2 = -grad_cos * cos / m1, -grad_cos * cos / m2
            return _combine_pair(x1, x2, (own1, shared, shared, own2), needs)
        grad_x1 = grad_x2 = None
        if needs[0]:
            grad_x1 = _combine(x2, shared, x1, -grad_cos * cos / m1)
        if needs[1]:
            grad_x2 = _combine(x1, shared, x2, -grad_cos * cos / m2)
        return grad_x1, grad_x2

    def value(self, x1: Tensor, x2: Tensor) -> Tensor:
        return 1 - self.similarity(x1, x2)

    def vjp(self, x1, x2, d, grad_d, needs=(True, True)) -> Grads:
        return self.similarity_vjp(x1, x2, 1 - d, -grad_d, needs)


def distance_by_name(name: str) -> Distance:
    """Return the distance object for one of :data:`DISTANCE_NAMES`.

    The caller validates ``name`` first (``_checks.check_choice``).
    """
    if name == "euclidean":
        return Euclidean()
    if name == "squared_euclidean":
        return SquaredEuclidean()
    if name == "cosine":
        return Cosine()
    raise ValueError(f"distance: expected one of {DISTANCE_NAMES}, got {name!r}")
