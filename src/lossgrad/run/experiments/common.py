"""Helpers shared by the experiments: seeding, accuracy and per-seed metric tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..report import summarize

__all__ = ["accuracy", "leader", "paired_difference", "seed_models", "summarize_runs"]


def seed_models(seed: int) -> None:
    """Seed torch's global generator, which initializes the weights and dropout masks."""
    torch.manual_seed(seed)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the fraction of rows whose arg-max logit is the label."""
    return float((logits.argmax(dim=1) == labels).double().mean())


def summarize_runs(runs: Sequence[Mapping[str, float]]) -> dict[str, dict[str, object]]:
    """Turn one metrics dict per seed into {metric: summarize(values over seeds)}."""
    names = list(runs[0])
    return {name: summarize([float(run[name]) for run in runs]) for name in names}


def count_better(first: Sequence[float], second: Sequence[float]) -> int:
    """Count the seeds where first is strictly greater than second."""
    return int(np.sum(np.asarray(first) > np.asarray(second)))


def paired_difference(first: Sequence[float], second: Sequence[float]) -> tuple[float, float]:
    """Return the mean of ``first − second`` over seeds and its standard error.

    The same seed gives both models the same initial weights and batches, so the per-seed
    differences are paired. The standard error is 0 for fewer than two seeds.
    """
    difference = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    seeds = len(difference)
    error = float(difference.std(ddof=1) / np.sqrt(seeds)) if seeds > 1 else 0.0
    return float(difference.mean()), error


def leader(results: Mapping[str, Mapping[str, Mapping[str, object]]], names: Sequence[str],
           metric: str, *, higher_is_better: bool = True, scale: float = 100.0) -> str:
    """Name the model with the best mean ``metric`` and state whether its lead is beyond noise.

    The lead over the runner-up counts only when the mean of the paired per-seed differences
    exceeds two standard errors, and with at least 3 seeds. Differences are reported times
    ``scale`` (points).
    """
    ranked = sorted(names, key=lambda name: float(results[name][metric]["mean"]),
                    reverse=higher_is_better)
    best = ranked[0]
    if len(ranked) == 1:
        return best
    second = ranked[1]
    ahead, behind = results[best][metric]["values"], results[second][metric]["values"]
    if not higher_is_better:
        ahead, behind = behind, ahead
    gap, error = paired_difference(ahead, behind)
    gap *= scale
    seeds = len(ahead)
    if seeds < 3:
        # Two seeds give a standard error from one degree of freedom, often near 0.
        return (f"{best}, {gap:.2f} points ahead of {second}; {seeds} seed(s) are too few to "
                "tell that from noise")
    two_errors = 2 * error * scale
    if gap > two_errors:
        return (f"{best}, {gap:.2f} points ahead of {second}, beyond two standard errors of "
                f"the paired difference over {seeds} seeds ({two_errors:.2f})")
    return (f"{best} by its mean, but only {gap:.2f} points ahead of {second}, within two "
            f"standard errors over {seeds} seeds ({two_errors:.2f}), so not a clear winner")
