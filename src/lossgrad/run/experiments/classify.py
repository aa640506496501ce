"""Softmax cross-entropy against one-vs-rest sigmoid BCE and label smoothing, on digits.

All three train the same perceptron; they differ only in the loss. Calibration is measured by
the expected calibration error (ECE) over 15 equal-width confidence bins:
ECE = Σ_b (n_b / N) · |accuracy_b − mean confidence_b|.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import lossgrad

from ..config import RunConfig
from ..data import Dataset
from ..models import mlp
from ..plots import plot_curves, plot_reliability
from ..report import ExperimentResult, format_mean_std, markdown_table
from ..training import History, Trainer, evaluate_logits, progress_bar
from .common import accuracy, leader, seed_models, summarize_runs

__all__ = ["run", "expected_calibration_error"]

logger = logging.getLogger(__name__)

HIDDEN = (128,)
ECE_BINS = 15


@dataclass(frozen=True)
class Method:
    """A training loss and the class probabilities its model predicts."""

    name: str
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    probabilities: Callable[[torch.Tensor], torch.Tensor]


def _sigmoid_probabilities(logits: torch.Tensor) -> torch.Tensor:
    # One-vs-rest sigmoids need not sum to 1; normalizing them gives a distribution over classes
    # whose arg-max is the same.
    scores = torch.sigmoid(logits)
    return scores / scores.sum(dim=1, keepdim=True).clamp_min(torch.finfo(scores.dtype).tiny)


def _softmax_probabilities(logits: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits, dim=1)


def _methods(num_classes: int, label_smoothing: float) -> list[Method]:
    def one_vs_rest(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        targets = torch.nn.functional.one_hot(labels, num_classes).to(logits.dtype)
        return lossgrad.binary_cross_entropy_with_logits(logits, targets)

    def smoothed(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return lossgrad.cross_entropy(logits, labels, label_smoothing=label_smoothing)

    return [
        Method("softmax cross-entropy", lossgrad.cross_entropy, _softmax_probabilities),
        Method("sigmoid BCE, one-vs-rest", one_vs_rest, _sigmoid_probabilities),
        Method(
            f"cross-entropy, label smoothing {label_smoothing:g}", smoothed,
            _softmax_probabilities,
        ),
    ]


def calibration_bins(
    probabilities: torch.Tensor, labels: torch.Tensor, bins: int = ECE_BINS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (mean confidence, accuracy, row count) per equal-width confidence bin."""
    confidence, predicted = probabilities.max(dim=1)
    confidence = confidence.double().cpu().numpy()
    correct = (predicted == labels).double().cpu().numpy()
    # Bin b contains confidences in (b/bins, (b+1)/bins]; confidence 0 joins the first bin.
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    counts = np.bincount(index, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore"):
        mean_confidence = np.bincount(index, confidence, minlength=bins) / counts
        bin_accuracy = np.bincount(index, correct, minlength=bins) / counts
    return mean_confidence, bin_accuracy, counts


def expected_calibration_error(probabilities: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the ECE over ``ECE_BINS`` equal-width confidence bins."""
    mean_confidence, bin_accuracy, counts = calibration_bins(probabilities, labels)
    filled = counts > 0
    gaps = np.abs(bin_accuracy[filled] - mean_confidence[filled])
    return float(np.sum(counts[filled] / counts.sum() * gaps))


def run(config: RunConfig, data: Dataset, history: History) -> ExperimentResult:
    """Train one model per loss and seed; report test accuracy and ECE."""
    num_classes = int(data.num_classes)
    sizes = (data.num_features, *HIDDEN, num_classes)
    methods = _methods(num_classes, config.label_smoothing)

    def evaluate(model):
        return {"val_accuracy": accuracy(model(data.x_val), data.y_val)}

    per_seed: dict[str, list[dict[str, float]]] = {}
    pooled: dict[str, list[torch.Tensor]] = {}
    for method in methods:
        logger.info("training with %s", method.name)
        bar = progress_bar(config.epochs * len(config.seeds), method.name, config.quiet)
        trainer = Trainer(config.epochs, history, bar, config.device)
        per_seed[method.name], pooled[method.name] = [], []
        for seed in config.seeds:
            seed_models(seed)

            def batch_loss(model, rows, method=method):
                return method.loss(model(data.x_train[rows]), data.y_train[rows])

            model = trainer.fit(mlp(sizes), len(data.y_train), batch_loss, evaluate,
                                phase=method.name, seed=seed)
            probabilities = method.probabilities(evaluate_logits(model, data.x_test))
            per_seed[method.name].append({
                "test_accuracy": accuracy(probabilities, data.y_test),
                "ece": expected_calibration_error(probabilities, data.y_test),
                "mean_confidence": float(probabilities.max(dim=1).values.double().mean()),
            })
            pooled[method.name].append(probabilities)
        bar.close()

    results = {name: summarize_runs(runs) for name, runs in per_seed.items()}
    labels = data.y_test.repeat(len(config.seeds))
    curves = {name: calibration_bins(torch.cat(probs), labels) for name, probs in pooled.items()}
    metrics = {
        "experiment": "classify",
        "data": data.name,
        "seeds": list(config.seeds),
        "test_rows": len(data.y_test),
        "ece_bins": ECE_BINS,
        "results": results,
    }
    summary = _summary(config, data, results)
    figures = {
        "curves": plot_curves(history.rows, "val_accuracy", "validation accuracy"),
        "reliability": plot_reliability(curves),
    }
    return ExperimentResult(metrics, history, summary, figures)


def _summary(config: RunConfig, data: Dataset, results: dict) -> str:
    rows = [
        [name, format_mean_std(stats["test_accuracy"], scale=100, digits=2),
         format_mean_std(stats["ece"], scale=100, digits=2),
         format_mean_std(stats["mean_confidence"], scale=100, digits=1)]
        for name, stats in results.items()
    ]
    table = markdown_table(
        ["loss", "test accuracy %", f"ECE % ({ECE_BINS} bins)", "mean confidence %"], rows
    )
    best_accuracy = leader(results, list(results), "test_accuracy")
    best_ece = leader(results, list(results), "ece", higher_is_better=False)
    gaps = []
    for name, stats in results.items():
        gap = 100 * (stats["mean_confidence"]["mean"] - stats["test_accuracy"]["mean"])
        side = "over" if gap > 0 else "under"
        gaps.append(f"{name} {side}-confident by {abs(gap):.1f} points")
    seeds = ", ".join(map(str, config.seeds))
    return "\n".join([
        f"# Classification losses on {data.name}",
        "",
        f"Mean ± standard deviation over seeds {seeds}; {config.epochs} epochs; "
        f"{len(data.y_test)} test rows. The sigmoid model's confidence is its largest sigmoid "
        "output divided by the sum of all of them.",
        "",
        table,
        "",
        "## Result",
        "",
        f"Highest mean test accuracy: {best_accuracy}.",
        "",
        f"Lowest mean ECE (best calibrated): {best_ece}.",
        "",
        f"Mean confidence minus accuracy: {'; '.join(gaps)}.",
        "",
    ])
