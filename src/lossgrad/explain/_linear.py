"""Explainers of the fused linear heads: linear_cross_entropy and linear_kd_loss."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._classification import class_indices, log_softmax, softmax
from ._divergence import js_rows, kd_rows, reduce_rows
from ._table import Case, Example, Explainer, Sweep, no_kinks
from ._values import UsageError, Values

__all__ = ["EXPLAINERS"]


def read_head(values: Values, input_key: str, weight_key: str) -> tuple[Tensor, Tensor]:
    """Read N x H hidden states and a V x H head weight."""
    hidden = values.matrix(input_key)
    weight = values.matrix(weight_key)
    if weight.shape[1] != hidden.shape[1]:
        raise UsageError(
            f"--{weight_key.replace('_', '-')}: expected rows of {hidden.shape[1]} values, the hidden size "
            f"of --{input_key.replace('_', '-')}, got rows of {weight.shape[1]}"
        )
    return hidden, weight


# 1. linear_cross_entropy


def build_linear_cross_entropy(values: Values) -> Case:
    """Read hidden states, the head weight, one class index per row and the options."""
    hidden, weight = read_head(values, "input", "linear_weight")
    classes = weight.shape[0]
    ignore_index = values.integer("ignore_index", -100) if values.has("ignore_index") else None
    target = class_indices(values, "target", hidden.shape[0], classes, ignore_index)
    arguments = {"input": hidden, "linear_weight": weight, "target": target}
    if values.has("weight"):
        class_weight = values.matrix("weight").reshape(-1)
        if class_weight.numel() != classes:
            raise UsageError(
                f"--weight: expected {classes} class weights, got {class_weight.numel()}"
            )
        arguments["weight"] = class_weight
    options: dict[str, object] = {
        "reduction": values.choice("reduction", ("mean", "sum"), "mean"),
        "ignore_index": ignore_index,
        "label_smoothing": values.number("label_smoothing", 0.0),
        "z_loss": values.number("z_loss", 0.0),
    }
    if values.has("softcap"):
        options["softcap"] = values.number("softcap")
    return Case(arguments, ("input", "linear_weight"), options)


def head_logits(case: Case) -> Tensor:
    """Return x Wᵀ, soft-capped to s·tanh(z/s) when a soft cap is set."""
    logits = case.arguments["input"] @ case.arguments["linear_weight"].T
    softcap = case.options.get("softcap")
    if softcap is not None:
        logits = float(softcap) * torch.tanh(logits / float(softcap))
    return logits


def linear_cross_entropy_reference(case: Case) -> Tensor:
    """Return Σⱼ wⱼ qⱼ (lse − zⱼ) + λ w_y lse² per row, mean over the counted rows' weights."""
    logits = head_logits(case)
    rows, classes = logits.shape
    target = case.arguments["target"]
    class_weight = case.arguments.get("weight", torch.ones(classes, dtype=torch.float64))
    ignore_index = case.options["ignore_index"]
    kept = torch.ones(rows, dtype=torch.bool) if ignore_index is None else target != ignore_index
    safe_target = torch.where(kept, target, torch.zeros_like(target))
    one_hot = torch.zeros_like(logits)
    one_hot[torch.arange(rows), safe_target] = 1.0
    smoothing = float(case.options["label_smoothing"])
    q = (1 - smoothing) * one_hot + smoothing / classes
    log_p = log_softmax(logits)
    lse = logits - log_p  # every column contains the row's log-sum-exp
    target_weight = class_weight[safe_target]
    per_row = (
        -(class_weight * q * log_p).sum(dim=1)
        + float(case.options["z_loss"]) * target_weight * lse[:, 0] ** 2
    )
    per_row = per_row * kept.double()
    if case.options["reduction"] == "sum":
        return per_row.sum()
    denominator = float((target_weight * kept.double()).sum())
    return per_row.sum() * 0.0 if denominator == 0 else per_row.sum() / denominator


def watch_head(case: Case) -> dict[str, Tensor]:
    """Return the logits the head computes and their softmax."""
    logits = head_logits(case)
    return {"z = x Wᵀ": logits, "p = softmax(z)": softmax(logits)}


def place_head_logit(
    input_key: str, weight_key: str, column: Callable[[Case], int], per_row: tuple[str, ...]
) -> Callable[[Case, Tensor], Case]:
    """Return a sweep that sets one logit of the first row to t by moving that class's weight row along x.

    Changing W_j by (t − x·W_j)·x/‖x‖² sets z_j = t and leaves the other
    logits alone, so dℓ/dt is ∂ℓ/∂z_j as for plain cross-entropy.
    """

    def place(case: Case, t: Tensor) -> Case:
        hidden = case.arguments[input_key][:1]
        weight = case.arguments[weight_key]
        x = hidden[0]
        squared_norm = float((x * x).sum())
        if squared_norm == 0:
            raise UsageError(
                "--plot: the first row of the hidden states is 0, so no logit can be moved"
            )
        j = column(case)
        mask = torch.zeros(weight.shape[0], 1, dtype=weight.dtype)
        mask[j] = 1.0
        shift = (t - weight[j] @ x) * x / squared_norm
        arguments = {input_key: hidden, weight_key: weight + mask * shift}
        for name in per_row:
            if name in case.arguments:
                arguments[name] = case.arguments[name][:1]
        return case.replace(**arguments)

    return place


def measure_head_logit(
    input_key: str, weight_key: str, column: Callable[[Case], int]
) -> Callable[[Case], float]:
    """Return a function that gives the first row's logit x·W_j of the swept class j."""
    return lambda case: float(
        case.arguments[input_key][0] @ case.arguments[weight_key][column(case)]
    )


def first_target(case: Case) -> int:
    """Return the first row's target class, or 0 when it is ignored."""
    target = int(case.arguments["target"][0])
    return target if 0 <= target < case.arguments["linear_weight"].shape[0] else 0


# 2. linear_kd_loss


def build_linear_kd(values: Values) -> Case:
    """Read student and teacher hidden states and head weights, an optional target and the options."""
    student, student_weight = read_head(values, "input", "linear_weight")
    teacher, teacher_weight = read_head(values, "other", "teacher_weight")
    if teacher.shape[0] != student.shape[0]:
        raise UsageError(
            f"--other: expected {student.shape[0]} rows like --input, got {teacher.shape[0]}"
        )
    if teacher_weight.shape[0] != student_weight.shape[0]:
        raise UsageError(
            f"--teacher-weight: expected {student_weight.shape[0]} rows (classes) like --linear-weight, "
            f"got {teacher_weight.shape[0]}"
        )
    ignore_index = values.integer("ignore_index", -100)
    arguments = {
        "student_input": student,
        "student_weight": student_weight,
        "teacher_input": teacher,
        "teacher_weight": teacher_weight,
    }
    if values.has("target"):
        arguments["target"] = class_indices(
            values, "target", student.shape[0], student_weight.shape[0], ignore_index
        )
    options: dict[str, object] = {
        "divergence": values.choice("divergence", ("kl", "js"), "kl"),
        "temperature": values.number("temperature", 1.0),
        "alpha": values.number("alpha", 0.5),
        "beta": values.number("beta", 0.5),
        "ignore_index": ignore_index,
    }
    return Case(arguments, ("student_input", "student_weight"), options)


def student_teacher_logits(case: Case) -> tuple[Tensor, Tensor]:
    """Return s = X W_sᵀ and t = X̂ W_tᵀ."""
    student = case.arguments["student_input"] @ case.arguments["student_weight"].T
    teacher = case.arguments["teacher_input"] @ case.arguments["teacher_weight"].T
    return student, teacher.detach()


def linear_kd_reference(case: Case) -> Tensor:
    """Return kd_loss or js_div of the two heads' logits, averaged over the counted rows."""
    student, teacher = student_teacher_logits(case)
    temperature = float(case.options["temperature"])
    if case.options["divergence"] == "kl":
        per_row = kd_rows(
            student,
            teacher,
            case.arguments.get("target"),
            temperature,
            float(case.options["alpha"]),
            int(case.options["ignore_index"]),
        )
    else:
        per_row = js_rows(student, teacher, temperature, float(case.options["beta"]))
    return reduce_rows(per_row, case)


def watch_linear_kd(case: Case) -> dict[str, Tensor]:
    """Return the student's and the teacher's distributions at temperature T."""
    student, teacher = student_teacher_logits(case)
    temperature = float(case.options["temperature"])
    return {
        "pˢ = softmax(s/T)": softmax(student / temperature),
        "pᵗ = softmax(t/T)": softmax(teacher / temperature),
    }


def teacher_top_class(case: Case) -> int:
    """Return the class the teacher ranks first on the first row."""
    _, teacher = student_teacher_logits(case)
    return int(teacher[0].argmax())


EXPLAINERS = (
    Explainer(
        name="linear_cross_entropy",
        takes=(
            "input",
            "linear_weight",
            "target",
            "weight",
            "label_smoothing",
            "ignore_index",
            "z_loss",
            "softcap",
            "reduction",
        ),
        build=build_linear_cross_entropy,
        reference=linear_cross_entropy_reference,
        watch=watch_head,
        kinks=no_kinks,
        examples=(
            Example(
                {"input": "1.0,0.5;-0.5,1.0", "linear_weight": "1,0;0,1;1,1", "target": "0,2"},
                "The logits are z = x Wᵀ, and the loss is cross_entropy of them, so ∂ℓ/∂z = p − y "
                "as before. The chain rule gives ∂ℓ/∂x = (p − y) W and ∂ℓ/∂W = (p − y)ᵀ x; lossgrad "
                "forms them a chunk of rows at a time, never holding all N × V logits.",
            ),
        ),
        sweep=Sweep(
            "logit",
            "logit z_y of the first row's target class",
            -6.0,
            6.0,
            place_head_logit("input", "linear_weight", first_target, ("target",)),
            measure=measure_head_logit("input", "linear_weight", first_target),
        ),
        learning_rate=0.5,
    ),
    Explainer(
        name="linear_kd_loss",
        takes=(
            "input",
            "linear_weight",
            "other",
            "teacher_weight",
            "target",
            "divergence",
            "temperature",
            "alpha",
            "beta",
            "ignore_index",
        ),
        build=build_linear_kd,
        reference=linear_kd_reference,
        watch=watch_linear_kd,
        kinks=no_kinks,
        examples=(
            Example(
                {
                    "input": "1.0,0.5;-0.5,1.0",
                    "linear_weight": "1,0;0,1;1,1",
                    "other": "0.2,1.0;1.0,0.0",
                    "teacher_weight": "1,0;0,1;1,1",
                    "temperature": "2",
                },
                "The student's logits s = x W_sᵀ are distilled towards the teacher's t = x̂ W_tᵀ: "
                "∂ℓ/∂s is T(pˢ − pᵗ) as in kd_loss, and the chain rule sends it to the student's "
                "hidden states and head weight. The teacher gets no gradient.",
            ),
        ),
        sweep=Sweep(
            "logit",
            "student logit of the teacher's top class (first row)",
            -6.0,
            6.0,
            place_head_logit(
                "student_input", "student_weight", teacher_top_class, ("teacher_input", "target")
            ),
            measure=measure_head_logit("student_input", "student_weight", teacher_top_class),
        ),
        learning_rate=0.5,
    ),
)
