"""Run folders of ``lossgrad run``: config, metrics, history, plots and the summary table."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .config import RunConfig, RunError, config_to_toml
from .training import History

__all__ = [
    "ExperimentResult",
    "format_mean_std",
    "make_run_folder",
    "markdown_table",
    "summarize",
    "write_run",
]


@dataclass
class ExperimentResult:
    """The output of an experiment: metrics for metrics.json, history, summary text and figures.

    ``summary`` is Markdown: the table and the verdict in words. ``figures`` maps a PNG file
    name without extension to its figure.
    """

    metrics: dict[str, object]
    history: History
    summary: str
    figures: dict[str, Figure] = field(default_factory=dict)


def summarize(values: Sequence[float]) -> dict[str, object]:
    """Return the mean, the sample standard deviation (0 for one seed) and the values."""
    array = np.asarray(values, dtype=np.float64)
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return {"mean": float(array.mean()), "std": std, "values": [float(v) for v in array]}


def format_mean_std(stats: dict[str, object], scale: float = 1.0, digits: int = 1) -> str:
    """Format summarize()'s output as 'mean ± std', both multiplied by scale."""
    mean = float(stats["mean"]) * scale
    std = float(stats["std"]) * scale
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Return a Markdown table with padded columns, readable as plain text too."""
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    separator = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), separator, *(line(row) for row in rows)])


def make_run_folder(config: RunConfig) -> Path:
    """Create and return the run folder: --out, or runs/<experiment>-<timestamp>[-n]/."""
    if config.out is not None:
        folder = config.out
        if folder.exists() and not folder.is_dir():
            raise RunError(f"--out: expected a folder, got the file {folder}")
    else:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        folder = Path("runs") / f"{config.experiment}-{stamp}"
        suffix = 2
        while folder.exists():
            folder = Path("runs") / f"{config.experiment}-{stamp}-{suffix}"
            suffix += 1
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"--out: cannot create {folder}: {error.strerror}") from None
    return folder


def _json_ready(value: object) -> object:
    """Replace NaN and infinities, which JSON lacks, with None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(item) for item in value]
    return value


def write_run(folder: Path, config: RunConfig, result: ExperimentResult) -> list[Path]:
    """Write config.toml, metrics.json, history.csv, summary.md and the PNGs; return the paths."""
    written = []

    path = folder / "config.toml"
    path.write_text(config_to_toml(config))
    written.append(path)

    path = folder / "metrics.json"
    path.write_text(json.dumps(_json_ready(result.metrics), indent=2) + "\n")
    written.append(path)

    path = folder / "history.csv"
    columns = list(dict.fromkeys(key for row in result.history.rows for key in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(result.history.rows)
    written.append(path)

    path = folder / "summary.md"
    path.write_text(result.summary)
    written.append(path)

    for name, figure in result.figures.items():
        path = folder / f"{name}.png"
        figure.savefig(path, dpi=110)
        written.append(path)
    return written
