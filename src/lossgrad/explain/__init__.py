"""Placeholder: `lossgrad explain` is being written."""

import argparse


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add this command's options to parser."""


def main(args: argparse.Namespace) -> int:
    """Run the command."""
    raise SystemExit("lossgrad explain: not available yet")
