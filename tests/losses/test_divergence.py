"""Tests of kl_div against PyTorch, and of kd_loss and js_div against float64 formulas."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from helpers import as_tensor, assert_close, grads_of, reported_case

import lossgrad
from lossgrad import FORMULAS
from lossgrad.nn import JSDivLoss, KDLoss, KLDivLoss

INF = float("inf")
ROW_REDUCTIONS = ("none", "sum", "batchmean")
KL_REDUCTIONS = ("none", "sum", "batchmean", "mean")


def randn(*shape, dtype=torch.float64, seed=0, scale=1.0, requires_grad=True):
    generator = torch.Generator().manual_seed(seed)
    data = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
    return data.to(dtype).requires_grad_(requires_grad)


def random_target(rows_shape, C, *, seed=0, ignored=(), ignore_index=-100):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(C, rows_shape, generator=generator)
    flat = target.view(-1)
    for row in ignored:
        flat[row] = ignore_index
    return target


def kl_no_warning(*args, **kwargs):
    """Call lossgrad.kl_div with the warning of reduction='mean' silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return lossgrad.kl_div(*args, **kwargs)


def torch_kl_div(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return F.kl_div(*args, **kwargs)


def reduce_rows(loss, counted, reduction):
    """Reduce a per-row loss: the float64 reference of the row reductions."""
    loss = torch.where(counted, loss, torch.zeros_like(loss))
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / counted.sum().clamp(min=1)


def reference_kd(
    student, teacher, target=None, *, temperature=4.0, alpha=0.9, ignore_index=-100,
    reduction="batchmean",
):
    """Distillation loss from log_softmax and cross_entropy, differentiated by autograd."""
    T = temperature
    log_p_s = F.log_softmax(student / T, dim=-1)
    log_p_t = F.log_softmax(teacher.detach() / T, dim=-1)
    terms = log_p_t.exp() * (log_p_t - log_p_s)
    soft = T * T * torch.where(log_p_t.exp() > 0, terms, torch.zeros_like(terms)).sum(-1)
    if target is None:
        counted = torch.ones(student.shape[:-1], dtype=torch.bool)
        return reduce_rows(soft, counted, reduction)
    counted = target != ignore_index
    C = student.shape[-1]
    hard = F.cross_entropy(
        student.reshape(-1, C), target.reshape(-1), ignore_index=ignore_index, reduction="none"
    ).reshape(target.shape)
    return reduce_rows(alpha * soft + (1 - alpha) * hard, counted, reduction)


def reference_js(
    student, teacher, target=None, *, beta=0.5, temperature=1.0, ignore_index=-100,
    reduction="batchmean",
):
    """Generalised JSD from log_softmax and logsumexp, differentiated by autograd."""
    T = temperature
    log_p_s = F.log_softmax(student / T, dim=-1)
    log_p_t = F.log_softmax(teacher.detach() / T, dim=-1)

    def kl(log_p, log_q):
        return (log_p.exp() * (log_p - log_q)).sum(-1)

    if beta == 0:
        loss = kl(log_p_t, log_p_s)
    elif beta == 1:
        loss = kl(log_p_s, log_p_t)
    else:
        log_m = torch.logsumexp(
            torch.stack([log_p_t + math.log(beta), log_p_s + math.log1p(-beta)]), dim=0
        )
        loss = beta * kl(log_p_t, log_m) + (1 - beta) * kl(log_p_s, log_m)
    counted = (
        torch.ones(student.shape[:-1], dtype=torch.bool)
        if target is None
        else target != ignore_index
    )
    return reduce_rows(T * T * loss, counted, reduction)


def log_probabilities(*shape, seed=0, dtype=torch.float64):
    return randn(*shape, seed=seed, requires_grad=False).log_softmax(-1).to(dtype)


# ---------------------------------------------------------------------------
# kl_div
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("shape", [(4, 5), (3, 423), (2, 3, 7)])
def test_kl_div_matches_torch(dtype, reduction, log_target, shape):
    input = log_probabilities(*shape, seed=1, dtype=dtype).requires_grad_(True)
    target = log_probabilities(*shape, seed=2, dtype=dtype)
    if not log_target:
        target = target.exp()
    target.requires_grad_(True)
    ours = kl_no_warning(input, target, reduction=reduction, log_target=log_target)
    expected = torch_kl_div(input, target, reduction=reduction, log_target=log_target)
    assert_close(ours, expected, "loss")
    grad_output = torch.randn(ours.shape, dtype=dtype) if reduction == "none" else None
    ours_grads = grads_of(ours, [input, target], grad_output)
    expected_grads = grads_of(expected, [input, target], grad_output)
    assert_close(ours_grads[0], expected_grads[0], "grad input", kind="grad")
    assert_close(ours_grads[1], expected_grads[1], "grad target", kind="grad")


@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_gradcheck(reduction, log_target):
    input = log_probabilities(3, 5, seed=3).requires_grad_(True)
    target = log_probabilities(3, 5, seed=4)
    if not log_target:
        target = target.exp()
    target.requires_grad_(True)

    def loss(x, t):
        return kl_no_warning(x, t, reduction=reduction, log_target=log_target)

    assert torch.autograd.gradcheck(loss, (input, target))


def test_kl_div_mean_warns():
    input = log_probabilities(2, 3).requires_grad_(True)
    with pytest.warns(UserWarning, match="batchmean") as record:
        lossgrad.kl_div(input, input.detach().exp())
    assert record[0].filename == __file__


def test_kl_div_batchmean_of_scalar_divides_by_one():
    input = torch.tensor(-0.5, dtype=torch.float64)
    target = torch.tensor(0.25, dtype=torch.float64)
    ours = lossgrad.kl_div(input, target, reduction="batchmean")
    assert_close(ours, torch_kl_div(input, target, reduction="batchmean"), "loss")


def test_kl_div_empty_mean_is_zero():
    input = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    loss = kl_no_warning(input, torch.zeros(0, 3, dtype=torch.float64))
    assert loss.item() == 0.0
    loss.backward()
    assert input.grad.shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_kl_div_half_dtypes_compute_in_float32(dtype):
    input = log_probabilities(4, 9, seed=5, dtype=dtype).requires_grad_(True)
    target = log_probabilities(4, 9, seed=6, dtype=dtype).exp()
    ours = lossgrad.kl_div(input, target, reduction="sum")
    assert ours.dtype == dtype
    reference = torch_kl_div(input.double(), target.double(), reduction="sum")
    plain = torch_kl_div(input, target, reduction="sum")
    our_error = (ours.double() - reference).abs().item()
    plain_error = (plain.double() - reference).abs().item()
    assert our_error <= plain_error + 1e-12 or our_error <= 1e-7 * abs(reference.item())


def test_kl_div_R04_mean_and_batchmean():
    """R04: 'mean' divides by every element (N·C), 'batchmean' by the rows N."""
    case = reported_case("R04")
    input = as_tensor(case["inputs"]["input_log_q"])
    target = as_tensor(case["inputs"]["target_p"])
    expected = case["expected"]
    per_row = lossgrad.kl_div(input, target, reduction="none").sum(-1)
    assert_close(per_row, as_tensor(expected["per_row_KL"]), "per-row KL", rtol=1e-8, atol=1e-9)
    for reduction, key in [
        ("sum", "sum"),
        ("batchmean", "batchmean"),
        ("mean", "mean(all elements)"),
    ]:
        value = kl_no_warning(input, target, reduction=reduction)
        assert_close(value, as_tensor(expected[key]), reduction, rtol=1e-8, atol=1e-9)


@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_R05_zero_target_against_minus_inf(log_target):
    """R05: 0 · (log 0 − (−inf)) is taken as 0, so the masked class adds no NaN."""
    case = reported_case("R05")
    inputs = case["inputs"]
    input = as_tensor(inputs["input_log_q"]).requires_grad_(True)
    key = "target_in_log_form" if log_target else "target"
    target = as_tensor(inputs[key]).requires_grad_(True)
    loss = lossgrad.kl_div(input, target, reduction=inputs["reduction"], log_target=log_target)
    assert_close(loss, as_tensor(case["expected"]["loss"]), "loss")
    grad_input, grad_target = grads_of(loss, [input, target])
    assert_close(grad_input, as_tensor([case["expected"]["grad_input"]]), "grad input", kind="grad")
    # d/dt at the zero-probability entry is set to 0; at p = q = 1 it is
    # log 1 − 0 + 1 = 1 (log_target: exp(0) (0 − 0 + 1) = 1).
    assert_close(grad_target, as_tensor([[0.0, 1.0]]), "grad target", kind="grad")


def test_kl_div_negative_target_gives_nan_as_torch():
    input = torch.tensor([-1.0, -2.0], dtype=torch.float64)
    target = torch.tensor([-0.5, 0.5], dtype=torch.float64)
    loss = lossgrad.kl_div(input, target, reduction="none")
    assert torch.isnan(loss[0])
    assert_close(loss[1], torch_kl_div(input, target, reduction="none")[1], "valid entry")


def test_kl_div_errors():
    input = log_probabilities(2, 3)
    with pytest.raises(ValueError, match=r"target: expected the same shape as input \(2, 3\), got \(2, 4\)"):
        lossgrad.kl_div(input, torch.rand(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="size_average: deprecated"):
        lossgrad.kl_div(input, input.exp(), size_average=True)
    with pytest.raises(ValueError, match="reduction: expected one of"):
        lossgrad.kl_div(input, input.exp(), reduction="avg")
    with pytest.raises(TypeError, match="target: expected a floating-point tensor"):
        lossgrad.kl_div(input, torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="log_target: expected a bool"):
        lossgrad.kl_div(input, input.exp(), reduction="sum", log_target=1)


def test_kl_div_double_backward_raises():
    input = log_probabilities(2, 3).requires_grad_(True)
    loss = lossgrad.kl_div(input, input.detach().exp(), reduction="sum")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, input, create_graph=True)


def test_kl_div_module_matches_function():
    input = log_probabilities(3, 4, seed=7)
    target = log_probabilities(3, 4, seed=8).exp()
    module = KLDivLoss(reduction="batchmean", log_target=False)
    assert_close(module(input, target), lossgrad.kl_div(input, target, reduction="batchmean"), "module")
    with pytest.raises(ValueError, match="reduce: deprecated"):
        KLDivLoss(reduce=False)


# ---------------------------------------------------------------------------
# kd_loss
# ---------------------------------------------------------------------------

KD_SHAPES = [(6, 5), (3, 423), (2, 4, 7), (1, 1)]


@pytest.mark.parametrize("shape", KD_SHAPES)
@pytest.mark.parametrize("with_target", [False, True])
@pytest.mark.parametrize("reduction", ROW_REDUCTIONS)
@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (4.0, 0.9), (2.5, 0.0), (0.5, 1.0)])
def test_kd_loss_matches_formula(shape, with_target, reduction, temperature, alpha):
    student = randn(*shape, seed=1, scale=2.0)
    teacher = randn(*shape, seed=2, scale=2.0, requires_grad=False)
    target = None
    if with_target:
        target = random_target(shape[:-1], shape[-1], seed=3, ignored=(0,))
    options = dict(temperature=temperature, alpha=alpha, reduction=reduction)
    ours = lossgrad.kd_loss(student, teacher, target, **options)
    expected = reference_kd(student, teacher, target, **options)
    assert_close(ours, expected, "loss")
    grad_output = torch.randn(ours.shape, dtype=ours.dtype) if reduction == "none" else None
    (ours_grad,) = grads_of(ours, [student], grad_output)
    (expected_grad,) = grads_of(expected, [student], grad_output)
    assert_close(ours_grad, expected_grad, "grad student", kind="grad")


@pytest.mark.parametrize("shape", [(6, 5), (2, 4, 7)])
@pytest.mark.parametrize("reduction", ROW_REDUCTIONS)
def test_kd_loss_float32_matches_formula(shape, reduction):
    student = randn(*shape, dtype=torch.float32, seed=4, scale=3.0)
    teacher = randn(*shape, dtype=torch.float32, seed=5, scale=3.0, requires_grad=False)
    target = random_target(shape[:-1], shape[-1], seed=6, ignored=(1,))
    options = dict(temperature=2.0, alpha=0.7, reduction=reduction)
    ours = lossgrad.kd_loss(student, teacher, target, **options)
    student64 = student.detach().double().requires_grad_(True)
    expected = reference_kd(student64, teacher.double(), target, **options)
    assert_close(ours, expected.float(), "loss")
    grad_output = torch.randn(ours.shape) if reduction == "none" else None
    (ours_grad,) = grads_of(ours, [student], grad_output)
    (expected_grad,) = grads_of(expected, [student64], None if grad_output is None else grad_output.double())
    assert_close(ours_grad, expected_grad.float(), "grad student", kind="grad")


@pytest.mark.parametrize("with_target", [False, True])
@pytest.mark.parametrize("reduction", ROW_REDUCTIONS)
@pytest.mark.parametrize("temperature, alpha", [(1.0, 0.5), (3.0, 0.0), (2.0, 1.0)])
def test_kd_loss_gradcheck(with_target, reduction, temperature, alpha):
    student = randn(2, 3, 5, seed=7)
    teacher = randn(2, 3, 5, seed=8, requires_grad=False)
    target = random_target((2, 3), 5, seed=9, ignored=(2,)) if with_target else None

    def loss(s):
        return lossgrad.kd_loss(
            s, teacher, target, temperature=temperature, alpha=alpha, reduction=reduction
        )

    assert torch.autograd.gradcheck(loss, (student,))


def test_kd_loss_R06_value_and_gradient():
    """R06: the soft term is scaled by T², so its gradient is T (p_s − p_t) / N."""
    case = reported_case("R06")
    inputs = case["inputs"]
    student = as_tensor(inputs["student_logits"]).requires_grad_(True)
    teacher = as_tensor(inputs["teacher_logits"])
    loss = lossgrad.kd_loss(
        student,
        teacher,
        temperature=inputs["temperature"],
        alpha=inputs["alpha"],
        reduction=inputs["reduction"],
    )
    expected = case["expected"]
    assert_close(loss, as_tensor(expected["kd_T2_batchmean"]), "loss", rtol=1e-8, atol=1e-9)
    (grad,) = grads_of(loss, [student])
    expected_grad = as_tensor([expected["grad_student_logits"]])
    assert_close(grad, expected_grad, "grad student", rtol=1e-8, atol=1e-9)


def test_kd_loss_R06_gradient_keeps_scale_across_temperatures():
    """R06: without T² the soft gradient would shrink as 1/T² when T grows."""
    student = randn(4, 10, seed=10, scale=3.0)
    teacher = randn(4, 10, seed=11, scale=3.0, requires_grad=False)
    norms = {}
    for temperature in (4.0, 8.0):
        loss = lossgrad.kd_loss(student, teacher, temperature=temperature)
        (grad,) = grads_of(loss, [student])
        norms[temperature] = grad.norm().item()
    # For large T, T (p_s − p_t) tends to the centred (s − t) / C, so the two
    # norms are close; a missing T² would make the ratio about 1/4.
    ratio = norms[8.0] / norms[4.0]
    assert 0.7 < ratio < 1.3, f"gradient norm ratio T=8 over T=4 is {ratio}"


def test_kd_loss_alpha_not_used_without_target():
    student = randn(3, 6, seed=12)
    teacher = randn(3, 6, seed=13, requires_grad=False)
    plain = lossgrad.kd_loss(student, teacher, temperature=2.0, alpha=1.0)
    for alpha in (0.0, 0.3, 0.9):
        value = lossgrad.kd_loss(student, teacher, temperature=2.0, alpha=alpha)
        assert_close(value, plain, f"alpha={alpha}")
    expected = 4.0 * torch_kl_div(
        F.log_softmax(student / 2.0, -1), F.softmax(teacher / 2.0, -1), reduction="batchmean"
    )
    assert_close(plain, expected, "T² KL")


def test_kd_loss_hard_term_matches_cross_entropy():
    student = randn(5, 7, seed=14)
    teacher = randn(5, 7, seed=15, requires_grad=False)
    target = random_target((5,), 7, seed=16, ignored=(1, 3), ignore_index=2)
    ours = lossgrad.kd_loss(student, teacher, target, alpha=0.0, ignore_index=2)
    expected = F.cross_entropy(student, target, ignore_index=2)
    assert_close(ours, expected, "loss")
    assert_close(grads_of(ours, [student])[0], grads_of(expected, [student])[0], "grad", kind="grad")


@pytest.mark.parametrize("with_target", [False, True])
def test_kd_loss_masked_student_class(with_target):
    student = torch.tensor([[0.5, -INF, 1.0], [2.0, 0.0, -INF]], requires_grad=True)
    teacher = torch.tensor([[1.0, -INF, 0.0], [0.0, 1.0, -INF]])
    target = torch.tensor([0, 1]) if with_target else None
    loss = lossgrad.kd_loss(student, teacher, target, temperature=2.0, alpha=0.5)
    assert torch.isfinite(loss)
    (grad,) = grads_of(loss, [student])
    assert torch.isfinite(grad).all()
    assert grad[0, 1].item() == 0.0
    assert grad[1, 2].item() == 0.0
    finite = torch.where(torch.isfinite(student), student, torch.full_like(student, -1e4))
    expected = reference_kd(finite.double(), teacher.double(), target, temperature=2.0, alpha=0.5)
    assert_close(loss, expected.float(), "loss")


def test_kd_loss_ignored_row_gets_exact_zero():
    student = randn(3, 4, dtype=torch.float32, seed=17).detach()
    student[1] = torch.tensor([float("nan"), INF, -INF, 1.0])
    student.requires_grad_(True)
    teacher = randn(3, 4, dtype=torch.float32, seed=18, requires_grad=False)
    target = torch.tensor([0, -100, 3])
    loss = lossgrad.kd_loss(student, teacher, target, reduction="none")
    assert loss[1].item() == 0.0
    assert torch.isfinite(loss).all()
    (grad,) = grads_of(loss.sum(), [student])
    assert (grad[1] == 0).all()


@pytest.mark.parametrize("loss_fn", [lossgrad.kd_loss, lossgrad.js_div])
def test_row_losses_nothing_counts(loss_fn):
    student = randn(2, 3, 5, seed=19)
    teacher = randn(2, 3, 5, seed=20, requires_grad=False)
    target = torch.full((2, 3), -100)
    loss = loss_fn(student, teacher, target)
    assert loss.item() == 0.0
    assert loss.requires_grad
    (grad,) = grads_of(loss, [student])
    assert (grad == 0).all()


@pytest.mark.parametrize("loss_fn", [lossgrad.kd_loss, lossgrad.js_div])
def test_row_losses_empty_batch(loss_fn):
    student = torch.zeros(0, 5, dtype=torch.float64, requires_grad=True)
    loss = loss_fn(student, torch.zeros(0, 5, dtype=torch.float64))
    assert loss.item() == 0.0
    (grad,) = grads_of(loss, [student])
    assert grad.shape == (0, 5)


@pytest.mark.parametrize("loss_fn", [lossgrad.kd_loss, lossgrad.js_div])
def test_row_losses_teacher_gets_no_gradient(loss_fn):
    student = randn(3, 4, seed=21)
    teacher = randn(3, 4, seed=22)
    loss_fn(student, teacher).backward()
    assert teacher.grad is None
    assert student.grad is not None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("loss_name", ["kd_loss", "js_div"])
def test_row_losses_half_dtypes_no_worse_than_torch(dtype, loss_name):
    """Half inputs are computed in float32: no worse than the same formula in half."""
    reference = reference_kd if loss_name == "kd_loss" else reference_js
    options = dict(temperature=2.0, reduction="sum")
    student = randn(8, 50, dtype=dtype, seed=23, scale=4.0)
    teacher = randn(8, 50, dtype=dtype, seed=24, scale=4.0, requires_grad=False)
    ours = getattr(lossgrad, loss_name)(student, teacher, **options)
    assert ours.dtype == dtype
    (ours_grad,) = grads_of(ours, [student])
    assert ours_grad.dtype == dtype
    plain = reference(student, teacher, **options)
    (plain_grad,) = grads_of(plain, [student])
    student64 = student.detach().double().requires_grad_(True)
    exact = reference(student64, teacher.double(), **options)
    (exact_grad,) = grads_of(exact, [student64])
    assert abs(ours.double() - exact).item() <= abs(plain.double() - exact).item() + 1e-6
    ours_error = (ours_grad.double() - exact_grad).abs().max().item()
    plain_error = (plain_grad.double() - exact_grad).abs().max().item()
    assert ours_error <= plain_error + 1e-6


@pytest.mark.parametrize("loss_name", ["kd_loss", "js_div"])
def test_row_losses_large_logits(loss_name):
    reference = reference_kd if loss_name == "kd_loss" else reference_js
    student = randn(4, 9, dtype=torch.float32, seed=25, scale=1e4)
    teacher = randn(4, 9, dtype=torch.float32, seed=26, scale=1e4, requires_grad=False)
    ours = getattr(lossgrad, loss_name)(student, teacher, temperature=1.0)
    (grad,) = grads_of(ours, [student])
    assert torch.isfinite(ours)
    assert torch.isfinite(grad).all()
    student64 = student.detach().double().requires_grad_(True)
    exact = reference(student64, teacher.double(), temperature=1.0)
    (exact_grad,) = grads_of(exact, [student64])
    assert_close(ours, exact.float(), "loss", rtol=1e-6, atol=1e-3)
    assert_close(grad, exact_grad.float(), "grad", kind="grad")


@given(
    data=st.lists(st.floats(-1e3, 1e3), min_size=12, max_size=12),
    temperature=st.floats(0.05, 20.0),
    weight=st.floats(0.0, 1.0),
    ignored=st.booleans(),
)
def test_row_losses_no_nan_on_finite_inputs(data, temperature, weight, ignored):
    values = torch.tensor(data, dtype=torch.float32).view(2, 2, 3)
    student = values[0].clone().requires_grad_(True)
    teacher = values[1]
    target = torch.tensor([0, -100 if ignored else 2])
    for loss in (
        lossgrad.kd_loss(student, teacher, target, temperature=temperature, alpha=weight),
        lossgrad.js_div(student, teacher, target, temperature=temperature, beta=weight),
    ):
        (grad,) = grads_of(loss, [student])
        assert torch.isfinite(loss), f"loss {loss}"
        assert torch.isfinite(grad).all(), f"grad {grad}"


def test_kd_loss_func_grad_matches_autograd():
    student = randn(3, 2, 6, seed=27)
    teacher = randn(3, 2, 6, seed=28, requires_grad=False)
    target = random_target((3, 2), 6, seed=29, ignored=(4,))

    def loss(s):
        return lossgrad.kd_loss(s, teacher, target, temperature=3.0, alpha=0.6)

    functional = torch.func.grad(loss)(student.detach())
    (expected,) = grads_of(loss(student), [student])
    assert_close(functional, expected, "torch.func.grad", kind="grad")


@pytest.mark.parametrize("loss_name, weight", [("kd_loss", 0.5), ("js_div", 0.0), ("js_div", 0.5)])
@pytest.mark.parametrize("in_dims", [(0, 0, 0), (0, None, None), (None, 0, None), (None, None, 0)])
def test_row_losses_vmap_matches_loop(loss_name, weight, in_dims):
    """vmap over any subset of student, teacher and target, for the loss and torch.func.grad."""
    B = 4
    student = randn(B, 3, 5, seed=30, requires_grad=False)
    teacher = randn(B, 3, 5, seed=31, requires_grad=False)
    target = random_target((B, 3), 5, seed=32, ignored=(4,))
    key = "alpha" if loss_name == "kd_loss" else "beta"

    def loss(s, t, y):
        return getattr(lossgrad, loss_name)(s, t, y, temperature=2.0, **{key: weight})

    inputs = [x if dim == 0 else x[0] for x, dim in zip((student, teacher, target), in_dims)]

    def looped(function):
        return torch.stack([
            function(*[x[i] if dim == 0 else x for x, dim in zip(inputs, in_dims)])
            for i in range(B)
        ])

    batched = torch.vmap(loss, in_dims=in_dims)(*inputs)
    assert_close(batched, looped(loss), "vmap loss")
    batched_grad = torch.vmap(torch.func.grad(loss), in_dims=in_dims)(*inputs)
    assert_close(batched_grad, looped(torch.func.grad(loss)), "vmap grad", kind="grad")


def test_kl_div_vmap_matches_loop():
    input = log_probabilities(4, 3, 5, seed=33)
    target = log_probabilities(4, 3, 5, seed=34).exp()

    def loss(x, t):
        return lossgrad.kl_div(x, t, reduction="batchmean")

    batched = torch.vmap(loss)(input, target)
    looped = torch.stack([loss(x, t) for x, t in zip(input, target)])
    assert_close(batched, looped, "vmap")


@pytest.mark.parametrize("loss_fn", [lossgrad.kd_loss, lossgrad.js_div])
def test_row_losses_double_backward_raises(loss_fn):
    student = randn(2, 3, seed=32)
    loss = loss_fn(student, randn(2, 3, seed=33, requires_grad=False))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, student, create_graph=True)


def test_kd_loss_errors():
    student = randn(2, 3, seed=34)
    teacher = randn(2, 3, seed=35, requires_grad=False)
    target = torch.tensor([0, 1])
    with pytest.raises(ValueError, match="temperature: expected a value > 0, got 0.0"):
        lossgrad.kd_loss(student, teacher, temperature=0.0)
    with pytest.raises(ValueError, match="temperature: expected a value > 0"):
        lossgrad.kd_loss(student, teacher, temperature=-1.0)
    with pytest.raises(ValueError, match=r"alpha: expected a value in \[0.0, 1.0\], got 1.5"):
        lossgrad.kd_loss(student, teacher, target, alpha=1.5)
    with pytest.raises(ValueError, match=r"alpha: expected a value in \[0.0, 1.0\], got -0.1"):
        lossgrad.kd_loss(student, teacher, target, alpha=-0.1)
    with pytest.raises(
        ValueError, match=r"teacher_logits: expected the shape of student_logits \(2, 3\), got \(2, 4\)"
    ):
        lossgrad.kd_loss(student, randn(2, 4, requires_grad=False))
    with pytest.raises(ValueError, match=r"target: expected shape \(2,\)"):
        lossgrad.kd_loss(student, teacher, torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="target: expected integer class indices"):
        lossgrad.kd_loss(student, teacher, torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 2\]"):
        lossgrad.kd_loss(student, teacher, torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="reduction: kd_loss does not support 'mean'.*batchmean"):
        lossgrad.kd_loss(student, teacher, reduction="mean")
    with pytest.raises(ValueError, match="reduction: expected one of"):
        lossgrad.kd_loss(student, teacher, reduction="avg")
    with pytest.raises(TypeError, match="ignore_index: expected an int"):
        lossgrad.kd_loss(student, teacher, target, ignore_index=-100.0)
    with pytest.raises(ValueError, match=r"student_logits: expected shape \(\*, C\)"):
        lossgrad.kd_loss(torch.tensor(1.0), torch.tensor(1.0))
    with pytest.raises(TypeError, match="teacher_logits: expected a floating-point tensor"):
        lossgrad.kd_loss(student, torch.ones(2, 3, dtype=torch.long))


def test_kd_module_matches_function():
    student = randn(3, 5, seed=36)
    teacher = randn(3, 5, seed=37, requires_grad=False)
    target = torch.tensor([1, -100, 4])
    module = KDLoss(temperature=2.0, alpha=0.4, reduction="sum")
    expected = lossgrad.kd_loss(student, teacher, target, temperature=2.0, alpha=0.4, reduction="sum")
    assert_close(module(student, teacher, target), expected, "module")
    with pytest.raises(ValueError, match="temperature"):
        KDLoss(temperature=0.0)
    with pytest.raises(ValueError, match="does not support 'mean'"):
        KDLoss(reduction="mean")


# ---------------------------------------------------------------------------
# js_div
# ---------------------------------------------------------------------------

BETAS = (0.0, 0.1, 0.5, 0.9, 1.0)


@pytest.mark.parametrize("shape", [(6, 5), (3, 423), (2, 4, 7)])
@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reduction", ROW_REDUCTIONS)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_js_div_matches_formula(shape, beta, reduction, temperature):
    student = randn(*shape, seed=40, scale=2.0)
    teacher = randn(*shape, seed=41, scale=2.0, requires_grad=False)
    target = random_target(shape[:-1], shape[-1], seed=42, ignored=(0,))
    options = dict(beta=beta, temperature=temperature, reduction=reduction)
    ours = lossgrad.js_div(student, teacher, target, **options)
    expected = reference_js(student, teacher, target, **options)
    assert_close(ours, expected, "loss")
    grad_output = torch.randn(ours.shape, dtype=ours.dtype) if reduction == "none" else None
    (ours_grad,) = grads_of(ours, [student], grad_output)
    (expected_grad,) = grads_of(expected, [student], grad_output)
    assert_close(ours_grad, expected_grad, "grad student", kind="grad")


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("reduction", ROW_REDUCTIONS)
def test_js_div_gradcheck(beta, reduction):
    student = randn(2, 3, 5, seed=43)
    teacher = randn(2, 3, 5, seed=44, requires_grad=False)
    target = random_target((2, 3), 5, seed=45, ignored=(1,))

    def loss(s):
        return lossgrad.js_div(s, teacher, target, beta=beta, temperature=2.0, reduction=reduction)

    assert torch.autograd.gradcheck(loss, (student,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_js_div_near_ends_is_first_order_kl(dtype):
    """Near β = 0 (or 1) the mixed form is β(1 − β) times the forward (reverse) KL."""
    student = randn(4, 9, dtype=dtype, seed=46, scale=2.0)
    teacher = randn(4, 9, dtype=dtype, seed=47, scale=2.0, requires_grad=False)
    for end, near in [(0.0, 1e-12), (0.0, 1e-6), (1.0, 1 - 1e-6), (1.0, 1 - 1e-12)]:
        at_end = lossgrad.js_div(student, teacher, beta=end)
        close_to_end = lossgrad.js_div(student, teacher, beta=near)
        weight = near * (1 - near)
        # The next term of the expansion is smaller by a factor of order β.
        tolerance = 1e-4 if dtype == torch.float32 else 1e-5
        assert_close(close_to_end, weight * at_end.detach(), f"value at beta={near}",
                     rtol=tolerance, atol=0.0)
        (grad_end,) = grads_of(at_end, [student])
        (grad_near,) = grads_of(close_to_end, [student])
        assert_close(grad_near, weight * grad_end, f"grad at beta={near}", rtol=tolerance,
                     atol=1e-6 * weight)


def test_js_div_jumps_at_the_ends():
    """β = 0 and β = 1 are defined as the KL divergences, not as the formula's limit 0."""
    student = randn(3, 6, seed=52)
    teacher = randn(3, 6, seed=53, requires_grad=False)
    assert lossgrad.js_div(student, teacher, beta=1e-9).item() < 1e-6
    assert lossgrad.js_div(student, teacher, beta=0.0).item() > 1e-3


def test_js_div_ends_are_kl():
    student = randn(3, 6, seed=48)
    teacher = randn(3, 6, seed=49, requires_grad=False)
    log_p_s = F.log_softmax(student / 2.0, -1)
    log_p_t = F.log_softmax(teacher / 2.0, -1)
    forward = 4.0 * torch_kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    reverse = 4.0 * torch_kl_div(log_p_t, log_p_s, reduction="batchmean", log_target=True)
    assert_close(lossgrad.js_div(student, teacher, beta=0.0, temperature=2.0), forward, "beta=0")
    assert_close(lossgrad.js_div(student, teacher, beta=1.0, temperature=2.0), reverse, "beta=1")


def test_js_div_is_symmetric_at_half():
    student = randn(3, 6, seed=50, requires_grad=False)
    teacher = randn(3, 6, seed=51, requires_grad=False)
    forward = lossgrad.js_div(student, teacher, beta=0.5)
    swapped = lossgrad.js_div(teacher, student, beta=0.5)
    assert_close(forward, swapped, "swapped")
    assert forward.item() <= math.log(2.0)


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_js_div_masked_classes(beta):
    student = torch.tensor([[0.5, -INF, 1.0], [2.0, 0.0, -INF]], requires_grad=True)
    teacher = torch.tensor([[1.0, -INF, 0.0], [0.0, 1.0, -INF]])
    loss = lossgrad.js_div(student, teacher, beta=beta)
    (grad,) = grads_of(loss, [student])
    assert torch.isfinite(loss)
    assert torch.isfinite(grad).all()
    assert grad[0, 1].item() == 0.0
    assert grad[1, 2].item() == 0.0


def test_js_div_zero_student_probability_mixture_is_finite():
    student = torch.tensor([[0.0, -INF, 1.0]], dtype=torch.float64, requires_grad=True)
    teacher = torch.tensor([[0.0, 1.0, 2.0]], dtype=torch.float64)
    loss = lossgrad.js_div(student, teacher, beta=0.5)
    (grad,) = grads_of(loss, [student])
    assert torch.isfinite(loss)
    assert grad[0, 1].item() == 0.0
    finite = torch.tensor([[0.0, -1e4, 1.0]], dtype=torch.float64)
    assert_close(loss, reference_js(finite, teacher, beta=0.5), "loss")


def test_js_div_target_only_masks_rows():
    student = randn(3, 4, seed=52)
    teacher = randn(3, 4, seed=53, requires_grad=False)
    unmasked = lossgrad.js_div(student, teacher, reduction="none")
    masked = lossgrad.js_div(student, teacher, torch.tensor([7, -100, 99]), reduction="none")
    assert_close(masked, unmasked * torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64), "masked")


def test_js_div_errors():
    student = randn(2, 3, seed=54)
    teacher = randn(2, 3, seed=55, requires_grad=False)
    with pytest.raises(ValueError, match=r"beta: expected a value in \[0.0, 1.0\], got 1.2"):
        lossgrad.js_div(student, teacher, beta=1.2)
    with pytest.raises(ValueError, match=r"beta: expected a value in \[0.0, 1.0\], got -0.5"):
        lossgrad.js_div(student, teacher, beta=-0.5)
    with pytest.raises(ValueError, match="temperature: expected a value > 0"):
        lossgrad.js_div(student, teacher, temperature=0.0)
    with pytest.raises(ValueError, match=r"teacher_logits: expected the shape of student_logits"):
        lossgrad.js_div(student, randn(3, 3, requires_grad=False))
    with pytest.raises(ValueError, match=r"target: expected shape \(2,\)"):
        lossgrad.js_div(student, teacher, torch.tensor([[0, 1]]))
    with pytest.raises(ValueError, match="reduction: js_div does not support 'mean'"):
        lossgrad.js_div(student, teacher, reduction="mean")


def test_js_module_matches_function():
    student = randn(3, 5, seed=56)
    teacher = randn(3, 5, seed=57, requires_grad=False)
    module = JSDivLoss(beta=0.2, temperature=2.0, reduction="none")
    expected = lossgrad.js_div(student, teacher, beta=0.2, temperature=2.0, reduction="none")
    assert_close(module(student, teacher), expected, "module")
    with pytest.raises(ValueError, match="beta"):
        JSDivLoss(beta=2.0)


@pytest.mark.parametrize("name", ["kl_div", "kd_loss", "js_div"])
def test_formula_is_registered_and_documented(name):
    formula = FORMULAS[name]
    function = getattr(lossgrad, name)
    assert function.formula is formula
    assert "{formula}" not in function.__doc__
    assert formula.loss.splitlines()[0] in function.__doc__


@pytest.mark.parametrize("loss_name", ["kd_loss", "js_div"])
def test_row_losses_non_contiguous_logits(loss_name):
    reference = reference_kd if loss_name == "kd_loss" else reference_js
    student = randn(5, 12, seed=58)
    teacher = randn(6, 5, seed=59, requires_grad=False)
    strided = student[:, ::2]  # 5 x 6, elements of a row 2 apart
    teacher_rows = teacher.T  # 5 x 6, column-major
    ours = getattr(lossgrad, loss_name)(strided, teacher_rows, temperature=2.0)
    expected = reference(strided, teacher_rows, temperature=2.0)
    assert_close(ours, expected, "loss")
    (ours_grad,) = grads_of(ours, [student])
    (expected_grad,) = grads_of(expected, [student])
    assert_close(ours_grad, expected_grad, "grad student", kind="grad")


@pytest.mark.parametrize("loss_name, weight", [("kd_loss", 1.0), ("kd_loss", 0.5), ("js_div", 0.5), ("js_div", 0.0)])
@pytest.mark.parametrize("bad", [float("nan"), INF])
def test_row_losses_nan_logit_gives_nan(loss_name, weight, bad):
    """A NaN or +inf logit makes its row's loss NaN: zero-probability masking must not hide it."""
    key = "alpha" if loss_name == "kd_loss" else "beta"
    student = randn(3, 4, seed=60, requires_grad=False)
    teacher = randn(3, 4, seed=61, requires_grad=False)
    student[0, 2] = bad
    teacher[2, 1] = bad
    target = torch.tensor([1, 2, 3])
    loss = getattr(lossgrad, loss_name)(student, teacher, target, reduction="none", **{key: weight})
    assert torch.isnan(loss[0])
    assert torch.isfinite(loss[1])
    assert torch.isnan(loss[2])


@pytest.mark.parametrize("loss_name", ["kd_loss", "js_div", "kl_div"])
def test_losses_compile_fullgraph(loss_name):
    """No host sync or value-dependent branch: torch.compile traces one graph."""
    student = randn(4, 7, dtype=torch.float32, seed=62)
    teacher = randn(4, 7, dtype=torch.float32, seed=63, requires_grad=False)

    def loss(s, t):
        if loss_name == "kl_div":
            return lossgrad.kl_div(s.log_softmax(-1), t.softmax(-1), reduction="batchmean")
        return getattr(lossgrad, loss_name)(s, t, temperature=2.0)

    compiled = torch.compile(loss, backend="eager", fullgraph=True)
    value = compiled(student, teacher)
    expected = loss(student, teacher)
    assert_close(value, expected, "compiled loss")
    (grad,) = grads_of(value, [student])
    (expected_grad,) = grads_of(expected, [student])
    assert_close(grad, expected_grad, "compiled grad", kind="grad")


# ---------------------------------------------------------------------------
# kd_loss and js_div: the saved gradient, grad_output and inplace_backward
# ---------------------------------------------------------------------------

ROW_LOSSES = [("kd_loss", dict(temperature=2.0, alpha=0.7)), ("js_div", dict(temperature=2.0))]


def row_loss(name, student, teacher, target, **options):
    return getattr(lossgrad, name)(student, teacher, target, **options)


@pytest.mark.parametrize("name, options", ROW_LOSSES)
@pytest.mark.parametrize("reduction", ROW_REDUCTIONS)
def test_row_losses_scalar_grad_output_scales_gradient(name, options, reduction):
    """A grad_output of 1 returns the saved gradient as it is; 2.5 scales it."""
    student = randn(5, 7, dtype=torch.float32, seed=70)
    teacher = randn(5, 7, dtype=torch.float32, seed=71, requires_grad=False)
    target = random_target((5,), 7, seed=72, ignored=(1,))
    reference = reference_kd if name == "kd_loss" else reference_js
    for scale in (1.0, 2.5):
        expected = reference(student, teacher, target, reduction=reduction, **options)
        loss = row_loss(name, student, teacher, target, reduction=reduction, **options)
        grad_output = torch.full(loss.shape, scale)
        (grad,) = grads_of(loss, [student], grad_output)
        (expected_grad,) = grads_of(expected, [student], grad_output)
        assert_close(grad, expected_grad, f"grad at grad_output={scale}", kind="grad")


@pytest.mark.parametrize("name, options", ROW_LOSSES)
@pytest.mark.parametrize("grad_output", [1.0, 2.5])
def test_row_losses_retain_graph_keeps_gradient(name, options, grad_output):
    """A retained graph gives the same gradient on each backward, also into a leaf's .grad."""
    student = randn(4, 6, dtype=torch.float32, seed=73)
    teacher = randn(4, 6, dtype=torch.float32, seed=74, requires_grad=False)
    loss = row_loss(name, student, teacher, None, **options)
    upstream = torch.tensor(grad_output)
    (first,) = torch.autograd.grad(loss, student, upstream, retain_graph=True)
    (second,) = torch.autograd.grad(loss, student, upstream, retain_graph=True)
    assert torch.equal(first, second)
    for _ in range(3):
        loss.backward(upstream, retain_graph=True)
    assert_close(student.grad, 3 * first, "grad after three backward passes", kind="grad")
    (last,) = torch.autograd.grad(loss, student, upstream)
    assert torch.equal(last, first)


@pytest.mark.parametrize("name, options", ROW_LOSSES)
@pytest.mark.parametrize("reduction", ROW_REDUCTIONS)
def test_row_losses_inplace_backward_same_gradient(name, options, reduction):
    weights = randn(6, 9, dtype=torch.float32, seed=75)
    teacher = randn(6, 9, dtype=torch.float32, seed=76, requires_grad=False)
    target = random_target((6,), 9, seed=77, ignored=(2,))
    expected = row_loss(name, weights.clone(), teacher, target, reduction=reduction, **options)
    grad_output = torch.randn(expected.shape) if reduction == "none" else None
    (expected_grad,) = grads_of(expected, [weights], grad_output)
    logits = weights.clone()
    loss = row_loss(
        name, logits, teacher, target, reduction=reduction, inplace_backward=True, **options
    )
    assert_close(loss, expected.detach(), "loss")
    (grad,) = grads_of(loss, [weights], grad_output)
    assert_close(grad, expected_grad, "grad", kind="grad")


@pytest.mark.parametrize("name, options", ROW_LOSSES)
@pytest.mark.parametrize("inplace", [False, True])
def test_row_losses_same_with_chunks_in_threads(name, options, inplace):
    """Rows of 4096 classes make 32-row chunks, so 200 rows run in threads with 2 or more."""
    teacher = randn(200, 4096, dtype=torch.float32, seed=78, requires_grad=False)
    target = random_target((200,), 4096, seed=79, ignored=(3, 150))
    results = []
    before = torch.get_num_threads()
    for threads in (1, 3):
        torch.set_num_threads(threads)
        try:
            student = randn(200, 4096, dtype=torch.float32, seed=80)
            logits = student * 1.0
            loss = row_loss(name, logits, teacher, target, inplace_backward=inplace, **options)
            results.append((loss.detach(), *grads_of(loss, [student])))
        finally:
            torch.set_num_threads(before)
    (loss_one, grad_one), (loss_threads, grad_threads) = results
    assert torch.equal(loss_one, loss_threads)
    assert torch.equal(grad_one, grad_threads)


@pytest.mark.parametrize("name, options", ROW_LOSSES)
def test_row_losses_inplace_backward_destroys_logits(name, options):
    """After the forward pass the logits contain the gradient of the reduced loss."""
    weights = randn(2, 3, 5, dtype=torch.float32, seed=78)
    teacher = randn(2, 3, 5, dtype=torch.float32, seed=79, requires_grad=False)
    (expected_grad,) = grads_of(row_loss(name, weights.clone(), teacher, None, **options), [weights])
    logits = weights.clone()
    loss = row_loss(name, logits, teacher, None, inplace_backward=True, **options)
    assert_close(logits.detach(), expected_grad, "logits after forward", kind="grad")
    (grad,) = grads_of(loss, [weights])
    assert_close(grad, expected_grad, "grad", kind="grad")


@pytest.mark.parametrize("name, options", ROW_LOSSES)
def test_row_losses_inplace_backward_errors(name, options):
    teacher = randn(4, 6, dtype=torch.float32, seed=80, requires_grad=False)
    leaf_logits = randn(4, 6, dtype=torch.float32, seed=81)
    with pytest.raises(ValueError, match="leaf tensor that requires grad"):
        row_loss(name, leaf_logits, teacher, None, inplace_backward=True, **options)
    strided = randn(6, 4, dtype=torch.float32, seed=82).clone().T
    with pytest.raises(ValueError, match="contiguous student logits"):
        row_loss(name, strided, teacher, None, inplace_backward=True, **options)

    def functional(s):
        return row_loss(name, s, teacher, None, inplace_backward=True, **options)

    with pytest.raises(ValueError, match="torch.func"):
        torch.func.grad(functional)(teacher.clone())
    logits = leaf_logits.clone()
    loss = row_loss(name, logits, teacher, None, inplace_backward=True, **options)
    logits.add_(1.0)
    with pytest.raises(RuntimeError, match="modified before backward"):
        loss.backward()


@pytest.mark.parametrize("name", ["kd_loss", "js_div"])
def test_row_losses_inplace_backward_bfloat16(name):
    weights = randn(3, 40, dtype=torch.bfloat16, seed=83, scale=3.0)
    teacher = randn(3, 40, dtype=torch.bfloat16, seed=84, scale=3.0, requires_grad=False)
    (expected_grad,) = grads_of(row_loss(name, weights.clone(), teacher, None), [weights])
    loss = row_loss(name, weights.clone(), teacher, None, inplace_backward=True)
    (grad,) = grads_of(loss, [weights])
    assert grad.dtype == torch.bfloat16
    assert torch.equal(grad, expected_grad)


def test_kd_loss_bfloat16_confident_prediction():
    """p_y = 0.999: the hard term's p_y − 1 is formed in float32 before rounding to bf16.

    Rounding p_y to bfloat16 first (spacing 2⁻⁸ near 1) would turn −0.001
    into 0 or −0.0039; the error must be no worse than PyTorch's at bf16.
    """
    V = 8
    confident = math.log(0.999 * (V - 1) / 0.001)  # logit of p_y = 0.999 against zeros
    data = torch.zeros(4, V, dtype=torch.float64)
    target = torch.tensor([0, 3, 5, 7])
    data[torch.arange(4), target] = confident
    student = data.to(torch.bfloat16).requires_grad_(True)
    teacher = data.to(torch.bfloat16)
    options = dict(temperature=1.0, alpha=0.5, reduction="sum")
    ours = lossgrad.kd_loss(student, teacher, target, **options)
    (ours_grad,) = grads_of(ours, [student])
    plain = reference_kd(student, teacher, target, **options)
    (plain_grad,) = grads_of(plain, [student])
    student64 = student.detach().double().requires_grad_(True)
    exact = reference_kd(student64, teacher.double(), target, **options)
    (exact_grad,) = grads_of(exact, [student64])
    assert abs(ours.double() - exact).item() <= abs(plain.double() - exact).item() + 1e-6
    ours_error = (ours_grad.double() - exact_grad).abs().max().item()
    plain_error = (plain_grad.double() - exact_grad).abs().max().item()
    assert ours_error <= plain_error
    assert ours_grad[0, 0].item() < 0


def test_js_div_subnormal_mixture_is_finite():
    """β times a subnormal exp(z) rounds to 0, but log(p/M) stays at its bound."""
    student = torch.tensor([[0.0, 0.0, 798.0]], requires_grad=True)
    teacher = torch.tensor([[0.0, 0.0, 798.0]])
    loss = lossgrad.js_div(student, teacher, temperature=7.75, beta=0.5)
    (grad,) = grads_of(loss, [student])
    assert torch.isfinite(loss)
    assert torch.isfinite(grad).all()
    assert abs(loss.item()) < 1e-6


@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_reduced_zero_target_against_minus_inf(log_target):
    """The fused reduced form falls back to the q = 0 rule when its dot product is NaN."""
    input = torch.tensor([[-INF, 0.0], [-1.0, -0.5]], dtype=torch.float64, requires_grad=True)
    probability = torch.tensor([[0.0, 1.0], [0.3, 0.7]], dtype=torch.float64)
    target = probability.log() if log_target else probability
    loss = lossgrad.kl_div(input, target, reduction="batchmean", log_target=log_target)
    # Only the entries with q > 0 add: q (log q − x), divided by the 2 rows.
    expected = torch.tensor(
        (0.3 * (math.log(0.3) + 1.0) + 0.7 * (math.log(0.7) + 0.5)) / 2, dtype=torch.float64
    )
    assert_close(loss, expected, "loss")
    (grad,) = grads_of(loss, [input])
    assert_close(grad, -probability / 2, "grad", kind="grad")


@pytest.mark.parametrize("reduction", ["sum", "batchmean", "mean"])
def test_kl_div_reduced_grad_output_and_retain_graph(reduction):
    input = log_probabilities(3, 5, seed=85).requires_grad_(True)
    target = log_probabilities(3, 5, seed=86).exp()
    loss = kl_no_warning(input, target, reduction=reduction)
    expected = torch_kl_div(input, target, reduction=reduction)
    for scale in (1.0, 2.5):
        upstream = torch.tensor(scale, dtype=torch.float64)
        (grad,) = torch.autograd.grad(loss, input, upstream, retain_graph=True)
        (expected_grad,) = torch.autograd.grad(expected, input, upstream, retain_graph=True)
        assert_close(grad, expected_grad, f"grad at grad_output={scale}", kind="grad")
    (last,) = torch.autograd.grad(loss, input)
    assert_close(last, expected_grad / 2.5, "grad after retained passes", kind="grad")


def test_kl_div_reduced_nan_input_gives_nan():
    input = torch.tensor([[float("nan"), -1.0]], dtype=torch.float64)
    target = torch.tensor([[0.5, 0.5]], dtype=torch.float64)
    assert torch.isnan(lossgrad.kl_div(input, target, reduction="sum"))


@pytest.mark.parametrize("module, function", [(KDLoss, lossgrad.kd_loss), (JSDivLoss, lossgrad.js_div)])
def test_row_loss_modules_pass_inplace_backward(module, function):
    weights = randn(4, 6, dtype=torch.float32, seed=87)
    teacher = randn(4, 6, dtype=torch.float32, seed=88, requires_grad=False)
    (expected_grad,) = grads_of(function(weights.clone(), teacher), [weights])
    logits = weights.clone()
    loss = module(inplace_backward=True)(logits, teacher)
    assert_close(logits.detach(), expected_grad, "logits after forward", kind="grad")
    (grad,) = grads_of(loss, [weights])
    assert_close(grad, expected_grad, "grad", kind="grad")
