"""Reports of a benchmark run: JSON, a Markdown table, the targets and the sweep plot."""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ._variants import COMPILED, LOSSGRAD, LOSSGRAD_INPLACE

__all__ = ["Target", "TARGETS", "check_targets", "machine_info", "write_reports"]

MIB = 1024 * 1024


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, object]:
    """Return the CPU model, core count and software versions of this machine."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


@dataclass(frozen=True)
class Target:
    """A performance target of one loss and lossgrad variant.

    Attributes:
        loss: the loss name.
        variant: the lossgrad variant label.
        metric: the key of the variant's entry, such as ``"speedup_vs_eager"``.
        bound: the target value.
        at_least: True for ``metric ≥ bound``, False for ``metric ≤ bound``.
        text: the target as the report states it.
    """

    loss: str
    variant: str
    metric: str
    bound: float
    at_least: bool
    text: str


_SOFTMAX_TARGETS = [
    Target("cross_entropy", variant, "speedup_vs_eager", 5.0, True, "≥ 5× faster than eager")
    for variant in (LOSSGRAD, LOSSGRAD_INPLACE)
] + [
    Target("cross_entropy", variant, f"speedup_vs_{COMPILED}", 2.5, True,
           "≥ 2.5× faster than torch.compile")
    for variant in (LOSSGRAD, LOSSGRAD_INPLACE)
] + [
    Target("cross_entropy", variant, "ratio_to_floor", 1.6, False, "≤ 1.6× the exp floor")
    for variant in (LOSSGRAD, LOSSGRAD_INPLACE)
] + [
    Target("cross_entropy", LOSSGRAD_INPLACE, "extra_peak_ratio", 0.05, False,
           "extra peak ≤ 5% of the logits"),
    Target("cross_entropy", LOSSGRAD, "extra_peak_ratio", 1.0, False,
           "extra peak ≤ 1 logits size"),
]
for _name in ("kd_loss", "js_div"):
    _SOFTMAX_TARGETS += [
        Target(_name, LOSSGRAD, "speedup_vs_eager", 4.0, True, "≥ 4× faster than eager"),
        Target(_name, LOSSGRAD, "extra_peak_ratio", 1.0, False, "extra peak ≤ 1 logits size"),
    ]
TARGETS: tuple[Target, ...] = tuple(_SOFTMAX_TARGETS)

# Every loss: lossgrad at most 10% slower than eager, that is speed-up ≥ 1/1.1.
NOT_SLOWER = 1 / 1.1


def check_targets(results: dict) -> list[dict[str, object]]:
    """Compare the measured figures with :data:`TARGETS` and the no-slower rule."""
    rows = []
    for record in results["cases"]:
        variants = record["variants"]
        targets = [t for t in TARGETS if t.loss == record["loss"]]
        targets += [
            Target(record["loss"], label, "speedup_vs_eager", NOT_SLOWER, True,
                   "not slower than eager by more than 10%")
            for label in (LOSSGRAD, LOSSGRAD_INPLACE)
            if label in variants
        ]
        for target in targets:
            value = variants.get(target.variant, {}).get(target.metric)
            if value is None:
                continue
            met = value >= target.bound if target.at_least else value <= target.bound
            # How far off: the factor by which the measured value must improve.
            if target.at_least:
                factor = target.bound / value if value > 0 else float("inf")
            else:
                factor = value / target.bound if target.bound > 0 else float("inf")
            rows.append({
                "loss": target.loss,
                "variant": target.variant,
                "target": target.text,
                "metric": target.metric,
                "measured": value,
                "met": met,
                "missed_by_factor": None if met else factor,
            })
    return rows


def _format_ms(value: float) -> str:
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _format_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}×"


def _variant_rows(record: dict) -> list[str]:
    rows = []
    for label, entry in record["variants"].items():
        spread = f"{_format_ms(entry['q1_ms'])}–{_format_ms(entry['q3_ms'])}"
        memory = ""
        if "extra_peak_bytes" in entry:
            memory = (f"{entry['extra_peak_bytes'] / MIB:.1f} MiB "
                      f"({entry['extra_peak_ratio']:.2f})")
        compile_s = f"{entry['compile_s']:.1f}" if "compile_s" in entry else ""
        rows.append(
            f"| {record['loss']} | {record['shape']} | {label} | {_format_ms(entry['median_ms'])} "
            f"| {spread} | {_format_ratio(entry.get('ratio_to_floor'))} "
            f"| {_format_ratio(entry.get('speedup_vs_eager'))} "
            f"| {_format_ratio(entry.get(f'speedup_vs_{COMPILED}'))} | {memory} | {compile_s} |"
        )
    return rows


def _header(results: dict) -> list[str]:
    """Return the title, the machine and the legend of the table."""
    machine = results["machine"]
    before = ", ".join(f"{x:.2f}" for x in results["load_average_before"])
    after = ", ".join(f"{x:.2f}" for x in results.get("load_average_after", ()))
    return [
        "# lossgrad bench results",
        "",
        f"- Command: `{results['command']}`",
        f"- Machine: {machine['cpu']}, {machine['cores']} cores "
        f"({machine['torch_threads']} torch threads), {machine['platform']}",
        f"- Software: torch {machine['torch']}, Python {machine['python']}",
        f"- Date: {machine['date_utc']}; dtype {results['dtype']}, device {results['device']}, "
        f"{results['repeats']} timed runs per variant after one warm-up",
        f"- Load average (1, 5, 15 min) before: {before}; after: {after}",
        "",
        "Times are the median of forward + backward in milliseconds, with the interquartile "
        "range (min–max below 4 runs). × floor is the median over the floor's median. "
        "vs eager and vs compile are the peer's median over this variant's (above 1 is "
        "faster). Extra peak is the peak resident memory beyond the inputs and the "
        "gradient, in MiB and as a multiple of the logits size.",
    ]


def _table(results: dict) -> list[str]:
    """Return the table of every variant of every case."""
    lines = [
        "",
        "| loss | size | variant | median ms | IQR ms | × floor | vs eager | vs compile "
        "| extra peak | compile s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for record in results["cases"]:
        lines += _variant_rows(record)
    return lines


def _targets(results: dict) -> list[str]:
    """Return the targets section, each row met or missed by a factor."""
    targets = check_targets(results)
    if not targets:
        return []
    lines = ["", "## Targets", "", "| loss | variant | target | measured | result |",
             "|---|---|---|---|---|"]
    for row in targets:
        if row["met"]:
            verdict = "met"
        else:
            verdict = f"**missed** by a factor {row['missed_by_factor']:.2f}"
        lines.append(f"| {row['loss']} | {row['variant']} | {row['target']} "
                     f"| {row['measured']:.3g} | {verdict} |")
    return lines


def _problems(results: dict) -> list[str]:
    """Return the sections on failed variants and on values that differ from lossgrad."""
    lines = []
    errors = [
        (record["loss"], label, message)
        for record in results["cases"]
        for label, message in record.get("errors", {}).items()
    ]
    if errors:
        lines += ["", "## Failed variants", ""]
        lines += [f"- {loss} {label}: {message}" for loss, label, message in errors]
    mismatched = [
        (record["loss"], label, entry["value_rel_diff"])
        for record in results["cases"]
        for label, entry in record["variants"].items()
        if entry.get("value_rel_diff", 0.0) > 1e-3
    ]
    if mismatched:
        lines += ["", "## Values that differ from lossgrad by more than 0.1%", ""]
        lines += [f"- {loss} {label}: relative difference {diff:.3g}"
                  for loss, label, diff in mismatched]
    return lines


def _sweep(results: dict) -> list[str]:
    """Return the sweep section with its plot, or nothing without a sweep."""
    if not results.get("sweep"):
        return []
    lines = ["", "## Sweep", "", "![sweep](sweep.png)", "",
             "| loss | N | V | variant | median ms | extra peak MiB |", "|---|---|---|---|---|---|"]
    for point in results["sweep"]:
        extra = point.get("extra_peak_bytes")
        memory = "" if extra is None else f"{extra / 2**20:.1f}"
        lines.append(f"| {point['loss']} | {point['N']} | {point['V']} | {point['variant']} "
                     f"| {_format_ms(point['median_ms'])} | {memory} |")
    return lines


def markdown(results: dict) -> str:
    """Return the results as a Markdown page: machine, table, targets, problems, sweep."""
    lines = _header(results) + _table(results) + _targets(results)
    lines += _problems(results) + _sweep(results)
    return "\n".join(lines) + "\n"


def plot_sweep(points: list[dict], path: Path) -> None:
    """Plot median time against N and against V, one line per variant, into a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # One row of plots per loss: time against N and V, and where the sweep measured memory,
    # the extra peak against N and V.
    rows = []
    for loss in sorted({p["loss"] for p in points}):
        ours = [p for p in points if p["loss"] == loss]
        rows.append((loss, ours, "median_ms", "median forward + backward (ms)", "time"))
        if any(p.get("extra_peak_bytes") is not None for p in ours):
            rows.append((loss, ours, "extra_peak_bytes", "extra peak memory (bytes)", "memory"))
    figure, axes = plt.subplots(len(rows), 2, figsize=(11, 4 * len(rows)), squeeze=False)
    for row, (loss, ours, value_key, value_label, title) in enumerate(rows):
        n_max = max(p["N"] for p in ours)
        v_max = max(p["V"] for p in ours)
        for column, (axis_key, fixed_key, fixed) in enumerate((("N", "V", v_max), ("V", "N", n_max))):
            axis = axes[row][column]
            for variant in dict.fromkeys(p["variant"] for p in ours):
                line = sorted(
                    (p for p in ours if p["variant"] == variant and p[fixed_key] == fixed
                     and p.get(value_key) is not None),
                    key=lambda p: p[axis_key],
                )
                if line:
                    axis.plot([p[axis_key] for p in line], [max(p[value_key], 1) for p in line],
                              marker="o", label=variant)
            axis.set_xscale("log")
            axis.set_yscale("log")
            axis.set_xlabel(f"{axis_key} ({fixed_key} = {fixed})")
            axis.set_ylabel(value_label)
            axis.set_title(f"{loss}: {title} against {axis_key}")
            axis.grid(True, which="both", alpha=0.3)
            axis.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_reports(results: dict, out: Path) -> None:
    """Write ``results.json``, ``results.md`` and, with a sweep, ``sweep.png`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    results["targets"] = check_targets(results)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    if results.get("sweep"):
        plot_sweep(results["sweep"], out / "sweep.png")
