"""The training loop shared by the experiments, with per-epoch history and progress bars."""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm import tqdm

from ..distributed import DistributedInfo, current_info, shard_batch, sum_over_ranks, wrap_ddp

__all__ = ["History", "Trainer", "evaluate_logits", "progress_bar", "seed_generator"]

# Mini-batch size of every experiment; small data sets train well with many short steps.
BATCH_SIZE = 64


def seed_generator(seed: int, stream: int) -> torch.Generator:
    """Return a CPU generator for one (seed, stream) pair, so that phases never share draws."""
    return torch.Generator().manual_seed(seed * 1000 + stream)


def progress_bar(total: int, description: str, quiet: bool) -> tqdm:
    """Return a progress bar over epochs, hidden with --quiet or when stderr is not a terminal."""
    return tqdm(
        total=total, desc=description, unit="epoch", leave=False,
        disable=quiet or not sys.stderr.isatty(), file=sys.stderr,
    )


@dataclass
class History:
    """Per-epoch rows of one run: phase, seed, epoch, train_loss and the evaluation metrics."""

    rows: list[dict[str, object]] = field(default_factory=list)

    def add(self, phase: str, seed: int, epoch: int, train_loss: float, **metrics: float) -> None:
        self.rows.append(
            {"phase": phase, "seed": seed, "epoch": epoch, "train_loss": train_loss, **metrics}
        )


@dataclass
class Trainer:
    """Train models with Adam(W) on mini-batches of row indices, recording history.

    ``batch_loss(model, rows)`` returns the scalar loss of the training rows ``rows`` (int64
    indices); ``evaluate(model)`` returns metrics that are recorded after every epoch.

    Under torchrun with more than one process (``info.world_size > 1``) the model is wrapped in
    DistributedDataParallel. Every rank draws the same global batches from the same seed. With
    ``shard=True`` (the default) rank r calls ``batch_loss`` on its contiguous part of each batch
    and multiplies the result by the part's ``loss_scale`` (see
    :func:`lossgrad.distributed.shard_batch`), so that DDP's average of the ranks' gradients is
    the one-process gradient of the batch mean, for any batch split. With ``shard=False``
    ``batch_loss`` receives the whole global batch and must take its part and scale its loss
    itself, as a loss that gathers other ranks' rows does. The evaluation runs on every rank
    with the same parameters, so every rank records the same history.
    """

    epochs: int
    history: History
    progress: tqdm
    device: str = "cpu"
    info: DistributedInfo = field(default_factory=current_info)

    def fit(
        self,
        model: nn.Module,
        num_rows: int,
        batch_loss: Callable[[nn.Module, torch.Tensor], torch.Tensor],
        evaluate: Callable[[nn.Module], dict[str, float]],
        *,
        phase: str,
        seed: int,
        lr: float = 3e-3,
        weight_decay: float = 0.0,
        shard: bool = True,
    ) -> nn.Module:
        """Train model in place for ``self.epochs`` epochs and return it in eval mode."""
        model.to(self.device)
        trained = wrap_ddp(model, self.info)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        # Cosine decay to zero over the run lets every model settle by the last epoch.
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        generator = seed_generator(seed, stream=1)
        for epoch in range(1, self.epochs + 1):
            trained.train()
            order = torch.randperm(num_rows, generator=generator).to(self.device)
            total = 0.0
            for start in range(0, num_rows, BATCH_SIZE):
                rows = order[start : start + BATCH_SIZE]
                if shard:
                    part = shard_batch(len(rows), self.info)
                    loss = batch_loss(trained, rows[part.rows]) * part.loss_scale
                else:
                    loss = batch_loss(trained, rows)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                # The ranks' scaled losses average to the batch mean.
                total += loss.detach().item() * len(rows)
            (total,) = sum_over_ranks(total)
            schedule.step()
            model.eval()
            with torch.no_grad():
                metrics = evaluate(model)
            self.history.add(phase, seed, epoch, total / self.info.world_size / num_rows, **metrics)
            self.progress.update(1)
        model.eval()
        return model


def evaluate_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Return model(x) without gradients, in eval mode."""
    model.eval()
    with torch.no_grad():
        return model(x)
