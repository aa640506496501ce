"""The experiments of ``lossgrad run``; each module's ``run(config, data, history)`` returns
an ``ExperimentResult``."""

from __future__ import annotations

import importlib
from collections.abc import Callable

from ..config import RunConfig
from ..data import Dataset
from ..report import ExperimentResult
from ..training import History

__all__ = ["load_experiment"]

ExperimentFunction = Callable[[RunConfig, Dataset, History], ExperimentResult]


def load_experiment(name: str) -> ExperimentFunction:
    """Import the experiment module name and return its ``run`` function."""
    module = importlib.import_module(f"{__name__}.{name}")
    return module.run
