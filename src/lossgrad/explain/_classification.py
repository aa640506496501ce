"""Explainers of the classification losses: cross_entropy and the two binary cross-entropies."""

from __future__ import annotations

import torch
from torch import Tensor

from ._check import KINK_RADIUS
from ._table import Case, Example, Explainer, Sweep, no_kinks, reduce
from ._values import UsageError, Values

__all__ = ["EXPLAINERS", "class_indices", "log_softmax", "softmax"]


def softmax(logits: Tensor) -> Tensor:
    """Return exp(x − max) / Σ exp(x − max) over the last dimension."""
    shifted = logits - logits.max(dim=-1, keepdim=True).values.detach()
    return shifted.exp() / shifted.exp().sum(dim=-1, keepdim=True)


def log_softmax(logits: Tensor) -> Tensor:
    """Return x − max − log Σ exp(x − max) over the last dimension."""
    shifted = logits - logits.max(dim=-1, keepdim=True).values.detach()
    return shifted - shifted.exp().sum(dim=-1, keepdim=True).log()


def class_indices(
    values: Values, key: str, rows: int, classes: int, ignore_index: int | None = None
) -> Tensor:
    """Read one class index per row, each in [0, classes) or equal to ``ignore_index``."""
    numbers = values.per_row(key, rows)
    flag = "--" + key.replace("_", "-")
    for number in numbers.tolist():
        if number != int(number):
            raise UsageError(f"{flag}: expected integer class indices, got {number:g}")
        if int(number) == ignore_index:
            continue
        if not 0 <= number < classes:
            raise UsageError(
                f"{flag}: class index {int(number)} is out of range for {classes} classes "
                f"(0 to {classes - 1})"
            )
    return numbers.long()


def check_probabilities(key: str, tensor: Tensor) -> None:
    """Raise UsageError unless every entry is in [0, 1]."""
    outside = (tensor < 0) | (tensor > 1)
    if bool(outside.any()):
        raise UsageError(
            f"--{key}: expected probabilities in [0, 1], got {float(tensor[outside][0]):g}"
        )


# 1. cross_entropy


def build_cross_entropy(values: Values) -> Case:
    """Read N x C logits and one class index per row or N x C target probabilities."""
    logits = values.matrix("input")
    rows, classes = logits.shape
    ignore_index = values.integer("ignore_index", -100)
    options: dict[str, object] = {
        "reduction": values.choice("reduction", ("mean", "sum"), "mean"),
        "label_smoothing": values.number("label_smoothing", 0.0),
        "ignore_index": ignore_index,
    }
    arguments = {"input": logits}
    notes = []
    target_rows = values.matrix("target")
    if target_rows.shape == logits.shape and classes > 1:
        check_probabilities("target", target_rows)
        arguments["target"] = target_rows
        notes.append("--target as one row of class probabilities per row of --input")
    else:
        arguments["target"] = class_indices(values, "target", rows, classes, ignore_index)
    if values.has("weight"):
        weight = values.matrix("weight").reshape(-1)
        if weight.numel() != classes:
            raise UsageError(f"--weight: expected {classes} class weights, got {weight.numel()}")
        arguments["weight"] = weight
    return Case(arguments, ("input",), options, notes)


def target_distribution(case: Case) -> Tensor:
    """Return the target as N x C probabilities (one-hot rows for class indices; ignored rows 0)."""
    logits, target = case.arguments["input"], case.arguments["target"]
    if target.is_floating_point():
        return target
    kept = target != case.options["ignore_index"]
    one_hot = torch.zeros_like(logits)
    one_hot[kept.nonzero().reshape(-1), target[kept]] = 1.0
    return one_hot


def cross_entropy_reference(case: Case) -> Tensor:
    """Return Σ_c w_c q_c (−log p_c) per row, reduced as PyTorch does."""
    logits, target = case.arguments["input"], case.arguments["target"]
    rows, classes = logits.shape
    weight = case.arguments.get("weight", torch.ones(classes, dtype=torch.float64))
    smoothing = float(case.options["label_smoothing"])
    y = target_distribution(case)
    if target.is_floating_point():
        kept = torch.ones(rows, dtype=torch.bool)
        q = (1 - smoothing) * y + smoothing / classes
        denominator = torch.tensor(float(rows), dtype=torch.float64)
    else:
        kept = target != case.options["ignore_index"]
        q = ((1 - smoothing) * y + smoothing / classes) * kept.double().unsqueeze(1)
        denominator = (y * weight).sum()
    per_row = -(weight * q * log_softmax(logits)).sum(dim=1)
    if case.options["reduction"] == "sum":
        return per_row.sum()
    if float(denominator) == 0:
        return per_row.sum() * 0.0
    return per_row.sum() / denominator


def watch_softmax(case: Case) -> dict[str, Tensor]:
    """Return the softmax and its distance from the target, the unweighted gradient of one row."""
    p = softmax(case.arguments["input"])
    smoothing = float(case.options["label_smoothing"])
    if smoothing == 0:
        return {"p = softmax(x)": p, "p − y": p - target_distribution(case)}
    q = (1 - smoothing) * target_distribution(case) + smoothing / p.shape[-1]
    return {"p = softmax(x)": p, "q = (1 − ε)y + ε/C": q, "p − q": p - q}


def target_column(case: Case) -> int:
    """Return the class of the first row's target (its largest probability for soft targets)."""
    target = case.arguments["target"]
    if target.is_floating_point():
        return int(target[0].argmax())
    first = int(target[0])
    return 0 if first == case.options["ignore_index"] else first


def place_target_logit(case: Case, t: Tensor) -> Case:
    """Return the first row alone, with the logit of its target class set to ``t``."""
    column = target_column(case)
    row = case.arguments["input"][:1]
    mask = torch.zeros_like(row)
    mask[0, column] = 1.0
    logits = row * (1 - mask) + t * mask
    return case.replace(input=logits, target=case.arguments["target"][:1])


def measure_target_logit(case: Case) -> float:
    """Return the first row's logit of its target class."""
    return float(case.arguments["input"][0, target_column(case)])


TARGET_LOGIT = Sweep(
    "logit",
    "logit x_y of the first row's target class",
    -6.0,
    6.0,
    place_target_logit,
    measure=measure_target_logit,
)


# 2. binary_cross_entropy_with_logits and binary_cross_entropy


def build_binary(values: Values, probabilities: bool) -> Case:
    """Read the input and a target of its shape, or one class index per row as one-hot rows."""
    prediction = values.array("input")
    notes = []
    target = values.array("target")
    if target.shape != prediction.shape:
        # One class index per row: the one-hot rows that cross_entropy would use.
        matrix = prediction if prediction.dim() == 2 else prediction.unsqueeze(0)
        rows, classes = matrix.shape
        indices = class_indices(values, "target", rows, classes)
        one_hot = torch.zeros_like(matrix)
        one_hot[torch.arange(rows), indices] = 1.0
        target = one_hot.reshape(prediction.shape)
        notes.append(f"--target {values.text['target']} as the one-hot rows {format_rows(one_hot)}")
    check_probabilities("target", target)
    if probabilities:
        check_open_unit_interval(prediction)

    arguments = {"input": prediction, "target": target}
    if values.has("weight"):
        arguments["weight"] = broadcastable("weight", values.array("weight"), prediction)
    options: dict[str, object] = {"reduction": values.choice("reduction", ("mean", "sum"), "mean")}
    if values.has("pos_weight"):
        classes = prediction.shape[-1] if prediction.dim() else 1
        pos_weight = values.matrix("pos_weight").reshape(-1)
        if pos_weight.numel() not in (1, classes):
            raise UsageError(
                f"--pos-weight: expected 1 or {classes} values, one per class, got {pos_weight.numel()}"
            )
        arguments["pos_weight"] = pos_weight
    return Case(arguments, ("input",), options, notes)


def check_open_unit_interval(prediction: Tensor) -> None:
    """Raise UsageError unless every probability is strictly inside (0, 1).

    At 0 and 1 the logs are clamped, and a central difference would step
    outside [0, 1], where the loss is not defined.
    """
    outside = (prediction <= KINK_RADIUS) | (prediction >= 1 - KINK_RADIUS)
    if bool(outside.any()):
        raise UsageError(
            "--input: expected probabilities strictly between 0 and 1, "
            f"got {float(prediction[outside][0]):g}"
        )


def broadcastable(key: str, tensor: Tensor, prediction: Tensor) -> Tensor:
    """Return ``tensor`` if it broadcasts to the prediction's shape."""
    try:
        torch.broadcast_shapes(tensor.shape, prediction.shape)
    except RuntimeError:
        raise UsageError(
            f"--{key}: expected a shape that broadcasts to the input's, got {tuple(tensor.shape)}"
        ) from None
    return tensor


def format_rows(matrix: Tensor) -> str:
    """Format a matrix of small integers as (1, 0, 0); (0, 1, 0)."""
    return "; ".join(
        "(" + ", ".join(f"{value:g}" for value in row) + ")" for row in matrix.tolist()
    )


def build_with_logits(values: Values) -> Case:
    """Read logits and targets in [0, 1]."""
    return build_binary(values, probabilities=False)


def build_probabilities(values: Values) -> Case:
    """Read probabilities in (0, 1) and targets in [0, 1]."""
    return build_binary(values, probabilities=True)


def softplus(x: Tensor) -> Tensor:
    """Return log(1 + eˣ) without overflow.

    PyTorch's softplus is smooth at 0 in autograd too, unlike the split form
    max(x, 0) + log(1 + e^−|x|), whose two pieces each have a kink there.
    """
    return torch.nn.functional.softplus(x)


def with_logits_reference(case: Case) -> Tensor:
    """Return w [pw·y·softplus(−x) + (1 − y)·softplus(x)], mean over elements."""
    x, y = case.arguments["input"], case.arguments["target"]
    weight = case.arguments.get("weight", torch.ones((), dtype=torch.float64))
    pos_weight = case.arguments.get("pos_weight", torch.ones((), dtype=torch.float64))
    per_element = weight * (pos_weight * y * softplus(-x) + (1 - y) * softplus(x))
    return reduce(per_element, case.options["reduction"])


def probabilities_reference(case: Case) -> Tensor:
    """Return −w [y log p + (1 − y) log(1 − p)], mean over elements."""
    p, y = case.arguments["input"], case.arguments["target"]
    weight = case.arguments.get("weight", torch.ones((), dtype=torch.float64))
    per_element = -weight * (y * p.log().clamp(min=-100) + (1 - y) * (1 - p).log().clamp(min=-100))
    return reduce(per_element, case.options["reduction"])


def watch_sigmoid(case: Case) -> dict[str, Tensor]:
    """Return σ(x) and σ(x) − y, the unweighted gradient."""
    p = 1 / (1 + torch.exp(-case.arguments["input"]))
    return {"p = σ(x)": p, "p − y": p - case.arguments["target"]}


def watch_probability(case: Case) -> dict[str, Tensor]:
    """Return p − y and p(1 − p), the numerator and denominator of the gradient."""
    p = case.arguments["input"]
    return {"p − y": p - case.arguments["target"], "p (1 − p)": p * (1 - p)}


def first_target_position(case: Case) -> int:
    """Return the flat index, within the first row, of the element with the largest target."""
    target = case.arguments["target"]
    first_row = target[0] if target.dim() == 2 else target
    return int(first_row.reshape(-1).argmax())


def place_first_row(case: Case, t: Tensor) -> Case:
    """Return the first row alone, with its target's element (the logit or probability) set to ``t``."""
    prediction, target = case.arguments["input"], case.arguments["target"]
    row = prediction[:1] if prediction.dim() == 2 else prediction.reshape(1, -1)
    target_row = target[:1] if target.dim() == 2 else target.reshape(1, -1)
    mask = torch.zeros_like(row)
    mask.view(-1)[first_target_position(case)] = 1.0
    arguments = {"input": row * (1 - mask) + t * mask, "target": target_row}
    if "weight" in case.arguments:
        weight = case.arguments["weight"]
        arguments["weight"] = weight[:1] if weight.dim() == 2 else weight
    return case.replace(**arguments)


def measure_first_row(case: Case) -> float:
    """Return the first row's input at its target's element."""
    prediction = case.arguments["input"]
    row = prediction[0] if prediction.dim() == 2 else prediction
    return float(row.reshape(-1)[first_target_position(case)])


LOGIT = Sweep(
    "logit",
    "logit x of the first row's target element",
    -6.0,
    6.0,
    place_first_row,
    measure=measure_first_row,
)
PROBABILITY = Sweep(
    "probability",
    "probability p of the first row's target element",
    0.02,
    0.98,
    place_first_row,
    measure=measure_first_row,
)


EXPLAINERS = (
    Explainer(
        name="cross_entropy",
        takes=("input", "target", "weight", "label_smoothing", "ignore_index", "reduction"),
        build=build_cross_entropy,
        reference=cross_entropy_reference,
        watch=watch_softmax,
        kinks=no_kinks,
        examples=(
            Example(
                {"input": "2.0,1.0,0.1", "target": "0"},
                "The gradient is the softmax minus the one-hot target: p − y. The target class is "
                "raised by 1 − p_y, each other class is lowered by its own probability, and the "
                "gradient of a row sums to 0. Try --compare binary_cross_entropy_with_logits: the "
                "same form p − y, but with p = σ(x) per element instead of the softmax.",
            ),
            Example(
                {"input": "2.0,1.0,0.1;0.5,2.5,0.3", "target": "0,1", "label_smoothing": "0.1"},
                "With label smoothing ε the target becomes (1 − ε)·onehot + ε/C, so the gradient "
                "p − q never vanishes for a confident correct prediction: it keeps pulling the "
                "other logits up towards ε/C.",
            ),
        ),
        sweep=TARGET_LOGIT,
        learning_rate=0.5,
    ),
    Explainer(
        name="binary_cross_entropy_with_logits",
        takes=("input", "target", "weight", "pos_weight", "reduction"),
        build=build_with_logits,
        reference=with_logits_reference,
        watch=watch_sigmoid,
        kinks=no_kinks,
        examples=(
            Example(
                {"input": "2.0,1.0,0.1", "target": "1,0,0"},
                "Each logit gets its own sigmoid, so the gradient is σ(x) − y element by element "
                "(divided by the element count): the form p − y of softmax cross-entropy, but "
                "these p do not sum to 1 and the classes do not compete. Try --compare cross_entropy.",
            ),
        ),
        sweep=LOGIT,
        learning_rate=1.0,
    ),
    Explainer(
        name="binary_cross_entropy",
        takes=("input", "target", "weight", "reduction"),
        build=build_probabilities,
        reference=probabilities_reference,
        watch=watch_probability,
        kinks=no_kinks,
        examples=(
            Example(
                {"input": "0.9,0.01", "target": "1,1"},
                "On probabilities the gradient is (p − y)/(p(1 − p)): the nearly right 0.9 gets "
                "−0.56, the badly wrong 0.01 gets −50, and it grows without bound as p nears 0. "
                "On logits the sigmoid's derivative p(1 − p) cancels that denominator, which is "
                "why binary_cross_entropy_with_logits is the numerically safer choice.",
            ),
        ),
        sweep=PROBABILITY,
        learning_rate=0.001,
    ),
)
