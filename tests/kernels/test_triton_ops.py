"""The Triton kernels, run on CPU tensors under TRITON_INTERPRET=1.

Each kernel is compared with an independent float64 PyTorch formula at small
odd shapes, in float32 and bfloat16, including the masked (-inf), ignored and
confident-prediction cases that the CPU path is held to.
"""

from __future__ import annotations

import os
import warnings

import pytest
import torch
import torch.nn.functional as F

from helpers import as_tensor, assert_close, reported_case

pytest.importorskip("triton", reason="Triton is not installed (optional extra)")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("TRITON_INTERPRET=1 must be set before Triton is imported", allow_module_level=True)

from lossgrad._kernels import triton_ops  # noqa: E402

# The interpreter evaluates masked-out lanes too (exp(-inf - -inf) and the
# like) before tl.where discards them, and numpy warns about each.
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

SHAPES = [(1, 1), (3, 47), (4, 423)]
DTYPES = [torch.float32, torch.bfloat16]


def low_precision_tolerance(dtype: torch.dtype) -> dict[str, float]:
    """Gradients stored in bf16 carry bf16 rounding; values stay float32."""
    if dtype == torch.bfloat16:
        return {"rtol": 1.6e-2, "atol": 1e-3}
    return {"rtol": 1e-5, "atol": 1e-6}


def reference_cross_entropy(logits, target, weight, smoothing):
    x = logits.detach().to(torch.float64).requires_grad_()
    w = None if weight is None else weight.to(torch.float64)
    t = target.to(torch.float64) if target.is_floating_point() else target
    loss = F.cross_entropy(x, t, weight=w, reduction="none", label_smoothing=smoothing)
    (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss, grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_rows_index_targets(shape, dtype, weighted, smoothing):
    N, V = shape
    torch.manual_seed(N * V)
    logits = (3 * torch.randn(N, V)).to(dtype)
    target = torch.randint(0, V, (N,))
    weight = torch.rand(V) + 0.1 if weighted else None

    loss, grad = triton_ops.cross_entropy_rows(
        logits, target, weight, ignore_index=-100, label_smoothing=smoothing
    )

    ref_loss, ref_grad = reference_cross_entropy(logits, target, weight, smoothing)
    assert loss.dtype == torch.float32
    assert grad.dtype == dtype
    assert_close(loss.double(), ref_loss, "loss", dtype=torch.float32, rtol=1e-5, atol=1e-5)
    assert_close(grad.double(), ref_grad, "grad", kind="grad", dtype=torch.float32,
                 **low_precision_tolerance(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_cross_entropy_rows_probability_targets(dtype):
    N, V = 3, 47
    torch.manual_seed(1)
    logits = torch.randn(N, V).to(dtype)
    target = torch.softmax(torch.randn(N, V), dim=1)
    weight = torch.rand(V)

    loss, grad = triton_ops.cross_entropy_rows(
        logits, target, weight, ignore_index=-100, label_smoothing=0.1
    )

    ref_loss, ref_grad = reference_cross_entropy(logits, target, weight, 0.1)
    assert_close(loss.double(), ref_loss, "loss", dtype=torch.float32, rtol=1e-5, atol=1e-5)
    assert_close(grad.double(), ref_grad, "grad", kind="grad", dtype=torch.float32,
                 **low_precision_tolerance(dtype))


def test_cross_entropy_rows_scale_and_inplace():
    torch.manual_seed(2)
    logits = torch.randn(3, 47)
    target = torch.tensor([4, 0, 46])
    _, plain = triton_ops.cross_entropy_rows(
        logits, target, None, ignore_index=-100, label_smoothing=0.0
    )
    buffer = logits.clone()

    loss, grad = triton_ops.cross_entropy_rows(
        buffer, target, None, ignore_index=-100, label_smoothing=0.0,
        scale=torch.tensor(0.25), inplace=True,
    )

    assert grad.data_ptr() == buffer.data_ptr()
    assert_close(grad, 0.25 * plain, "inplace scaled grad", kind="grad")


def test_cross_entropy_rows_masked_and_ignored_rows():
    """R03: an ignored all -inf row gets exactly zero gradient and no NaN."""
    case = reported_case("R03")
    logits = as_tensor(case["inputs"]["logits"], torch.float32)
    target = torch.tensor(case["inputs"]["target"])

    loss, grad = triton_ops.cross_entropy_rows(
        logits, target, None, ignore_index=-100, label_smoothing=0.0
    )

    expected_grad = as_tensor(case["expected"]["grad_logits_mean"], torch.float32)
    assert_close(loss.sum(), torch.tensor(case["expected"]["mean"]), "loss")
    assert_close(grad, expected_grad, "grad", kind="grad")


@pytest.mark.parametrize("probabilities", [False, True])
def test_cross_entropy_rows_nan_logit_gives_nan(probabilities):
    logits = torch.tensor([[0.0, float("nan"), 1.0], [0.0, 1.0, 2.0], [float("nan"), 0.0, 1.0]])
    if probabilities:
        target = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    else:
        target = torch.tensor([2, 0, -100])
    loss, _ = triton_ops.cross_entropy_rows(
        logits, target, None, ignore_index=-100, label_smoothing=0.0
    )
    assert loss[0].isnan()
    assert torch.isfinite(loss[1])
    if not probabilities:
        assert loss[2] == 0.0  # an ignored row stays out of the loss


def test_cross_entropy_rows_smoothing_skips_masked_classes():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]])
    target = torch.tensor([2])

    loss, grad = triton_ops.cross_entropy_rows(
        logits, target, None, ignore_index=-100, label_smoothing=0.2
    )

    finite = torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    ref_loss, ref_grad = reference_cross_entropy(finite, torch.tensor([1]), None, 0.2)
    assert torch.isfinite(loss).all()
    assert_close(loss.double(), ref_loss, "loss", dtype=torch.float32)
    assert_close(grad[:, [0, 2]].double(), ref_grad, "finite grad", kind="grad", dtype=torch.float32)
    assert grad[0, 1] == 0 and grad[0, 3] == 0


def test_cross_entropy_rows_minus_inf_target_logit():
    logits = torch.tensor([[float("-inf"), 0.0, 1.0]])

    loss, grad = triton_ops.cross_entropy_rows(
        logits, torch.tensor([0]), None, ignore_index=-100, label_smoothing=0.0
    )

    assert loss.item() == float("inf")
    assert not grad.isnan().any()


def test_cross_entropy_rows_weighted_smoothing_ignored():
    """R01: weights, smoothing and an ignored row together."""
    case = reported_case("R01")
    inputs = case["inputs"]
    logits = as_tensor(inputs["logits"], torch.float32)
    target = torch.tensor(inputs["target"])
    weight = as_tensor(inputs["weight"], torch.float32)

    loss, grad = triton_ops.cross_entropy_rows(
        logits, target, weight, ignore_index=-100, label_smoothing=inputs["label_smoothing"]
    )

    denominator = weight[target[target != -100]].sum()
    assert_close(loss, as_tensor(case["expected"]["none"], torch.float32), "loss")
    assert_close(grad / denominator, as_tensor(case["expected"]["grad_logits_mean"], torch.float32),
                 "grad", kind="grad")


def test_cross_entropy_rows_huge_and_half_logits():
    """R13: log-sum-exp with max subtraction, accumulated in float32."""
    case = reported_case("R13")
    huge = as_tensor(case["inputs"]["fp32_logits"], torch.float32)
    half = as_tensor(case["inputs"]["fp16_logits"], torch.float16)

    huge_loss, _ = triton_ops.cross_entropy_rows(
        huge, torch.tensor([1]), None, ignore_index=-100, label_smoothing=0.0
    )
    half_loss, half_grad = triton_ops.cross_entropy_rows(
        half, torch.tensor([1, 1]), None, ignore_index=-100, label_smoothing=0.0
    )

    assert_close(huge_loss, torch.tensor([case["expected"]["fp32_equal_huge_logits"]]), "huge")
    assert_close(half_loss, as_tensor(case["expected"]["fp16_rows_loss"], torch.float32), "fp16")
    assert half_grad.dtype == torch.float16
    assert torch.isfinite(half_grad).all()


def reference_kd(student, teacher, target, temperature, alpha):
    s = student.detach().to(torch.float64).requires_grad_()
    q = torch.softmax(teacher.to(torch.float64) / temperature, dim=1)
    log_p = torch.log_softmax(s / temperature, dim=1)
    soft = torch.where(q > 0, q * (q.log() - log_p), torch.zeros_like(q)).sum(1)
    loss = alpha * temperature**2 * soft
    if target is not None:
        hard = F.cross_entropy(s, target, reduction="none", ignore_index=-100)
        loss = torch.where(target == -100, 0.0, loss + (1 - alpha) * hard)
    (grad,) = torch.autograd.grad(loss.sum(), s)
    return loss, grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_target", [False, True])
def test_kd_rows(shape, dtype, with_target):
    N, V = shape
    torch.manual_seed(N + V)
    student = (2 * torch.randn(N, V)).to(dtype)
    teacher = (2 * torch.randn(N, V)).to(dtype)
    target = torch.randint(0, V, (N,)) if with_target else None
    if with_target and N > 1:
        target[1] = -100
    alpha = 0.7 if with_target else 1.0

    loss, grad = triton_ops.kd_rows(
        student, teacher, target, temperature=3.0, alpha=alpha, ignore_index=-100
    )

    ref_loss, ref_grad = reference_kd(student, teacher, target, 3.0, alpha)
    assert_close(loss.double(), ref_loss, "loss", dtype=torch.float32, rtol=1e-5, atol=1e-5)
    assert_close(grad.double(), ref_grad, "grad", kind="grad", dtype=torch.float32,
                 **low_precision_tolerance(dtype))


def test_kd_rows_temperature_squared():
    """R06: the T² factor keeps the soft gradient's size independent of T."""
    case = reported_case("R06")
    inputs = case["inputs"]
    student = as_tensor(inputs["student_logits"], torch.float32)
    teacher = as_tensor(inputs["teacher_logits"], torch.float32)

    loss, grad = triton_ops.kd_rows(
        student, teacher, None, temperature=inputs["temperature"], alpha=1.0, ignore_index=-100
    )

    assert_close(loss, torch.tensor([case["expected"]["kd_T2_batchmean"]]), "loss")
    assert_close(grad, as_tensor([case["expected"]["grad_student_logits"]], torch.float32),
                 "grad", kind="grad")


def reference_js(student, teacher, temperature, beta):
    s = student.detach().to(torch.float64).requires_grad_()
    p = torch.softmax(s / temperature, dim=1)
    q = torch.softmax(teacher.to(torch.float64) / temperature, dim=1)

    def kl(a, b):
        return torch.where(a > 0, a * (a.log() - b.log()), torch.zeros_like(a)).sum(1)

    if beta == 0.0:
        loss = kl(q, p)
    elif beta == 1.0:
        loss = kl(p, q)
    else:
        mix = beta * q + (1 - beta) * p
        loss = beta * kl(q, mix) + (1 - beta) * kl(p, mix)
    loss = temperature**2 * loss
    (grad,) = torch.autograd.grad(loss.sum(), s)
    return loss, grad


@pytest.mark.parametrize("beta", [0.0, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("dtype", DTYPES)
def test_js_rows(beta, dtype):
    torch.manual_seed(3)
    student = torch.randn(3, 47).to(dtype)
    teacher = torch.randn(3, 47).to(dtype)

    loss, grad = triton_ops.js_rows(
        student, teacher, None, temperature=2.0, beta=beta, ignore_index=-100
    )

    ref_loss, ref_grad = reference_js(student, teacher, 2.0, beta)
    assert_close(loss.double(), ref_loss, "loss", dtype=torch.float32, rtol=1e-5, atol=1e-6)
    assert_close(grad.double(), ref_grad, "grad", kind="grad", dtype=torch.float32,
                 **low_precision_tolerance(dtype))


def test_js_rows_ignored_row():
    student, teacher = torch.randn(2, 5), torch.randn(2, 5)

    loss, grad = triton_ops.js_rows(
        student, teacher, torch.tensor([-100, 1]), temperature=1.0, beta=0.5, ignore_index=-100
    )

    assert loss[0] == 0
    assert torch.equal(grad[0], torch.zeros(5))
    assert grad[1].abs().sum() > 0


@pytest.mark.parametrize("log_target", [False, True])
def test_kl_div_pointwise_zero_target(log_target):
    """R05: a zero-probability target contributes 0 even against a -inf input."""
    case = reported_case("R05")
    key = "target_in_log_form" if log_target else "target"
    input = as_tensor(case["inputs"]["input_log_q"], torch.float32)
    target = as_tensor(case["inputs"][key], torch.float32)

    loss, grad = triton_ops.kl_div_pointwise(input, target, log_target=log_target)

    assert_close(loss.sum(), torch.tensor(case["expected"]["loss"]), "loss")
    assert_close(grad[0], as_tensor(case["expected"]["grad_input"], torch.float32), "grad",
                 kind="grad")


def test_kl_div_pointwise_matches_torch():
    torch.manual_seed(4)
    input = torch.log_softmax(torch.randn(3, 47), dim=1)
    target = torch.softmax(torch.randn(3, 47), dim=1)

    loss, grad = triton_ops.kl_div_pointwise(input, target, log_target=False)

    assert_close(loss, F.kl_div(input, target, reduction="none"), "loss")
    assert_close(grad, -target, "grad", kind="grad")


def test_scale_rows_per_row_and_scalar():
    grad = torch.randn(3, 47)
    factor = torch.tensor([2.0, 1.0, 0.0])
    expected = grad * factor[:, None]

    triton_ops.scale_rows_(grad, factor)
    assert_close(grad, expected, "per-row")

    before = grad.clone()
    triton_ops.scale_rows_(grad, torch.tensor(1.0))
    assert torch.equal(grad, before)


@pytest.mark.parametrize("dtype", DTYPES)
def test_pair_stats_and_combine_rows(dtype):
    torch.manual_seed(5)
    a, b, c = (torch.randn(4, 37).to(dtype) for _ in range(3))
    coef = torch.randn(4, 9)

    stats = triton_ops.pair_stats(a, b)
    gx, gy, gz = triton_ops.combine_rows([a, b, c], coef)

    a64, b64, c64 = (t.double() for t in (a, b, c))
    expected_stats = torch.stack(
        [(a64 * b64).sum(1), (a64 * a64).sum(1), (b64 * b64).sum(1), ((a64 - b64) ** 2).sum(1)], 1
    )
    assert_close(stats.double(), expected_stats, "stats", dtype=torch.float32, rtol=1e-5, atol=1e-5)
    rows = torch.stack([a64, b64, c64])  # 3 x N x D
    for i, got in enumerate((gx, gy, gz)):
        expected = torch.einsum("nk,knd->nd", coef[:, 3 * i : 3 * i + 3].double(), rows)
        assert_close(got.double(), expected, f"g{i}", kind="grad", dtype=torch.float32,
                     **low_precision_tolerance(dtype))


def test_pair_stats_coincident_rows_exact():
    a = torch.tensor([[1.0, 2.0, 3.0]])

    stats = triton_ops.pair_stats(a, a.clone())

    assert stats[0, 3] == 0


@pytest.mark.slow
def test_ops_compile_fullgraph():
    """The custom ops trace under torch.compile(fullgraph=True) with no graph break."""
    torch.manual_seed(6)
    logits = torch.randn(3, 47)
    target = torch.randint(0, 47, (3,))

    def step(x):
        loss, grad = triton_ops.cross_entropy_rows(
            x * 1.0, target, None, ignore_index=-100, label_smoothing=0.0, inplace=True
        )
        return loss.mean(), grad

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        compiled = torch.compile(step, fullgraph=True)
        loss, grad = compiled(logits)
    eager_loss, eager_grad = step(logits)
    assert_close(loss, eager_loss, "loss")
    assert_close(grad, eager_grad, "grad", kind="grad")
