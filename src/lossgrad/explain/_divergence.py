"""Explainers of the divergences: kl_div, kd_loss and js_div."""

from __future__ import annotations

import torch
from torch import Tensor

from ._classification import class_indices, log_softmax, softmax
from ._table import Case, Example, Explainer, Sweep, no_kinks, same_shape
from ._values import UsageError, Values

__all__ = ["EXPLAINERS", "counted_rows", "js_rows", "kd_rows", "kl_rows", "reduce_rows"]

ROW_REDUCTIONS = ("batchmean", "sum")


# 1. kl_div


def build_kl_div(values: Values) -> Case:
    """Read N x C log-probabilities and targets of the same shape."""
    log_q = values.matrix("input")
    target = values.matrix("target")
    same_shape("input", log_q, "target", target)
    log_target = values.switch("log_target")
    if not log_target and bool((target < 0).any()):
        raise UsageError(
            f"--target: expected probabilities >= 0, got {float(target[target < 0][0]):g}"
        )
    options = {
        "reduction": values.choice("reduction", ("batchmean", "sum", "mean"), "batchmean"),
        "log_target": log_target,
    }
    return Case({"input": log_q, "target": target}, ("input",), options)


def target_probability(case: Case) -> Tensor:
    """Return the target as probabilities."""
    target = case.arguments["target"]
    return target.exp() if case.options["log_target"] else target


def kl_div_reference(case: Case) -> Tensor:
    """Return Σ q (log q − x) with 0 log 0 = 0, divided by the reduction's normaliser."""
    x = case.arguments["input"]
    q = target_probability(case)
    log_q = torch.where(q > 0, q.clamp(min=1e-300).log(), torch.zeros_like(q))
    total = (q * (log_q - x)).sum()
    reduction = case.options["reduction"]
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / x.numel()
    return total / x.shape[0]


def watch_kl_div(case: Case) -> dict[str, Tensor]:
    """Return exp(x), the probabilities the input stands for, and the target q."""
    return {"exp(x)": case.arguments["input"].exp(), "q": target_probability(case)}


def place_kl_input(case: Case, t: Tensor) -> Case:
    """Return the first row alone, with the log-probability of its top target class set to ``t``."""
    column = int(target_probability(case)[0].argmax())
    row = case.arguments["input"][:1]
    mask = torch.zeros_like(row)
    mask[0, column] = 1.0
    return case.replace(input=row * (1 - mask) + t * mask, target=case.arguments["target"][:1])


# 2. kd_loss and js_div


def build_distillation(values: Values, **options: object) -> Case:
    """Read student (``--input``) and teacher (``--other``) logits and an optional target."""
    student = values.matrix("input")
    teacher = values.matrix("other")
    same_shape("input", student, "other", teacher)
    ignore_index = values.integer("ignore_index", -100)
    arguments = {"student_logits": student, "teacher_logits": teacher}
    if values.has("target"):
        arguments["target"] = class_indices(
            values, "target", student.shape[0], student.shape[1], ignore_index
        )
    options.update(
        temperature=values.number("temperature", float(options["temperature"])),
        ignore_index=ignore_index,
        reduction=values.choice("reduction", ROW_REDUCTIONS, "batchmean"),
    )
    return Case(arguments, ("student_logits",), options)


def build_kd(values: Values) -> Case:
    """Read the distillation inputs, ``--temperature`` (default 4) and ``--alpha`` (default 0.9).

    Without a target kd_loss is the soft term alone and does not use alpha,
    so the case leaves it out and adds a note.
    """
    alpha = values.number("alpha", 0.9)
    case = build_distillation(values, temperature=4.0, alpha=alpha)
    if "target" not in case.arguments:
        del case.options["alpha"]
        case.notes.append(f"alpha = {alpha:g} is not used: without a target only the soft term counts")
    return case


def build_js(values: Values) -> Case:
    """Read the distillation inputs, ``--temperature`` (default 1) and ``--beta`` (default 0.5)."""
    return build_distillation(values, temperature=1.0, beta=values.number("beta", 0.5))


def counted_rows(rows: int, target: Tensor | None, ignore_index: int) -> Tensor:
    """Return a float mask of the rows that count: all, or those whose target is not ignore_index."""
    if target is None:
        return torch.ones(rows, dtype=torch.float64)
    return (target != ignore_index).double()


def reduce_rows(per_row: Tensor, case: Case) -> Tensor:
    """Sum the counted rows, divided by their number for batchmean; 0 when none counts."""
    kept = counted_rows(
        per_row.shape[0], case.arguments.get("target"), int(case.options["ignore_index"])
    )
    total = (per_row * kept).sum()
    if case.options.get("reduction", "batchmean") == "sum":
        return total
    count = float(kept.sum())
    return total * 0.0 if count == 0 else total / count


def soft(case: Case) -> tuple[Tensor, Tensor]:
    """Return the student and teacher distributions at temperature T."""
    temperature = float(case.options["temperature"])
    student = softmax(case.arguments["student_logits"] / temperature)
    teacher = softmax(case.arguments["teacher_logits"].detach() / temperature)
    return student, teacher


def kl_rows(p: Tensor, log_p: Tensor, log_q: Tensor) -> Tensor:
    """Return Σⱼ pⱼ (log pⱼ − log qⱼ) per row, with 0 log 0 = 0."""
    return torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p)).sum(dim=-1)


def kd_rows(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None,
    temperature: float,
    alpha: float,
    ignore_index: int,
) -> Tensor:
    """Return α T² KL(pᵗ ‖ pˢ) + (1 − α) CE(s, y) per row, or T² KL without a target."""
    log_student = log_softmax(student / temperature)
    log_teacher = log_softmax(teacher / temperature)
    soft_term = temperature**2 * kl_rows(log_teacher.exp(), log_teacher, log_student)
    if target is None:
        return soft_term
    kept = target != ignore_index
    safe_target = torch.where(kept, target, torch.zeros_like(target))
    hard_term = -log_softmax(student).gather(1, safe_target.unsqueeze(1)).squeeze(1)
    return alpha * soft_term + (1 - alpha) * hard_term


def js_rows(student: Tensor, teacher: Tensor, temperature: float, beta: float) -> Tensor:
    """Return T² (β KL(pᵗ ‖ M) + (1 − β) KL(pˢ ‖ M)) per row, and the KL divergences at β = 0 and 1."""
    log_student = log_softmax(student / temperature)
    log_teacher = log_softmax(teacher / temperature)
    student_p, teacher_p = log_student.exp(), log_teacher.exp()
    if beta == 0:
        per_row = kl_rows(teacher_p, log_teacher, log_student)
    elif beta == 1:
        per_row = kl_rows(student_p, log_student, log_teacher)
    else:
        log_mixture = (beta * teacher_p + (1 - beta) * student_p).log()
        per_row = beta * kl_rows(teacher_p, log_teacher, log_mixture) + (1 - beta) * kl_rows(
            student_p, log_student, log_mixture
        )
    return temperature**2 * per_row


def kd_reference(case: Case) -> Tensor:
    """Return kd_loss from :func:`kd_rows`, reduced over the counted rows."""
    per_row = kd_rows(
        case.arguments["student_logits"],
        case.arguments["teacher_logits"].detach(),
        case.arguments.get("target"),
        float(case.options["temperature"]),
        float(case.options.get("alpha", 1.0)),
        int(case.options["ignore_index"]),
    )
    return reduce_rows(per_row, case)


def js_reference(case: Case) -> Tensor:
    """Return js_div from :func:`js_rows`, reduced over the counted rows."""
    per_row = js_rows(
        case.arguments["student_logits"],
        case.arguments["teacher_logits"].detach(),
        float(case.options["temperature"]),
        float(case.options["beta"]),
    )
    return reduce_rows(per_row, case)


def watch_kd(case: Case) -> dict[str, Tensor]:
    """Return both soft distributions, the soft gradient T(pˢ − pᵗ) and what it would be without T²."""
    student, teacher = soft(case)
    temperature = float(case.options["temperature"])
    return {
        "pˢ = softmax(s/T)": student,
        "pᵗ = softmax(t/T)": teacher,
        "T (pˢ − pᵗ)": temperature * (student - teacher),
        "without T²: (pˢ − pᵗ)/T": (student - teacher) / temperature,
    }


def watch_js(case: Case) -> dict[str, Tensor]:
    """Return both soft distributions and their mixture M = β pᵗ + (1 − β) pˢ."""
    student, teacher = soft(case)
    beta = float(case.options["beta"])
    return {"pˢ": student, "pᵗ": teacher, "M": beta * teacher + (1 - beta) * student}


def place_student_logit(case: Case, t: Tensor) -> Case:
    """Return the first row alone, with the student's logit of the teacher's top class set to ``t``."""
    student = case.arguments["student_logits"][:1]
    teacher = case.arguments["teacher_logits"][:1]
    mask = torch.zeros_like(student)
    mask[0, int(teacher[0].argmax())] = 1.0
    arguments = {"student_logits": student * (1 - mask) + t * mask, "teacher_logits": teacher}
    if "target" in case.arguments:
        arguments["target"] = case.arguments["target"][:1]
    return case.replace(**arguments)


def measure_student_logit(case: Case) -> float:
    """Return the first row's student logit of the teacher's top class."""
    teacher = case.arguments["teacher_logits"][0]
    return float(case.arguments["student_logits"][0, int(teacher.argmax())])


STUDENT_LOGIT = Sweep(
    "logit",
    "student logit of the teacher's top class (first row)",
    -6.0,
    6.0,
    place_student_logit,
    measure=measure_student_logit,
)

DISTILLATION_TAKES = ("input", "other", "target", "temperature", "ignore_index", "reduction")

EXPLAINERS = (
    Explainer(
        name="kl_div",
        takes=("input", "target", "log_target", "reduction"),
        build=build_kl_div,
        reference=kl_div_reference,
        watch=watch_kl_div,
        kinks=no_kinks,
        examples=(
            Example(
                {"input": "-1.6094,-1.2040,-0.6931", "target": "0.1,0.6,0.3"},
                "The input is log(0.2, 0.3, 0.5). The gradient with respect to the log-probabilities "
                "is −q, the target itself, whatever the input is: kl_div does not know that its input "
                "came from a log_softmax. Through a log_softmax the chain rule turns −q into "
                "softmax − q, the gradient of kd_loss and cross_entropy.",
            ),
        ),
        sweep=Sweep(
            "log-probability",
            "log-probability x of the first row's top target class",
            -5.0,
            0.0,
            place_kl_input,
            measure=lambda case: float(
                case.arguments["input"][0, int(target_probability(case)[0].argmax())]
            ),
        ),
    ),
    Explainer(
        name="kd_loss",
        takes=(*DISTILLATION_TAKES, "alpha"),
        build=build_kd,
        reference=kd_reference,
        watch=watch_kd,
        kinks=no_kinks,
        examples=(
            Example(
                {"input": "2.0,1.0,0.1", "other": "0.5,2.5,0.3", "temperature": "1"},
                "At T = 1 the soft gradient is pˢ − pᵗ, the student's softmax minus the teacher's. "
                "Compare its size with worked example 2, at T = 4.",
            ),
            Example(
                {"input": "2.0,1.0,0.1", "other": "0.5,2.5,0.3", "temperature": "4"},
                "At T = 4 both distributions are softer and pˢ − pᵗ is about 4 times smaller, so "
                "the KL's own gradient (pˢ − pᵗ)/T is about 16 times smaller. The T² factor gives "
                "back T(pˢ − pᵗ), about the size it had at T = 1: changing T does not silently "
                "change the learning rate of the soft term.",
            ),
            Example(
                {"input": "2.0,1.0,0.1", "other": "0.5,2.5,0.3", "target": "0", "alpha": "0.5"},
                "With a target the hard cross-entropy joins with weight 1 − α: the gradient is "
                "α T (pˢ − pᵗ) + (1 − α)(softmax(s) − onehot(y)). Here the teacher prefers class 1 "
                "while the label says class 0, so the two terms pull the first two logits in opposite "
                "directions.",
            ),
        ),
        sweep=STUDENT_LOGIT,
        learning_rate=0.5,
    ),
    Explainer(
        name="js_div",
        takes=(*DISTILLATION_TAKES, "beta"),
        build=build_js,
        reference=js_reference,
        watch=watch_js,
        kinks=no_kinks,
        examples=(
            Example(
                {"input": "2.0,1.0,0.1", "other": "0.5,2.5,0.3"},
                "Both distributions are compared with their mixture M instead of each other, so "
                "the loss stays finite where one of them is 0. At β = 0.5 it is symmetric and at "
                "most T² log 2. At --beta 0 it is defined as KL(pᵗ ‖ pˢ), the soft term of "
                "kd_loss.",
            ),
            Example(
                {"input": "2.0,1.0,0.1", "other": "0.5,2.5,0.3", "beta": "0"},
                "At β = 0 the loss is the forward KL(pᵗ ‖ pˢ) and the gradient T(pˢ − pᵗ), the same "
                "as kd_loss without a target at the same temperature (try --compare kd_loss "
                "--temperature 1).",
            ),
        ),
        sweep=STUDENT_LOGIT,
        learning_rate=0.5,
    ),
)
