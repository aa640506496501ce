"""The ``lossgrad`` command: parses the subcommand and hands over to its package.

Each application (``explain``, ``run``, ``bench``) lives in its own subpackage,
which provides ``configure_parser(parser)`` and ``main(args) -> int``. They are
imported only when their subcommand runs, so ``lossgrad explain`` does not pay
for matplotlib or scikit-learn.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from importlib.metadata import version

__all__ = ["main"]

COMMANDS = {
    "explain": "show a loss's formula and gradient on your numbers, checked three ways",
    "run": "run an experiment on real data (default: Hinton's distillation on digits)",
    "bench": "compare speed and memory with PyTorch eager and torch.compile",
}


class OneLineErrorParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr, with exit code 2.

    argparse prints the whole usage before an error; in scripts and logs one
    line that names the problem and points to ``--help`` is easier to read.
    """

    def error(self, message: str):
        print(f"{self.prog}: error: {message} (see --help)", file=sys.stderr)
        raise SystemExit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Return the top-level parser with one subparser per application.

    Only ``command``'s package is imported and given its options; the other
    subparsers carry their help line alone, which is all ``lossgrad --help``
    shows.
    """
    parser = OneLineErrorParser(
        prog="lossgrad",
        description="Losses with hand-derived gradients: explain, run, bench.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug messages"
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {version('lossgrad')}"
    )
    subparsers = parser.add_subparsers(
        dest="command", metavar="COMMAND", parser_class=OneLineErrorParser
    )
    subparsers.required = True
    for name, help_text in COMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = _import_command(name)
            module.configure_parser(sub)
            sub.set_defaults(handler=module.main)
    return parser


def _import_command(name: str):
    """Import ``lossgrad.<name>``, or exit with one line naming the missing extra."""
    try:
        return importlib.import_module(f"lossgrad.{name}")
    except ModuleNotFoundError as error:
        if error.name is None or error.name.split(".")[0] == "lossgrad":
            raise
        print(
            f"lossgrad {name}: the module {error.name!r} is not installed; install the "
            "extras with: pip install 'lossgrad[run]'",
            file=sys.stderr,
        )
        raise SystemExit(2) from None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line and return the process exit code."""
    words = list(sys.argv[1:] if argv is None else argv)
    # Top-level options take no value, so the first other word is the command.
    command = next((word for word in words if not word.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(words)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
    )
    return int(args.handler(args) or 0)
