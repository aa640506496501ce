"""Metric learning on digits with lossgrad's embedding losses.

Every method trains the same perceptron to map rows to D-dimensional embeddings, from pairs or
triplets sampled with the labels: for each anchor row, a positive row of the same class and a
negative row of another class. Embeddings of held-out test rows are scored by 5-NN accuracy
(neighbours among the training embeddings) and Recall@1 (the nearest other test row has the
same class), both with the distance the loss trains.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.neighbors import KNeighborsClassifier

import lossgrad
from lossgrad import distributed
from lossgrad.distributed import shard_batch

from ..config import RunConfig
from ..data import Dataset
from ..models import mlp
from ..plots import plot_curves, plot_embeddings
from ..report import ExperimentResult, format_mean_std, markdown_table
from ..training import History, Trainer, evaluate_logits, progress_bar, seed_generator
from .common import leader, seed_models, summarize_runs

__all__ = ["run"]

logger = logging.getLogger(__name__)

HIDDEN = (128,)
NEIGHBOURS = 5
MARGIN = 1.0
INFO_NCE_TEMPERATURE = 0.1


class PairSampler:
    """Draw, for anchor rows, a positive row of the same class and a negative of another class."""

    def __init__(self, labels: torch.Tensor, num_classes: int, generator: torch.Generator):
        labels = labels.cpu()
        self.labels = labels
        self.num_classes = num_classes
        self.generator = generator
        # Rows sorted by class; class c occupies sorted_rows[start[c] : start[c] + count[c]].
        self.sorted_rows = torch.argsort(labels, stable=True)
        self.count = torch.bincount(labels, minlength=num_classes)
        self.start = torch.cumsum(self.count, 0) - self.count
        # rank[row] is the row's position within its class.
        self.rank = torch.empty_like(labels)
        sorted_labels = labels[self.sorted_rows]
        self.rank[self.sorted_rows] = torch.arange(len(labels)) - self.start[sorted_labels]

    def positives(self, anchors: torch.Tensor) -> torch.Tensor:
        """Return one row per anchor of the same class, never the anchor itself (when possible)."""
        anchors = anchors.cpu()
        classes = self.labels[anchors]
        count = self.count[classes]
        # An offset of 1..count-1 from the anchor's own position never lands on the anchor.
        draw = torch.randint(0, 1 << 30, anchors.shape, generator=self.generator)
        offset = 1 + draw % (count - 1).clamp_min(1)
        position = (self.rank[anchors] + offset) % count
        return self.sorted_rows[self.start[classes] + position]

    def negatives(self, anchors: torch.Tensor) -> torch.Tensor:
        """Return one row per anchor from a uniformly drawn other class."""
        anchors = anchors.cpu()
        offset = torch.randint(1, self.num_classes, anchors.shape, generator=self.generator)
        classes = (self.labels[anchors] + offset) % self.num_classes
        # Classes without training rows are skipped by moving to the next one.
        for _ in range(self.num_classes):
            empty = self.count[classes] == 0
            if not empty.any():
                break
            classes[empty] = (classes[empty] + 1) % self.num_classes
        draw = torch.rand(anchors.shape, generator=self.generator)
        position = (draw * self.count[classes]).long().clamp_max(self.count[classes] - 1)
        return self.sorted_rows[self.start[classes] + position]


@dataclass(frozen=True)
class Method:
    """An embedding loss: its --methods key, its name, the batch loss and the distance it trains."""

    key: str
    name: str
    batch_loss: Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, slice],
                         torch.Tensor]
    metric: str  # "euclidean" or "cosine"


# Each batch loss takes the embeddings of this process's anchors, positives and negatives, the
# labels of the whole global batch and this process's rows of it (all of them in one process).
# The pair and triplet losses are means over the local rows; info_nce needs the whole batch.


def _contrastive(anchor, positive, negative, labels, rows):
    x2 = torch.cat([positive, negative])
    target = torch.cat([torch.ones(len(anchor)), torch.zeros(len(anchor))]).to(anchor)
    return lossgrad.contrastive_loss(torch.cat([anchor, anchor]), x2, target, neg_margin=MARGIN)


def _triplet(anchor, positive, negative, labels, rows):
    return lossgrad.triplet_margin_loss(anchor, positive, negative, margin=MARGIN)


def _cosine_embedding(anchor, positive, negative, labels, rows):
    x2 = torch.cat([positive, negative])
    target = torch.cat([torch.ones(len(anchor)), -torch.ones(len(anchor))]).to(anchor)
    return lossgrad.cosine_embedding_loss(torch.cat([anchor, anchor]), x2, target)


def _cosine_similarity(anchor, positive, negative, labels, rows):
    # Regress the cosine of each pair onto a target score: 1 for positives, 0 for negatives.
    x2 = torch.cat([positive, negative])
    score = torch.cat([torch.ones(len(anchor)), torch.zeros(len(anchor))]).to(anchor)
    return lossgrad.cosine_similarity_loss(torch.cat([anchor, anchor]), x2, score)


def _negative_pair(anchor, positive, negative, labels, rows):
    # Pull positives by their squared distance; push negatives to distance MARGIN or beyond.
    pull = lossgrad.mse_loss(anchor, positive, reduction="sum") / max(len(anchor), 1)
    push = lossgrad.negative_pair_loss(anchor, negative, margin=MARGIN)
    return pull + push


def _info_nce(anchor, positive, negative, labels, rows):
    # Query i's negatives are the other keys of its group. Grouping the global batch's anchors by
    # how many earlier anchors share their class gives groups of distinct classes, so no negative
    # is of the same class as its query. Under DDP every rank passes its members of each group
    # and gather=True makes the keys of all ranks the negatives, in global order. Every rank
    # must then call info_nce for the same groups, also with no members of its own.
    info = distributed.current_info()
    same_class = labels[:, None] == labels[None, :]
    group = torch.tril(same_class, diagonal=-1).sum(dim=1)
    local_group = group[rows]
    total = anchor.new_zeros(())
    for index in torch.unique(group).tolist():
        if int((group == index).sum()) > 1:
            members = torch.nonzero(local_group == index).flatten()
            total = total + lossgrad.info_nce(
                anchor[members], positive[members], temperature=INFO_NCE_TEMPERATURE,
                reduction="sum", gather=info.is_distributed,
            )
    # Each rank's sum times W / N: DDP's average over ranks is then the mean over the global
    # batch, as in one process (docs/distributed.md).
    return total * info.world_size / len(labels)


METHODS = (
    Method("contrastive", "contrastive", _contrastive, "euclidean"),
    Method("triplet", "triplet", _triplet, "euclidean"),
    Method("cosine_embedding", "cosine embedding", _cosine_embedding, "cosine"),
    Method("cosine_similarity", "cosine similarity", _cosine_similarity, "cosine"),
    Method("negative_pair", "squared pull + negative pair", _negative_pair, "euclidean"),
    Method("info_nce", "info_nce", _info_nce, "cosine"),
)
# The methods whose loss uses the whole global batch and scales itself for DDP.
_GATHERING = {"info_nce"}


def _prepare(embeddings: torch.Tensor, metric: str) -> torch.Tensor:
    """Map embeddings so that euclidean distance ranks neighbours as metric does."""
    if metric == "cosine":
        return torch.nn.functional.normalize(embeddings, dim=1)
    return embeddings


def recall_at_1(embeddings: torch.Tensor, labels: torch.Tensor) -> float:
    """Return the fraction of rows whose nearest other row has the same label."""
    distances = torch.cdist(embeddings, embeddings)
    distances.fill_diagonal_(float("inf"))
    nearest = distances.argmin(dim=1)
    return float((labels[nearest] == labels).double().mean())


def knn_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                 test_labels: torch.Tensor) -> float:
    """Return the 5-NN accuracy of the test rows among the training rows (euclidean)."""
    classifier = KNeighborsClassifier(n_neighbors=NEIGHBOURS)
    classifier.fit(train.cpu().numpy(), train_labels.cpu().numpy())
    predicted = classifier.predict(test.cpu().numpy())
    return float(np.mean(predicted == test_labels.cpu().numpy()))


def _scores(train: torch.Tensor, test: torch.Tensor, data: Dataset) -> dict[str, float]:
    return {
        "knn_accuracy": knn_accuracy(train, data.y_train, test, data.y_test),
        "recall_at_1": recall_at_1(test, data.y_test),
    }


def _to_plane(points: torch.Tensor) -> np.ndarray:
    array = points.cpu().double().numpy()
    if array.shape[1] == 2:
        return array
    return PCA(n_components=2, random_state=0).fit_transform(array)


def run(config: RunConfig, data: Dataset, history: History) -> ExperimentResult:
    """Train one embedding per loss and seed; report 5-NN accuracy and Recall@1 on test rows."""
    num_classes = int(data.num_classes)
    sizes = (data.num_features, *HIDDEN, config.embedding_dim)
    per_seed: dict[str, list[dict[str, float]]] = {}
    planes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    test_labels = data.y_test.cpu().numpy()

    # 1. The baseline: the input features themselves.
    per_seed["input features (no training)"] = [_scores(data.x_train, data.x_test, data)]
    planes["input features"] = (_to_plane(data.x_test), test_labels)

    # 2. One model per loss and seed.
    methods = [method for method in METHODS if method.key in config.methods]
    for method in methods:
        logger.info("training embeddings with %s", method.name)
        bar = progress_bar(config.epochs * len(config.seeds), method.name, config.quiet)
        trainer = Trainer(config.epochs, history, bar, config.device)
        per_seed[method.name] = []
        for seed in config.seeds:
            seed_models(seed)
            sampler = PairSampler(data.y_train, num_classes, seed_generator(seed, stream=3))

            def batch_loss(model, anchors, method=method, sampler=sampler):
                # Every process samples the whole global batch, so the draws are those of one
                # process, then embeds its own part of it.
                positives = sampler.positives(anchors).to(anchors.device)
                negatives = sampler.negatives(anchors).to(anchors.device)
                part = shard_batch(len(anchors), trainer.info)
                local = [rows[part.rows] for rows in (anchors, positives, negatives)]
                embedded = model(data.x_train[torch.cat(local)])
                embedded = embedded.view(3, len(local[0]), -1).unbind(0)
                loss = method.batch_loss(*embedded, data.y_train[anchors], part.rows)
                return loss if method.key in _GATHERING else loss * part.loss_scale

            def evaluate(model, method=method):
                val = _prepare(model(data.x_val), method.metric)
                return {"val_recall_at_1": recall_at_1(val, data.y_val)}

            model = trainer.fit(mlp(sizes), len(data.y_train), batch_loss, evaluate,
                                phase=method.name, seed=seed, shard=False)
            train = _prepare(evaluate_logits(model, data.x_train), method.metric)
            test = _prepare(evaluate_logits(model, data.x_test), method.metric)
            per_seed[method.name].append(_scores(train, test, data))
            if seed == config.seeds[0]:
                planes[method.name] = (_to_plane(test), test_labels)
        bar.close()

    results = {name: summarize_runs(runs) for name, runs in per_seed.items()}
    metrics = {
        "experiment": "embed",
        "data": data.name,
        "seeds": list(config.seeds),
        "embedding_dim": config.embedding_dim,
        "methods": list(config.methods),
        "test_rows": len(data.y_test),
        "results": results,
    }
    summary = _summary(config, data, results)
    figures = {
        "curves": plot_curves(history.rows, "val_recall_at_1", "validation Recall@1"),
        "embedding": plot_embeddings(planes),
    }
    return ExperimentResult(metrics, history, summary, figures)


def _summary(config: RunConfig, data: Dataset, results: dict) -> str:
    rows = [
        [name, format_mean_std(stats["knn_accuracy"], scale=100, digits=2),
         format_mean_std(stats["recall_at_1"], scale=100, digits=2)]
        for name, stats in results.items()
    ]
    table = markdown_table(["loss", f"{NEIGHBOURS}-NN accuracy %", "Recall@1 %"], rows)
    trained = {name: stats for name, stats in results.items() if name in
               {method.name for method in METHODS}}
    best = leader(trained, list(trained), "recall_at_1")
    baseline = results["input features (no training)"]["recall_at_1"]["mean"]
    beat = [name for name, stats in trained.items() if stats["recall_at_1"]["mean"] > baseline]
    seeds = ", ".join(map(str, config.seeds))
    plane = "the first two principal components" if config.embedding_dim > 2 else "the embedding"
    return "\n".join([
        f"# Embedding losses on {data.name}",
        "",
        f"Mean ± standard deviation over seeds {seeds}; {config.epochs} epochs; "
        f"{config.embedding_dim}-dimensional embeddings; {len(data.y_test)} held-out test rows. "
        f"embedding.png shows {plane} of the test embeddings of seed {config.seeds[0]}.",
        "",
        table,
        "",
        "## Result",
        "",
        f"Highest mean Recall@1: {best}. {len(beat)} of {len(trained)} "
        f"losses beat the untrained input features ({100 * baseline:.2f}%)"
        + (f": {', '.join(beat)}." if beat else "."),
        "",
    ])
