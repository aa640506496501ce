"""Formulas of the losses, written once and shown in two places.

Each public loss is decorated with :func:`documented`, which stores its
:class:`Formula` in :data:`FORMULAS` and puts the formula text into the
function's docstring in place of the marker ``{formula}``. ``lossgrad explain``
reads the same registry, so the docs and the command cannot drift apart.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

__all__ = ["FORMULAS", "Formula", "documented"]

F = TypeVar("F", bound=Callable[..., object])


@dataclass(frozen=True)
class Formula:
    """The math of one loss in readable Unicode.

    Attributes:
        name: the public function name, such as ``"cross_entropy"``.
        summary: a one-line formula for ``lossgrad explain --list``.
        loss: the per-element (or per-row) loss, one or more lines.
        gradient: the closed-form gradient that ``backward`` computes.
        symbols: the meaning of each symbol used above, in order.
        subgradient: the convention used at points where the loss is not
            differentiable, or ``None`` where it is smooth everywhere.
    """

    name: str
    summary: str
    loss: str
    gradient: str
    symbols: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    subgradient: str | None = None

    def render(self, indent: str = "    ") -> str:
        """Return the formula as a docstring block."""
        lines = ["Loss::", "", textwrap.indent(self.loss, "    "), ""]
        lines += ["Gradient::", "", textwrap.indent(self.gradient, "    "), ""]
        if self.symbols:
            lines += ["where"]
            lines += [f"    {symbol}: {meaning}" for symbol, meaning in self.symbols]
            lines += [""]
        if self.subgradient:
            lines += [f"Subgradient: {self.subgradient}", ""]
        return textwrap.indent("\n".join(lines).rstrip(), indent).lstrip()


FORMULAS: dict[str, Formula] = {}


def documented(formula: Formula) -> Callable[[F], F]:
    """Register ``formula`` and write it into the decorated function's docstring."""

    def decorate(function: F) -> F:
        if formula.name in FORMULAS:
            raise ValueError(f"formula for {formula.name!r} is registered twice")
        FORMULAS[formula.name] = formula
        if function.__doc__ and "{formula}" in function.__doc__:
            function.__doc__ = function.__doc__.replace("{formula}", formula.render())
        function.formula = formula  # type: ignore[attr-defined]
        return function

    return decorate
