"""Embedding losses: values, gradients, errors and reported cases."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch import Tensor

import lossgrad
import lossgrad.nn
from helpers import TOLERANCES, as_tensor, assert_close, grads_of, reported_case

REDUCTIONS = ("none", "mean", "sum")
SHAPES = ((5, 7), (1, 1), (17, 423), (6,))


# 1. Reference losses and the table of cases.


def reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def ones_and_minus_ones(x: Tensor) -> Tensor:
    """Return alternating labels 1, −1, 1, ... with one label per row of ``x``."""
    count = math.prod(x.shape[:-1])
    labels = torch.ones(count, dtype=x.dtype)
    labels[1::2] = -1
    return labels.reshape(x.shape[:-1])


def ones_and_zeros(x: Tensor) -> Tensor:
    """Return alternating labels 1, 0, 1, ... with one label per row of ``x``."""
    return (ones_and_minus_ones(x) > 0).to(x.dtype)


def scores(x: Tensor) -> Tensor:
    """Return target similarities spread over [−0.9, 0.9], one per row of ``x``.

    They are rounded to bfloat16, so every floating dtype represents them exactly.
    """
    count = math.prod(x.shape[:-1])
    spread = torch.linspace(-0.9, 0.9, count, dtype=torch.float64).to(torch.bfloat16)
    return spread.to(x.dtype).reshape(x.shape[:-1])


def plain_distance(name: str) -> Callable[[Tensor, Tensor], Tensor]:
    """Return a distance written with plain torch ops, for autograd."""
    if name == "euclidean":
        return lambda a, b: torch.linalg.vector_norm(a - b, dim=-1)
    if name == "squared_euclidean":
        return lambda a, b: ((a - b) ** 2).sum(dim=-1)
    return lambda a, b: 1 - F.cosine_similarity(a, b, dim=-1, eps=1e-8)


def typical_distance(name: str, dim: int, p: float = 2.0) -> float:
    """Return a rough typical distance between two standard normal vectors.

    Margins are set from it so that about half of the random pairs are on
    each side of a hinge.
    """
    if name == "squared_euclidean":
        return 2.0 * dim
    if name == "cosine":
        return 1.0
    return math.sqrt(2.0) * dim ** (1.0 / p)


@dataclass(frozen=True)
class Case:
    """One loss with fixed options: the lossgrad call and its reference."""

    id: str
    inputs: int
    call: Callable[[list[Tensor], str], Tensor]
    reference: Callable[[list[Tensor], str], Tensor]
    torch_reference: bool  # True: PyTorch has the loss, compare in the same dtype
    scale: Callable[[int], float] = lambda dim: 1.0  # size of the distances for D = dim


def cosine_embedding_case() -> Case:
    def call(xs, reduction):
        target = ones_and_minus_ones(xs[0])
        return lossgrad.cosine_embedding_loss(*xs, target, margin=0.1, reduction=reduction)

    def reference(xs, reduction):
        target = ones_and_minus_ones(xs[0])
        return F.cosine_embedding_loss(*xs, target, margin=0.1, reduction=reduction)

    return Case("cosine_embedding", 2, call, reference, True)


def cosine_similarity_case(with_score: bool) -> Case:
    def call(xs, reduction):
        score = scores(xs[0]) if with_score else None
        return lossgrad.cosine_similarity_loss(*xs, score, reduction=reduction)

    def reference(xs, reduction):
        cos = F.cosine_similarity(*xs, dim=-1, eps=1e-8)
        loss = (cos - scores(xs[0])) ** 2 if with_score else 1 - cos
        return reduce(loss, reduction)

    name = "cosine_similarity_score" if with_score else "cosine_similarity"
    return Case(name, 2, call, reference, True)


def negative_pair_case(distance: str) -> Case:
    def margin(xs):
        return typical_distance(distance, xs[0].shape[-1])

    def call(xs, reduction):
        return lossgrad.negative_pair_loss(
            *xs, margin=margin(xs), distance=distance, reduction=reduction
        )

    def reference(xs, reduction):
        d = plain_distance(distance)(*xs)
        return reduce((margin(xs) - d).clamp_min(0), reduction)

    return Case(
        f"negative_pair_{distance}",
        2,
        call,
        reference,
        False,
        lambda dim: typical_distance(distance, dim),
    )


def contrastive_case(distance: str, squared: bool) -> Case:
    def margins(xs):
        typical = typical_distance(distance, xs[0].shape[-1])
        return 0.8 * typical, 1.1 * typical

    def call(xs, reduction):
        pos, neg = margins(xs)
        target = ones_and_zeros(xs[0])
        return lossgrad.contrastive_loss(
            *xs,
            target,
            pos_margin=pos,
            neg_margin=neg,
            distance=distance,
            squared=squared,
            reduction=reduction,
        )

    def reference(xs, reduction):
        pos, neg = margins(xs)
        y = ones_and_zeros(xs[0])
        d = plain_distance(distance)(*xs)
        power = 2 if squared else 1
        loss = y * (d - pos).clamp_min(0) ** power + (1 - y) * (neg - d).clamp_min(0) ** power
        return reduce(loss, reduction)

    suffix = "_squared" if squared else ""
    return Case(
        f"contrastive_{distance}{suffix}",
        2,
        call,
        reference,
        False,
        lambda dim: typical_distance(distance, dim) ** (2 if squared else 1),
    )


def triplet_pnorm_case(p: float, swap: bool) -> Case:
    """The default path (distance=None), against PyTorch with eps = 0."""

    def margin(xs):
        return 0.3 * typical_distance("euclidean", xs[0].shape[-1], p)

    def call(xs, reduction):
        return lossgrad.triplet_margin_loss(
            *xs, margin=margin(xs), p=p, swap=swap, reduction=reduction
        )

    def reference(xs, reduction):
        return F.triplet_margin_loss(
            *xs, margin=margin(xs), p=p, eps=0.0, swap=swap, reduction=reduction
        )

    suffix = "_swap" if swap else ""
    return Case(
        f"triplet_p{p:g}{suffix}",
        3,
        call,
        reference,
        True,
        lambda dim: typical_distance("euclidean", dim, p),
    )


def triplet_distance_case(distance: str, swap: bool) -> Case:
    def margin(xs):
        return 0.3 * typical_distance(distance, xs[0].shape[-1])

    def call(xs, reduction):
        return lossgrad.triplet_margin_loss(
            *xs, margin=margin(xs), swap=swap, reduction=reduction, distance=distance
        )

    def reference(xs, reduction):
        return F.triplet_margin_with_distance_loss(
            *xs,
            distance_function=plain_distance(distance),
            margin=margin(xs),
            swap=swap,
            reduction=reduction,
        )

    suffix = "_swap" if swap else ""
    return Case(
        f"triplet_{distance}{suffix}",
        3,
        call,
        reference,
        False,
        lambda dim: typical_distance(distance, dim),
    )


DISTANCES = ("euclidean", "squared_euclidean", "cosine")
CASES = [
    cosine_embedding_case(),
    cosine_similarity_case(False),
    cosine_similarity_case(True),
    *(negative_pair_case(d) for d in DISTANCES),
    *(contrastive_case(d, squared) for d in DISTANCES for squared in (False, True)),
    *(triplet_pnorm_case(p, swap) for p in (2.0, 1.0, 3.0) for swap in (False, True)),
    *(triplet_distance_case(d, swap) for d in DISTANCES for swap in (False, True)),
]


def random_inputs(case: Case, shape: tuple[int, ...], dtype: torch.dtype, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    return [
        torch.randn(shape, dtype=torch.float64, generator=generator).to(dtype)
        for _ in range(case.inputs)
    ]


def with_grad(tensors: list[Tensor]) -> list[Tensor]:
    return [t.detach().clone().requires_grad_(True) for t in tensors]


# 2. Values and gradients against the references.


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", (torch.float32, torch.float64))
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_matches_reference(case, dtype, reduction, shape):
    inputs = random_inputs(case, shape, dtype)
    reference_dtype = dtype if case.torch_reference else torch.float64
    ours = with_grad(inputs)
    theirs = with_grad([t.to(reference_dtype) for t in inputs])

    loss = case.call(ours, reduction)
    expected = case.reference(theirs, reduction)
    grad_output = None
    if reduction == "none":
        generator = torch.Generator().manual_seed(1)
        grad_output = torch.randn(loss.shape, dtype=torch.float64, generator=generator)

    # A hinge such as margin − d cancels, so its rounding error is relative to
    # the size of d rather than of the loss. The absolute tolerance scales with d.
    rtol, atol = TOLERANCES[dtype]["value"]
    atol = max(atol, rtol * case.scale(shape[-1]))
    if reduction == "sum":
        atol *= math.prod(shape[:-1])
    assert_close(loss, expected.to(dtype), "loss", dtype=dtype, atol=atol)
    grads = grads_of(loss, ours, None if grad_output is None else grad_output.to(dtype))
    expected_grads = grads_of(
        expected, theirs, None if grad_output is None else grad_output.to(reference_dtype)
    )
    for index, (grad, expected_grad) in enumerate(zip(grads, expected_grads)):
        name = f"grad of input {index}"
        assert_close(grad, expected_grad.to(dtype), name, kind="grad", dtype=dtype)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("reduction", ("none", "mean"))
def test_gradcheck(case, reduction):
    inputs = with_grad(random_inputs(case, (4, 5), torch.float64, seed=2))
    assert torch.autograd.gradcheck(lambda *xs: case.call(list(xs), reduction), inputs)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16))
def test_half_dtypes_compute_in_float32(case, dtype):
    inputs = [t.to(dtype) for t in random_inputs(case, (6, 9), torch.float32)]
    half = with_grad(inputs)
    single = with_grad([t.float() for t in inputs])

    loss = case.call(half, "sum")
    expected = case.call(single, "sum")

    assert loss.dtype == dtype
    assert_close(loss, expected.to(dtype), "loss", rtol=0, atol=0)
    expected_grads = grads_of(expected, single)
    for index, (grad, expected_grad) in enumerate(zip(grads_of(loss, half), expected_grads)):
        assert_close(grad, expected_grad.to(dtype), f"grad of input {index}", rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_empty_batch_gives_zero(case):
    inputs = with_grad([torch.randn(0, 4) for _ in range(case.inputs)])
    loss = case.call(inputs, "mean")
    assert loss.shape == ()
    assert loss.requires_grad
    assert float(loss.detach()) == 0.0
    for grad in grads_of(loss, inputs):
        assert grad.shape == (0, 4)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_double_backward_raises(case):
    inputs = with_grad(random_inputs(case, (3, 4), torch.float64))
    loss = case.call(inputs, "sum")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, inputs, create_graph=True)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_vmap_of_grad_matches_autograd(case):
    inputs = random_inputs(case, (3, 4, 5), torch.float64)

    def per_sample(*xs):
        return case.call(list(xs), "sum")

    batched = torch.func.vmap(torch.func.grad(per_sample, argnums=0))(*inputs)
    for sample in range(3):
        xs = with_grad([t[sample] for t in inputs])
        (expected,) = torch.autograd.grad(per_sample(*xs), xs[0])
        assert_close(batched[sample], expected, f"grad of sample {sample}", kind="grad")


@pytest.mark.slow
def test_compiles_without_graph_breaks():
    anchor, positive, negative = with_grad([torch.randn(6, 5) for _ in range(3)])

    def loss(a, p, n):
        return lossgrad.triplet_margin_loss(a, p, n, swap=True)

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    result = compiled(anchor, positive, negative)
    expected = loss(anchor, positive, negative)

    assert_close(result, expected, "loss")
    grads = grads_of(result, [anchor, positive, negative])
    expected_grads = grads_of(expected, [anchor, positive, negative])
    for name, grad, expected_grad in zip(("anchor", "positive", "negative"), grads, expected_grads):
        assert_close(grad, expected_grad, f"grad of {name}", kind="grad")


# 3. No NaN on finite inputs, zero vectors and coincident points included.

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
rows = st.lists(st.lists(finite, min_size=3, max_size=3), min_size=2, max_size=4)


@given(data=rows, zero_row=st.booleans(), coincide=st.booleans())
def test_no_nan_on_finite_inputs(data, zero_row, coincide):
    x = torch.tensor(data, dtype=torch.float32)
    base = [x, torch.flip(x, dims=(0,)) * 0.5, torch.roll(x, 1, dims=0)]
    if zero_row:
        base[1][0] = 0
    if coincide:
        base[1][-1] = x[-1]
        base[2][-1] = x[-1]
    for case in CASES:
        inputs = with_grad(base[: case.inputs])
        loss = case.call(inputs, "sum")
        assert bool(torch.isfinite(loss)), f"{case.id}: loss = {loss}"
        for index, grad in enumerate(grads_of(loss, inputs)):
            assert bool(torch.isfinite(grad).all()), f"{case.id}: grad of input {index} = {grad}"


# 4. Reported cases.


def test_cosine_similarity_zero_vector_r07():
    """R07: 1 − cos with an all-zero embedding is 1 with a finite gradient.

    Each norm is clamped at eps, so the denominator is |a| eps instead of 0:
    the loss is 1, d/da = 0 and d/db = −a/(|a| eps).
    """
    case = reported_case("R07")
    x1 = as_tensor(case["inputs"]["x1"]).requires_grad_(True)
    x2 = as_tensor(case["inputs"]["x2"]).requires_grad_(True)

    loss = lossgrad.cosine_similarity_loss(x1, x2, eps=case["inputs"]["eps"])
    grad_x1, grad_x2 = grads_of(loss, [x1, x2])

    expected = torch.tensor(case["expected"]["loss_1_minus_cos"], dtype=torch.float64)
    assert_close(loss, expected, "loss")
    assert_close(grad_x1, as_tensor([case["expected"]["grad_x1"]]), "grad_x1", kind="grad")
    expected_x2 = as_tensor([case["expected"]["grad_x2_per_norm_clamp"]])
    assert_close(grad_x2, expected_x2, "grad_x2", kind="grad")


def test_coincident_points_zero_gradient_r08():
    """R08: coincident points have euclidean distance 0 and the subgradient 0.

    A similar pair at distance 0 pays nothing. A dissimilar pair pays the
    margin, but it has no direction to move apart, so its gradient is 0 too.
    """
    case = reported_case("R08")
    a = as_tensor(case["inputs"]["a"]).requires_grad_(True)
    p = as_tensor(case["inputs"]["p"]).requires_grad_(True)
    expected_grad = as_tensor([case["expected"]["grad_a (subgradient convention 0)"]])

    similar = lossgrad.contrastive_loss(a, p, torch.ones(1))
    dissimilar = lossgrad.negative_pair_loss(a, p, margin=1.0)

    expected_distance = torch.tensor(case["expected"]["distance"], dtype=torch.float64)
    assert_close(similar, expected_distance, "similar")
    assert_close(dissimilar, torch.tensor(1.0, dtype=torch.float64), "dissimilar")
    for name, loss in (("similar", similar), ("dissimilar", dissimilar)):
        grad_a, grad_p = grads_of(loss, [a, p])
        assert_close(grad_a, expected_grad, f"{name} grad_a", kind="grad")
        assert_close(grad_p, torch.zeros_like(p), f"{name} grad_p", kind="grad")


@pytest.mark.parametrize(
    "call",
    (
        lambda a, p, n, m: lossgrad.triplet_margin_loss(a, p, n, margin=m),
        lambda a, p, n, m: lossgrad.triplet_margin_loss(a, p, n, margin=m, distance="euclidean"),
        lambda a, p, n, m: lossgrad.nn.TripletMarginLoss(margin=m)(a, p, n),
    ),
    ids=("default", "euclidean", "module"),
)
def test_triplet_anchor_equals_positive_r09(call):
    """R09: anchor == positive gives the exact subgradient, with no eps artefact.

    d(a, p) = 0 contributes the subgradient 0, so only d(a, n) = √2 moves a
    and n; PyTorch's eps shift instead gives a and p a gradient along (1, 1).
    """
    case = reported_case("R09")
    inputs = case["inputs"]
    anchor, positive, negative = (
        as_tensor(inputs[name]).requires_grad_(True) for name in ("anchor", "positive", "negative")
    )

    loss = call(anchor, positive, negative, inputs["margin"])
    grads = grads_of(loss, [anchor, positive, negative])

    expected = case["expected"]
    assert_close(loss, torch.tensor(expected["loss"], dtype=torch.float64), "loss", rtol=1e-8)
    for name, grad in zip(("grad_a", "grad_p", "grad_n"), grads):
        assert_close(grad, as_tensor([expected[name]]), name, kind="grad", rtol=1e-8)


# 5. Behaviour of single losses.


def test_cosine_similarity_func_grad_matches_autograd():
    x1 = torch.randn(5, 6, dtype=torch.float64)
    x2 = torch.randn(5, 6, dtype=torch.float64)
    score = scores(x1)

    def loss(a, b):
        return lossgrad.cosine_similarity_loss(a, b, score)

    functional = torch.func.grad(loss, argnums=(0, 1))(x1, x2)
    a, b = with_grad([x1, x2])
    expected = grads_of(loss(a, b), [a, b])
    assert_close(functional[0], expected[0], "grad_x1", kind="grad")
    assert_close(functional[1], expected[1], "grad_x2", kind="grad")


def test_cosine_similarity_score_gets_gradient():
    x1, x2 = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    score = scores(x1).requires_grad_(True)
    loss = lossgrad.cosine_similarity_loss(x1, x2, score, reduction="sum")
    (grad,) = grads_of(loss, [score])
    expected = -2 * (F.cosine_similarity(x1, x2) - score.detach())
    assert_close(grad, expected, "grad_score", kind="grad")


def test_cosine_similarity_matches_negative_cosine_gradient():
    x1, x2 = with_grad([torch.randn(4, 3, dtype=torch.float64) for _ in range(2)])
    (grad,) = grads_of(lossgrad.cosine_similarity_loss(x1, x2, reduction="sum"), [x1])
    (expected,) = grads_of(-F.cosine_similarity(x1, x2).sum(), [x1])
    assert_close(grad, expected, "grad_x1", kind="grad")


def test_cosine_embedding_ignores_target_on_zero_gradient_side():
    x1 = torch.tensor([[1.0, 0.0]], requires_grad=True)
    x2 = torch.tensor([[0.0, 1.0]], requires_grad=True)
    loss = lossgrad.cosine_embedding_loss(x1, x2, torch.tensor([-1.0]), margin=0.5)
    (grad,) = grads_of(loss, [x1])
    assert float(loss.detach()) == 0.0
    assert torch.equal(grad, torch.zeros(1, 2))


@pytest.mark.parametrize("distance", DISTANCES)
def test_negative_pair_zero_gradient_beyond_margin(distance):
    x1 = torch.tensor([[0.0, 1.0]], requires_grad=True)
    x2 = torch.tensor([[0.0, -1.0]], requires_grad=True)
    loss = lossgrad.negative_pair_loss(x1, x2, margin=0.5, distance=distance)
    assert float(loss.detach()) == 0.0
    for grad in grads_of(loss, [x1, x2]):
        assert torch.equal(grad, torch.zeros(1, 2))


def test_negative_pair_zero_gradient_at_margin():
    x1 = torch.tensor([[0.0, 0.0]], requires_grad=True)
    x2 = torch.tensor([[3.0, 4.0]], requires_grad=True)
    loss = lossgrad.negative_pair_loss(x1, x2, margin=5.0)
    (grad,) = grads_of(loss, [x1])
    assert float(loss.detach()) == 0.0
    assert torch.equal(grad, torch.zeros(1, 2))


@pytest.mark.parametrize("dtype", (torch.bool, torch.int64, torch.float32))
def test_contrastive_accepts_label_dtypes(dtype):
    x1, x2 = torch.randn(4, 3), torch.randn(4, 3)
    target = torch.tensor([1, 0, 0, 1]).to(dtype)
    expected = lossgrad.contrastive_loss(x1, x2, torch.tensor([1.0, 0.0, 0.0, 1.0]))
    assert torch.equal(lossgrad.contrastive_loss(x1, x2, target), expected)


def test_contrastive_mean_counts_all_pairs():
    x1, x2 = torch.randn(6, 3), torch.randn(6, 3)
    target = torch.tensor([1, 1, 0, 1, 0, 0])
    per_pair = lossgrad.contrastive_loss(x1, x2, target, reduction="none")
    assert_close(lossgrad.contrastive_loss(x1, x2, target), per_pair.sum() / 6, "mean")


def test_cosine_embedding_accepts_integer_labels():
    x1, x2 = torch.randn(4, 3), torch.randn(4, 3)
    labels = torch.tensor([1, -1, -1, 1])
    expected = F.cosine_embedding_loss(x1, x2, labels)
    assert_close(lossgrad.cosine_embedding_loss(x1, x2, labels), expected, "loss")


def test_triplet_swap_moves_gradient_to_positive():
    anchor = torch.tensor([[0.0, 0.0]], requires_grad=True)
    positive = torch.tensor([[1.0, 0.0]], requires_grad=True)
    negative = torch.tensor([[1.0, 1.0]], requires_grad=True)
    loss = lossgrad.triplet_margin_loss(anchor, positive, negative, margin=1.0, swap=True)
    grad_a, grad_p, grad_n = grads_of(loss, [anchor, positive, negative])
    # d(p, n) = 1 < d(a, n) = √2, so the negative distance is d(p, n).
    assert_close(loss, torch.tensor(1.0), "loss")
    assert_close(grad_a, torch.tensor([[-1.0, 0.0]]), "grad_a", kind="grad")
    assert_close(grad_p, torch.tensor([[1.0, 1.0]]), "grad_p", kind="grad")
    assert_close(grad_n, torch.tensor([[0.0, -1.0]]), "grad_n", kind="grad")


# 6. Modules.


def test_modules_match_functions():
    x1, x2, x3 = (torch.randn(5, 4) for _ in range(3))
    pm = torch.tensor([1, -1, 1, -1, 1])
    zero_one = torch.tensor([1, 0, 1, 0, 1])
    pairs = (
        (lossgrad.nn.CosineEmbeddingLoss(margin=0.2)(x1, x2, pm),
         lossgrad.cosine_embedding_loss(x1, x2, pm, margin=0.2)),
        (lossgrad.nn.CosineSimilarityLoss(reduction="sum")(x1, x2),
         lossgrad.cosine_similarity_loss(x1, x2, reduction="sum")),
        (lossgrad.nn.NegativePairLoss(margin=3.0, distance="cosine")(x1, x2),
         lossgrad.negative_pair_loss(x1, x2, margin=3.0, distance="cosine")),
        (lossgrad.nn.ContrastiveLoss(neg_margin=2.0, squared=True)(x1, x2, zero_one),
         lossgrad.contrastive_loss(x1, x2, zero_one, neg_margin=2.0, squared=True)),
        (lossgrad.nn.TripletMarginLoss(margin=0.5, p=1, swap=True)(x1, x2, x3),
         lossgrad.triplet_margin_loss(x1, x2, x3, margin=0.5, p=1, swap=True)),
    )
    for index, (module_loss, function_loss) in enumerate(pairs):
        assert torch.equal(module_loss, function_loss), f"module {index}"


def test_modules_reject_legacy_arguments():
    with pytest.raises(ValueError, match="size_average: deprecated"):
        lossgrad.nn.CosineEmbeddingLoss(size_average=True)
    with pytest.raises(ValueError, match="reduce: deprecated"):
        lossgrad.nn.TripletMarginLoss(reduce=False)


def test_modules_reject_unknown_reduction():
    with pytest.raises(ValueError, match="reduction: expected one of"):
        lossgrad.nn.ContrastiveLoss(reduction="batchmean")


@pytest.mark.parametrize(
    ("make", "match"),
    (
        (lambda: lossgrad.nn.NegativePairLoss(distance="manhattan"), "distance: expected one of"),
        (lambda: lossgrad.nn.NegativePairLoss(margin=-1.0), "margin: expected a value >= 0"),
        (lambda: lossgrad.nn.ContrastiveLoss(neg_margin=-1.0), "neg_margin: expected a value >= 0"),
        (lambda: lossgrad.nn.TripletMarginLoss(margin=0.0), "margin: expected a value > 0"),
        (lambda: lossgrad.nn.TripletMarginLoss(distance="l2"), "distance: expected one of"),
        (lambda: lossgrad.nn.TripletMarginLoss(p=0.5), "p: expected a finite number >= 1"),
        (lambda: lossgrad.nn.TripletMarginLoss(eps=-1.0), "eps: expected a value >= 0"),
        (lambda: lossgrad.nn.CosineSimilarityLoss(eps=-1.0), "eps: expected a value > 0"),
    ),
)
def test_modules_reject_bad_options(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_formulas_are_registered():
    for name in (
        "contrastive_loss",
        "cosine_embedding_loss",
        "cosine_similarity_loss",
        "negative_pair_loss",
        "triplet_margin_loss",
    ):
        assert name in lossgrad.FORMULAS
        assert "{formula}" not in getattr(lossgrad, name).__doc__


# 7. Errors.

X = torch.randn(3, 4)
Y = torch.randn(3, 4)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    (
        (lambda: lossgrad.negative_pair_loss(X, Y, distance="manhattan"),
         ValueError, "distance: expected one of 'euclidean'"),
        (lambda: lossgrad.contrastive_loss(X, Y, torch.ones(3), distance="l1"),
         ValueError, "distance: expected one of"),
        (lambda: lossgrad.triplet_margin_loss(X, Y, Y, distance="cos"),
         ValueError, "distance: expected one of"),
        (lambda: lossgrad.cosine_similarity_loss(X, Y, reduction="avg"),
         ValueError, "reduction: expected one of 'none', 'mean', 'sum', got 'avg'"),
        (lambda: lossgrad.negative_pair_loss(X, Y, margin=-1.0),
         ValueError, r"margin: expected a value >= 0, got -1.0"),
        (lambda: lossgrad.contrastive_loss(X, Y, torch.ones(3), pos_margin=-0.5),
         ValueError, "pos_margin: expected a value >= 0"),
        (lambda: lossgrad.contrastive_loss(X, Y, torch.ones(3), neg_margin=-2.0),
         ValueError, "neg_margin: expected a value >= 0"),
        (lambda: lossgrad.triplet_margin_loss(X, Y, Y, margin=0.0),
         ValueError, "margin: expected a value > 0"),
        (lambda: lossgrad.cosine_embedding_loss(X, Y, torch.ones(3), margin=float("nan")),
         ValueError, "margin: expected a finite number"),
        (lambda: lossgrad.negative_pair_loss(X, torch.randn(3, 5)),
         ValueError, r"x2: expected the same shape as x1 \(3, 4\), got \(3, 5\)"),
        (lambda: lossgrad.triplet_margin_loss(X, Y, torch.randn(2, 4)),
         ValueError, r"negative: expected the same shape as anchor \(3, 4\), got \(2, 4\)"),
        (lambda: lossgrad.cosine_similarity_loss(torch.randn(2, 3, 4), torch.randn(2, 3, 4)),
         ValueError, r"x1: expected shape \(N, D\) or \(D,\), got \(2, 3, 4\)"),
        (lambda: lossgrad.negative_pair_loss(X, Y.double()),
         TypeError, "x2: expected the dtype of x1 \\(torch.float32\\), got torch.float64"),
        (lambda: lossgrad.cosine_embedding_loss(X.long(), Y.long(), torch.ones(3)),
         TypeError, "input1: expected a floating-point tensor"),
        (lambda: lossgrad.cosine_embedding_loss(X, Y, torch.ones(3), size_average=False),
         ValueError, "size_average: deprecated"),
        (lambda: lossgrad.triplet_margin_loss(X, Y, Y, reduce=True),
         ValueError, "reduce: deprecated"),
        (lambda: lossgrad.cosine_embedding_loss(X, Y, torch.tensor([1.0, 0.0, -1.0])),
         ValueError, r"target: expected labels in \{-1, 1\}, got 0"),
        (lambda: lossgrad.cosine_embedding_loss(X, Y, torch.ones(4)),
         ValueError, r"target: expected shape \(3,\) \(one label per row of input1\), got \(4,\)"),
        (lambda: lossgrad.cosine_embedding_loss(X, Y, [1, 1, 1]),
         TypeError, "target: expected a torch.Tensor, got list"),
        (lambda: lossgrad.contrastive_loss(X, Y, torch.tensor([1, 2, 0])),
         ValueError, r"target: expected labels in \{0, 1\}, got 2"),
        (lambda: lossgrad.contrastive_loss(X, Y, torch.tensor([1.0, -1.0, 0.0])),
         ValueError, r"target: expected labels in \{0, 1\}, got -1"),
        (lambda: lossgrad.contrastive_loss(X, Y, torch.ones(3, 1)),
         ValueError, r"target: expected shape \(3,\)"),
        (lambda: lossgrad.contrastive_loss(X, Y, torch.ones(3), squared=1),
         TypeError, "squared: expected a bool, got int"),
        (lambda: lossgrad.cosine_similarity_loss(X, Y, torch.tensor([0.5, 1.5, 0.0])),
         ValueError, r"score: expected values in \[-1, 1\], got 1.5"),
        (lambda: lossgrad.cosine_similarity_loss(X, Y, torch.tensor([0.5, float("nan"), 0.0])),
         ValueError, r"score: expected values in \[-1, 1\], got nan"),
        (lambda: lossgrad.cosine_similarity_loss(X, Y, torch.zeros(2)),
         ValueError, r"score: expected shape \(3,\) \(one score per row of x1\), got \(2,\)"),
        (lambda: lossgrad.cosine_similarity_loss(X, Y, torch.zeros(3, dtype=torch.long)),
         TypeError, "score: expected a floating-point tensor"),
        (lambda: lossgrad.cosine_similarity_loss(X, Y, eps=0.0),
         ValueError, "eps: expected a value > 0"),
        (lambda: lossgrad.triplet_margin_loss(X, Y, Y, p=0.5),
         ValueError, r"p: expected a finite number >= 1, got 0.5"),
        (lambda: lossgrad.triplet_margin_loss(X, Y, Y, p=float("inf")),
         ValueError, "p: expected a finite number, got inf"),
        (lambda: lossgrad.triplet_margin_loss(X, Y, Y, p=3, distance="cosine"),
         ValueError, "p: applies only to distance=None; expected 2 with distance='cosine', got 3"),
        (lambda: lossgrad.triplet_margin_loss(X, Y, Y, eps=-1.0),
         ValueError, "eps: expected a value >= 0"),
        (lambda: lossgrad.triplet_margin_loss(X, Y, Y, swap=1),
         TypeError, "swap: expected a bool, got int"),
    ),
)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_triplet_warns_that_eps_has_no_effect():
    with pytest.warns(UserWarning, match="eps=0.001 has no effect"):
        lossgrad.triplet_margin_loss(X, Y, Y, eps=1e-3)
