"""Explainers of the embedding losses: the cosine losses, the pair hinges and the triplet loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._check import KINK_RADIUS
from ._table import Case, Example, Explainer, Sweep, reduce, same_shape
from ._values import UsageError, Values

__all__ = ["EXPLAINERS"]

DISTANCES = ("euclidean", "squared_euclidean", "cosine")

# The norm clamp of lossgrad's cosine distance and of torch.nn.functional.cosine_similarity.
COSINE_EPS = 1e-8

# The ε of cosine_embedding_loss, added to each squared norm as PyTorch 2.13 does.
EMBEDDING_EPS = 1e-12

PULL_EXAMPLE = {"input": "0.1,0.2,0.3", "other": "0.4,0.2,0.5"}


# 1. Formulas shared by the references and the watched quantities.


def norm(x: Tensor, order: float = 2.0) -> Tensor:
    """Return the p-norm of each row; its autograd gradient at 0 is 0, the library's subgradient."""
    return torch.linalg.vector_norm(x, ord=order, dim=-1)


def cosine(x1: Tensor, x2: Tensor, eps: float = COSINE_EPS) -> Tensor:
    """Return x₁·x₂ / (max(‖x₁‖, eps) max(‖x₂‖, eps)) per row."""
    return (x1 * x2).sum(dim=-1) / (norm(x1).clamp(min=eps) * norm(x2).clamp(min=eps))


def smooth_cosine(x1: Tensor, x2: Tensor) -> Tensor:
    """Return x₁·x₂ / √((‖x₁‖² + ε)(‖x₂‖² + ε)) per row, the cosine of cosine_embedding_loss."""
    squared_1 = (x1 * x1).sum(dim=-1) + EMBEDDING_EPS
    squared_2 = (x2 * x2).sum(dim=-1) + EMBEDDING_EPS
    return (x1 * x2).sum(dim=-1) / (squared_1 * squared_2).sqrt()


def distance(name: str, x1: Tensor, x2: Tensor) -> Tensor:
    """Return the named pair distance of each row."""
    if name == "euclidean":
        return norm(x1 - x2)
    if name == "squared_euclidean":
        return ((x1 - x2) ** 2).sum(dim=-1)
    return 1 - cosine(x1, x2)


def coincident_rows(
    name: str, x1: Tensor, x2: Tensor, what: str, rows: list[int] | None = None
) -> list[str]:
    """List the rows (all, or those in ``rows``) where a euclidean or p-norm distance is at x₁ = x₂."""
    if name in ("squared_euclidean", "cosine"):
        return []
    gaps = norm(x1 - x2)
    return [
        f"row {row}: {what} coincide, where the distance has no derivative"
        for row in (range(gaps.shape[0]) if rows is None else rows)
        if float(gaps[row]) <= KINK_RADIUS
    ]


# 2. Reading the values.


def read_pair(values: Values) -> tuple[Tensor, Tensor]:
    """Read ``--input`` and ``--other`` as N x D embeddings."""
    x1 = values.matrix("input")
    x2 = values.matrix("other")
    same_shape("input", x1, "other", x2)
    return x1, x2


def read_labels(values: Values, rows: int, allowed: tuple[int, ...], meaning: str) -> Tensor:
    """Read one label per row, each one of ``allowed``."""
    labels = values.per_row("target", rows)
    for label in labels.tolist():
        if label not in allowed:
            raise UsageError(f"--target: expected {meaning} for each pair, got {label:g}")
    return labels


def read_scalar_reduction(values: Values) -> str:
    """Read ``--reduction``, mean or sum."""
    return values.choice("reduction", ("mean", "sum"), "mean")


# 3. The cosine losses.


def build_cosine_embedding(values: Values) -> Case:
    """Read input1, input2, a ±1 label per pair and the margin."""
    x1, x2 = read_pair(values)
    target = read_labels(values, x1.shape[0], (1, -1), "1 (similar) or -1 (dissimilar)")
    options = {"margin": values.number("margin", 0.0), "reduction": read_scalar_reduction(values)}
    return Case({"input1": x1, "input2": x2, "target": target}, ("input1", "input2"), options)


def cosine_embedding_reference(case: Case) -> Tensor:
    """Return 1 − cos for y = 1 and max(0, cos − margin) for y = −1."""
    cos = smooth_cosine(case.arguments["input1"], case.arguments["input2"])
    similar = (case.arguments["target"] == 1).double()
    push = torch.relu(cos - float(case.options["margin"]))
    return reduce(similar * (1 - cos) + (1 - similar) * push, case.options["reduction"])


def cosine_embedding_kinks(case: Case) -> list[str]:
    """List the dissimilar pairs whose cosine equals the margin, and the near-zero vectors.

    Near a zero vector the smoothed cosine turns over a length of about √ε =
    1e-6, the finite-difference step, so the difference quotient is off there
    although the loss is smooth.
    """
    cos = smooth_cosine(case.arguments["input1"], case.arguments["input2"])
    margin = float(case.options["margin"])
    kinks = [
        f"row {row}: cos equals the margin {margin:g}, where max(0, cos − margin) has a corner"
        for row in range(cos.shape[0])
        if int(case.arguments["target"][row]) == -1 and abs(float(cos[row]) - margin) <= KINK_RADIUS
    ]
    for name in ("input1", "input2"):
        norms = norm(case.arguments[name])
        kinks += [
            f"row {row}: ‖{name}‖ is within 10·√ε of 0, where cos bends within a finite-difference step"
            for row in range(norms.shape[0])
            if float(norms[row]) <= 10 * EMBEDDING_EPS**0.5
        ]
    return kinks


def watch_embedding_cosine(case: Case) -> dict[str, Tensor]:
    """Return the cosine of each pair."""
    return {"cos(x₁, x₂)": smooth_cosine(case.arguments["input1"], case.arguments["input2"])}


def build_cosine_similarity(values: Values) -> Case:
    """Read x1, x2, an optional target cosine per pair and eps."""
    x1, x2 = read_pair(values)
    arguments = {"x1": x1, "x2": x2}
    if values.has("score"):
        score = values.per_row("score", x1.shape[0])
        if bool(((score < -1) | (score > 1)).any()):
            raise UsageError(
                f"--score: expected target cosines in [-1, 1], got {values.text['score']}"
            )
        arguments["score"] = score
    options = {"eps": values.number("eps", COSINE_EPS), "reduction": read_scalar_reduction(values)}
    return Case(arguments, ("x1", "x2"), options)


def cosine_similarity_reference(case: Case) -> Tensor:
    """Return 1 − cos, or (cos − s)² with a target score."""
    cos = cosine(case.arguments["x1"], case.arguments["x2"], float(case.options["eps"]))
    score = case.arguments.get("score")
    per_row = 1 - cos if score is None else (cos - score) ** 2
    return reduce(per_row, case.options["reduction"])


def cosine_similarity_kinks(case: Case) -> list[str]:
    """List the rows with a norm at the eps clamp, where the clamped norm stops varying."""
    eps = float(case.options["eps"])
    kinks = []
    for name in ("x1", "x2"):
        norms = norm(case.arguments[name])
        kinks += [
            f"row {row}: ‖{name}‖ is at the clamp eps = {eps:g}"
            for row in range(norms.shape[0])
            if abs(float(norms[row]) - eps) <= KINK_RADIUS or float(norms[row]) < eps
        ]
    return kinks


def watch_similarity_cosine(case: Case) -> dict[str, Tensor]:
    """Return the cosine of each pair and the norms, which the gradient leaves almost unchanged."""
    x1, x2 = case.arguments["x1"], case.arguments["x2"]
    return {
        "cos(x₁, x₂)": cosine(x1, x2, float(case.options["eps"])),
        "‖x₁‖": norm(x1),
        "‖x₂‖": norm(x2),
    }


def first_row(case: Case) -> Case:
    """Return the case restricted to its first pair or triplet."""
    return case.replace(**{name: tensor[:1] for name, tensor in case.arguments.items()})


def place_cosine(first: str, second: str) -> Callable[[Case, Tensor], Case]:
    """Return a sweep that turns the second vector of the first pair so that cos(first, second) = t.

    The second vector keeps its length and stays in the plane of the two vectors.
    """

    def place(case: Case, t: Tensor) -> Case:
        case = first_row(case)
        x1, x2 = case.arguments[first][0], case.arguments[second][0]
        if x1.numel() < 2:
            raise UsageError(
                "--plot: turning one vector against another needs at least 2 dimensions"
            )
        along = x1 / norm(x1).clamp(min=COSINE_EPS)
        across = x2 - (x2 @ along) * along
        if float(norm(across)) <= 1e-9:
            # Parallel vectors: turn towards the axis least aligned with x₁.
            axis = torch.zeros_like(x1)
            axis[int(along.abs().argmin())] = 1.0
            across = axis - (axis @ along) * along
        across = across / norm(across)
        turned = norm(x2) * (t * along + (1 - t**2).sqrt() * across)
        return case.replace(**{second: turned.unsqueeze(0)})

    return place


# 4. The pair hinges.


def build_negative_pair(values: Values) -> Case:
    """Read x1, x2, the margin and the distance."""
    x1, x2 = read_pair(values)
    options = {
        "margin": values.number("margin", 1.0),
        "distance": values.choice("distance", DISTANCES, "euclidean"),
        "reduction": read_scalar_reduction(values),
    }
    return Case({"x1": x1, "x2": x2}, ("x1", "x2"), options)


def negative_pair_reference(case: Case) -> Tensor:
    """Return max(margin − d, 0)."""
    d = distance(str(case.options["distance"]), case.arguments["x1"], case.arguments["x2"])
    return reduce(torch.relu(float(case.options["margin"]) - d), case.options["reduction"])


def hinge_corners(d: Tensor, margin: float, rows: list[int], what: str) -> list[str]:
    """List the ``rows`` whose distance equals ``margin``."""
    return [
        f"row {row}: d equals {what} {margin:g}, where the hinge has a corner"
        for row in rows
        if abs(float(d[row]) - margin) <= KINK_RADIUS
    ]


def negative_pair_kinks(case: Case) -> list[str]:
    """List the pairs at the margin and the coincident pairs."""
    x1, x2 = case.arguments["x1"], case.arguments["x2"]
    name = str(case.options["distance"])
    d = distance(name, x1, x2)
    corners = hinge_corners(d, float(case.options["margin"]), list(range(d.shape[0])), "the margin")
    return corners + coincident_rows(name, x1, x2, "x₁ and x₂")


def watch_pair_distance(case: Case) -> dict[str, Tensor]:
    """Return the distance of each pair."""
    return {
        "distance d": distance(
            str(case.options["distance"]), case.arguments["x1"], case.arguments["x2"]
        )
    }


def build_contrastive(values: Values) -> Case:
    """Read x1, x2, a 1/0 label per pair, both margins, the distance and ``--squared``."""
    x1, x2 = read_pair(values)
    target = read_labels(values, x1.shape[0], (1, 0), "1 (similar) or 0 (dissimilar)")
    options = {
        "pos_margin": values.number("pos_margin", 0.0),
        "neg_margin": values.number("neg_margin", 1.0),
        "distance": values.choice("distance", DISTANCES, "euclidean"),
        "squared": values.switch("squared"),
        "reduction": read_scalar_reduction(values),
    }
    return Case({"x1": x1, "x2": x2, "target": target}, ("x1", "x2"), options)


def contrastive_reference(case: Case) -> Tensor:
    """Return y·h₊ + (1 − y)·h₋, each hinge squared with ``squared``."""
    x1, x2, y = case.arguments["x1"], case.arguments["x2"], case.arguments["target"]
    d = distance(str(case.options["distance"]), x1, x2)
    pull = torch.relu(d - float(case.options["pos_margin"]))
    push = torch.relu(float(case.options["neg_margin"]) - d)
    if case.options["squared"]:
        pull, push = pull**2, push**2
    return reduce(y * pull + (1 - y) * push, case.options["reduction"])


def contrastive_kinks(case: Case) -> list[str]:
    """List the hinge corners (squared hinges have none) and the coincident pairs."""
    x1, x2, y = case.arguments["x1"], case.arguments["x2"], case.arguments["target"]
    name = str(case.options["distance"])
    kinks = []
    if not case.options["squared"]:
        d = distance(name, x1, x2)
        similar = [row for row in range(d.shape[0]) if float(y[row]) == 1]
        dissimilar = [row for row in range(d.shape[0]) if float(y[row]) == 0]
        kinks += hinge_corners(d, float(case.options["pos_margin"]), similar, "pos_margin")
        kinks += hinge_corners(d, float(case.options["neg_margin"]), dissimilar, "neg_margin")
    return kinks + coincident_rows(name, x1, x2, "x₁ and x₂")


def place_pair_distance(case: Case, t: Tensor) -> Case:
    """Return the first pair alone, with x₂ moved along the line to x₁ so that ‖x₁ − x₂‖ = t."""
    case = first_row(case)
    x1, x2 = case.arguments["x1"][0], case.arguments["x2"][0]
    direction = x1 - x2
    if float(norm(direction)) <= KINK_RADIUS:
        direction = torch.zeros_like(x1)
        direction[0] = 1.0
    direction = direction / norm(direction)
    return case.replace(x2=(x1 - t * direction).unsqueeze(0))


def widen_pair_distance(case: Case) -> tuple[float, float]:
    """Return [0, twice the largest margin], at least [0, 2]."""
    margins = [
        float(case.options[key])
        for key in ("margin", "pos_margin", "neg_margin")
        if key in case.options
    ]
    return 0.0, max([2.0] + [2 * margin for margin in margins])


def measure_pair_distance(case: Case) -> float:
    """Return ‖x₁ − x₂‖ of the first pair."""
    return float(norm(case.arguments["x1"][0] - case.arguments["x2"][0]))


PAIR_DISTANCE = Sweep(
    "distance",
    "distance ‖x₁ − x₂‖ of the first pair",
    0.0,
    2.0,
    place_pair_distance,
    widen_pair_distance,
    measure_pair_distance,
)


def measure_cosine(first: str, second: str) -> Callable[[Case], float]:
    """Return a function that gives the cosine of the first pair of ``first`` and ``second``."""
    return lambda case: float(cosine(case.arguments[first][:1], case.arguments[second][:1])[0])


# 5. The triplet loss.


def build_triplet(values: Values) -> Case:
    """Read anchor, positive and negative, the margin, p, the distance and ``--swap``."""
    anchor = values.matrix("anchor")
    positive = values.matrix("positive")
    negative = values.matrix("negative")
    same_shape("anchor", anchor, "positive", positive)
    same_shape("anchor", anchor, "negative", negative)
    options: dict[str, object] = {
        "margin": values.number("margin", 1.0),
        "p": values.number("p", 2.0),
        "swap": values.switch("swap"),
        "reduction": read_scalar_reduction(values),
    }
    if values.has("distance"):
        options["distance"] = values.choice("distance", DISTANCES, "euclidean")
    arguments = {"anchor": anchor, "positive": positive, "negative": negative}
    return Case(arguments, ("anchor", "positive", "negative"), options)


def triplet_distance(case: Case, x1: Tensor, x2: Tensor) -> Tensor:
    """Return the triplet's distance: the p-norm by default, or the named distance."""
    name = case.options.get("distance")
    if name is None:
        return norm(x1 - x2, float(case.options["p"]))
    return distance(str(name), x1, x2)


def triplet_parts(case: Case) -> tuple[Tensor, Tensor]:
    """Return d(a, p) and the negative distance d⁻ (the smaller one with swap)."""
    anchor, positive, negative = (
        case.arguments[name] for name in ("anchor", "positive", "negative")
    )
    positive_distance = triplet_distance(case, anchor, positive)
    negative_distance = triplet_distance(case, anchor, negative)
    if case.options["swap"]:
        swapped = triplet_distance(case, positive, negative)
        # A tie uses d(a, n), as the library does.
        negative_distance = torch.where(swapped < negative_distance, swapped, negative_distance)
    return positive_distance, negative_distance


def triplet_reference(case: Case) -> Tensor:
    """Return max(d(a, p) − d⁻ + margin, 0)."""
    positive_distance, negative_distance = triplet_parts(case)
    hinge = torch.relu(positive_distance - negative_distance + float(case.options["margin"]))
    return reduce(hinge, case.options["reduction"])


def triplet_kinks(case: Case) -> list[str]:
    """List the triplets at the hinge corner, the coincident points and the swap ties."""
    positive_distance, negative_distance = triplet_parts(case)
    gap = positive_distance - negative_distance + float(case.options["margin"])
    kinks = [
        f"row {row}: d(a, p) − d⁻ + margin is 0, where the hinge has a corner"
        for row in range(gap.shape[0])
        if abs(float(gap[row])) <= KINK_RADIUS
    ]
    # Where the hinge is silent the gradient is 0 on both sides of a distance's
    # own kink, so only rows with an active hinge can sit on one.
    active = [row for row in range(gap.shape[0]) if float(gap[row]) > -KINK_RADIUS]
    name = str(case.options.get("distance") or "euclidean")
    anchor, positive, negative = (case.arguments[key] for key in ("anchor", "positive", "negative"))
    kinks += coincident_rows(name, anchor, positive, "the anchor and the positive", active)
    kinks += coincident_rows(name, anchor, negative, "the anchor and the negative", active)
    if case.options["swap"]:
        kinks += coincident_rows(name, positive, negative, "the positive and the negative", active)
        swapped = triplet_distance(case, positive, negative)
        direct = triplet_distance(case, anchor, negative)
        kinks += [
            f"row {row}: d(p, n) = d(a, n), where swap's min switches"
            for row in active
            if abs(float(swapped[row] - direct[row])) <= KINK_RADIUS
        ]
    return kinks


def watch_triplet(case: Case) -> dict[str, Tensor]:
    """Return both distances and the hinge's argument."""
    positive_distance, negative_distance = triplet_parts(case)
    return {
        "d(a, p)": positive_distance,
        "d⁻ = d(a, n)" if not case.options["swap"] else "d⁻": negative_distance,
        "d(a, p) − d⁻ + margin": positive_distance
        - negative_distance
        + float(case.options["margin"]),
    }


def widen_negative_distance(case: Case) -> tuple[float, float]:
    """Return a range past the point d(a, p) + margin where the first triplet's hinge goes silent."""
    positive_distance, _ = triplet_parts(first_row(case))
    return 0.0, max(3.0, float(positive_distance[0]) + 2 * float(case.options["margin"]))


def place_negative_distance(case: Case, t: Tensor) -> Case:
    """Return the first triplet alone, with the negative moved from the anchor to distance t."""
    case = first_row(case)
    anchor, negative = case.arguments["anchor"][0], case.arguments["negative"][0]
    direction = negative - anchor
    if float(norm(direction)) <= KINK_RADIUS:
        direction = torch.zeros_like(anchor)
        direction[0] = 1.0
    direction = direction / norm(direction)
    return case.replace(negative=(anchor + t * direction).unsqueeze(0))


EXPLAINERS = (
    Explainer(
        name="cosine_similarity_loss",
        takes=("input", "other", "score", "eps", "reduction"),
        build=build_cosine_similarity,
        reference=cosine_similarity_reference,
        watch=watch_similarity_cosine,
        kinks=cosine_similarity_kinks,
        examples=(
            Example(
                PULL_EXAMPLE,
                "1 − cos has the gradient of −cos, and ∂cos/∂x₁ = x₂/(‖x₁‖‖x₂‖) − cos·x₁/‖x₁‖²: "
                "the part of x₂'s direction orthogonal to x₁, divided by ‖x₁‖. Because it is "
                "orthogonal to x₁, descent turns each vector towards the other and leaves the "
                "norms almost unchanged; the cosine rises towards 1 (try --steps 5).",
            ),
        ),
        sweep=Sweep(
            "cosine",
            "cosine of the first pair",
            -0.99,
            0.99,
            place_cosine("x1", "x2"),
            measure=measure_cosine("x1", "x2"),
        ),
        learning_rate=0.1,
    ),
    Explainer(
        name="cosine_embedding_loss",
        takes=("input", "other", "target", "margin", "reduction"),
        build=build_cosine_embedding,
        reference=cosine_embedding_reference,
        watch=watch_embedding_cosine,
        kinks=cosine_embedding_kinks,
        examples=(
            Example(
                {**PULL_EXAMPLE, "target": "-1"},
                "This is the push side (y = −1) on the pair that cosine_similarity_loss pulls "
                "together: the loss is max(0, cos − margin) and its gradient +∂cos/∂xᵢ, the "
                "opposite sign, so descent lowers the cosine and drives the vectors apart until "
                "cos reaches the margin, where the hinge goes silent (try --steps 5).",
            ),
            Example(
                {**PULL_EXAMPLE, "target": "1"},
                "With y = 1 the loss is 1 − cos, the pull of cosine_similarity_loss: the same "
                "gradient −∂cos/∂xᵢ (up to PyTorch's ε in the norms).",
            ),
        ),
        sweep=Sweep(
            "cosine",
            "cosine of the first pair",
            -0.99,
            0.99,
            place_cosine("input1", "input2"),
            measure=measure_cosine("input1", "input2"),
        ),
        learning_rate=0.1,
    ),
    Explainer(
        name="negative_pair_loss",
        takes=("input", "other", "margin", "distance", "reduction"),
        build=build_negative_pair,
        reference=negative_pair_reference,
        watch=watch_pair_distance,
        kinks=negative_pair_kinks,
        examples=(
            Example(
                PULL_EXAMPLE,
                "The distance 0.36 is below the margin 1, so the loss is 1 − d and the gradient "
                "pushes x₁ and x₂ apart along the line joining them, with unit size whatever d "
                "is. Each step adds 2·lr to d until d passes the margin; from then on loss and "
                "gradient are 0 (try --steps 5 --lr 0.1).",
            ),
            Example(
                {"input": "1.0,0.0", "other": "0.0,1.5"},
                "The distance 1.80 is past the margin: the hinge is silent, the loss and the "
                "gradient are exactly 0, and a pair that is already far enough apart costs "
                "nothing.",
            ),
        ),
        sweep=PAIR_DISTANCE,
        learning_rate=0.1,
    ),
    Explainer(
        name="contrastive_loss",
        takes=(
            "input",
            "other",
            "target",
            "pos_margin",
            "neg_margin",
            "distance",
            "squared",
            "reduction",
        ),
        build=build_contrastive,
        reference=contrastive_reference,
        watch=watch_pair_distance,
        kinks=contrastive_kinks,
        examples=(
            Example(
                {
                    "input": "0.1,0.2,0.3;0.1,0.2,0.3",
                    "other": "0.4,0.2,0.5;0.2,0.1,0.3",
                    "target": "1,0",
                },
                "Row 0 is a similar pair (y = 1): it is pulled together by a unit gradient until d "
                "reaches pos_margin. Row 1 is a dissimilar pair (y = 0) closer than neg_margin: it "
                "is pushed apart until d reaches neg_margin, where its hinge goes silent.",
            ),
            Example(
                {**PULL_EXAMPLE, "target": "0"},
                "A single dissimilar pair is negative_pair_loss with neg_margin as its margin: "
                "the same push of unit size while d < neg_margin, and silence beyond it.",
            ),
        ),
        sweep=PAIR_DISTANCE,
        learning_rate=0.1,
    ),
    Explainer(
        name="triplet_margin_loss",
        takes=("anchor", "positive", "negative", "margin", "p", "swap", "distance", "reduction"),
        build=build_triplet,
        reference=triplet_reference,
        watch=watch_triplet,
        kinks=triplet_kinks,
        examples=(
            Example(
                {"anchor": "0.1,0.2,0.3", "positive": "0.4,0.2,0.5", "negative": "0.2,0.1,0.3"},
                "The negative is closer to the anchor than the positive, so the hinge is active: "
                "the gradient pulls the anchor towards the positive and pushes it from the "
                "negative, each with a unit vector. Once d(a, n) exceeds d(a, p) by the margin, "
                "loss and gradients are 0.",
            ),
            Example(
                {"anchor": "0.1,0.2,0.3", "positive": "0.4,0.2,0.5", "negative": "1.5,1.0,1.2"},
                "Here d(a, n) = 1.85 already exceeds d(a, p) + margin = 1.36: the triplet is "
                "satisfied, and the loss and every gradient are exactly 0.",
            ),
        ),
        sweep=Sweep(
            "distance",
            "distance ‖a − n‖ from the anchor to the negative",
            0.0,
            3.0,
            place_negative_distance,
            widen_negative_distance,
            lambda case: float(norm(case.arguments["anchor"][0] - case.arguments["negative"][0])),
        ),
        learning_rate=0.1,
    ),
)
