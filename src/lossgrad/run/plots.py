"""Figures of ``lossgrad run``, built as matplotlib ``Figure`` objects without pyplot state."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

__all__ = [
    "plot_confusion_matrices",
    "plot_curves",
    "plot_embeddings",
    "plot_predictions",
    "plot_reliability",
]


def plot_curves(rows: Sequence[Mapping[str, object]], metric: str, metric_label: str) -> Figure:
    """Plot training loss and one validation metric per epoch, averaged over seeds, per phase."""
    figure = Figure(figsize=(11, 4), layout="constrained")
    loss_axes, metric_axes = figure.subplots(1, 2)
    phases = list(dict.fromkeys(str(row["phase"]) for row in rows))
    for phase in phases:
        phase_rows = [row for row in rows if row["phase"] == phase]
        epochs = sorted({int(row["epoch"]) for row in phase_rows})
        for axes, key in ((loss_axes, "train_loss"), (metric_axes, metric)):
            means = [
                np.mean([float(row[key]) for row in phase_rows if row["epoch"] == epoch])
                for epoch in epochs
            ]
            axes.plot(epochs, means, label=phase)
    loss_axes.set(xlabel="epoch", ylabel="training loss (mean over seeds)", yscale="log")
    metric_axes.set(xlabel="epoch", ylabel=f"{metric_label} (mean over seeds)")
    metric_axes.legend(fontsize="small")
    return figure


def plot_confusion_matrices(
    matrices: Mapping[str, np.ndarray], highlight: int | None = None
) -> Figure:
    """Draw confusion matrices (rows: true class, columns: predicted) side by side.

    The row and column of class highlight, when given, are outlined.
    """
    figure = Figure(figsize=(4.2 * len(matrices), 4.4), layout="constrained")
    axes_list = np.atleast_1d(figure.subplots(1, len(matrices)))
    for axes, (title, matrix) in zip(axes_list, matrices.items()):
        num_classes = matrix.shape[0]
        axes.imshow(matrix, cmap="Blues")
        for true_class in range(num_classes):
            for predicted in range(num_classes):
                count = int(matrix[true_class, predicted])
                if count:
                    color = "white" if count > matrix.max() / 2 else "black"
                    axes.text(predicted, true_class, str(count), ha="center", va="center",
                              fontsize=7, color=color)
        if highlight is not None:
            for edge in (highlight - 0.5, highlight + 0.5):
                axes.axhline(edge, color="crimson", linewidth=1)
                axes.axvline(edge, color="crimson", linewidth=1)
        axes.set(title=title, xlabel="predicted class", ylabel="true class",
                 xticks=range(num_classes), yticks=range(num_classes))
    return figure


def plot_reliability(curves: Mapping[str, tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Figure:
    """Draw reliability diagrams: accuracy against mean confidence per confidence bin.

    Each entry of curves is (mean confidence, accuracy, row count) per bin.
    """
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.subplots()
    axes.plot([0, 1], [0, 1], color="gray", linestyle="--", label="perfect calibration")
    for name, (confidence, accuracy, counts) in curves.items():
        filled = counts > 0
        axes.plot(confidence[filled], accuracy[filled], marker="o", label=name)
    axes.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1.02),
             title="Reliability on test rows (all seeds)")
    axes.legend(fontsize="small")
    return figure


def plot_embeddings(embeddings: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Scatter 2-D points of each method, coloured by class; entries are (points N x 2, labels)."""
    columns = min(3, len(embeddings))
    rows = -(-len(embeddings) // columns)
    figure = Figure(figsize=(4.2 * columns, 4 * rows), layout="constrained")
    axes_list = np.atleast_1d(figure.subplots(rows, columns)).ravel()
    scatter = None
    for axes, (title, (points, labels)) in zip(axes_list, embeddings.items()):
        scatter = axes.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=6,
                               vmin=-0.5, vmax=9.5 if labels.max() < 10 else labels.max() + 0.5)
        axes.set(title=title, xticks=[], yticks=[])
    for axes in axes_list[len(embeddings):]:
        axes.set_visible(False)
    if scatter is not None:
        figure.colorbar(scatter, ax=list(axes_list), label="class", shrink=0.6)
    return figure


def plot_predictions(predictions: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Scatter predicted against true test targets per method; entries are (true, predicted)."""
    figure = Figure(figsize=(4.2 * len(predictions), 4.2), layout="constrained")
    axes_list = np.atleast_1d(figure.subplots(1, len(predictions)))
    for axes, (title, (true, predicted)) in zip(axes_list, predictions.items()):
        low = min(true.min(), predicted.min())
        high = max(true.max(), predicted.max())
        axes.plot([low, high], [low, high], color="gray", linestyle="--")
        axes.scatter(true, predicted, s=8)
        axes.set(title=title, xlabel="true target", ylabel="predicted target")
    return figure
