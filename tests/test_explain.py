"""Tests of ``lossgrad explain``, run in-process through ``lossgrad.cli.main``.

Values are checked against computations written here with
``torch.nn.functional`` (or a plain formula where PyTorch has no such loss),
independent of the explainer's own reference formulas. Tests over the
explainer table are parametrised by loss name and skip a loss that is not
in ``lossgrad.__all__`` yet.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
import torch.nn.functional as F

import lossgrad
from lossgrad import cli
from lossgrad.explain import _registry

LOSSES = list(_registry.EXPLAINERS)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def require(name: str) -> None:
    """Skip the test while loss ``name`` is not part of lossgrad's public API."""
    if name not in lossgrad.__all__:
        pytest.skip(f"{name} is not in lossgrad.__all__ yet")


def explain(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``lossgrad explain ARGV`` and return the exit code, stdout and stderr."""
    try:
        code = cli.main(["explain", *argv])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def explain_json(capsys: pytest.CaptureFixture[str], *argv: str) -> dict:
    """Run ``lossgrad explain ARGV --json``, assert success and return the parsed report."""
    code, out, err = explain(capsys, *argv, "--json")
    assert code == 0, f"exit code {code}, stderr: {err}"
    return json.loads(out)


# 1. Independent computations of every loss, from the report's inputs and options.


def tensors_of(inputs: dict, wrt: list[str]) -> dict[str, torch.Tensor]:
    """Turn the report's input lists into tensors: integers into int64, numbers into float64.

    The inputs in ``wrt`` become leaves that require grad.
    """
    result = {}
    for name, value in inputs.items():
        if torch.tensor(value).dtype == torch.int64:
            result[name] = torch.tensor(value)
        else:
            result[name] = torch.tensor(value, dtype=torch.float64).requires_grad_(name in wrt)
    return result


def kd_soft(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Return T² KL(softmax(t/T) ‖ softmax(s/T)), mean over rows."""
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.detach() / temperature, dim=-1)
    return temperature**2 * F.kl_div(
        log_student, log_teacher, reduction="batchmean", log_target=True
    )


def kd(student, teacher, target, options) -> torch.Tensor:
    """Return kd_loss as Hinton et al. define it, with PyTorch's kl_div and cross_entropy."""
    soft = kd_soft(student, teacher, options["temperature"])
    if target is None:
        return soft
    alpha = options["alpha"]
    return alpha * soft + (1 - alpha) * F.cross_entropy(student, target)


def js(student, teacher, options) -> torch.Tensor:
    """Return the generalised JS divergence scaled by T²."""
    temperature, beta = options["temperature"], options["beta"]
    p_student = F.softmax(student / temperature, dim=-1)
    p_teacher = F.softmax(teacher.detach() / temperature, dim=-1)
    if beta == 0:
        return kd_soft(student, teacher, temperature)
    mixture = beta * p_teacher + (1 - beta) * p_student
    divergence = beta * F.kl_div(mixture.log(), p_teacher, reduction="batchmean") + (
        1 - beta
    ) * F.kl_div(mixture.log(), p_student, reduction="batchmean")
    return temperature**2 * divergence


def pair_distance(name: str, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Return the named pair distance with PyTorch's functions."""
    if name == "euclidean":
        return F.pairwise_distance(x1, x2, eps=0.0)
    if name == "squared_euclidean":
        return F.pairwise_distance(x1, x2, eps=0.0) ** 2
    return 1 - F.cosine_similarity(x1, x2, eps=1e-8)


def reduced(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """Return the mean or the sum."""
    return values.sum() if reduction == "sum" else values.mean()


def contrastive(t: dict, o: dict) -> torch.Tensor:
    """Return y·max(d − m₊, 0) + (1 − y)·max(m₋ − d, 0), each hinge squared if asked."""
    d = pair_distance(o["distance"], t["x1"], t["x2"])
    pull = F.relu(d - o["pos_margin"])
    push = F.relu(o["neg_margin"] - d)
    if o["squared"]:
        pull, push = pull**2, push**2
    y = t["target"]
    return reduced(y * pull + (1 - y) * push, o["reduction"])


def linear_cross_entropy(t: dict, o: dict) -> torch.Tensor:
    """Return cross_entropy of x Wᵀ; only the options the worked examples use are supported."""
    assert o["z_loss"] == 0
    assert "softcap" not in o
    ignore_index = -100 if o["ignore_index"] is None else o["ignore_index"]
    logits = t["input"] @ t["linear_weight"].T
    return F.cross_entropy(
        logits,
        t["target"],
        weight=t.get("weight"),
        ignore_index=ignore_index,
        reduction=o["reduction"],
        label_smoothing=o["label_smoothing"],
    )


def linear_kd(t: dict, o: dict) -> torch.Tensor:
    """Return kd_loss or js_div of the two heads' logits."""
    student = t["student_input"] @ t["student_weight"].T
    teacher = t["teacher_input"] @ t["teacher_weight"].T
    if o["divergence"] == "js":
        return js(student, teacher, o)
    return kd(student, teacher, t.get("target"), o)


def info_nce(t: dict, o: dict) -> torch.Tensor:
    """Return cross_entropy of the normalised query-key similarities, target i for row i."""
    assert o["similarity"] == "cosine"
    assert not o["symmetric"]
    assert "hard_negatives" not in t
    scores = F.normalize(t["query"], dim=-1) @ F.normalize(t["key"], dim=-1).T / o["temperature"]
    return F.cross_entropy(scores, torch.arange(scores.shape[0]), reduction=o["reduction"])


def weighted(
    per_element: torch.Tensor, t: dict, o: dict, divide_by_weight_sum: bool
) -> torch.Tensor:
    """Return the sum, or the mean over the weight sum (or element count), of the weighted losses."""
    weight = t["weight"]
    if o["reduction"] == "sum":
        return (weight * per_element).sum()
    denominator = weight.sum() if divide_by_weight_sum else per_element.numel()
    return (weight * per_element).sum() / denominator


def regression(name: str) -> Callable[[dict, dict], torch.Tensor]:
    """Return the PyTorch loss ``name``, weighted as lossgrad documents when a weight is given."""
    options = {"huber_loss": ("delta",), "smooth_l1_loss": ("beta",)}.get(name, ())
    function = getattr(F, name)

    def compute(t: dict, o: dict) -> torch.Tensor:
        extra = {key: o[key] for key in options}
        if "weight" not in t:
            return function(t["input"], t["target"], reduction=o["reduction"], **extra)
        per_element = function(t["input"], t["target"], reduction="none", **extra)
        return weighted(per_element, t, o, divide_by_weight_sum=name != "huber_loss")

    return compute


INDEPENDENT: dict[str, Callable[[dict, dict], torch.Tensor]] = {
    "l1_loss": regression("l1_loss"),
    "mse_loss": regression("mse_loss"),
    "huber_loss": regression("huber_loss"),
    "smooth_l1_loss": regression("smooth_l1_loss"),
    "cross_entropy": lambda t, o: F.cross_entropy(
        t["input"],
        t["target"],
        weight=t.get("weight"),
        ignore_index=o["ignore_index"],
        reduction=o["reduction"],
        label_smoothing=o["label_smoothing"],
    ),
    "binary_cross_entropy_with_logits": lambda t, o: F.binary_cross_entropy_with_logits(
        t["input"],
        t["target"],
        weight=t.get("weight"),
        pos_weight=t.get("pos_weight"),
        reduction=o["reduction"],
    ),
    "binary_cross_entropy": lambda t, o: F.binary_cross_entropy(
        t["input"], t["target"], weight=t.get("weight"), reduction=o["reduction"]
    ),
    "kl_div": lambda t, o: F.kl_div(
        t["input"], t["target"], reduction=o["reduction"], log_target=o["log_target"]
    ),
    "kd_loss": lambda t, o: kd(t["student_logits"], t["teacher_logits"], t.get("target"), o),
    "js_div": lambda t, o: js(t["student_logits"], t["teacher_logits"], o),
    "cosine_similarity_loss": lambda t, o: reduced(
        (
            1 - F.cosine_similarity(t["x1"], t["x2"], eps=o["eps"])
            if "score" not in t
            else (F.cosine_similarity(t["x1"], t["x2"], eps=o["eps"]) - t["score"]) ** 2
        ),
        o["reduction"],
    ),
    "cosine_embedding_loss": lambda t, o: F.cosine_embedding_loss(
        t["input1"], t["input2"], t["target"], margin=o["margin"], reduction=o["reduction"]
    ),
    "negative_pair_loss": lambda t, o: reduced(
        F.relu(o["margin"] - pair_distance(o["distance"], t["x1"], t["x2"])), o["reduction"]
    ),
    "contrastive_loss": contrastive,
    "triplet_margin_loss": lambda t, o: F.triplet_margin_loss(
        t["anchor"],
        t["positive"],
        t["negative"],
        margin=o["margin"],
        p=o["p"],
        eps=0.0,
        swap=o["swap"],
        reduction=o["reduction"],
    ),
    "info_nce": info_nce,
    "linear_cross_entropy": linear_cross_entropy,
    "linear_kd_loss": linear_kd,
}


def assert_case_matches_independent(name: str, case: dict) -> None:
    """Assert the report's loss and closed-form gradients equal the independent computation."""
    wrt = list(case["gradients"])
    tensors = tensors_of(case["inputs"], wrt)
    expected = INDEPENDENT[name](tensors, case["options"])
    assert math.isclose(
        case["loss"], float(expected.detach()), rel_tol=1e-9, abs_tol=1e-12
    ), f"{name}: loss {case['loss']} != independent {float(expected.detach())}"
    grads = torch.autograd.grad(expected, [tensors[key] for key in wrt], allow_unused=True)
    for key, grad in zip(wrt, grads):
        expected_grad = torch.zeros_like(tensors[key]) if grad is None else grad
        actual = torch.tensor(case["gradients"][key]["closed_form"], dtype=torch.float64)
        assert torch.allclose(
            actual, expected_grad, rtol=1e-8, atol=1e-10
        ), f"{name}: ∂ℓ/∂{key} closed form {actual.tolist()} != independent {expected_grad.tolist()}"


# 2. The table itself.


def test_every_registered_formula_has_an_explainer() -> None:
    missing = sorted(set(lossgrad.FORMULAS) - set(_registry.EXPLAINERS))
    assert not missing, f"losses without an explainer row: {missing}"


def test_every_explainer_has_an_independent_computation() -> None:
    assert set(INDEPENDENT) == set(_registry.EXPLAINERS)


@pytest.mark.parametrize("name", LOSSES)
def test_explainer_arguments_match_signature(name: str) -> None:
    require(name)
    import inspect

    explainer = _registry.EXPLAINERS[name]
    parameters = inspect.signature(explainer.function).parameters
    case = explainer.build(_registry_values(explainer.examples[0].values))
    unknown = [key for key in [*case.arguments, *case.options] if key not in parameters]
    assert not unknown, f"{name}: keyword arguments not in the signature: {unknown}"


def _registry_values(text: dict[str, str]):
    from lossgrad.explain._values import Values

    return Values(dict(text))


# 3. Worked examples.


@pytest.mark.parametrize("name", LOSSES)
def test_default_example_prints_formula_and_passes(name: str, capsys) -> None:
    require(name)
    code, out, err = explain(capsys, name)
    assert code == 0, err
    formula = lossgrad.FORMULAS[name]
    assert formula.summary in out
    for line in formula.loss.splitlines() + formula.gradient.splitlines():
        assert line.strip() in out
    for symbol, meaning in formula.symbols:
        assert f"{symbol}: {meaning}" in out
    assert "PASS" in out
    assert "FAIL" not in out
    assert "What to notice:" in out


@pytest.mark.parametrize("name", LOSSES)
def test_default_example_values_are_correct(name: str, capsys) -> None:
    require(name)
    report = explain_json(capsys, name)
    assert report["loss"] == name
    assert report["passed"] is True
    assert len(report["cases"]) == len(_registry.EXPLAINERS[name].examples)
    for case in report["cases"]:
        assert case["status"] in ("pass", "kink")
        assert case["note"]
        assert_case_matches_independent(name, case)


def test_l1_example_gradient_is_minus_one(capsys) -> None:
    require("l1_loss")
    case = explain_json(capsys, "l1_loss")["cases"][0]
    assert case["inputs"] == {"input": [0.5], "target": [0.7]}
    assert case["gradients"]["input"]["closed_form"] == [-1.0]
    assert case["loss"] == pytest.approx(0.2)


def test_cross_entropy_gradient_softmax_minus_onehot(capsys) -> None:
    require("cross_entropy")
    case = explain_json(capsys, "cross_entropy")["cases"][0]
    logits = torch.tensor(case["inputs"]["input"], dtype=torch.float64)
    expected = torch.softmax(logits, dim=-1) - F.one_hot(torch.tensor([0]), 3).double()
    actual = torch.tensor(case["gradients"]["input"]["closed_form"], dtype=torch.float64)
    assert torch.allclose(actual, expected, atol=1e-12)


def test_cosine_example_gradient_matches_formula(capsys) -> None:
    """∂(1 − cos)/∂x1 = −(x2/(|x1||x2|) − cos·x1/|x1|²) for (0.1, 0.2, 0.3) and (0.4, 0.2, 0.5)."""
    require("cosine_similarity_loss")
    case = explain_json(capsys, "cosine_similarity_loss")["cases"][0]
    x1 = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    x2 = torch.tensor([0.4, 0.2, 0.5], dtype=torch.float64)
    cos = x1 @ x2 / (x1.norm() * x2.norm())
    expected = -(x2 / (x1.norm() * x2.norm()) - cos * x1 / x1.norm() ** 2)
    actual = torch.tensor(case["gradients"]["x1"]["closed_form"][0], dtype=torch.float64)
    assert torch.allclose(actual, expected, atol=1e-12)
    assert case["watch"]["cos(x₁, x₂)"][0] == pytest.approx(float(cos))


def test_cosine_embedding_push_has_opposite_gradient(capsys) -> None:
    require("cosine_embedding_loss")
    require("cosine_similarity_loss")
    push = explain_json(capsys, "cosine_embedding_loss")["cases"][0]
    pull = explain_json(capsys, "cosine_similarity_loss")["cases"][0]
    assert push["inputs"]["target"] == [-1.0]
    push_grad = torch.tensor(push["gradients"]["input1"]["closed_form"])
    pull_grad = torch.tensor(pull["gradients"]["x1"]["closed_form"])
    assert torch.allclose(push_grad, -pull_grad, atol=1e-9)


def test_kd_soft_gradient_size_independent_of_temperature(capsys) -> None:
    require("kd_loss")
    cases = explain_json(capsys, "kd_loss")["cases"]
    low, high = cases[0], cases[1]
    assert low["options"]["temperature"] == 1.0
    assert high["options"]["temperature"] == 4.0
    low_norm = torch.tensor(low["gradients"]["student_logits"]["closed_form"]).norm()
    high_norm = torch.tensor(high["gradients"]["student_logits"]["closed_form"]).norm()
    # With T² the two sizes agree within 10 %; without it they would differ 16-fold.
    assert float(high_norm / low_norm) == pytest.approx(1.0, rel=0.1)
    without_t2 = torch.tensor(high["watch"]["without T²: (pˢ − pᵗ)/T"]).norm()
    assert float(without_t2 / high_norm) == pytest.approx(1 / 16, rel=1e-9)


def test_negative_pair_example_past_margin_is_silent(capsys) -> None:
    require("negative_pair_loss")
    silent = explain_json(capsys, "negative_pair_loss")["cases"][1]
    assert silent["watch"]["distance d"][0] > silent["options"]["margin"]
    assert silent["loss"] == 0.0
    for gradient in silent["gradients"].values():
        assert gradient["closed_form"] == [[0.0, 0.0]]


# 4. User input.

USER_INPUTS = [
    ("l1_loss", ["--input", "0.1,0.2,0.3", "--target", "0.4,0.25,0.1", "--reduction", "sum"]),
    ("mse_loss", ["--input", "1;2", "--target", "0;4"]),
    ("l1_loss", ["--input", "0.1,0.2,0.3", "--target", "0.4,0.25,0.1", "--weight", "1,2,0.5"]),
    ("mse_loss", ["--input", "1,2", "--target", "0,4", "--weight", "3,1"]),
    ("huber_loss", ["--input", "0.5,3", "--target", "0,0", "--weight", "2,0.5"]),
    ("huber_loss", ["--input", "0.5,3", "--target", "0,0", "--delta", "0.5"]),
    ("smooth_l1_loss", ["--input", "0.5,3", "--target", "0,0", "--beta", "2"]),
    (
        "cross_entropy",
        [
            "--input",
            "1,2,3;0,0,1",
            "--target",
            "2,0",
            "--weight",
            "1,2,0.5",
            "--label-smoothing",
            "0.2",
        ],
    ),
    ("cross_entropy", ["--input", "1,2,3", "--target", "0.2,0.3,0.5"]),
    (
        "binary_cross_entropy_with_logits",
        ["--input", "1,-2;0.5,0", "--target", "1,0;0,1", "--pos-weight", "2,3"],
    ),
    ("binary_cross_entropy", ["--input", "0.3,0.6", "--target", "0,1", "--weight", "2,1"]),
    ("kl_div", ["--input=-1,-2,-0.5", "--target", "0,0.5,0.5", "--reduction", "sum"]),
    (
        "kd_loss",
        [
            "--input",
            "1,2;0,1",
            "--other",
            "2,1;1,1",
            "--target",
            "1,0",
            "--temperature",
            "2",
            "--alpha",
            "0.3",
        ],
    ),
    ("js_div", ["--input", "1,2;0,1", "--other", "2,1;1,1", "--beta", "0.3", "--temperature", "2"]),
    ("cosine_similarity_loss", ["--input", "1,0;1,1", "--other", "0,1;1,2", "--score", "0.5,0.9"]),
    (
        "cosine_embedding_loss",
        ["--input", "1,0;1,1", "--other", "0,1;1,2", "--target", "1,-1", "--margin", "0.2"],
    ),
    (
        "negative_pair_loss",
        [
            "--input",
            "0,0;1,1",
            "--other",
            "0.3,0.4;1,1.2",
            "--margin",
            "2",
            "--distance",
            "squared_euclidean",
        ],
    ),
    (
        "contrastive_loss",
        [
            "--input",
            "0,0;1,1",
            "--other",
            "0.3,0.4;1,1.2",
            "--target",
            "1,0",
            "--pos-margin",
            "0.1",
            "--squared",
        ],
    ),
    (
        "contrastive_loss",
        [
            "--input",
            "1,0;1,1",
            "--other",
            "0.3,0.4;1,1.2",
            "--target",
            "0,0",
            "--distance",
            "cosine",
        ],
    ),
    (
        "triplet_margin_loss",
        ["--anchor", "0,0;1,1", "--positive", "0.5,0;1,2", "--negative", "0.2,0.1;3,1.5", "--swap"],
    ),
    (
        "triplet_margin_loss",
        ["--anchor", "0,0", "--positive", "0.5,0.2", "--negative", "0.2,0.1", "--p", "3"],
    ),
    (
        "info_nce",
        ["--input", "1,0;0,1;1,1", "--other", "1,0.2;0.1,1;1,0.9", "--temperature", "0.2"],
    ),
    (
        "linear_cross_entropy",
        [
            "--input",
            "1,2;0,1",
            "--linear-weight",
            "1,0;0,1;1,-1",
            "--target",
            "2,1",
            "--label-smoothing",
            "0.1",
        ],
    ),
    (
        "linear_kd_loss",
        [
            "--input",
            "1,2;0,1",
            "--linear-weight",
            "1,0;0,1;1,-1",
            "--other",
            "1;2",
            "--teacher-weight",
            "1;0;-1",
            "--target",
            "2,1",
            "--alpha",
            "0.2",
        ],
    ),
    (
        "linear_kd_loss",
        [
            "--input",
            "1,2;0,1",
            "--linear-weight",
            "1,0;0,1;1,-1",
            "--other",
            "1;2",
            "--teacher-weight",
            "1;0;-1",
            "--divergence",
            "js",
            "--beta",
            "0.7",
        ],
    ),
]


@pytest.mark.parametrize(
    ("name", "argv"), USER_INPUTS, ids=[f"{name}-{i}" for i, (name, _) in enumerate(USER_INPUTS)]
)
def test_user_input_values_are_correct(name: str, argv: list[str], capsys) -> None:
    require(name)
    report = explain_json(capsys, name, *argv)
    [case] = report["cases"]
    assert case["title"] == "your input"
    assert case["status"] == "pass"
    assert case["note"] is None
    assert_case_matches_independent(name, case)


def test_user_input_text_shows_three_gradients(capsys) -> None:
    require("l1_loss")
    code, out, _ = explain(capsys, "l1_loss", "--input", "0.1,0.2,0.3", "--target", "0.4,0.2,0.5")
    assert code == 0
    assert "closed form" in out
    assert "autograd" in out
    assert "finite difference" in out
    assert "largest difference" in out
    assert "PASS" in out
    assert "What to notice" not in out


def test_user_options_apply_to_worked_examples(capsys) -> None:
    require("kd_loss")
    report = explain_json(capsys, "kd_loss", "--temperature", "2")
    assert {case["options"]["temperature"] for case in report["cases"]} == {2.0}


# 5. JSON.


def test_json_fields(capsys) -> None:
    require("l1_loss")
    report = explain_json(capsys, "l1_loss", "--input", "0.5", "--target", "0.7", "--steps", "2")
    assert set(report) == {"loss", "formula", "cases", "plot", "passed", "warnings"}
    assert report["warnings"] == []
    assert report["formula"]["summary"] == lossgrad.FORMULAS["l1_loss"].summary
    assert report["formula"]["subgradient"] == lossgrad.FORMULAS["l1_loss"].subgradient
    [case] = report["cases"]
    assert case["command"] == "lossgrad explain l1_loss --input 0.5 --target 0.7"
    assert case["loss"] == pytest.approx(0.2)
    assert case["reference_loss"] == pytest.approx(0.2)
    assert set(case["gradients"]["input"]) == {"closed_form", "autograd", "finite_difference"}
    assert case["gradients"]["input"]["finite_difference"][0] == pytest.approx(-1.0, abs=1e-8)
    assert case["largest_difference"]["autograd"] == 0.0
    assert case["largest_difference"]["finite_difference"] < 1e-8
    assert case["status"] == "pass"
    assert case["kinks"] == []
    assert case["watch"]["residual x − y"][0] == pytest.approx(-0.2)
    assert len(case["steps"]) == 3
    assert case["learning_rate"] == 0.05


def test_list_shows_every_loss_with_summary(capsys) -> None:
    code, out, _ = explain(capsys, "--list")
    assert code == 0
    for name in _registry.available():
        assert f"{name}  " in out
        assert lossgrad.FORMULAS[name].summary in out


def test_list_json(capsys) -> None:
    code, out, _ = explain(capsys, "--list", "--json")
    assert code == 0
    entries = json.loads(out)
    assert [entry["loss"] for entry in entries] == list(_registry.available())
    assert all(entry["summary"] == lossgrad.FORMULAS[entry["loss"]].summary for entry in entries)


# 6. Gradient descent.


def test_l1_steps_are_constant(capsys) -> None:
    require("l1_loss")
    report = explain_json(
        capsys, "l1_loss", "--input", "0.5", "--target", "0.7", "--steps", "3", "--lr", "0.05"
    )
    predictions = [step["inputs"]["input"][0] for step in report["cases"][0]["steps"]]
    assert predictions == pytest.approx([0.5, 0.55, 0.6, 0.65], abs=1e-12)


def test_negative_pair_hinge_goes_silent_past_margin(capsys) -> None:
    require("negative_pair_loss")
    report = explain_json(capsys, "negative_pair_loss", "--steps", "6", "--lr", "0.1")
    steps = report["cases"][0]["steps"]
    distances = [step["watch"]["distance d"][0] for step in steps]
    past = [index for index, d in enumerate(distances) if d > 1.0]
    assert past, f"the distance never passed the margin: {distances}"
    first = past[0]
    assert all(b > a for a, b in zip(distances[:first], distances[1 : first + 1]))
    for step in steps[first:]:
        assert step["loss"] == 0.0
        assert step["inputs"] == steps[first]["inputs"]


def test_cosine_similarity_steps_raise_cosine(capsys) -> None:
    require("cosine_similarity_loss")
    report = explain_json(capsys, "cosine_similarity_loss", "--steps", "4")
    cosines = [step["watch"]["cos(x₁, x₂)"][0] for step in report["cases"][0]["steps"]]
    assert all(b > a for a, b in zip(cosines, cosines[1:3]))
    assert cosines[-1] > 0.999


def test_cosine_embedding_push_stops_at_margin(capsys) -> None:
    require("cosine_embedding_loss")
    report = explain_json(capsys, "cosine_embedding_loss", "--steps", "5")
    steps = report["cases"][0]["steps"]
    cosines = [step["watch"]["cos(x₁, x₂)"][0] for step in steps]
    assert cosines[1] < cosines[0]
    assert cosines[-1] <= 0.0
    assert steps[-1]["loss"] == 0.0


@pytest.mark.parametrize("name", LOSSES)
def test_steps_table_for_every_loss(name: str, capsys) -> None:
    require(name)
    report = explain_json(capsys, name, "--steps", "2")
    for case in report["cases"]:
        steps = case["steps"]
        assert [step["step"] for step in steps] == [0, 1, 2]
        assert steps[0]["loss"] == pytest.approx(case["loss"])
        assert all(math.isfinite(step["loss"]) for step in steps)
        assert set(steps[0]["inputs"]) == set(case["gradients"])


def test_steps_stop_when_loss_rejects_update(capsys) -> None:
    """A large step moves the probability 0.01 past 1, which binary_cross_entropy rejects."""
    require("binary_cross_entropy")
    report = explain_json(capsys, "binary_cross_entropy", "--steps", "3", "--lr", "0.1")
    case = report["cases"][0]
    assert len(case["steps"]) == 1
    assert case["steps_stopped"].startswith("stopped before step 1: binary_cross_entropy:")


def test_steps_stop_when_descent_diverges(capsys) -> None:
    """With a huge learning rate the MSE steps overshoot to inf; the table stops there."""
    report = explain_json(
        capsys, "mse_loss", "--input", "1,2", "--target", "0,0", "--steps", "6", "--lr", "1e200"
    )
    case = report["cases"][0]
    assert len(case["steps"]) < 7
    assert not math.isfinite(case["steps"][-1]["loss"])
    assert all(math.isfinite(step["loss"]) for step in case["steps"][:-1])
    assert "diverged" in case["steps_stopped"]


def test_kd_without_target_leaves_alpha_out(capsys) -> None:
    report = explain_json(capsys, "kd_loss", "--input", "1,2", "--other", "2,1", "--alpha", "0.3")
    case = report["cases"][0]
    assert "alpha" not in case["options"]
    assert any("alpha = 0.3 is not used" in note for note in case["read_as"])


def test_steps_text_table(capsys) -> None:
    require("l1_loss")
    code, out, _ = explain(capsys, "l1_loss", "--input", "0.5", "--target", "0.7", "--steps", "2")
    assert code == 0
    assert "gradient descent, learning rate 0.05" in out
    assert "0.55" in out


# 7. Plots.


def assert_png(path: Path) -> None:
    """Assert ``path`` is a PNG that matplotlib reads back as a non-empty image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = plt.imread(path)
    assert image.ndim == 3
    assert image.shape[0] > 100
    assert image.shape[1] > 100


@pytest.mark.parametrize("name", LOSSES)
def test_plot_for_every_loss(name: str, capsys, tmp_path: Path) -> None:
    require(name)
    path = tmp_path / f"{name}.png"
    report = explain_json(capsys, name, "--plot", str(path))
    assert report["plot"] == str(path)
    assert_png(path)


def test_plot_with_compare_overlays_both(capsys, tmp_path: Path) -> None:
    require("l1_loss")
    require("mse_loss")
    path = tmp_path / "l1_mse.png"
    code, out, err = explain(capsys, "l1_loss", "--compare", "mse_loss", "--plot", str(path))
    assert code == 0, err
    assert f"plot written to {path}" in out
    assert_png(path)


def test_plot_curve_is_lossgrad_gradient() -> None:
    require("l1_loss")
    from lossgrad.explain._plot import sweep_curve

    explainer = _registry.EXPLAINERS["l1_loss"]
    case = explainer.build(_registry_values({"input": "0.5", "target": "0.7"}))
    points, losses, slopes = sweep_curve(explainer, case)
    for t, loss, slope in zip(points, losses, slopes):
        assert loss == pytest.approx(abs(t), abs=1e-12)
        # The residual is 0.7 + t − 0.7, which rounds to 0 for |t| below 1e-16.
        if abs(t) > 1e-12:
            assert slope == (1.0 if t > 0 else -1.0)
        else:
            assert slope == 0.0


@pytest.mark.parametrize("name", LOSSES)
def test_plot_measure_inverts_place(name: str) -> None:
    """The plot's mark is right only if measuring a placed case returns the placed value."""
    require(name)
    explainer = _registry.EXPLAINERS[name]
    sweep = explainer.sweep
    case = explainer.build(_registry_values(explainer.examples[0].values))
    low, high = sweep.bounds(case)
    assert low < high
    for fraction in (0.1, 0.5, 0.8):
        t = low + fraction * (high - low)
        placed = sweep.place(case, torch.tensor(t, dtype=torch.float64))
        assert sweep.measure(placed) == pytest.approx(t, abs=1e-9), f"{name} at t = {t}"


def test_plot_range_widens_with_margin() -> None:
    require("triplet_margin_loss")
    from lossgrad.explain._plot import sweep_curve

    explainer = _registry.EXPLAINERS["triplet_margin_loss"]
    values = {**explainer.examples[0].values, "margin": "3"}
    points, losses, _ = sweep_curve(explainer, explainer.build(_registry_values(values)))
    assert points[-1] > 3.36
    assert losses[-1] == 0.0


def test_plot_of_different_axes_is_rejected(capsys, tmp_path: Path) -> None:
    require("binary_cross_entropy")
    require("binary_cross_entropy_with_logits")
    code, _, err = explain(
        capsys,
        "binary_cross_entropy",
        "--compare",
        "binary_cross_entropy_with_logits",
        "--plot",
        str(tmp_path / "x.png"),
    )
    assert code == 2
    assert "cannot overlay" in err


# 8. --compare.


def test_compare_cross_entropy_with_sigmoid_bce(capsys) -> None:
    require("cross_entropy")
    require("binary_cross_entropy_with_logits")
    report = explain_json(
        capsys,
        "cross_entropy",
        "--input",
        "2,1,0.1",
        "--target",
        "0",
        "--compare",
        "binary_cross_entropy_with_logits",
    )
    softmax_case = report["cases"][0]
    sigmoid_case = report["compare"]["cases"][0]
    assert report["compare"]["loss"] == "binary_cross_entropy_with_logits"
    logits = torch.tensor([2.0, 1.0, 0.1], dtype=torch.float64)
    one_hot = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    softmax_grad = torch.tensor(softmax_case["gradients"]["input"]["closed_form"][0])
    sigmoid_grad = torch.tensor(
        sigmoid_case["gradients"]["input"]["closed_form"], dtype=torch.float64
    )
    assert torch.allclose(softmax_grad.double(), torch.softmax(logits, 0) - one_hot, atol=1e-12)
    assert torch.allclose(sigmoid_grad, (torch.sigmoid(logits) - one_hot) / 3, atol=1e-12)
    assert sigmoid_case["inputs"]["target"] == [1.0, 0.0, 0.0]
    assert sigmoid_case["read_as"]


def test_compare_text_is_side_by_side(capsys) -> None:
    require("l1_loss")
    require("mse_loss")
    code, out, _ = explain(
        capsys, "l1_loss", "--compare", "mse_loss", "--input", "0.5", "--target", "0.7"
    )
    assert code == 0
    header = next(line for line in out.splitlines() if "l1_loss" in line and "mse_loss" in line)
    assert header.index("l1_loss") < header.index("mse_loss")


def test_compare_fills_missing_target_from_example(capsys) -> None:
    require("cosine_similarity_loss")
    require("cosine_embedding_loss")
    report = explain_json(capsys, "cosine_similarity_loss", "--compare", "cosine_embedding_loss")
    other = report["compare"]["cases"][0]
    assert other["inputs"]["target"] == [-1.0]
    assert any("--target" in note for note in other["read_as"])


def test_compare_picks_example_value_that_fits(capsys) -> None:
    """negative_pair_loss has one pair, so contrastive_loss gets its one-pair example's label, 0."""
    require("negative_pair_loss")
    require("contrastive_loss")
    report = explain_json(capsys, "negative_pair_loss", "--compare", "contrastive_loss")
    main_case = report["cases"][0]
    other = report["compare"]["cases"][0]
    assert other["inputs"]["target"] == [0.0]
    assert other["loss"] == pytest.approx(main_case["loss"])
    other_gradient = torch.tensor(other["gradients"]["x1"]["closed_form"])
    main_gradient = torch.tensor(main_case["gradients"]["x1"]["closed_form"])
    assert torch.allclose(other_gradient, main_gradient, atol=1e-12)


# 9. Kinks.


def test_l1_zero_residual_is_kink(capsys) -> None:
    require("l1_loss")
    code, out, _ = explain(capsys, "l1_loss", "--input", "0.7", "--target", "0.7")
    assert code == 0
    assert "PASS AT A KINK" in out
    assert "FAIL" not in out
    assert lossgrad.FORMULAS["l1_loss"].subgradient in out


def test_l1_zero_residual_json(capsys) -> None:
    require("l1_loss")
    [case] = explain_json(capsys, "l1_loss", "--input", "0.7,0.2", "--target", "0.7,0.5")["cases"]
    assert case["status"] == "kink"
    assert len(case["kinks"]) == 1
    assert "element 0" in case["kinks"][0]
    assert case["subgradient"] == lossgrad.FORMULAS["l1_loss"].subgradient
    assert case["gradients"]["input"]["closed_form"] == [0.0, -0.5]


def test_hinge_at_margin_is_a_kink(capsys) -> None:
    """At d = margin the central difference averages the two slopes, unlike the subgradient 0."""
    require("negative_pair_loss")
    [case] = explain_json(capsys, "negative_pair_loss", "--input", "0,0", "--other", "1,0")["cases"]
    assert case["status"] == "kink"
    assert case["largest_difference"]["finite_difference"] > 0.1
    assert case["gradients"]["x1"]["closed_form"] == [[0.0, 0.0]]


def test_coincident_triplet_points_are_a_kink(capsys) -> None:
    require("triplet_margin_loss")
    [case] = explain_json(
        capsys, "triplet_margin_loss", "--anchor", "1,1", "--positive", "1,1", "--negative", "2,1"
    )["cases"]
    assert case["status"] == "kink"
    assert any("coincide" in kink for kink in case["kinks"])


def test_zero_vector_cosine_embedding_is_kink(capsys) -> None:
    require("cosine_embedding_loss")
    [case] = explain_json(
        capsys, "cosine_embedding_loss", "--input", "0,0", "--other", "1,2", "--target", "1"
    )["cases"]
    assert case["status"] == "kink"
    assert "‖input1‖" in case["kinks"][0]


def test_wrong_gradient_fails_with_exit_one(capsys, monkeypatch) -> None:
    require("l1_loss")
    explainer = _registry.EXPLAINERS["l1_loss"]
    wrong = replace(
        explainer,
        reference=lambda case: ((case.arguments["input"] - case.arguments["target"]) ** 2).mean(),
    )
    monkeypatch.setitem(_registry.EXPLAINERS, "l1_loss", wrong)
    code, out, _ = explain(capsys, "l1_loss", "--input", "0.5", "--target", "0.7")
    assert code == 1
    assert "FAIL: the loss differs from the reference formula" in out


def test_undetected_kink_fails_finite_differences(capsys, monkeypatch) -> None:
    """Without its kink detection the hinge at d = margin fails, which shows what the detection does."""
    require("negative_pair_loss")
    explainer = _registry.EXPLAINERS["negative_pair_loss"]
    monkeypatch.setitem(
        _registry.EXPLAINERS, "negative_pair_loss", replace(explainer, kinks=lambda case: [])
    )
    report = json.loads(
        explain(capsys, "negative_pair_loss", "--input", "0,0", "--other", "1,0", "--json")[1]
    )
    [case] = report["cases"]
    assert case["status"] == "fail"
    assert case["failure"] == "the closed-form gradient differs from finite differences"
    assert report["passed"] is False


def test_loss_warning_is_one_line(capsys) -> None:
    require("kl_div")
    code, out, err = explain(capsys, "kl_div", "--reduction", "mean", "--json")
    assert code == 0
    report = json.loads(out)
    assert len(report["warnings"]) == 1
    assert "batchmean" in report["warnings"][0]
    assert err.count("\n") == 1
    assert err.startswith("lossgrad explain: warning: kl_div:")


# 10. Bad input: one line on stderr, exit code 2.

BAD_INPUTS = [
    (["l1_los"], "unknown loss 'l1_los'; did you mean l1_loss"),
    (["l1_loss", "--input", "0.1,0.2", "--target", "0.3"], "expected the same shape"),
    (["l1_loss", "--input", "0.1,abc", "--target", "0.3,0.1"], "expected a number, got 'abc'"),
    (["l1_loss", "--input", "nan", "--target", "0.3"], "expected a finite number"),
    (
        ["cross_entropy", "--input", "1,2,3", "--target", "3"],
        "class index 3 is out of range for 3 classes",
    ),
    (
        ["cross_entropy", "--input", "1,2,3;4,5", "--target", "0,1"],
        "expected rows of the same length",
    ),
    (
        ["binary_cross_entropy_with_logits", "--input", "1,2", "--target", "0,2"],
        "expected probabilities in [0, 1]",
    ),
    (
        ["cosine_embedding_loss", "--input", "1,2", "--other", "2,1", "--target", "0"],
        "expected 1 (similar) or -1",
    ),
    (["l1_loss", "--input", "0.5"], "missing required option --target"),
    (
        ["cosine_embedding_loss", "--input", "1,2", "--other", "2,1"],
        "missing required option --target",
    ),
    (
        ["huber_loss", "--input", "0.5", "--target", "0.1", "--delta=-1"],
        "huber_loss: delta: expected a value > 0",
    ),
    (["l1_loss", "--margin", "1"], "--margin does not apply to l1_loss"),
    (["l1_loss", "--steps", "x"], "--steps: expected an integer"),
    (["l1_loss", "--lr", "0"], "--lr: expected a positive number"),
    (["l1_loss", "--compare", "nothing_like_it"], "--compare: unknown loss"),
    (["l1_loss", "--reduction", "none"], "--reduction: expected one of mean, sum"),
    ([], "missing LOSS"),
    (["l1_loss", "--input"], "expected one argument"),
    (
        ["cross_entropy", "--input", "1,2", "--target", "-100,1"],
        "write a value that starts with a minus sign as",
    ),
    (
        ["l1_loss", "--compare", "triplet_margin_loss"],
        "triplet_margin_loss takes none of these inputs",
    ),
]


@pytest.mark.parametrize(
    ("argv", "message"), BAD_INPUTS, ids=[" ".join(argv) or "no-loss" for argv, _ in BAD_INPUTS]
)
def test_bad_input_is_one_line_exit_two(argv: list[str], message: str, capsys) -> None:
    for name in argv[:1]:
        if name in _registry.EXPLAINERS:
            require(name)
    code, out, err = explain(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    assert err.startswith("lossgrad explain: error: ")
    assert message in err


def test_unwritable_plot_path_is_one_line(capsys, tmp_path: Path) -> None:
    require("l1_loss")
    code, _, err = explain(capsys, "l1_loss", "--plot", str(tmp_path / "missing" / "x.png"))
    assert code == 2
    assert err.count("\n") == 1
    assert "--plot: cannot write" in err


# 11. Parsing and random inputs.


def test_values_parse_rows_and_spaces() -> None:
    from lossgrad.explain._values import Values

    values = Values({"input": " 1, 2 ;3 4;", "target": "2"})
    assert values.rows("input") == [[1.0, 2.0], [3.0, 4.0]]
    assert values.array("target").tolist() == [2.0]
    assert values.matrix("target").shape == (1, 1)
    assert values.per_row("input", 4).tolist() == [1.0, 2.0, 3.0, 4.0]


finite_numbers = st.floats(min_value=-5, max_value=5, allow_nan=False).map(lambda x: round(x, 3))


@given(
    name=st.sampled_from(
        ["l1_loss", "mse_loss", "huber_loss", "cross_entropy", "negative_pair_loss"]
    ),
    first=st.lists(finite_numbers, min_size=3, max_size=3),
    second=st.lists(finite_numbers, min_size=3, max_size=3),
)
def test_random_inputs_never_fail(name: str, first: list[float], second: list[float]) -> None:
    """Rounded inputs often sit exactly on a kink; those must be marked, never failed."""
    require(name)
    explainer = _registry.EXPLAINERS[name]
    text = {"input": ",".join(map(str, first))}
    if name == "cross_entropy":
        text["target"] = "1"
    elif name == "negative_pair_loss":
        text["other"] = ",".join(map(str, second))
    else:
        text["target"] = ",".join(map(str, second))
    from lossgrad.explain._check import check

    outcome = check(explainer, explainer.build(_registry_values(text)))
    assert outcome.status != "fail", f"{name} {text}: {outcome.failure}"


# 12. The installed script.


def test_installed_script_runs() -> None:
    require("l1_loss")
    script = shutil.which("lossgrad", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the lossgrad script is not installed next to this Python")
    result = subprocess.run(
        [script, "explain", "l1_loss", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["cases"][0]["gradients"]["input"]["closed_form"] == [-1.0]
    bad = subprocess.run(
        [script, "explain", "l1_los"], capture_output=True, text=True, timeout=120, check=False
    )
    assert bad.returncode == 2
    assert "Traceback" not in bad.stderr

    # A reader that has gone before the output is written (as after `| head`).
    closed = subprocess.Popen(
        [script, "explain", "l1_loss"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    closed.stdout.close()
    assert closed.wait(timeout=120) == 141
    assert b"Traceback" not in closed.stderr.read()
    closed.stderr.close()


def test_values_reject_empty_number_between_commas() -> None:
    from lossgrad.explain._values import UsageError, Values

    with pytest.raises(UsageError, match="empty number in '1,,2'"):
        Values({"input": "1,,2"}).rows("input")
    with pytest.raises(UsageError, match="empty row"):
        Values({"input": "1,2;;3,4"}).rows("input")


def test_minus_sign_hint_names_the_option(capsys) -> None:
    code, _, err = explain(capsys, "mse_loss", "--input", "-1,2")
    assert code == 2
    assert "--input=-1,2" in err
