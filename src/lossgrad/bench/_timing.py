"""Timing of one variant in this process: warm-up, then repeated timed runs."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass

import torch

from ._cases import Inputs
from ._variants import Variant

__all__ = ["Timing", "time_variant"]


@dataclass
class Timing:
    """Times of one variant in milliseconds, and what its first run computed.

    Attributes:
        times_ms: one entry per timed run, in run order.
        first_run_s: the first (warm-up) run; for torch.compile it includes
            compiling the forward and backward graphs.
        value: the loss of the warm-up run, ``None`` for the floor.
        grad_norm: the 2-norm of all gradients of the warm-up run.
    """

    times_ms: list[float]
    first_run_s: float
    value: float | None
    grad_norm: float | None

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms)

    def quartiles_ms(self) -> tuple[float, float]:
        """Return the first and third quartiles (the min and max below 4 runs)."""
        if len(self.times_ms) < 4:
            return min(self.times_ms), max(self.times_ms)
        q1, _, q3 = statistics.quantiles(self.times_ms, n=4, method="inclusive")
        return q1, q3

    def summary(self) -> dict[str, object]:
        q1, q3 = self.quartiles_ms()
        return {
            "median_ms": self.median_ms,
            "min_ms": min(self.times_ms),
            "max_ms": max(self.times_ms),
            "q1_ms": q1,
            "q3_ms": q3,
            "times_ms": self.times_ms,
            "first_run_s": self.first_run_s,
            "value": self.value,
            "grad_norm": self.grad_norm,
        }


def _timed(variant: Variant, inputs: Inputs) -> tuple[float, object]:
    """Prepare one run untimed, then time it; return seconds and its result."""
    run = variant.prepare(inputs)
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        result = run()
        elapsed = time.perf_counter() - start
    finally:
        gc.enable()
    return elapsed, result


def time_variant(variant: Variant, inputs: Inputs, repeats: int, warmup: int = 1) -> Timing:
    """Time ``variant`` ``repeats`` times after ``warmup`` untimed runs (at least one)."""
    first_run_s, result = _timed(variant, inputs)
    value = grad_norm = None
    if result is not None:
        loss, grads, _ = result
        value = float(loss.detach().float())
        grad_norm = float(torch.sqrt(sum(g.detach().double().square().sum() for g in grads)))
    del result
    for _ in range(max(warmup, 1) - 1):
        _timed(variant, inputs)
    times_ms = []
    for _ in range(repeats):
        elapsed, result = _timed(variant, inputs)
        del result
        times_ms.append(elapsed * 1e3)
    return Timing(times_ms, first_run_s, value, grad_norm)
