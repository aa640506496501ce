"""The report of one ``lossgrad explain`` run as plain data.

The same dictionaries are printed by ``--json`` and formatted as text, so the
two outputs cannot disagree.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

import lossgrad

from ._check import check
from ._descent import descend
from ._table import Case, Explainer
from ._values import OPTIONS_BY_KEY, Values

__all__ = ["case_report", "command_line", "formula_report", "plain"]


def plain(value: Any) -> Any:
    """Turn tensors (and containers of them) into floats and nested lists."""
    if isinstance(value, Tensor):
        return value.detach().double().tolist() if value.is_floating_point() else value.tolist()
    if isinstance(value, dict):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    return value


def formula_report(name: str) -> dict[str, Any] | None:
    """Return the registered formula of loss ``name``, or None when it has none."""
    formula = lossgrad.FORMULAS.get(name)
    if formula is None:
        return None
    return {
        "summary": formula.summary,
        "loss": formula.loss,
        "gradient": formula.gradient,
        "symbols": [{"symbol": symbol, "meaning": meaning} for symbol, meaning in formula.symbols],
        "subgradient": formula.subgradient,
    }


def command_line(name: str, values: Values) -> str:
    """Return the ``lossgrad explain`` command that gives ``values``."""
    words = ["lossgrad", "explain", name]
    for key, text in values.text.items():
        option = OPTIONS_BY_KEY[key]
        if option.is_flag:
            words.append(option.flag)
            continue
        quoted = f"'{text}'" if (" " in text or ";" in text) else text
        if text.startswith("-"):
            # '=' keeps argparse from reading a leading minus as an option.
            words.append(f"{option.flag}={quoted}")
        else:
            words += [option.flag, quoted]
    return " ".join(words)


def case_report(
    explainer: Explainer,
    case: Case,
    *,
    title: str,
    command: str,
    note: str | None,
    steps: int,
    learning_rate: float,
) -> dict[str, Any]:
    """Check ``case`` and, when ``steps`` > 0, run gradient descent on it."""
    outcome = check(explainer, case)
    formula = lossgrad.FORMULAS.get(explainer.name)
    report: dict[str, Any] = {
        "title": title,
        "command": command,
        "inputs": plain(case.arguments),
        "options": plain(case.options),
        "read_as": list(case.notes),
        "loss": outcome.loss,
        "reference_loss": outcome.reference_loss,
        "gradients": {
            gradient.name: {
                "closed_form": plain(gradient.closed_form),
                "autograd": plain(gradient.autograd),
                "finite_difference": plain(gradient.finite_difference),
            }
            for gradient in outcome.gradients
        },
        "largest_difference": {
            "autograd": outcome.autograd_difference,
            "finite_difference": outcome.finite_difference_difference,
        },
        "status": outcome.status,
        "failure": outcome.failure,
        "kinks": outcome.kinks,
        "subgradient": formula.subgradient if (formula and outcome.kinks) else None,
        "watch": plain(explainer.watch(case)),
        "note": note,
    }
    if steps > 0:
        table, stopped = descend(explainer, case, steps, learning_rate)
        report["learning_rate"] = learning_rate
        report["steps"] = [
            {
                "step": step.index,
                "loss": step.loss,
                "inputs": plain(step.inputs),
                "watch": plain(step.watched),
            }
            for step in table
        ]
        report["steps_stopped"] = stopped
    return report
