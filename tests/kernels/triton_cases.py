"""Loss calls that have a Triton path, shared by the interpreter and the GPU tests.

Each case builds, from a generator, the float inputs that get gradients and a
call of a public loss on them, with every other input fixed inside the call.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

import lossgrad

N, V, D = 5, 37, 19


def _classes(seed: int) -> torch.Tensor:
    target = torch.randint(0, V, (N,), generator=torch.Generator().manual_seed(seed))
    target[1] = -100
    return target


CASES: dict[str, Callable[[torch.Generator], tuple[list[torch.Tensor], Callable]]] = {
    "cross_entropy": lambda g: (
        [torch.randn(N, V, generator=g)],
        lambda x: lossgrad.cross_entropy(x, _classes(0), label_smoothing=0.1),
    ),
    "cross_entropy_weighted_none": lambda g: (
        [torch.randn(N, V, generator=g)],
        lambda x: lossgrad.cross_entropy(
            x, _classes(1), weight=torch.linspace(0.5, 2.0, V), reduction="none"
        ),
    ),
    "cross_entropy_probabilities": lambda g: (
        [torch.randn(N, V, generator=g)],
        lambda x: lossgrad.cross_entropy(x, torch.softmax(torch.randn(N, V, generator=g), 1)),
    ),
    "kd_loss": lambda g: (
        [torch.randn(N, V, generator=g)],
        lambda s, t=torch.randn(N, V, generator=g): lossgrad.kd_loss(s, t, _classes(2)),
    ),
    "kd_loss_soft_only": lambda g: (
        [torch.randn(N, V, generator=g)],
        lambda s, t=torch.randn(N, V, generator=g): lossgrad.kd_loss(s, t, temperature=2.0),
    ),
    "js_div": lambda g: (
        [torch.randn(N, V, generator=g)],
        lambda s, t=torch.randn(N, V, generator=g): lossgrad.js_div(s, t, beta=0.3),
    ),
    "kl_div": lambda g: (
        [torch.log_softmax(torch.randn(N, V, generator=g), 1)],
        lambda x, t=torch.softmax(torch.randn(N, V, generator=g), 1): lossgrad.kl_div(
            x, t, reduction="batchmean"
        ),
    ),
    "cosine_similarity_loss": lambda g: (
        [torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)],
        lambda a, b: lossgrad.cosine_similarity_loss(a, b),
    ),
    "cosine_embedding_loss": lambda g: (
        [torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)],
        lambda a, b: lossgrad.cosine_embedding_loss(
            a, b, torch.tensor([1, -1, 1, -1, -1]), margin=0.1
        ),
    ),
    "negative_pair_loss": lambda g: (
        [torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)],
        lambda a, b: lossgrad.negative_pair_loss(a, b, margin=8.0),
    ),
    "contrastive_loss_cosine": lambda g: (
        [torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)],
        lambda a, b: lossgrad.contrastive_loss(
            a, b, torch.tensor([1, 0, 1, 0, 0]), distance="cosine", neg_margin=1.5
        ),
    ),
    "contrastive_loss_squared": lambda g: (
        [torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)],
        lambda a, b: lossgrad.contrastive_loss(
            a, b, torch.tensor([1, 0, 1, 0, 0]), distance="squared_euclidean", neg_margin=50.0
        ),
    ),
    "triplet_margin_loss": lambda g: (
        [torch.randn(N, D, generator=g) for _ in range(3)],
        lambda a, p, n: lossgrad.triplet_margin_loss(a, p, n, margin=3.0, swap=True),
    ),
    "info_nce": lambda g: (
        [torch.randn(N, D, generator=g), torch.randn(N, D, generator=g)],
        lambda q, k: lossgrad.info_nce(q, k, temperature=0.1, symmetric=True),
    ),
    "linear_cross_entropy": lambda g: (
        [torch.randn(N, D, generator=g), torch.randn(V, D, generator=g)],
        lambda x, w: lossgrad.linear_cross_entropy(x, w, _classes(3), label_smoothing=0.1),
    ),
    "linear_kd_loss_js": lambda g: (
        [torch.randn(N, D, generator=g), torch.randn(V, D, generator=g)],
        lambda x, w, t=torch.randn(N, D, generator=g), tw=torch.randn(V, D, generator=g): (
            lossgrad.linear_kd_loss(x, w, t, tw, _classes(4), divergence="js", beta=0.3)
        ),
    ),
    "linear_kd_loss_kl": lambda g: (
        [torch.randn(N, D, generator=g), torch.randn(V, D, generator=g)],
        lambda x, w, t=torch.randn(N, D, generator=g), tw=torch.randn(V, D, generator=g): (
            lossgrad.linear_kd_loss(x, w, t, tw, _classes(5), temperature=2.0, alpha=0.6)
        ),
    ),
}
