"""Settings of ``lossgrad run``: one table of options for the command line and the TOML file.

Every value is parsed by the same function whether it comes from a flag (a string) or from a
``--config`` file (a TOML value), so both sources give the same error messages. The order of
precedence is: built-in default, then the file, then the flags given on the command line.
"""

from __future__ import annotations

import argparse
import json
import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = [
    "EXPERIMENT_NAMES",
    "OPTIONS",
    "RunConfig",
    "RunError",
    "add_options",
    "config_to_toml",
    "resolve_config",
]

EXPERIMENT_NAMES = ("distill", "classify", "embed", "regress")

# Epochs and seeds when the user sets none: (full run, --fast run).
DEFAULT_EPOCHS = {"distill": (60, 12), "classify": (60, 10), "embed": (40, 8), "regress": (300, 60)}
DEFAULT_SEEDS = (5, 2)
# The losses of the embed experiment, in the order of its table.
EMBED_METHODS = (
    "contrastive", "triplet", "cosine_embedding", "cosine_similarity", "negative_pair", "info_nce",
)


class RunError(Exception):
    """A mistake in the user's options or data; reported as one line, without a traceback."""


@dataclass(frozen=True)
class RunConfig:
    """The resolved settings of one run (see ``OPTIONS`` for their meaning)."""

    experiment: str
    epochs: int
    seeds: tuple[int, ...]
    device: str
    out: Path | None
    data: Path | None
    label_column: str
    fast: bool
    quiet: bool
    threads: int
    temperature: float
    alpha: float
    omit_class: int
    label_smoothing: float
    embedding_dim: int
    methods: tuple[str, ...]
    outlier_fraction: float
    huber_delta: float


# 1. Value parsers. Each takes a string (command line) or a TOML value and raises RunError.


def _describe(value: object) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


def _int_parser(minimum: int) -> Callable[[str, object], int]:
    def parse(name: str, value: object) -> int:
        if isinstance(value, bool):
            raise RunError(f"{name}: expected an integer >= {minimum}, got {_describe(value)}")
        if isinstance(value, str):
            try:
                value = int(value.strip())
            except ValueError:
                raise RunError(
                    f"{name}: expected an integer >= {minimum}, got {_describe(value)}"
                ) from None
        if not isinstance(value, int) or value < minimum:
            raise RunError(f"{name}: expected an integer >= {minimum}, got {_describe(value)}")
        return value

    return parse


def _float_parser(
    low: float, high: float, *, open_low: bool = False
) -> Callable[[str, object], float]:
    bracket = "(" if open_low else "["
    expected = f"a number in {bracket}{low:g}, {high:g}]"

    def parse(name: str, value: object) -> float:
        if isinstance(value, bool):
            raise RunError(f"{name}: expected {expected}, got {_describe(value)}")
        if isinstance(value, str):
            try:
                value = float(value.strip())
            except ValueError:
                raise RunError(f"{name}: expected {expected}, got {_describe(value)}") from None
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise RunError(f"{name}: expected {expected}, got {_describe(value)}")
        too_low = value <= low if open_low else value < low
        if too_low or value > high:
            raise RunError(f"{name}: expected {expected}, got {value!r}")
        return float(value)

    return parse


def _parse_seeds(name: str, value: object) -> tuple[int, ...]:
    """Parse a seed count ``N`` (seeds 0..N-1) or an explicit list ``3,7`` / ``[3, 7]``.

    A single explicit seed is written with a trailing comma (``5,``), because a bare ``5``
    is a count.
    """
    expected = "a seed count such as 5, or a comma list of seeds such as 0,7,42"
    if isinstance(value, bool):
        raise RunError(f"{name}: expected {expected}, got {_describe(value)}")
    if isinstance(value, int):
        value = str(value)
    if isinstance(value, list):
        items = value
    elif isinstance(value, str) and "," in value:
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, str):
        count = value.strip()
        if not count.isdigit() or int(count) < 1:
            raise RunError(f"{name}: expected {expected}, got {_describe(value)}")
        return tuple(range(int(count)))
    else:
        raise RunError(f"{name}: expected {expected}, got {_describe(value)}")
    seeds = []
    for item in items:
        if isinstance(item, bool) or not (
            isinstance(item, int) or (isinstance(item, str) and item.isdigit())
        ):
            raise RunError(f"{name}: expected {expected}, got {_describe(value)}")
        seeds.append(int(item))
    if not seeds:
        raise RunError(f"{name}: expected {expected}, got {_describe(value)}")
    if len(set(seeds)) != len(seeds):
        raise RunError(f"{name}: seeds must be distinct, got {_describe(value)}")
    return tuple(seeds)


def _parse_methods(name: str, value: object) -> tuple[str, ...]:
    """Parse a comma list (or TOML list) of embedding methods; return them in table order."""
    expected = "a comma list of " + ", ".join(EMBED_METHODS)
    if isinstance(value, str):
        items = [item.strip() for item in value.split(",") if item.strip()]
    elif isinstance(value, list):
        items = value
    else:
        raise RunError(f"{name}: expected {expected}, got {_describe(value)}")
    unknown = [item for item in items if item not in EMBED_METHODS]
    if unknown or not items:
        raise RunError(f"{name}: expected {expected}, got {_describe(value)}")
    return tuple(method for method in EMBED_METHODS if method in items)


def _parse_experiment(name: str, value: object) -> str:
    if value not in EXPERIMENT_NAMES:
        choices = ", ".join(EXPERIMENT_NAMES)
        raise RunError(f"unknown experiment {_describe(value)}: choose one of {choices}")
    return str(value)


def _parse_device(name: str, value: object) -> str:
    if value not in ("cpu", "cuda"):
        raise RunError(f"{name}: expected 'cpu' or 'cuda', got {_describe(value)}")
    return str(value)


def _parse_path(name: str, value: object) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise RunError(f"{name}: expected a path, got {_describe(value)}")
    return Path(value).expanduser()


def _parse_text(name: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise RunError(f"{name}: expected a non-empty string, got {_describe(value)}")
    return value


def _parse_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise RunError(f"{name}: expected true or false, got {_describe(value)}")
    return value


# 2. The option table.


@dataclass(frozen=True)
class Option:
    """One setting: its flag, parser, default, help text and the experiments that use it."""

    name: str
    parse: Callable[[str, object], Any]
    default: Any
    help: str
    metavar: str | None = None
    is_flag: bool = False
    experiments: tuple[str, ...] = EXPERIMENT_NAMES

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("epochs", _int_parser(1), None, "training epochs per model "
           "(default: 60 for distill and classify, 40 for embed, 300 for regress)", "N"),
    Option("seeds", _parse_seeds, None, "a seed count N (seeds 0..N-1) or a comma list such "
           "as 0,7,42; write one explicit seed as '7,' (default: 5, or 2 with --fast)", "SEEDS"),
    Option("device", _parse_device, "cpu", "'cpu' or 'cuda' (default: cpu)", "DEVICE"),
    Option("out", _parse_path, None,
           "run folder (default: runs/<experiment>-<timestamp>/)", "DIR"),
    Option("data", _parse_path, None, "your own data: an .npz file with arrays x and y, or a "
           ".csv file with a header row; labels are class indices 0..K-1, or real targets for "
           "regress (default: digits, or diabetes for regress)", "FILE"),
    Option("label_column", _parse_text, "label",
           "name of the CSV column holding the labels (default: label)", "NAME"),
    Option("fast", _parse_flag, False, "tiny quick mode: few epochs, 2 seeds", is_flag=True),
    Option("quiet", _parse_flag, False, "no progress bars, warnings only", is_flag=True),
    # The matrices here are at most 64 x 512, too small for intra-op threads to pay off: on a
    # busy 2-core machine, --fast distill took 105 s with 2 threads and 9 s with 1.
    Option("threads", _int_parser(1), 1, "CPU threads for torch (default: 1)", "N"),
    # In trial runs on digits (seeds 0-2, 128-unit student) the distilled student made 7.7 test
    # errors of 360 at T=4 and 10.0 at T=8, against 9.3 for hard labels.
    Option("temperature", _float_parser(0.0, 1000.0, open_low=True), 4.0,
           "distill: softmax temperature T of the soft targets (default: 4)", "T",
           experiments=("distill",)),
    Option("alpha", _float_parser(0.0, 1.0), 0.9, "distill: weight of the soft-target term; "
           "1 - alpha weighs the hard-label cross-entropy (default: 0.9)", "A",
           experiments=("distill",)),
    Option("omit_class", _int_parser(0), 3, "distill: class left out of the students' transfer "
           "set (default: 3)", "K", experiments=("distill",)),
    Option("label_smoothing", _float_parser(0.0, 1.0), 0.1,
           "classify: label smoothing of the third model (default: 0.1)", "EPS",
           experiments=("classify",)),
    Option("embedding_dim", _int_parser(2), 16,
           "embed: embedding dimension; plots show a PCA when above 2 (default: 16)", "D",
           experiments=("embed",)),
    Option("methods", _parse_methods, EMBED_METHODS,
           "embed: the losses to train, a comma list of " + ", ".join(EMBED_METHODS)
           + " (default: all)", "LIST", experiments=("embed",)),
    Option("outlier_fraction", _float_parser(0.0, 0.9), 0.15,
           "regress: fraction of training targets made outliers (default: 0.15)", "F",
           experiments=("regress",)),
    Option("huber_delta", _float_parser(0.0, 100.0, open_low=True), 1.0,
           "regress: Huber threshold, in standard deviations of the target (default: 1)", "D",
           experiments=("regress",)),
)

_BY_NAME = {option.name: option for option in OPTIONS}


def add_options(parser: argparse.ArgumentParser) -> None:
    """Add the experiment argument, ``--config`` and every option to parser.

    Values are read as plain strings and parsed later by ``resolve_config``, so a flag that was
    not given is absent from the namespace and cannot override the config file.
    """
    parser.add_argument(
        "experiment",
        nargs="?",
        default=argparse.SUPPRESS,
        help=f"one of {', '.join(EXPERIMENT_NAMES)} (default: distill)",
    )
    parser.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="FILE",
        help="TOML file with the same settings (keys as the long options, e.g. omit_class); "
        "flags given on the command line override it",
    )
    for option in OPTIONS:
        if option.is_flag:
            parser.add_argument(
                option.flag, dest=option.name, action="store_const", const=True,
                default=argparse.SUPPRESS, help=option.help,
            )
        else:
            parser.add_argument(
                option.flag, dest=option.name, default=argparse.SUPPRESS,
                metavar=option.metavar, help=option.help,
            )


def read_config_file(path: Path) -> dict[str, object]:
    """Read a TOML config file into a dict keyed by option name (dashes become underscores)."""
    try:
        with path.open("rb") as handle:
            table = tomllib.load(handle)
    except FileNotFoundError:
        raise RunError(f"--config: file not found: {path}") from None
    except IsADirectoryError:
        raise RunError(f"--config: expected a TOML file, got the folder {path}") from None
    except tomllib.TOMLDecodeError as error:
        raise RunError(f"--config: invalid TOML in {path}: {error}") from None
    settings: dict[str, object] = {}
    for key, value in table.items():
        name = key.replace("-", "_")
        if name != "experiment" and name not in _BY_NAME:
            known = ", ".join(["experiment", *_BY_NAME])
            raise RunError(f"--config: unknown key {key!r} in {path}; known keys: {known}")
        settings[name] = value
    return settings


def resolve_config(flag_values: Mapping[str, object]) -> tuple[RunConfig, list[str]]:
    """Merge defaults, the ``--config`` file and flag_values into a RunConfig.

    Returns the config and the names of options that were set but do not apply to the chosen
    experiment, so that the caller can warn about them.
    """
    # 1. Collect the raw values: file first, then the flags on top.
    raw: dict[str, object] = {}
    if "config" in flag_values:
        raw.update(read_config_file(_parse_path("--config", flag_values["config"])))
    raw.update({name: value for name, value in flag_values.items() if name != "config"})

    # 2. Parse each value; the names in messages are the flags users typed.
    experiment = _parse_experiment("experiment", raw.get("experiment", "distill"))
    values: dict[str, object] = {"experiment": experiment}
    unused = []
    for option in OPTIONS:
        if option.name in raw:
            values[option.name] = option.parse(option.flag, raw[option.name])
            if experiment not in option.experiments:
                unused.append(option.flag)
        else:
            values[option.name] = option.default

    # 3. Fill in the defaults that depend on the experiment and on --fast.
    fast = bool(values["fast"])
    if values["epochs"] is None:
        values["epochs"] = DEFAULT_EPOCHS[experiment][1 if fast else 0]
    if values["seeds"] is None:
        values["seeds"] = tuple(range(DEFAULT_SEEDS[1 if fast else 0]))
    return RunConfig(**values), unused


def config_to_toml(config: RunConfig) -> str:
    """Write config as TOML that ``--config`` reads back; unset paths are left out."""
    lines = []
    for field in fields(config):
        value = getattr(config, field.name)
        if value is None:
            continue
        if isinstance(value, Path):
            value = str(value)
        if isinstance(value, tuple):
            value = list(value)
        # JSON's strings, numbers, booleans and lists of integers are valid TOML values.
        lines.append(f"{field.name} = {json.dumps(value)}")
    return "\n".join(lines) + "\n"
