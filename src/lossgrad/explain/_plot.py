"""``--plot``: the loss and its gradient against one input, optionally with a second loss."""

from __future__ import annotations

from pathlib import Path

import torch

from ._table import Case, Explainer
from ._values import UsageError

__all__ = ["plot", "sweep_curve"]

POINTS = 241


def sweep_curve(explainer: Explainer, case: Case) -> tuple[list[float], list[float], list[float]]:
    """Return the swept values t, the loss at each t and dℓ/dt from lossgrad's backward.

    dℓ/dt is autograd's chain rule through the sweep's placement of t, which
    ends in lossgrad's closed-form backward.
    """
    sweep = explainer.sweep
    low, high = sweep.bounds(case)
    points, losses, slopes = [], [], []
    for value in torch.linspace(low, high, POINTS, dtype=torch.float64):
        t = value.clone().requires_grad_(True)
        loss = explainer.call(sweep.place(case, t))
        slope = torch.autograd.grad(loss, t, allow_unused=True)[0] if loss.requires_grad else None
        points.append(float(value))
        losses.append(float(loss.detach()))
        slopes.append(0.0 if slope is None else float(slope))
    return points, losses, slopes


def plot(path: Path, curves: list[tuple[Explainer, Case]]) -> None:
    """Draw each (explainer, case) as a loss panel and a gradient panel and save a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_kinds = {explainer.sweep.axis for explainer, _ in curves}
    if len(axes_kinds) > 1:
        described = " and ".join(f"{e.name} against the {e.sweep.axis}" for e, _ in curves)
        raise UsageError(f"--plot: cannot overlay {described}; compare losses of the same kind")

    figure, (loss_axes, gradient_axes) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    for explainer, case in curves:
        points, losses, slopes = sweep_curve(explainer, case)
        (line,) = loss_axes.plot(points, losses, label=explainer.name)
        gradient_axes.plot(points, slopes, label=explainer.name)
        if explainer.sweep.measure is not None:
            # A dotted line marks where the case itself sits on the curve.
            now = explainer.sweep.measure(case)
            for axes in (loss_axes, gradient_axes):
                axes.axvline(now, color=line.get_color(), linestyle=":", linewidth=1)
    label = curves[0][0].sweep.label
    loss_axes.set(xlabel=label, ylabel="loss ℓ", title="loss")
    gradient_axes.set(
        xlabel=label,
        ylabel=f"dℓ/d({curves[0][0].sweep.axis})",
        title="gradient (lossgrad backward)",
    )
    for axes in (loss_axes, gradient_axes):
        axes.axhline(0.0, color="grey", linewidth=0.5)
        axes.grid(alpha=0.3)
        axes.legend()
    try:
        figure.savefig(path, format="png", dpi=100)
    except OSError as error:
        raise UsageError(f"--plot: cannot write {path}: {error.strerror or error}") from error
    finally:
        plt.close(figure)
