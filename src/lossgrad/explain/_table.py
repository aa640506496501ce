"""The explainer table: what ``lossgrad explain`` needs to know about each loss.

A loss joins the command by adding one :class:`Explainer` row to a family
module (``_regression.py`` and its siblings). The row gives the values the
loss takes and how to turn them into tensors. It also gives an independent
float64 formula to check the library against, the quantity worth watching
during gradient descent, where the loss has kinks and what to plot it against.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import Tensor

import lossgrad

from ._values import UsageError, Values

__all__ = [
    "Case",
    "Example",
    "Explainer",
    "Sweep",
    "describe_shape",
    "no_kinks",
    "reduce",
    "same_shape",
]


@dataclass
class Case:
    """The tensors and options of one call of a loss.

    Attributes:
        arguments: tensor arguments by the loss's parameter names, float64
            except for class indices.
        wrt: the names in ``arguments`` that gradients are taken for.
        options: the other keyword arguments of the call (margin, reduction).
        notes: how the values were read when that is not obvious (a class
            index turned into a one-hot row).
    """

    arguments: dict[str, Tensor]
    wrt: tuple[str, ...]
    options: dict[str, object] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def replace(self, **arguments: Tensor) -> Case:
        """Return a copy with some tensor arguments replaced."""
        return Case({**self.arguments, **arguments}, self.wrt, dict(self.options), list(self.notes))


@dataclass(frozen=True)
class Example:
    """A built-in worked example: the values, typed as on the command line, and what to notice."""

    values: dict[str, str]
    note: str


@dataclass(frozen=True)
class Sweep:
    """The one input a plot varies.

    Attributes:
        axis: the kind of quantity on the x axis (``"residual"``, ``"logit"``,
            ``"distance"``, ``"cosine"``); two losses overlay only on the same kind.
        label: the x axis label.
        low, high: the plotted range.
        place: returns a one-row case, built from the given case, in which the
            swept quantity equals ``t`` (a 0-dim tensor that requires grad).
        widen: returns a wider range for the case's options (a large margin),
            or None to keep ``low, high``.
        measure: returns the swept quantity's value in the given case, which
            the plot marks, or None for no mark.
    """

    axis: str
    label: str
    low: float
    high: float
    place: Callable[[Case, Tensor], Case]
    widen: Callable[[Case], tuple[float, float]] | None = None
    measure: Callable[[Case], float] | None = None

    def bounds(self, case: Case) -> tuple[float, float]:
        """Return the plotted range for ``case``."""
        return (self.low, self.high) if self.widen is None else self.widen(case)


@dataclass(frozen=True)
class Explainer:
    """One row of the table.

    Attributes:
        name: the public function name in ``lossgrad``.
        takes: the value keys the loss accepts (see ``_values.OPTIONS``).
        build: turns the user's values into a :class:`Case`; raises UsageError.
        reference: the loss as a plain float64 PyTorch formula of the case's
            arguments, written independently of lossgrad so that autograd
            through it checks the closed-form backward.
        watch: the quantities worth following during gradient descent.
        kinks: descriptions of each kink the case sits on (empty when smooth).
        examples: the worked examples shown when no inputs are given.
        sweep: what ``--plot`` varies.
        learning_rate: the default ``--lr``.
    """

    name: str
    takes: tuple[str, ...]
    build: Callable[[Values], Case]
    reference: Callable[[Case], Tensor]
    watch: Callable[[Case], dict[str, Tensor]]
    kinks: Callable[[Case], list[str]]
    examples: tuple[Example, ...]
    sweep: Sweep
    learning_rate: float = 0.1

    @property
    def function(self) -> Callable[..., Tensor] | None:
        """The loss in ``lossgrad``, or None while it is not part of the public API."""
        if self.name not in lossgrad.__all__:
            return None
        return getattr(lossgrad, self.name, None)

    def call(self, case: Case) -> Tensor:
        """Evaluate the library's loss on ``case``.

        A ValueError or TypeError raised by the loss on these numbers becomes
        a UsageError carrying the loss's own message.
        """
        function = self.function
        if function is None:
            raise UsageError(f"{self.name} is not in this version of lossgrad")
        try:
            return function(**case.arguments, **case.options)
        except (ValueError, TypeError) as error:
            raise UsageError(f"{self.name}: {error}") from error


def reduce(per_item: Tensor, reduction: object, rows: int | None = None) -> Tensor:
    """Combine per-element (or per-row) losses as ``reduction`` specifies.

    ``batchmean`` divides the sum by ``rows``, the batch size.
    """
    if reduction == "sum":
        return per_item.sum()
    if reduction == "mean":
        return per_item.mean()
    if reduction == "batchmean":
        return per_item.sum() / (rows if rows is not None else per_item.shape[0])
    raise UsageError(f"--reduction: expected mean, sum or batchmean, got {reduction!r}")


def no_kinks(case: Case) -> list[str]:
    """Return no kinks, for a loss that is differentiable everywhere."""
    return []


def same_shape(first: str, a: Tensor, second: str, b: Tensor) -> None:
    """Raise UsageError unless the two inputs have the same shape."""
    if a.shape != b.shape:
        raise UsageError(
            f"--{first} and --{second}: expected the same shape, got "
            f"{describe_shape(a)} and {describe_shape(b)}"
        )


def describe_shape(tensor: Tensor) -> str:
    """Describe a parsed tensor's shape in the user's terms."""
    if tensor.dim() < 2:
        return f"{tensor.numel()} value(s)"
    return f"{tensor.shape[0]} rows of {tensor.shape[1]}"
