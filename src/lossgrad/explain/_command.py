"""Argument parsing and the top-level flow of ``lossgrad explain``."""

from __future__ import annotations

import argparse
import re
import json
import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Any, NoReturn

from ._registry import available, lookup
from ._render import render_list, render_report
from ._report import case_report, command_line, formula_report
from ._table import Case, Explainer
from ._values import OPTIONS, MissingValue, UsageError, Values, flag_of

__all__ = ["configure_parser", "main"]

# Values that are tensors. When the user gives any of them, the command
# explains the user's numbers instead of the worked examples.
TENSOR_KEYS = (
    "input",
    "other",
    "target",
    "anchor",
    "positive",
    "negative",
    "score",
    "weight",
    "pos_weight",
    "linear_weight",
    "teacher_weight",
)

MAX_STEPS = 1000

EXIT_FAILED_CHECK = 1
EXIT_USAGE = 2
# The shell's status for a process ended by SIGPIPE (128 + 13).
EXIT_BROKEN_PIPE = 141


def reject(message: str) -> NoReturn:
    """Print one error line and exit with the usage exit code."""
    if message.endswith("expected one argument"):
        # argparse reads a value with a leading minus sign as an option.
        option = re.search(r"argument (--[\w-]+)", message)
        flag = option.group(1) if option else "--input"
        message += f"; write a value that starts with a minus sign as {flag}=-1,2"
    print(f"lossgrad explain: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``lossgrad explain`` to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.description = textwrap.dedent("""\
        Print a loss's formula and gradient, evaluate them on your numbers (or the
        loss's worked examples) and check lossgrad's closed-form gradient against
        autograd and finite differences. Without tensor values the worked examples
        run, with any other options applied. Tensors are numbers separated by ','
        with rows separated by ';'. Write a value that starts with a minus sign as
        --input=-1,2.""")
    parser.epilog = textwrap.dedent("""\
        examples:
          lossgrad explain l1_loss --steps 3 --lr 0.05
          lossgrad explain cross_entropy --input 2,1,0.1 --target 0 --compare binary_cross_entropy_with_logits
          lossgrad explain negative_pair_loss --plot hinge.png
          lossgrad explain --list""")

    # argparse prints the whole usage before an error, but one line is easier to read in a script.
    parser.error = reject  # type: ignore[method-assign]

    parser.add_argument(
        "loss", nargs="?", metavar="LOSS", help="the loss function, such as l1_loss"
    )
    parser.add_argument(
        "--list", action="store_true", help="list every loss with its one-line formula"
    )
    for option in OPTIONS:
        if option.is_flag:
            parser.add_argument(option.flag, action="store_true", help=option.help)
        else:
            parser.add_argument(option.flag, metavar="X", help=option.help)

    parser.add_argument(
        "--steps", metavar="K", default="0", help="run K steps of gradient descent (default 0)"
    )
    parser.add_argument(
        "--lr", metavar="ETA", help="the gradient descent learning rate (default: per loss)"
    )
    parser.add_argument("--compare", metavar="OTHER", help="show a second loss on the same inputs")
    parser.add_argument(
        "--plot", metavar="FILE.png", help="draw the loss and its gradient to a PNG file"
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")


def main(args: argparse.Namespace) -> int:
    """Run ``lossgrad explain``; return 0, 1 when a gradient check fails, 2 on bad input."""
    try:
        if args.list:
            return list_losses(args)
        # A loss's warning (kl_div's 'mean') would otherwise print with its source line.
        # Each is shown once, as one line, and kept in the report.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            report = explain(args)
    except UsageError as error:
        reject(str(error))
    report["warnings"] = list(dict.fromkeys(str(warning.message) for warning in caught))
    for message in report["warnings"]:
        print(f"lossgrad explain: warning: {message}", file=sys.stderr)
    text = json.dumps(report, indent=2, ensure_ascii=False) + "\n" if args.json else render_report(report)
    if not write_stdout(text):
        return EXIT_BROKEN_PIPE
    return 0 if report["passed"] else EXIT_FAILED_CHECK


def write_stdout(text: str) -> bool:
    """Write ``text`` to stdout; return False when the reader has gone (``| head``).

    Standard output is then pointed at /dev/null so that the interpreter's
    final flush does not raise BrokenPipeError again.
    """
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return False
    return True


def list_losses(args: argparse.Namespace) -> int:
    """Print every loss that explain can show, with its one-line formula."""
    entries = []
    for name in available():
        formula = formula_report(name)
        summary = formula["summary"] if formula else "(no formula registered)"
        entries.append({"loss": name, "summary": summary})
    text = json.dumps(entries, indent=2, ensure_ascii=False) + "\n" if args.json else render_list(entries)
    return 0 if write_stdout(text) else EXIT_BROKEN_PIPE


def user_values(args: argparse.Namespace) -> Values:
    """Collect the values the user typed, as text."""
    text = {}
    for option in OPTIONS:
        value = getattr(args, option.key)
        if option.is_flag:
            if value:
                text[option.key] = "true"
        elif value is not None:
            text[option.key] = value
    return Values(text)


def parse_steps(args: argparse.Namespace) -> int:
    """Return ``--steps`` as an integer from 0 to MAX_STEPS."""
    try:
        steps = int(args.steps)
    except ValueError:
        raise UsageError(f"--steps: expected an integer, got {args.steps!r}") from None
    if not 0 <= steps <= MAX_STEPS:
        raise UsageError(f"--steps: expected an integer from 0 to {MAX_STEPS}, got {steps}")
    return steps


def parse_learning_rate(args: argparse.Namespace, explainer: Explainer) -> float:
    """Return ``--lr``, or the loss's default, as a positive number."""
    if args.lr is None:
        return explainer.learning_rate
    try:
        learning_rate = float(args.lr)
    except ValueError:
        raise UsageError(f"--lr: expected a number, got {args.lr!r}") from None
    if not learning_rate > 0 or learning_rate == float("inf"):
        raise UsageError(f"--lr: expected a positive number, got {args.lr}")
    return learning_rate


def check_options_apply(values: Values, explainers: list[Explainer]) -> None:
    """Reject an option that none of the explained losses takes."""
    for key in values.text:
        if not any(key in explainer.takes for explainer in explainers):
            names = " or ".join(explainer.name for explainer in explainers)
            takes = ", ".join("--" + k.replace("_", "-") for k in explainers[0].takes)
            raise UsageError(
                f"--{key.replace('_', '-')} does not apply to {names} (it takes {takes})"
            )


def only_taken(values: Values, explainer: Explainer) -> Values:
    """Return the values that ``explainer``'s loss takes."""
    return Values({key: text for key, text in values.text.items() if key in explainer.takes})


def build_compared(explainer: Explainer, values: Values) -> tuple[Case, Values]:
    """Build the compared loss's case, filling each value it needs but was not given.

    A missing value is taken from the compared loss's worked examples: the
    first candidate with which the case builds wins. The candidates are each
    example's value, then its first number, which fits a batch of one row.
    """
    values = only_taken(values, explainer)
    if not any(key in TENSOR_KEYS for key in values.text):
        raise UsageError(
            f"--compare: {explainer.name} takes none of these inputs; compare losses with the "
            "same inputs, such as cross_entropy and binary_cross_entropy_with_logits"
        )
    filled = []
    while True:
        try:
            case = explainer.build(values)
        except MissingValue as missing:
            if missing.key in values.text:
                raise
            values = fill_from_examples(explainer, values, missing)
            filled.append(
                f"{flag_of(missing.key)} {values.text[missing.key]} taken from its worked examples"
            )
            continue
        case.notes.extend(filled)
        return case, values


def fill_from_examples(explainer: Explainer, values: Values, missing: MissingValue) -> Values:
    """Return ``values`` with the missing value set to the first example candidate that builds."""
    texts = [
        example.values[missing.key]
        for example in explainer.examples
        if missing.key in example.values
    ]
    first_numbers = [text.split(";")[0].split(",")[0] for text in texts]
    for candidate in dict.fromkeys(texts + first_numbers):
        trial = Values({**values.text, missing.key: candidate})
        try:
            explainer.build(trial)
        except MissingValue:
            return trial
        except UsageError:
            continue
        return trial
    raise UsageError(
        f"--compare {explainer.name}: it needs {flag_of(missing.key)} for these inputs; "
        "give it on the command line"
    )


def explain(args: argparse.Namespace) -> dict[str, Any]:
    """Build the report of one run."""
    if args.loss is None:
        raise UsageError("missing LOSS: name a loss, or run 'lossgrad explain --list'")
    explainer = lookup(args.loss)
    compared = lookup(args.compare, "--compare") if args.compare else None
    explainers = [explainer] + ([compared] if compared else [])
    steps = parse_steps(args)
    given = user_values(args)
    check_options_apply(given, explainers)

    # 1. The value sets: the user's numbers, or each worked example with the user's options.
    if any(key in given.text for key in TENSOR_KEYS):
        runs = [("your input", given, None)]
    else:
        runs = [
            (f"worked example {index}", Values({**example.values, **given.text}), example.note)
            for index, example in enumerate(explainer.examples, start=1)
        ]

    # 2. Each value set checked for the loss, and for the compared loss when asked.
    report: dict[str, Any] = {
        "loss": explainer.name,
        "formula": formula_report(explainer.name),
        "cases": [],
    }
    compared_cases: list[dict[str, Any]] = []
    first_cases: list[tuple[Explainer, Case]] = []
    for title, all_values, note in runs:
        values = only_taken(all_values, explainer)
        case = explainer.build(values)
        report["cases"].append(
            case_report(
                explainer,
                case,
                title=title,
                command=command_line(explainer.name, values),
                note=note,
                steps=steps,
                learning_rate=parse_learning_rate(args, explainer),
            )
        )
        if compared is not None:
            other_case, other_values = build_compared(compared, all_values)
            compared_cases.append(
                case_report(
                    compared,
                    other_case,
                    title=title,
                    command=command_line(compared.name, other_values),
                    note=None,
                    steps=steps,
                    # The same learning rate for both, so that the two descents compare.
                    learning_rate=parse_learning_rate(args, explainer),
                )
            )
            if not first_cases:
                first_cases = [(explainer, case), (compared, other_case)]
        elif not first_cases:
            first_cases = [(explainer, case)]

    if compared is not None:
        report["compare"] = {
            "loss": compared.name,
            "formula": formula_report(compared.name),
            "cases": compared_cases,
        }

    # 3. The plot of the first value set.
    report["plot"] = None
    if args.plot:
        from ._plot import plot

        plot(Path(args.plot), first_cases)
        report["plot"] = args.plot

    every_case = report["cases"] + compared_cases
    report["passed"] = all(case["status"] != "fail" for case in every_case)
    return report
