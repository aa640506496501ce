"""Explainer of info_nce, softmax cross-entropy over the similarities of a batch."""

from __future__ import annotations

import torch
from torch import Tensor

from ._classification import log_softmax, softmax
from ._embedding import cosine, norm
from ._table import Case, Example, Explainer, Sweep, no_kinks, reduce, same_shape
from ._values import UsageError, Values

__all__ = ["EXPLAINERS"]

# info_nce divides each embedding by max(‖x‖, this) under the cosine similarity.
NORM_FLOOR = 1e-8


def build_info_nce(values: Values) -> Case:
    """Read queries (``--input``), keys (``--other``), optional shared hard negatives and the options."""
    query = values.matrix("input")
    key = values.matrix("other")
    same_shape("input", query, "other", key)
    arguments = {"query": query, "key": key}
    if values.has("negative"):
        negatives = values.matrix("negative")
        if negatives.shape[1] != query.shape[1]:
            raise UsageError(
                f"--negative: expected rows of {query.shape[1]} values like --input, "
                f"got rows of {negatives.shape[1]}"
            )
        arguments["hard_negatives"] = negatives
    options = {
        "temperature": values.number("temperature", 0.07),
        "similarity": values.choice("similarity", ("cosine", "dot"), "cosine"),
        "symmetric": values.switch("symmetric"),
        "reduction": values.choice("reduction", ("mean", "sum"), "mean"),
    }
    return Case(arguments, tuple(arguments), options)


def prepared(case: Case, name: str) -> Tensor:
    """Return the embeddings divided by max(‖x‖, 1e-8) for the cosine similarity, as they are for dot."""
    x = case.arguments[name]
    if case.options["similarity"] == "dot":
        return x
    return x / norm(x).clamp(min=NORM_FLOOR).unsqueeze(-1)


def similarities(case: Case) -> Tensor:
    """Return s = q̂ [k̂; ĥ]ᵀ / τ, N x (N + M)."""
    columns = prepared(case, "key")
    if "hard_negatives" in case.arguments:
        columns = torch.cat([columns, prepared(case, "hard_negatives")])
    return prepared(case, "query") @ columns.T / float(case.options["temperature"])


def info_nce_reference(case: Case) -> Tensor:
    """Return −log softmax(sᵢ)ᵢ per query, averaged with the key-to-query loss when symmetric."""
    scores = similarities(case)
    rows = scores.shape[0]
    per_row = -log_softmax(scores).diagonal()[:rows]
    if case.options["symmetric"]:
        key_to_query = (
            prepared(case, "key") @ prepared(case, "query").T / float(case.options["temperature"])
        )
        per_row = 0.5 * (per_row - log_softmax(key_to_query).diagonal())
    return reduce(per_row, case.options["reduction"])


def watch_info_nce(case: Case) -> dict[str, Tensor]:
    """Return each positive pair's similarity and the probability the softmax gives its key."""
    query, key = prepared(case, "query"), prepared(case, "key")
    label = "cos(qᵢ, kᵢ)" if case.options["similarity"] == "cosine" else "qᵢ·kᵢ"
    return {label: (query * key).sum(dim=-1), "p(kᵢ | qᵢ)": softmax(similarities(case)).diagonal()}


def place_key_cosine(case: Case, t: Tensor) -> Case:
    """Return the case with key 0 turned, at its length, so that cos(q₀, k₀) = t; other rows are kept."""
    query, key = case.arguments["query"], case.arguments["key"]
    if query.shape[1] < 2:
        raise UsageError("--plot: turning one vector against another needs at least 2 dimensions")
    q, k = query[0], key[0]
    along = q / norm(q).clamp(min=NORM_FLOOR)
    across = k - (k @ along) * along
    if float(norm(across)) <= 1e-9:
        axis = torch.zeros_like(q)
        axis[int(along.abs().argmin())] = 1.0
        across = axis - (axis @ along) * along
    across = across / norm(across)
    turned = norm(k) * (t * along + (1 - t**2).sqrt() * across)
    mask = torch.zeros(key.shape[0], 1, dtype=key.dtype)
    mask[0] = 1.0
    return case.replace(key=key * (1 - mask) + mask * turned)


EXPLAINERS = (
    Explainer(
        name="info_nce",
        takes=("input", "other", "negative", "temperature", "similarity", "symmetric", "reduction"),
        build=build_info_nce,
        reference=info_nce_reference,
        watch=watch_info_nce,
        kinks=no_kinks,
        examples=(
            Example(
                {"input": "1,0;0,1", "other": "0.8,0.6;0.6,0.8", "temperature": "0.5"},
                "Each query must pick its own key out of all keys in the batch: the loss is "
                "softmax cross-entropy over the similarities sᵢⱼ = q̂ᵢ·k̂ⱼ/τ with target i, so "
                "∂ℓ/∂sᵢⱼ = pᵢⱼ − [j = i]. The gradient pulls qᵢ towards kᵢ and pushes it from "
                "every other key in proportion to the probability that key gets; a smaller τ "
                "sharpens the softmax and concentrates the push on the hardest negative.",
            ),
        ),
        sweep=Sweep(
            "cosine",
            "cosine of query 0 and its key",
            -0.99,
            0.99,
            place_key_cosine,
            measure=lambda case: float(
                cosine(case.arguments["query"][:1], case.arguments["key"][:1])[0]
            ),
        ),
        learning_rate=0.1,
    ),
)
