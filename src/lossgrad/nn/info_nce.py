"""Module wrapper of :func:`lossgrad.info_nce`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_positive
from .._losses.info_nce import info_nce

__all__ = ["InfoNCELoss"]


class InfoNCELoss(torch.nn.Module):
    """InfoNCE contrastive loss; see :func:`lossgrad.info_nce`.

    Args:
        temperature: ``τ > 0``, the fixed temperature, or the initial one when
            ``learn_temperature`` is set. Default: ``0.07``.
        learn_temperature: learn ``τ`` as the parameter ``log_temperature``
            (``τ = exp(log_temperature)``), which keeps ``τ`` positive under any
            optimiser step and makes steps relative to ``τ``. CLIP learns the
            logit scale ``1/τ`` in the same logarithmic way. Default: ``False``.
        similarity, symmetric, gather, reduction: as in :func:`lossgrad.info_nce`.

    ``forward(query, key, hard_negatives=None)`` takes the shapes of
    :func:`lossgrad.info_nce`. Under DDP with ``learn_temperature``, put this
    module inside the wrapped model, so that DDP averages the gradient of
    ``log_temperature`` like any other parameter.

    Example::

        >>> criterion = lossgrad.nn.InfoNCELoss(learn_temperature=True)
        >>> loss = criterion(torch.randn(8, 32), torch.randn(8, 32))
        >>> criterion.temperature  # tensor(0.0700, grad_fn=<ExpBackward0>)
    """

    def __init__(
        self,
        temperature: float = 0.07,
        *,
        learn_temperature: bool = False,
        similarity: str = "cosine",
        symmetric: bool = False,
        gather: bool = False,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        temperature = check_positive("temperature", temperature)
        self.learn_temperature = learn_temperature
        if learn_temperature:
            self.log_temperature = torch.nn.Parameter(torch.tensor(math.log(temperature)))
        else:
            self.fixed_temperature = temperature
        self.similarity = similarity
        self.symmetric = symmetric
        self.gather = gather
        self.reduction = reduction

    @property
    def temperature(self) -> Tensor | float:
        """The temperature passed to the loss: a float, or ``exp(log_temperature)``."""
        if self.learn_temperature:
            return self.log_temperature.exp()
        return self.fixed_temperature

    def forward(self, query: Tensor, key: Tensor, hard_negatives: Tensor | None = None) -> Tensor:
        return info_nce(
            query,
            key,
            temperature=self.temperature,
            similarity=self.similarity,
            hard_negatives=hard_negatives,
            symmetric=self.symmetric,
            gather=self.gather,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        if self.learn_temperature:
            temperature = math.exp(self.log_temperature.item())
        else:
            temperature = self.fixed_temperature
        return (
            f"temperature={temperature:.4g}, learn_temperature={self.learn_temperature}, "
            f"similarity={self.similarity!r}, symmetric={self.symmetric}, "
            f"gather={self.gather}, reduction={self.reduction!r}"
        )
