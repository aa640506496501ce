"""Text output of ``lossgrad explain``, formatted from the report dictionaries."""

from __future__ import annotations

import textwrap
from itertools import zip_longest
from typing import Any

__all__ = ["format_value", "render_list", "render_report"]

WIDTH = 100
LABEL = 24
NO_BREAK = "\u00a0"


def format_value(value: Any) -> str:
    """Format a number, a vector ``(a, b)`` or a matrix ``[(a, b), (c, d)]`` compactly."""
    if isinstance(value, list):
        if value and isinstance(value[0], list):
            return "[" + ", ".join(format_value(row) for row in value) + "]"
        return "(" + ", ".join(format_value(item) for item in value) + ")"
    if isinstance(value, float):
        # Adding 0.0 turns −0.0 into 0.0, so a zero gradient prints as 0.
        return f"{value + 0.0:.6g}"
    return str(value)


def labelled(label: str, text: str, indent: str = "  ") -> str:
    """Return one line with ``label`` padded to a column."""
    return f"{indent}{label:<{LABEL}} {text}".rstrip()


def formula_lines(name: str, formula: dict[str, Any] | None) -> list[str]:
    """Return the formula block of one loss."""
    if formula is None:
        return [f"{name}: no formula is registered for this loss"]
    lines = [f"{name}    {formula['summary']}", "", "Loss:"]
    lines += ["    " + line for line in formula["loss"].splitlines()]
    lines += ["Gradient:"]
    lines += ["    " + line for line in formula["gradient"].splitlines()]
    if formula["symbols"]:
        lines += ["where"]
        lines += [f"    {item['symbol']}: {item['meaning']}" for item in formula["symbols"]]
    if formula["subgradient"]:
        lines += [f"Subgradient: {formula['subgradient']}"]
    return lines


def case_lines(case: dict[str, Any]) -> list[str]:
    """Return the values, the three gradients and the check mark of one case."""
    lines = [labelled(name, format_value(value)) for name, value in case["inputs"].items()]
    lines += [labelled(name, format_value(value)) for name, value in case["options"].items()]
    lines += [f"  read as: {note}" for note in case["read_as"]]
    lines += [
        labelled(
            "loss", f"{case['loss']:.10g}   (reference formula: {case['reference_loss']:.10g})"
        )
    ]
    for name, gradient in case["gradients"].items():
        lines += [f"  ∂ℓ/∂{name}"]
        lines += [labelled("closed form", format_value(gradient["closed_form"]), "    ")]
        lines += [labelled("autograd", format_value(gradient["autograd"]), "    ")]
        lines += [
            labelled("finite difference", format_value(gradient["finite_difference"]), "    ")
        ]
    difference = case["largest_difference"]
    lines += [
        labelled(
            "largest difference",
            f"{difference['autograd']:.2g} against autograd, "
            f"{difference['finite_difference']:.2g} against finite differences",
        )
    ]
    lines += check_lines(case)
    lines += [labelled(name, format_value(value)) for name, value in case["watch"].items()]
    return lines


def check_lines(case: dict[str, Any]) -> list[str]:
    """Return the pass/kink/fail mark with its explanation."""
    status = case["status"]
    if status == "pass":
        return [labelled("check", "PASS: closed form = autograd = finite differences")]
    if status == "fail":
        return [labelled("check", f"FAIL: {case['failure']}")]
    lines = [
        labelled("check", "PASS AT A KINK: the closed form matches autograd; finite differences")
    ]
    lines += [labelled("", "straddle the kink here, so they are not required to agree")]
    lines += [labelled("kink", kink) for kink in case["kinks"]]
    if case["subgradient"]:
        lines += [labelled("subgradient used", case["subgradient"])]
    return lines


def steps_lines(case: dict[str, Any]) -> list[str]:
    """Return the gradient descent table of one case, or nothing when no steps ran."""
    if "steps" not in case:
        return []
    steps = case["steps"]
    header = ["step", "loss", *steps[0]["inputs"], *steps[0]["watch"]]
    rows = [
        [
            str(step["step"]),
            f"{step['loss']:.6g}",
            *(format_value(value) for value in step["inputs"].values()),
            *(format_value(value) for value in step["watch"].values()),
        ]
        for step in steps
    ]
    widths = [max(len(row[column]) for row in [header, *rows]) for column in range(len(header))]
    lines = [f"  gradient descent, learning rate {case['learning_rate']:g}:"]
    for row in [header, *rows]:
        lines.append(
            "  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
        )
    if case["steps_stopped"]:
        lines.append(f"  {case['steps_stopped']}")
    return lines


def side_by_side(left: list[str], right: list[str]) -> list[str]:
    """Put two blocks of lines next to each other."""
    width = max(len(line) for line in left) + 4
    return [f"{a:<{width}}{b}".rstrip() for a, b in zip_longest(left, right, fillvalue="")]


def note_lines(note: str | None) -> list[str]:
    """Return the worked example's explanation, wrapped."""
    if not note:
        return []
    # No-break spaces keep "p − y" on one line; textwrap splits only at ASCII whitespace.
    text = ("What to notice: " + note).replace(" − ", NO_BREAK + "−" + NO_BREAK)
    lines = textwrap.wrap(text, WIDTH, initial_indent="  ", subsequent_indent="  ")
    return [line.replace(NO_BREAK, " ") for line in lines]


def render_report(report: dict[str, Any]) -> str:
    """Return the whole text output of one run."""
    compare = report.get("compare")
    lines = formula_lines(report["loss"], report["formula"])
    if compare:
        lines += [""] + formula_lines(compare["loss"], compare["formula"])
    for index, case in enumerate(report["cases"]):
        lines += ["", f"── {case['title']}: {case['command']}"]
        if compare:
            other = compare["cases"][index]
            lines += side_by_side(
                [f"  {report['loss']}", *case_lines(case)],
                [f"  {compare['loss']}", *case_lines(other)],
            )
            for name, block in ((report["loss"], case), (compare["loss"], other)):
                table = steps_lines(block)
                if table:
                    lines += ["", f"  {name}"] + table
        else:
            lines += case_lines(case)
            table = steps_lines(case)
            if table:
                lines += [""] + table
        if case["note"]:
            lines += [""] + note_lines(case["note"])
    if report.get("plot"):
        lines += ["", f"plot written to {report['plot']}"]
    return "\n".join(lines) + "\n"


def render_list(entries: list[dict[str, Any]]) -> str:
    """Return the ``--list`` output: one loss per line with its one-line formula."""
    width = max(len(entry["loss"]) for entry in entries) if entries else 0
    return "".join(f"{entry['loss']:<{width}}  {entry['summary']}\n" for entry in entries)
