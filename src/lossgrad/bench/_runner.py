"""Running the benchmark: every selected case, its variants, memory and the sweep."""

from __future__ import annotations

import logging
import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._cases import CASES, DEFAULT_SIZES, Case, available_cases
from ._memory import measure_memory
from ._timing import time_variant
from ._variants import COMPILED, EAGER, FLOOR, LOSSGRAD, LOSSGRAD_INPLACE, variants_for

__all__ = ["BenchConfig", "resolve_sizes", "run_benchmark", "SWEEP_FRACTIONS"]

log = logging.getLogger("lossgrad.bench")

# The sweep times each size times these fractions of the default N and V.
SWEEP_FRACTIONS = (0.125, 0.25, 0.5, 1.0)


@dataclass
class BenchConfig:
    """Options of one benchmark run, filled in by the command line or :func:`lossgrad.bench.run`."""

    losses: list[str] | None = None
    sizes: dict[str, dict[str, int]] = field(default_factory=dict)
    dtype: torch.dtype = torch.float32
    device: str = "cpu"
    repeats: int = 5
    out: Path = Path("bench-out")
    memory: bool = True
    compile: bool = True
    sweep: bool = False
    threads: int | None = None
    command: str = ""


def resolve_sizes(overrides: dict[str, dict[str, int]]) -> dict[str, dict[str, int]]:
    """Merge size overrides (``"*"`` for every family) into the defaults."""
    sizes = {family: dict(defaults) for family, defaults in DEFAULT_SIZES.items()}
    for family, values in overrides.items():
        targets = sizes if family == "*" else {family: sizes[family]}
        for keys in targets.values():
            for key, value in values.items():
                if family != "*" or key in keys:
                    keys[key] = value
    return sizes


def select_cases(losses: list[str] | None) -> list[Case]:
    """Return the requested cases, or every available one; raise on unknown names."""
    available = available_cases()
    known = {case.name for case in CASES}
    if losses is None:
        missing = sorted(known - set(available))
        if missing:
            log.info("not in this lossgrad, skipped: %s", ", ".join(missing))
        return list(available.values())
    unknown = [name for name in losses if name not in known]
    if unknown:
        raise ValueError(
            f"--losses: unknown loss {', '.join(unknown)}; expected some of "
            f"{', '.join(case.name for case in CASES)}"
        )
    absent = [name for name in losses if name not in available]
    if absent:
        raise ValueError(f"--losses: lossgrad has no function {', '.join(absent)} yet")
    return [available[name] for name in losses]


def _time_case(case: Case, sizes: dict[str, int], config: BenchConfig, memory: bool) -> dict:
    """Time (and measure) every variant of one case at one size; return its record."""
    generator = torch.Generator().manual_seed(0)
    inputs = case.build(sizes, config.dtype, generator)
    record = {
        "loss": case.name,
        "family": case.family,
        "sizes": dict(sizes),
        "shape": inputs.shape,
        "reference_bytes": inputs.reference_bytes,
        "variants": {},
        "errors": {},
    }
    for variant in variants_for(case, compile=config.compile):
        try:
            timing = time_variant(variant, inputs, config.repeats)
        except Exception as error:  # noqa: BLE001 - one failing variant must not end the run
            log.error("%s %s %s: failed: %s", case.name, inputs.shape, variant.label, error)
            record["errors"][variant.label] = f"{type(error).__name__}: {error}"
            continue
        entry = {"description": variant.description, **timing.summary()}
        if variant.compiled:
            entry["compile_s"] = max(timing.first_run_s - timing.median_ms / 1e3, 0.0)
        record["variants"][variant.label] = entry
        log.info("%s %s %s: median %.3f ms", case.name, inputs.shape, variant.label, timing.median_ms)
        if memory and variant.is_loss:
            try:
                counts = measure_memory(case.name, variant.label, sizes, config.dtype, config.threads)
            except (RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
                log.error("%s %s %s: memory: %s", case.name, inputs.shape, variant.label, error)
                record["errors"][f"{variant.label} memory"] = str(error)
                continue
            entry.update(counts)
            entry["extra_peak_ratio"] = counts["extra_peak_bytes"] / inputs.reference_bytes
    _add_ratios(record)
    return record


def _add_ratios(record: dict) -> None:
    """Add each variant's ratio to the floor, and lossgrad's speed-ups and value check."""
    variants = record["variants"]
    floor = variants.get(FLOOR, {}).get("median_ms")
    reference = variants.get(LOSSGRAD, {})
    for label, entry in variants.items():
        if floor:
            entry["ratio_to_floor"] = entry["median_ms"] / floor
        if entry.get("value") is not None and reference.get("value") is not None:
            scale = max(abs(reference["value"]), 1e-12)
            entry["value_rel_diff"] = abs(entry["value"] - reference["value"]) / scale
        if label in (LOSSGRAD, LOSSGRAD_INPLACE):
            for peer in (EAGER, COMPILED):
                if peer in variants:
                    entry[f"speedup_vs_{peer}"] = variants[peer]["median_ms"] / entry["median_ms"]


# Families that the sweep covers. The linear head's sweep also measures memory, whose
# point is that the extra peak stays flat in N.
SWEPT_FAMILIES = ("softmax", "linear")


def _sweep(cases: list[Case], sizes: dict[str, dict[str, int]], config: BenchConfig) -> list[dict]:
    """Time the softmax-family and linear cases over fractions of N and of V; return the points."""
    points = []
    for case in cases:
        base = sizes[case.family]
        grid = [{**base, "N": max(1, int(base["N"] * f))} for f in SWEEP_FRACTIONS]
        grid += [{**base, "V": max(2, int(base["V"] * f))} for f in SWEEP_FRACTIONS[:-1]]
        memory = config.memory and case.family == "linear"
        for point in grid:
            record = _time_case(case, point, config, memory=memory)
            for label, entry in record["variants"].items():
                points.append(
                    {"loss": case.name, "N": point["N"], "V": point["V"], "variant": label,
                     "median_ms": entry["median_ms"], "q1_ms": entry["q1_ms"], "q3_ms": entry["q3_ms"],
                     "extra_peak_bytes": entry.get("extra_peak_bytes")}
                )
    return points


def run_benchmark(config: BenchConfig) -> dict:
    """Run the benchmark and write JSON, Markdown and (with the sweep) a plot.

    Returns the results, which ``results.json`` in ``config.out`` also holds.
    """
    from ._report import machine_info, write_reports

    if config.device != "cpu":
        raise ValueError(f"--device: expected 'cpu', got {config.device!r}")
    cases = select_cases(config.losses)
    sizes = resolve_sizes(config.sizes)
    if config.threads is not None:
        torch.set_num_threads(config.threads)
    load_before = os.getloadavg()
    results = {
        "machine": machine_info(),
        "command": config.command,
        "dtype": str(config.dtype).removeprefix("torch."),
        "device": config.device,
        "repeats": config.repeats,
        "load_average_before": load_before,
        "cases": [],
        "sweep": [],
    }
    for case in cases:
        log.info("benchmarking %s", case.name)
        results["cases"].append(_time_case(case, sizes[case.family], config, config.memory))
        # Written after each case, so that an interrupted run keeps what it measured.
        write_reports(results, Path(config.out))
    if config.sweep:
        swept = [case for case in cases if case.family in SWEPT_FAMILIES]
        if not swept:
            log.info("--sweep: no softmax-family or linear loss selected, nothing to sweep")
        results["sweep"] = _sweep(swept, sizes, config)
    results["load_average_after"] = os.getloadavg()
    write_reports(results, Path(config.out))
    return results
