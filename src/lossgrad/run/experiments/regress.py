"""L1, L2 and Huber regression on diabetes, with outliers injected into the training targets.

A linear model is trained with each loss twice: on the clean training targets and on targets
where a fraction of rows has been moved far upward. Test targets stay clean, so the rise in
test error from the clean to the corrupted training run measures how much each loss lets the
outliers pull the fit.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

import lossgrad

from ..config import RunConfig
from ..data import Dataset
from ..models import mlp
from ..plots import plot_curves, plot_predictions
from ..report import ExperimentResult, format_mean_std, markdown_table
from ..training import History, Trainer, evaluate_logits, progress_bar, seed_generator
from .common import seed_models, summarize_runs

__all__ = ["run"]

logger = logging.getLogger(__name__)

LEARNING_RATE = 1e-2
# Outlier targets are raised by this many standard deviations of the clean targets, drawn
# uniformly from the range.
OUTLIER_SHIFT = (4.0, 8.0)
# 1.4826 · MAD estimates the standard deviation of normal data and ignores the outliers.
MAD_TO_STD = 1.4826


def _losses(delta: float) -> dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    def huber(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return lossgrad.huber_loss(prediction, target, delta=delta)

    return {
        "L1": lossgrad.l1_loss,
        "L2 (MSE)": lossgrad.mse_loss,
        f"Huber (delta {delta:g})": huber,
    }


def inject_outliers(
    targets: torch.Tensor, fraction: float, generator: torch.Generator
) -> torch.Tensor:
    """Return a copy of targets with round(fraction · N) rows raised by OUTLIER_SHIFT std devs."""
    count = int(round(fraction * len(targets)))
    corrupted = targets.clone()
    if count == 0:
        return corrupted
    rows = torch.randperm(len(targets), generator=generator)[:count].to(targets.device)
    low, high = OUTLIER_SHIFT
    shift = low + (high - low) * torch.rand(count, generator=generator)
    corrupted[rows] += shift.to(targets) * targets.std()
    return corrupted


def _robust_scale(targets: torch.Tensor) -> tuple[float, float]:
    """Return the median and a MAD-based standard deviation, which outliers barely move."""
    center = float(targets.median())
    spread = float((targets - center).abs().median()) * MAD_TO_STD
    if spread == 0:
        spread = float(targets.std()) or 1.0
    return center, spread


def _errors(prediction: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    difference = (prediction - target).double()
    return {"mae": float(difference.abs().mean()), "rmse": float(difference.pow(2).mean().sqrt())}


def run(config: RunConfig, data: Dataset, history: History) -> ExperimentResult:
    """Train a linear model per loss, seed and target set; report test MAE and RMSE."""
    losses = _losses(config.huber_delta)
    per_seed: dict[str, list[dict[str, float]]] = {}
    predictions: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    true_test = data.y_test.cpu().numpy()

    for name, loss in losses.items():
        logger.info("training linear models with the %s loss", name)
        bar = progress_bar(2 * config.epochs * len(config.seeds), name, config.quiet)
        trainer = Trainer(config.epochs, history, bar, config.device)
        runs = []
        for seed in config.seeds:
            outliers = inject_outliers(data.y_train, config.outlier_fraction,
                                       seed_generator(seed, stream=4))
            measured = {}
            for label, targets in (("clean", data.y_train), ("outliers", outliers)):
                # Targets are scaled with robust statistics, so the Huber delta and the
                # learning rate mean the same with and without outliers.
                center, spread = _robust_scale(targets)
                scaled = (targets - center) / spread

                def batch_loss(model, rows, scaled=scaled):
                    return loss(model(data.x_train[rows]).squeeze(1), scaled[rows])

                def evaluate(model, center=center, spread=spread):
                    prediction = model(data.x_val).squeeze(1) * spread + center
                    return {"val_mae": _errors(prediction, data.y_val)["mae"]}

                seed_models(seed)
                model = trainer.fit(mlp((data.num_features, 1)), len(data.y_train), batch_loss,
                                    evaluate, phase=f"{name}, {label}", seed=seed,
                                    lr=LEARNING_RATE)
                prediction = evaluate_logits(model, data.x_test).squeeze(1) * spread + center
                errors = _errors(prediction, data.y_test)
                measured[f"{label}_mae"] = errors["mae"]
                measured[f"{label}_rmse"] = errors["rmse"]
                if label == "outliers" and seed == config.seeds[0]:
                    predictions[f"{name}, trained with outliers"] = (
                        true_test, prediction.cpu().numpy()
                    )
            measured["mae_increase"] = measured["outliers_mae"] - measured["clean_mae"]
            runs.append(measured)
        per_seed[name] = runs
        bar.close()

    results = {name: summarize_runs(runs) for name, runs in per_seed.items()}
    most_robust = min(results, key=lambda name: results[name]["mae_increase"]["mean"])
    lowest_mae = min(results, key=lambda name: results[name]["outliers_mae"]["mean"])
    metrics = {
        "experiment": "regress",
        "data": data.name,
        "seeds": list(config.seeds),
        "outlier_fraction": config.outlier_fraction,
        "test_rows": len(data.y_test),
        "results": results,
        "most_robust": most_robust,
        "lowest_test_mae_with_outliers": lowest_mae,
    }
    summary = _summary(config, data, results, most_robust, lowest_mae)
    figures = {
        "curves": plot_curves(history.rows, "val_mae", "validation MAE"),
        "predictions": plot_predictions(predictions),
    }
    return ExperimentResult(metrics, history, summary, figures)


def _summary(config, data, results, most_robust, lowest_mae) -> str:
    rows = [
        [name, format_mean_std(stats["clean_mae"], digits=2),
         format_mean_std(stats["outliers_mae"], digits=2),
         format_mean_std(stats["mae_increase"], digits=2),
         format_mean_std(stats["clean_rmse"], digits=2),
         format_mean_std(stats["outliers_rmse"], digits=2)]
        for name, stats in results.items()
    ]
    table = markdown_table(
        ["loss", "test MAE, clean training", "test MAE, with outliers", "MAE increase",
         "test RMSE, clean training", "test RMSE, with outliers"],
        rows,
    )
    seeds = ", ".join(map(str, config.seeds))
    increase = results[most_robust]["mae_increase"]["mean"]
    worst = max(results, key=lambda name: results[name]["mae_increase"]["mean"])
    if lowest_mae == most_robust:
        also = "and it also had the lowest test MAE when trained with outliers."
    else:
        also = f"while {lowest_mae} had the lowest test MAE when trained with outliers."
    return "\n".join([
        f"# Regression losses on {data.name} with outliers",
        "",
        f"Mean ± standard deviation over seeds {seeds}; a linear model; {config.epochs} epochs; "
        f"{100 * config.outlier_fraction:g}% of the {len(data.y_train)} training targets raised "
        f"by {OUTLIER_SHIFT[0]:g} to {OUTLIER_SHIFT[1]:g} standard deviations; errors on "
        f"{len(data.y_test)} clean test targets, in the targets' units.",
        "",
        table,
        "",
        "## Result",
        "",
        f"A robust loss keeps its test error when some training targets are wrong. The outliers "
        f"changed test MAE least with {most_robust} ({_signed(increase)}) and most with "
        f"{worst} ({_signed(results[worst]['mae_increase']['mean'])}), so {most_robust} was "
        f"the most robust here, {also}",
        "",
    ])


def _signed(change: float) -> str:
    """Format an MAE change with its sign, without a negative zero: "+3.20", "-0.07", "0.00"."""
    text = f"{change:+.2f}"
    return "0.00" if float(text) == 0 else text
