"""Plain gradient descent on a loss's inputs, driven by lossgrad's closed-form gradient."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ._check import closed_form
from ._table import Case, Explainer

__all__ = ["Step", "descend"]


@dataclass
class Step:
    """The state before update ``index``: the loss, the inputs and the watched quantities."""

    index: int
    loss: float
    inputs: dict[str, Tensor]
    watched: dict[str, Tensor]


def descend(explainer: Explainer, case: Case, steps: int, learning_rate: float) -> list[Step]:
    """Run ``steps`` updates x ← x − η·∂ℓ/∂x on every input in ``case.wrt``.

    Returns ``steps + 1`` rows: the start and the state after each update.
    """
    table = []
    for index in range(steps + 1):
        loss, gradients = closed_form(explainer, case)
        inputs = {name: case.arguments[name].detach().clone() for name in case.wrt}
        watched = {name: value.detach() for name, value in explainer.watch(case).items()}
        table.append(Step(index, float(loss), inputs, watched))
        if index == steps:
            break
        updated = {name: case.arguments[name] - learning_rate * gradients[name] for name in case.wrt}
        case = case.replace(**updated)
    return table
