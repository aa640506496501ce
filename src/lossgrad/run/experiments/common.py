"""Helpers shared by the experiments: seeding, accuracy and per-seed metric tables."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from ..report import summarize

__all__ = ["accuracy", "seed_models", "summarize_runs"]


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
