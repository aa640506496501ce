"""Explainers of the regression losses: l1_loss, mse_loss, huber_loss, smooth_l1_loss."""

from __future__ import annotations

from torch import Tensor

from ._check import KINK_RADIUS
from ._table import Case, Example, Explainer, Sweep, no_kinks, reduce, same_shape
from ._values import UsageError, Values

__all__ = ["EXPLAINERS"]

TAKES = ("input", "target", "reduction")
WEIGHTED_TAKES = (*TAKES, "weight")


def build(values: Values, **options: object) -> Case:
    """Read ``--input`` (the prediction), ``--target`` and an optional ``--weight``, all of one shape."""
    prediction = values.array("input")
    target = values.array("target")
    same_shape("input", prediction, "target", target)
    arguments = {"input": prediction, "target": target}
    if values.has("weight"):
        weight = values.array("weight")
        same_shape("input", prediction, "weight", weight)
        arguments["weight"] = weight
    reduction = values.choice("reduction", ("mean", "sum"), "mean")
    return Case(arguments, ("input",), {"reduction": reduction, **options})


def build_huber(values: Values) -> Case:
    """Read the regression inputs and ``--delta``."""
    return build(values, delta=values.number("delta", 1.0))


def reduce_weighted(per_element: Tensor, case: Case, weight_sum_mean: bool) -> Tensor:
    """Weight the per-element losses and reduce them.

    A weighted ``mean`` divides by the weight sum when ``weight_sum_mean``
    (l1_loss, mse_loss) and by the element count otherwise (huber_loss).
    """
    weight = case.arguments.get("weight")
    if weight is None:
        return reduce(per_element, case.options["reduction"])
    total = (weight * per_element).sum()
    if case.options["reduction"] == "sum":
        return total
    denominator = float(weight.sum()) if weight_sum_mean else per_element.numel()
    return total * 0.0 if denominator == 0 else total / denominator


def build_smooth_l1(values: Values) -> Case:
    """Read the regression inputs and ``--beta``."""
    return build(values, beta=values.number("beta", 1.0))


def residual(case: Case) -> Tensor:
    """Return x − y."""
    return case.arguments["input"] - case.arguments["target"]


def l1_reference(case: Case) -> Tensor:
    """Return mean or sum of w |x − y|."""
    return reduce_weighted(residual(case).abs(), case, weight_sum_mean=True)


def mse_reference(case: Case) -> Tensor:
    """Return mean or sum of w (x − y)²."""
    return reduce_weighted(residual(case) ** 2, case, weight_sum_mean=True)


def huber_reference(case: Case) -> Tensor:
    """Return Huber's loss: r²/2 inside |r| ≤ δ, δ(|r| − δ/2) outside."""
    r = residual(case)
    delta = float(case.options["delta"])
    per_element = (r.abs() <= delta).double() * 0.5 * r**2 + (
        r.abs() > delta
    ).double() * delta * (r.abs() - 0.5 * delta)
    return reduce_weighted(per_element, case, weight_sum_mean=False)


def smooth_l1_reference(case: Case) -> Tensor:
    """Return smooth L1: r²/(2β) inside |r| < β, |r| − β/2 outside; |r| when β = 0."""
    r = residual(case)
    beta = float(case.options["beta"])
    if beta == 0:
        return reduce(r.abs(), case.options["reduction"])
    if beta < 0:
        raise UsageError(f"--beta: expected a number >= 0, got {beta}")
    inside = (r.abs() < beta).double()
    per_element = inside * 0.5 * r**2 / beta + (1 - inside) * (r.abs() - 0.5 * beta)
    return reduce(per_element, case.options["reduction"])


def watch_residual(case: Case) -> dict[str, Tensor]:
    """Return the residual, the quantity every regression loss is a function of."""
    return {"residual x − y": residual(case)}


def zero_residual_kinks(case: Case) -> list[str]:
    """List the elements whose residual is 0, where |x − y| has a kink."""
    r = residual(case).reshape(-1)
    return [
        f"the residual of element {index} is 0, where |x − y| has no derivative"
        for index in range(r.numel())
        if abs(float(r[index])) <= KINK_RADIUS
    ]


def smooth_l1_kinks(case: Case) -> list[str]:
    """With β = 0 smooth L1 is L1 and has a kink at zero residual; otherwise it is smooth."""
    return zero_residual_kinks(case) if float(case.options["beta"]) == 0 else []


def place_residual(case: Case, t: Tensor) -> Case:
    """Return the first element alone, with its residual set to ``t``."""
    target = case.arguments["target"].reshape(-1)[:1]
    first = case.replace(input=target + t.reshape(1), target=target)
    if "weight" in case.arguments:
        first.arguments["weight"] = case.arguments["weight"].reshape(-1)[:1]
    return first


def measure_residual(case: Case) -> float:
    """Return the first element's residual."""
    return float(residual(case).reshape(-1)[0])


RESIDUAL = Sweep(
    "residual", "residual r = x − y", -2.0, 2.0, place_residual, measure=measure_residual
)


def residual_sweep(option: str) -> Sweep:
    """Return the residual sweep, widened to ±3 times the loss's ``option`` (δ or β) when that is larger."""

    def widen(case: Case) -> tuple[float, float]:
        half_width = max(2.0, 3 * float(case.options[option]))
        return -half_width, half_width

    return Sweep(
        "residual", "residual r = x − y", -2.0, 2.0, place_residual, widen, measure_residual
    )


EXPLAINERS = (
    Explainer(
        name="l1_loss",
        takes=WEIGHTED_TAKES,
        build=build,
        reference=l1_reference,
        watch=watch_residual,
        kinks=zero_residual_kinks,
        examples=(
            Example(
                {"input": "0.5", "target": "0.7"},
                "The error is only −0.2, yet the gradient is −1: the L1 gradient is sign(x − y) "
                "whatever the size of the error. Each step of gradient descent therefore raises "
                "the prediction by exactly the learning rate (try --steps 3 --lr 0.05).",
            ),
            Example(
                {"input": "0.7,0.2", "target": "0.7,0.5"},
                "The first residual is exactly 0, where |x − y| has a corner. lossgrad uses the "
                "subgradient sign(0) = 0 there, so that element gets no gradient; the check marks "
                "the point as a kink instead of comparing it with finite differences.",
            ),
        ),
        sweep=RESIDUAL,
        learning_rate=0.05,
    ),
    Explainer(
        name="mse_loss",
        takes=WEIGHTED_TAKES,
        build=build,
        reference=mse_reference,
        watch=watch_residual,
        kinks=no_kinks,
        examples=(
            Example(
                {"input": "0.5,1.0", "target": "0.7,0.4"},
                "The gradient 2(x − y)/N is proportional to the residual: the element that is off "
                "by 0.6 is pulled three times as hard as the one off by 0.2, and both steps shrink "
                "as the residuals do.",
            ),
        ),
        sweep=RESIDUAL,
    ),
    Explainer(
        name="huber_loss",
        takes=(*WEIGHTED_TAKES, "delta"),
        build=build_huber,
        reference=huber_reference,
        watch=watch_residual,
        kinks=no_kinks,
        examples=(
            Example(
                {"input": "0.5,3.0", "target": "0.7,0.0", "delta": "1.0"},
                "The small residual (−0.2) is inside |r| ≤ δ, where Huber is r²/2 and its gradient "
                "is the residual itself. The outlier (3.0) is outside, where the gradient is capped "
                "at δ·sign(r): an outlier pulls no harder than δ.",
            ),
        ),
        sweep=residual_sweep("delta"),
    ),
    Explainer(
        name="smooth_l1_loss",
        takes=(*TAKES, "beta"),
        build=build_smooth_l1,
        reference=smooth_l1_reference,
        watch=watch_residual,
        kinks=smooth_l1_kinks,
        examples=(
            Example(
                {"input": "0.5,3.0", "target": "0.7,0.0", "beta": "1.0"},
                "Smooth L1 is Huber divided by β: inside |r| < β the gradient is r/β, outside "
                "it is sign(r), exactly L1's. With --beta 0 it is L1 itself.",
            ),
        ),
        sweep=residual_sweep("beta"),
    ),
)
