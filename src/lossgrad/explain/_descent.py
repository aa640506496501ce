"""Plain gradient descent on a loss's inputs, driven by lossgrad's closed-form gradient."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from torch import Tensor

from ._check import closed_form
from ._table import Case, Explainer
from ._values import UsageError

__all__ = ["Step", "descend"]


@dataclass
class Step:
    """The state before update ``index``: the loss, the inputs and the watched quantities."""

    index: int
    loss: float
    inputs: dict[str, Tensor]
    watched: dict[str, Tensor]


def descend(
    explainer: Explainer, case: Case, steps: int, learning_rate: float
) -> tuple[list[Step], str | None]:
    """Run ``steps`` updates x ← x − η·∂ℓ/∂x on every input in ``case.wrt``.

    Returns ``steps + 1`` rows (the start and the state after each update)
    and None, or fewer rows and the reason for stopping. The run stops when an
    update moves an input where the loss rejects it (a probability past 1), or
    when the loss or an input is no longer finite, because a learning rate that
    is too large makes each step overshoot more than the last.
    """
    table: list[Step] = []
    for index in range(steps + 1):
        try:
            loss, gradients = closed_form(explainer, case)
        except UsageError as error:
            return table, f"stopped before step {index}: {error}"
        inputs = {name: case.arguments[name].detach().clone() for name in case.wrt}
        watched = {name: value.detach() for name, value in explainer.watch(case).items()}
        table.append(Step(index, float(loss), inputs, watched))
        if not _finite(float(loss), inputs.values()):
            return table, (
                f"stopped after step {index}: the loss or an input is no longer finite; "
                f"learning rate {learning_rate:g} is too large here, so the steps diverged"
            )
        if index == steps:
            break
        updated = {
            name: case.arguments[name] - learning_rate * gradients[name] for name in case.wrt
        }
        case = case.replace(**updated)
    return table, None


def _finite(loss: float, inputs: Iterable[Tensor]) -> bool:
    return math.isfinite(loss) and all(bool(value.isfinite().all()) for value in inputs)
