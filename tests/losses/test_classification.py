"""Tests of cross_entropy, binary_cross_entropy_with_logits and binary_cross_entropy."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from helpers import as_tensor, assert_close, grads_of, reported_case
from hypothesis import given
from hypothesis import strategies as st

import lossgrad
import lossgrad.nn

INF = float("inf")
REDUCTIONS = ("none", "mean", "sum")

# A loss is compared with PyTorch at these shapes: (input shape, class dim).
CE_SHAPES = {
    "C": (7,),
    "NC": (5, 7),
    "NCd1d2": (3, 4, 5, 2),
}


def _class_target(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Draw class indices for an input of ``shape``, with the first one ignored."""
    C = shape[0] if len(shape) == 1 else shape[1]
    batch = () if len(shape) == 1 else shape[:1] + shape[2:]
    target = torch.randint(0, C, batch, generator=generator)
    if target.dim() > 0:
        target.view(-1)[0] = -100
    return target


def _probability_target(shape, dtype, generator) -> torch.Tensor:
    class_dim = 0 if len(shape) == 1 else 1
    scores = torch.randn(shape, generator=generator, dtype=torch.float64)
    return torch.softmax(scores, dim=class_dim).to(dtype)


def _ce_case(shape, dtype, probabilities, weighted, seed=0):
    generator = torch.Generator().manual_seed(seed)
    C = shape[0] if len(shape) == 1 else shape[1]
    logits = (3 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)
    if probabilities:
        target = _probability_target(shape, dtype, generator)
    else:
        target = _class_target(shape, generator)
    weight = None
    if weighted:
        weight = torch.rand(C, generator=generator, dtype=torch.float64).add_(0.1).to(dtype)
    return logits, target, weight


def _compare_with_torch(function, reference, inputs, dtype, grad_output_seed=1, **options):
    """Compare value and the gradient of every input that requires grad."""
    ours = function(*inputs, **options)
    expected = reference(*inputs, **options)
    assert_close(ours, expected, "loss", dtype=dtype)
    generator = torch.Generator().manual_seed(grad_output_seed)
    grad_output = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    grad_output = grad_output.to(expected.dtype)
    differentiable = [tensor for tensor in inputs if tensor.requires_grad]
    our_grads = grads_of(ours, differentiable, grad_output)
    expected_grads = grads_of(expected, differentiable, grad_output)
    for index, (got, want) in enumerate(zip(our_grads, expected_grads)):
        # Gradients are held to the value tolerance: the fused forward forms
        # them with the same accuracy as the loss.
        assert_close(got, want, f"grad of input {index}", dtype=dtype)


# cross_entropy against PyTorch.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape_name", list(CE_SHAPES))
@pytest.mark.parametrize("probabilities", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_matches_torch(
    dtype, shape_name, probabilities, weighted, label_smoothing, reduction
):
    shape = CE_SHAPES[shape_name]
    logits, target, weight = _ce_case(shape, dtype, probabilities, weighted)
    logits.requires_grad_(True)
    if probabilities:
        target.requires_grad_(True)
    _compare_with_torch(
        lossgrad.cross_entropy,
        F.cross_entropy,
        (logits, target),
        dtype,
        weight=weight,
        label_smoothing=label_smoothing,
        reduction=reduction,
    )


@pytest.mark.parametrize("shape", [(3, 423), (3, 47, 31, 123)])
@pytest.mark.parametrize("probabilities", [False, True])
def test_cross_entropy_odd_shapes(shape, probabilities):
    logits, target, weight = _ce_case(shape, torch.float32, probabilities, weighted=True)
    logits.requires_grad_(True)
    _compare_with_torch(
        lossgrad.cross_entropy,
        F.cross_entropy,
        (logits, target),
        torch.float32,
        weight=weight,
        label_smoothing=0.1,
    )


def test_cross_entropy_ignore_index_custom():
    logits, target, weight = _ce_case((6, 5), torch.float64, False, weighted=True)
    target[0] = 1
    target[2] = 3
    target[4] = 3
    logits.requires_grad_(True)
    _compare_with_torch(
        lossgrad.cross_entropy,
        F.cross_entropy,
        (logits, target),
        torch.float64,
        weight=weight,
        ignore_index=3,
        label_smoothing=0.3,
    )


@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8])
def test_cross_entropy_integer_target_dtypes(dtype):
    logits, target, weight = _ce_case((5, 6), torch.float64, False, weighted=True)
    target[0] = 4
    logits.requires_grad_(True)
    ours = lossgrad.cross_entropy(logits, target.to(dtype), weight=weight, label_smoothing=0.1)
    expected = F.cross_entropy(logits, target, weight=weight, label_smoothing=0.1)
    assert_close(ours, expected, "loss")
    (got,) = grads_of(ours, [logits])
    (want,) = grads_of(expected, [logits])
    assert_close(got, want, "grad of logits")


def test_cross_entropy_chunks_rows():
    """Many rows span several chunks of fused_rows; each chunk must line up."""
    logits, target, weight = _ce_case((700, 300), torch.float32, False, weighted=True)
    logits.requires_grad_(True)
    _compare_with_torch(
        lossgrad.cross_entropy,
        F.cross_entropy,
        (logits, target),
        torch.float32,
        weight=weight,
        label_smoothing=0.1,
        reduction="none",
    )


def test_cross_entropy_grad_output_per_row():
    """Each row's gradient is scaled by its own grad_output, including zeros."""
    logits, target, _ = _ce_case((4, 6, 3), torch.float64, False, weighted=False)
    logits.requires_grad_(True)
    grad_output = torch.tensor([[0.0, 2.0, -1.0], [3.5, 0.25, 0.0], [1.0, 1.0, 1.0], [-2, 0, 5]])
    grad_output = grad_output.to(torch.float64)
    ours = lossgrad.cross_entropy(logits, target, reduction="none")
    expected = F.cross_entropy(logits, target, reduction="none")
    (got,) = grads_of(ours, [logits], grad_output)
    (want,) = grads_of(expected, [logits], grad_output)
    assert_close(got, want, "grad of logits")


@pytest.mark.parametrize(
    "probabilities, weighted, label_smoothing, reduction",
    list(itertools.product([False, True], [False, True], [0.0, 0.3], REDUCTIONS)),
)
def test_cross_entropy_gradcheck(probabilities, weighted, label_smoothing, reduction):
    logits, target, weight = _ce_case((4, 5), torch.float64, probabilities, weighted, seed=3)
    logits.requires_grad_(True)
    inputs = [logits]
    if probabilities:
        target.requires_grad_(True)
        inputs.append(target)

    def loss(*tensors):
        target_ = tensors[1] if probabilities else target
        return lossgrad.cross_entropy(
            tensors[0],
            target_,
            weight=weight,
            label_smoothing=label_smoothing,
            reduction=reduction,
        )

    assert torch.autograd.gradcheck(loss, inputs)


# Half precision and large magnitudes.


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cross_entropy_half_matches_float32(dtype):
    """Half inputs are computed in float32 and returned in the input dtype."""
    logits, target, weight = _ce_case((6, 11), torch.float32, False, weighted=True)
    half = logits.to(dtype).requires_grad_(True)
    reference = half.detach().float().requires_grad_(True)
    ours = lossgrad.cross_entropy(half, target, weight=weight, label_smoothing=0.1)
    expected = F.cross_entropy(reference, target, weight=weight, label_smoothing=0.1)
    assert ours.dtype == dtype
    assert_close(ours, expected.to(dtype), "loss")
    (got,) = grads_of(ours, [half])
    (want,) = grads_of(expected, [reference])
    assert got.dtype == dtype
    assert_close(got, want.to(dtype), "grad of logits", kind="grad")


@pytest.mark.parametrize("magnitude", [1e4, 1e8])
def test_cross_entropy_large_logits_stable(magnitude):
    logits = torch.tensor([[magnitude, -magnitude, 0.0], [magnitude, magnitude, 0.0]])
    logits.requires_grad_(True)
    target = torch.tensor([0, 1])
    loss = lossgrad.cross_entropy(logits, target, reduction="none", label_smoothing=0.1)
    expected = F.cross_entropy(
        logits.double(), target, reduction="none", label_smoothing=0.1
    ).float()
    assert_close(loss, expected, "loss")
    (grad,) = grads_of(loss.sum(), [logits])
    assert torch.isfinite(grad).all()


def test_cross_entropy_equal_huge_logits_give_log2():
    """R13: [1e8, 1e8] gives log 2, because the row maximum is subtracted first."""
    case = reported_case("R13")
    logits = as_tensor(case["inputs"]["fp32_logits"], torch.float32)
    target = as_tensor(case["inputs"]["fp32_target"], torch.long)
    loss = lossgrad.cross_entropy(logits, target)
    expected = torch.tensor(case["expected"]["fp32_equal_huge_logits"])
    assert_close(loss, expected, "loss")


def test_cross_entropy_float16_mean_not_inf():
    """R13: the float16 mean is summed in float32, so 120000 / 2 = 60000 is not inf."""
    case = reported_case("R13")
    logits = as_tensor(case["inputs"]["fp16_logits"], torch.float16).requires_grad_(True)
    target = as_tensor(case["inputs"]["fp16_target"], torch.long)
    rows = lossgrad.cross_entropy(logits, target, reduction="none")
    mean = lossgrad.cross_entropy(logits, target)
    total = lossgrad.cross_entropy(logits, target, reduction="sum")
    expected_rows = as_tensor(case["expected"]["fp16_rows_loss"], torch.float16)
    assert_close(rows, expected_rows, "rows")
    assert mean.dtype == torch.float16
    assert mean.item() == case["expected"]["fp16_mean"]
    assert total.item() == INF
    (grad,) = grads_of(mean, [logits])
    assert torch.isfinite(grad).all()


# Masked classes, ignored rows and the nothing-counts rule.


def test_cross_entropy_masked_class_zero_grad():
    logits = torch.tensor([[0.0, -INF, 1.0, 2.0]], requires_grad=True)
    target = torch.tensor([2])
    loss = lossgrad.cross_entropy(logits, target)
    finite = logits.detach()[:, [0, 2, 3]].clone().requires_grad_(True)
    expected = F.cross_entropy(finite, torch.tensor([1]))
    assert_close(loss, expected, "loss")
    (grad,) = grads_of(loss, [logits])
    (want,) = grads_of(expected, [finite])
    assert grad[0, 1].item() == 0.0
    assert_close(grad[:, [0, 2, 3]], want, "grad of finite classes")


def test_cross_entropy_smoothing_over_finite_classes():
    """Label smoothing spreads ε over the K finite classes, not over all C."""
    logits = torch.tensor([[0.5, -INF, 1.0, -INF, -1.0]], dtype=torch.float64)
    logits.requires_grad_(True)
    target = torch.tensor([0])
    loss = lossgrad.cross_entropy(logits, target, label_smoothing=0.3)
    finite = logits.detach()[:, [0, 2, 4]].clone().requires_grad_(True)
    expected = F.cross_entropy(finite, target, label_smoothing=0.3)
    assert torch.isfinite(loss)
    assert_close(loss, expected, "loss")
    (grad,) = grads_of(loss, [logits])
    (want,) = grads_of(expected, [finite])
    assert grad[0, 1].item() == 0.0
    assert grad[0, 3].item() == 0.0
    assert_close(grad[:, [0, 2, 4]], want, "grad of finite classes")


def test_cross_entropy_masked_probability_target():
    """A class with target probability 0 and logit -inf adds 0 (PyTorch gives NaN)."""
    logits = torch.tensor([[0.5, -INF, 1.0]], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([[0.25, 0.0, 0.75]], dtype=torch.float64)
    loss = lossgrad.cross_entropy(logits, target)
    finite = logits.detach()[:, [0, 2]].clone().requires_grad_(True)
    expected = F.cross_entropy(finite, target[:, [0, 2]])
    assert_close(loss, expected, "loss")
    (grad,) = grads_of(loss, [logits])
    assert grad[0, 1].item() == 0.0


def test_cross_entropy_target_logit_neg_inf():
    """A counted row whose target logit is -inf has loss +inf and a finite gradient."""
    logits = torch.tensor([[0.0, -INF, 1.0], [-INF, -INF, -INF]], requires_grad=True)
    target = torch.tensor([1, 0])
    for label_smoothing in (0.0, 0.2):
        loss = lossgrad.cross_entropy(
            logits, target, reduction="none", label_smoothing=label_smoothing
        )
        assert loss[0].item() == INF
        assert loss[1].item() == INF
        (grad,) = grads_of(loss.sum(), [logits])
        assert not grad.isnan().any()


def test_cross_entropy_ignored_row_zero_grad():
    """R03: an ignored row of -inf logits gets an exactly zero gradient."""
    case = reported_case("R03")
    logits = as_tensor(case["inputs"]["logits"]).requires_grad_(True)
    target = as_tensor(case["inputs"]["target"], torch.long)
    loss = lossgrad.cross_entropy(logits, target, ignore_index=case["inputs"]["ignore_index"])
    assert_close(loss, as_tensor(case["expected"]["mean"]), "mean", rtol=1e-8)
    (grad,) = grads_of(loss, [logits])
    assert_close(grad, as_tensor(case["expected"]["grad_logits_mean"]), "grad", rtol=1e-8)
    assert (grad[0] == 0).all()


def test_cross_entropy_ignored_nan_row_loss():
    """NaN logits in an ignored row stay out of the loss."""
    logits = torch.tensor([[float("nan"), 1.0], [0.0, 1.0]], requires_grad=True)
    target = torch.tensor([-100, 0])
    loss = lossgrad.cross_entropy(logits, target, label_smoothing=0.1)
    assert torch.isfinite(loss)
    (grad,) = grads_of(loss, [logits])
    assert torch.isfinite(grad[1]).all()


@pytest.mark.parametrize(("name", "argument"), [
    ("binary_cross_entropy_with_logits", "weight"),
    ("binary_cross_entropy_with_logits", "pos_weight"),
    ("binary_cross_entropy", "weight"),
])
def test_bce_negative_weight_raises(name, argument):
    weights = torch.tensor([1.0, -0.5, 2.0])
    with pytest.raises(ValueError, match=rf"{argument}: expected non-negative weights, got -0.5"):
        getattr(lossgrad, name)(torch.rand(4, 3), torch.rand(4, 3), **{argument: weights})


@pytest.mark.parametrize("shape", [(4, 6), (1, 5), (5,)])
def test_cross_entropy_probability_shape_mismatch_raises(shape):
    with pytest.raises(ValueError, match=r"probabilities of the input's shape \(4, 5\)"):
        lossgrad.cross_entropy(torch.randn(4, 5), torch.rand(shape))


def test_cross_entropy_float_class_indices_raise():
    with pytest.raises(TypeError, match="expected integer class indices"):
        lossgrad.cross_entropy(torch.randn(4, 5), torch.tensor([0.0, 1.0, 2.0, 3.0]))


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("probabilities", [False, True])
def test_cross_entropy_nan_logit_gives_nan(label_smoothing, probabilities):
    """A NaN in a counted row, also off the target class, makes its loss NaN, as in PyTorch."""
    logits = torch.tensor([[0.0, float("nan"), 1.0], [0.0, 1.0, 2.0]])
    target = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]) if probabilities else torch.tensor([2, 0])
    loss = lossgrad.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)
    assert loss[0].isnan()
    assert torch.isfinite(loss[1])
    assert lossgrad.cross_entropy(logits, target, label_smoothing=label_smoothing).isnan()


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True])
def test_cross_entropy_ignored_rows_any_logits(label_smoothing, weighted):
    """Ignored rows of huge, tiny or -inf logits get exactly zero gradient."""
    logits = torch.tensor(
        [[1e30, -1e30, 0.0], [-INF, -INF, -INF], [-INF, 5.0, -INF], [0.0, 1.0, 2.0]],
        requires_grad=True,
    )
    target = torch.tensor([-100, -100, -100, 2])
    weight = torch.tensor([0.5, 2.0, 1.0]) if weighted else None
    loss = lossgrad.cross_entropy(logits, target, weight=weight, label_smoothing=label_smoothing)
    assert torch.isfinite(loss)
    (grad,) = grads_of(loss, [logits])
    assert (grad[:3] == 0).all()
    assert torch.isfinite(grad[3]).all()


@pytest.mark.parametrize(
    "case",
    ["empty", "all_ignored", "zero_weight"],
)
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_nothing_counts(case, label_smoothing):
    weight = None
    if case == "empty":
        logits = torch.randn(0, 3)
        target = torch.zeros(0, dtype=torch.long)
    elif case == "all_ignored":
        logits = torch.randn(2, 3)
        target = torch.tensor([-100, -100])
    else:
        logits = torch.randn(2, 3)
        target = torch.tensor([0, 0])
        weight = torch.tensor([0.0, 1.0, 1.0])
    logits.requires_grad_(True)
    loss = lossgrad.cross_entropy(
        logits, target, weight=weight, label_smoothing=label_smoothing
    )
    assert loss.item() == 0.0
    assert loss.requires_grad
    (grad,) = grads_of(loss, [logits])
    assert (grad == 0).all()


# Reported cases.


def test_cross_entropy_weights_smoothing_ignore():
    """R01: class weights, label smoothing and an ignored target work together."""
    case = reported_case("R01")
    inputs = case["inputs"]
    logits = as_tensor(inputs["logits"]).requires_grad_(True)
    target = as_tensor(inputs["target"], torch.long)
    options = dict(
        weight=as_tensor(inputs["weight"]),
        label_smoothing=inputs["label_smoothing"],
        ignore_index=inputs["ignore_index"],
    )
    for reduction in REDUCTIONS:
        loss = lossgrad.cross_entropy(logits, target, reduction=reduction, **options)
        assert_close(loss, as_tensor(case["expected"][reduction]), reduction, rtol=1e-8)
    loss = lossgrad.cross_entropy(logits, target, **options)
    (grad,) = grads_of(loss, [logits])
    assert_close(grad, as_tensor(case["expected"]["grad_logits_mean"]), "grad", rtol=1e-8)


def test_cross_entropy_smoothing_skips_ignored_rows():
    """R02: the smoothing term leaves out ignored rows in value and gradient."""
    case = reported_case("R02")
    inputs = case["inputs"]
    logits = as_tensor(inputs["logits"]).requires_grad_(True)
    target = as_tensor(inputs["target"], torch.long)
    options = dict(label_smoothing=inputs["label_smoothing"], ignore_index=inputs["ignore_index"])
    for reduction in REDUCTIONS:
        loss = lossgrad.cross_entropy(logits, target, reduction=reduction, **options)
        assert_close(loss, as_tensor(case["expected"][reduction]), reduction, rtol=1e-8)
    for reduction in ("sum", "mean"):
        loss = lossgrad.cross_entropy(logits, target, reduction=reduction, **options)
        (grad,) = grads_of(loss, [logits])
        expected = as_tensor(case["expected"][f"grad_logits_{reduction}"])
        assert_close(grad, expected, f"grad ({reduction})", rtol=1e-8)


@pytest.mark.parametrize("variant", ["A", "B"])
def test_cross_entropy_linear_per_token_grad_output(variant):
    """R14: reduction='none' after F.linear honours each token's upstream gradient."""
    case = reported_case("R14")
    inputs = case["inputs"]
    hidden = as_tensor(inputs["hidden"]).requires_grad_(True)
    weight = as_tensor(inputs["weight"]).requires_grad_(True)
    data = inputs[f"variant_{variant}"]
    target = as_tensor(data["targets"], torch.long)
    upstream = as_tensor(data["upstream_grad"])
    (expected,) = [value for key, value in case["expected"].items() if key.startswith(variant)]
    loss = lossgrad.cross_entropy(
        F.linear(hidden, weight), target, reduction="none", ignore_index=inputs["ignore_index"]
    )
    assert_close(loss, as_tensor(expected["per_token_loss"]), "per-token loss", rtol=1e-8)
    grad_hidden, grad_weight = grads_of(loss, [hidden, weight], upstream)
    assert_close(grad_hidden, as_tensor(expected["grad_hidden"]), "grad_hidden", rtol=1e-7)
    assert_close(grad_weight, as_tensor(expected["grad_weight"]), "grad_weight", rtol=1e-7)


# Properties.


@given(
    rows=st.integers(0, 9),
    classes=st.integers(1, 40),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    probabilities=st.booleans(),
    weighted=st.booleans(),
    label_smoothing=st.sampled_from([0.0, 0.1, 1.0]),
    reduction=st.sampled_from(REDUCTIONS),
    seed=st.integers(0, 2**16),
)
def test_cross_entropy_no_nan_on_finite_inputs(
    rows, classes, dtype, scale, probabilities, weighted, label_smoothing, reduction, seed
):
    generator = torch.Generator().manual_seed(seed)
    scale = min(scale, torch.finfo(dtype).max / 10)
    logits = (scale * torch.randn(rows, classes, generator=generator)).to(dtype)
    logits.requires_grad_(True)
    if probabilities:
        target = _probability_target((rows, classes), dtype, generator)
    else:
        target = torch.randint(0, classes, (rows,), generator=generator)
    weight = torch.rand(classes, generator=generator) if weighted else None
    loss = lossgrad.cross_entropy(
        logits, target, weight=weight, label_smoothing=label_smoothing, reduction=reduction
    )
    assert not loss.isnan().any()
    (grad,) = grads_of(loss.sum(), [logits])
    assert not grad.isnan().any()
    assert grad.dtype == dtype


# torch.func, torch.compile, double backward, inplace_backward.


def _per_sample_grads_by_loop(logits, target, **options):
    grads = []
    for row_logits, row_target in zip(logits, target):
        row_logits = row_logits.clone().requires_grad_(True)
        loss = lossgrad.cross_entropy(row_logits, row_target, **options)
        grads.append(grads_of(loss, [row_logits])[0])
    return torch.stack(grads)


@pytest.mark.parametrize("probabilities", [False, True])
def test_cross_entropy_func_grad_and_vmap(probabilities):
    # Three samples, each a (4, 5) matrix of logits with its targets.
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    if probabilities:
        target = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64).softmax(dim=-1)
    else:
        target = torch.randint(0, 5, (3, 4), generator=generator)
        target[0, 1] = -100
    weight = torch.rand(5, generator=generator, dtype=torch.float64)
    options = dict(weight=weight, label_smoothing=0.1)

    def loss(sample_logits, sample_target):
        return lossgrad.cross_entropy(sample_logits, sample_target, **options)

    expected_grads = _per_sample_grads_by_loop(logits, target, **options)
    single = torch.func.grad(loss)(logits[0], target[0])
    assert_close(single, expected_grads[0], "torch.func.grad")
    batched = torch.func.vmap(torch.func.grad(loss))(logits, target)
    assert_close(batched, expected_grads, "vmap(grad)")
    values = torch.func.vmap(loss)(logits, target)
    expected_values = torch.stack(
        [lossgrad.cross_entropy(a, b, **options) for a, b in zip(logits, target)]
    )
    assert_close(values, expected_values, "vmap values")
    targets_only = torch.func.vmap(loss, in_dims=(None, 0))(logits[0], target)
    expected_targets_only = torch.stack(
        [lossgrad.cross_entropy(logits[0], b, **options) for b in target]
    )
    assert_close(targets_only, expected_targets_only, "vmap over targets only")


def test_cross_entropy_compiled_step_matches_eager():
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 6)
    inputs = torch.randn(5, 8)
    target = torch.tensor([0, 1, 5, -100, 2])

    def step(inputs, target):
        loss = lossgrad.cross_entropy(layer(inputs), target, label_smoothing=0.1)
        loss.backward()
        return loss

    layer.zero_grad()
    eager_loss = step(inputs, target)
    eager_grads = [p.grad.clone() for p in layer.parameters()]
    layer.zero_grad()
    compiled_loss = torch.compile(step)(inputs, target)
    compiled_grads = [p.grad.clone() for p in layer.parameters()]
    assert_close(compiled_loss, eager_loss, "loss")
    for index, (got, want) in enumerate(zip(compiled_grads, eager_grads)):
        assert_close(got, want, f"grad of parameter {index}", kind="grad")


def test_cross_entropy_double_backward_raises():
    logits = torch.randn(3, 4, requires_grad=True)
    loss = lossgrad.cross_entropy(logits, torch.tensor([0, 1, 2]))
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, logits, create_graph=True)


@pytest.mark.parametrize(
    "function, target",
    [
        (lossgrad.cross_entropy, torch.tensor([0, 1, 2])),
        (lossgrad.binary_cross_entropy_with_logits, torch.rand(3, 4)),
        (lossgrad.binary_cross_entropy, torch.rand(3, 4)),
    ],
)
def test_second_backward_retain_graph(function, target):
    """A retained graph keeps the saved gradient intact for the next backward."""
    inputs = torch.rand(3, 4, requires_grad=True)
    loss = function(inputs * 1, target)
    loss.backward(retain_graph=True)
    first = inputs.grad.clone()
    loss.backward()
    assert_close(inputs.grad, 2 * first, "grad after two backward passes")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_inplace_backward_same_grad(dtype):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(6, 4, generator=generator).to(dtype).requires_grad_(True)
    weight = torch.randn(9, 4, generator=generator).to(dtype).requires_grad_(True)
    target = torch.tensor([0, 3, 8, -100, 2, 2])
    options = dict(label_smoothing=0.1, weight=torch.rand(9, generator=generator))
    expected = lossgrad.cross_entropy(F.linear(hidden, weight), target, **options)
    expected_grads = grads_of(expected, [hidden, weight])
    logits = F.linear(hidden, weight)
    loss = lossgrad.cross_entropy(logits, target, inplace_backward=True, **options)
    assert_close(loss, expected, "loss")
    # The logits now hold the unscaled gradient: the ignored row is zero.
    assert (logits[3] == 0).all()
    grads = grads_of(loss, [hidden, weight])
    for name, got, want in zip(("hidden", "weight"), grads, expected_grads):
        assert_close(got, want, f"grad of {name}")


def test_cross_entropy_inplace_backward_modified_logits_raise():
    hidden = torch.randn(3, 4, requires_grad=True)
    logits = hidden * 2
    loss = lossgrad.cross_entropy(logits, torch.tensor([0, 1, 2]), inplace_backward=True)
    logits.add_(1)
    with pytest.raises(RuntimeError, match="was modified before backward"):
        loss.backward()


def test_cross_entropy_inplace_backward_leaf_raises():
    logits = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="leaf tensor that requires grad"):
        lossgrad.cross_entropy(logits, torch.tensor([0, 1, 2]), inplace_backward=True)


def test_cross_entropy_inplace_backward_3d_raises():
    logits = torch.randn(2, 4, 3, requires_grad=True) * 1
    with pytest.raises(ValueError, match="expected 2-D logits"):
        lossgrad.cross_entropy(logits, torch.zeros(2, 3, dtype=torch.long), inplace_backward=True)


# The CPU fast path: pre-scaled gradient, skipped multiply, chunk fallback.


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("upstream", [1.0, 2.5])
def test_cross_entropy_grad_output_one_and_other(reduction, upstream):
    """A grad_output of 1 skips the multiply in backward; 2.5 takes it."""
    logits, target, _ = _ce_case((6, 9), torch.float64, False, weighted=False)
    logits.requires_grad_(True)
    ours = lossgrad.cross_entropy(logits, target, reduction=reduction)
    expected = F.cross_entropy(logits, target, reduction=reduction)
    grad_output = torch.full_like(expected, upstream)
    (got,) = grads_of(ours, [logits], grad_output)
    (want,) = grads_of(expected, [logits], grad_output)
    assert_close(got, want, "grad of logits")


@pytest.mark.parametrize("inplace_backward", [False, True])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_cross_entropy_retain_graph_three_times(inplace_backward, reduction):
    """Each backward of a retained graph adds the same gradient, with grad_output 1."""
    logits, target, _ = _ce_case((5, 7), torch.float64, False, weighted=False)
    leaf = logits.requires_grad_(True)
    source = leaf * 1 if inplace_backward else leaf
    loss = lossgrad.cross_entropy(
        source, target, reduction=reduction, inplace_backward=inplace_backward
    )
    if reduction == "none":
        loss = loss.sum()
    reference = logits.detach().clone().requires_grad_(True)
    (want,) = grads_of(F.cross_entropy(reference, target, reduction=reduction).sum(), [reference])
    for count in (1, 2, 3):
        loss.backward(retain_graph=True)
        assert_close(leaf.grad, count * want, f"grad after {count} backward passes")
    # .grad must not share memory with the saved gradient.
    leaf.grad.zero_()
    loss.backward()
    assert_close(leaf.grad, want, "grad after zero_ and a last backward")


def test_cross_entropy_saves_one_logits_sized_tensor():
    """The graph keeps one N x C tensor without inplace_backward and none with it."""
    N, C = 64, 300
    hidden = torch.randn(N, 8, requires_grad=True)
    layer = torch.randn(C, 8)
    target = torch.randint(0, C, (N,))
    for inplace_backward, expected_big in ((False, 1), (True, 0)):
        saved = []

        def pack(tensor):
            saved.append(tensor.numel())
            return tensor

        logits = hidden @ layer.T  # saved by the matmul's own backward before the hook
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = lossgrad.cross_entropy(logits, target, inplace_backward=inplace_backward)
        big = [numel for numel in saved if numel >= N * C]
        assert len(big) == expected_big, f"inplace_backward={inplace_backward}: saved {saved}"
        assert sum(saved) <= expected_big * N * C + N, f"saved elements {saved}"
        loss.backward()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cross_entropy_half_confident_no_worse_than_torch(dtype):
    """For p_y = 0.999, p − 1 is formed in float32 and rounded once.

    PyTorch rounds p to the half dtype first, where 0.999 becomes 1 in
    bfloat16, so its gradient at the target loses most of its digits. Both
    are measured against float64 on the same half-precision logits.
    """
    C = 50
    row = torch.full((C,), 10.0 + math.log(0.001 / (C - 1)), dtype=torch.float64)
    row[3] = 10.0
    logits = torch.stack([row, row.roll(5), row.roll(-7)]).to(dtype)
    target = torch.tensor([3, 8, C - 4])
    exact = logits.double().requires_grad_(True)
    reference = F.cross_entropy(exact, target, reduction="none")
    assert reference.exp().neg().add(1).abs().max() < 2e-3  # p_y is about 0.999
    (reference_grad,) = grads_of(reference.sum(), [exact])
    errors = {}
    for name, function in (("ours", lossgrad.cross_entropy), ("torch", F.cross_entropy)):
        half = logits.clone().requires_grad_(True)
        loss = function(half, target, reduction="none")
        (grad,) = grads_of(loss.sum(), [half])
        errors[name] = (
            (loss.double() - reference).abs().max().item(),
            (grad.double() - reference_grad).abs().max().item(),
        )
    ours_loss, ours_grad = errors["ours"]
    torch_loss, torch_grad = errors["torch"]
    assert ours_loss <= torch_loss * 1.01 + 1e-7, errors
    assert ours_grad <= torch_grad * 1.01 + 1e-7, errors


@pytest.mark.parametrize("inplace_backward", [False, True])
def test_cross_entropy_fast_and_masked_chunks_agree(monkeypatch, inplace_backward):
    """Chunks with a non-finite row maximum take the masking rule; the rest do not.

    Weights of 1 always take the masking rule, so they give the reference.
    """
    monkeypatch.setattr(lossgrad._losses.classification, "_CHUNK_BYTES", 4 * 40 * 3)
    generator = torch.Generator().manual_seed(5)
    logits = 5 * torch.randn(20, 40, generator=generator, dtype=torch.float64)
    logits[2] = -INF  # counted row of only -inf: loss +inf
    logits[7, 5] = -INF  # a masked class
    logits[9, 11] = -INF  # its target logit is -inf: loss +inf
    logits[13] = -INF  # an ignored row of only -inf: gradient 0
    logits[16] = 1e8 * torch.sign(logits[16])
    target = torch.randint(0, 40, (20,), generator=generator)
    target[9] = 11
    target[[4, 13]] = -100
    losses, grads = [], []
    for weight in (None, torch.ones(40, dtype=torch.float64)):
        hidden = logits.clone().requires_grad_(True)
        source = hidden * 1
        loss = lossgrad.cross_entropy(
            source,
            target,
            weight=weight,
            reduction="none",
            inplace_backward=inplace_backward and weight is None,
        )
        grad_output = torch.linspace(-1, 2, 20, dtype=torch.float64)
        grad_output[[2, 9]] = 0.0  # rows whose loss is +inf
        losses.append(loss.detach())
        grads.append(grads_of(loss, [hidden], grad_output)[0])
    assert losses[0][2].item() == INF
    assert losses[0][9].item() == INF
    assert (grads[0][13] == 0).all()
    assert_close(losses[0], losses[1], "loss per row")
    assert_close(grads[0], grads[1], "grad of logits")


# Errors.


def _logits():
    return torch.randn(3, 4)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(target=torch.tensor([0, 4, 1])), ValueError, r"target: expected class indices in \[0, 3\]"),
        (dict(target=torch.tensor([0.0, 1.0, 2.0])), TypeError, "target: expected integer class indices"),
        (dict(target=torch.tensor([0, 1])), ValueError, r"target: expected class indices of shape \(3,\)"),
        (dict(weight=torch.ones(3)), ValueError, "weight: expected a 1-D tensor of 4 class weights"),
        (dict(weight=torch.tensor([1.0, -1.0, 1.0, 1.0])), ValueError, "weight: expected non-negative"),
        (dict(label_smoothing=1.5), ValueError, r"label_smoothing: expected a value in \[0.0, 1.0\], got 1.5"),
        (dict(label_smoothing=-0.1), ValueError, "label_smoothing: expected a value in"),
        (dict(reduction="avg"), ValueError, "reduction: expected one of 'none', 'mean', 'sum', got 'avg'"),
        (dict(size_average=True), ValueError, "size_average: deprecated"),
        (dict(reduce=False), ValueError, "reduce: deprecated"),
        (dict(ignore_index=1.0), TypeError, "ignore_index: expected an int"),
        (dict(input=torch.tensor(1.0)), ValueError, "input: expected logits of shape"),
        (dict(input=torch.zeros(3, 4, dtype=torch.long)), TypeError, "input: expected a floating-point"),
        (dict(weight=torch.ones(4, requires_grad=True)), ValueError, "weight: gradients with respect"),
    ],
)
def test_cross_entropy_rejects_bad_input(kwargs, error, match):
    arguments = dict(input=_logits(), target=torch.tensor([0, 1, 2]))
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        lossgrad.cross_entropy(**arguments)


def test_cross_entropy_skips_value_checks_when_validate_false():
    loss = lossgrad.cross_entropy(_logits(), torch.tensor([0, 1, 3]), validate=False)
    assert torch.isfinite(loss)


# binary_cross_entropy_with_logits.

BCE_SHAPES = [(6,), (4, 5), (2, 3, 5)]


def _bce_case(shape, dtype, seed=0):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(shape, generator=generator, dtype=torch.float64)).to(dtype)
    target = torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)
    weight = torch.rand(shape[-1:], generator=generator, dtype=torch.float64).to(dtype)
    full_weight = torch.rand(shape, generator=generator, dtype=torch.float64).to(dtype)
    pos_weight = (3 * torch.rand(shape[-1:], generator=generator, dtype=torch.float64)).to(dtype)
    return logits, target, weight, full_weight, pos_weight


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", BCE_SHAPES)
@pytest.mark.parametrize("weight_kind", [None, "last_dim", "full"])
@pytest.mark.parametrize("use_pos_weight", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_matches_torch(dtype, shape, weight_kind, use_pos_weight, reduction):
    logits, target, weight, full_weight, pos_weight = _bce_case(shape, dtype)
    logits.requires_grad_(True)
    target.requires_grad_(True)
    weight = {None: None, "last_dim": weight, "full": full_weight}[weight_kind]
    _compare_with_torch(
        lossgrad.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        (logits, target),
        dtype,
        weight=weight,
        pos_weight=pos_weight if use_pos_weight else None,
        reduction=reduction,
    )


def test_bce_with_logits_odd_shape():
    logits, target, weight, _, pos_weight = _bce_case((3, 47, 31), torch.float32)
    logits.requires_grad_(True)
    _compare_with_torch(
        lossgrad.binary_cross_entropy_with_logits,
        F.binary_cross_entropy_with_logits,
        (logits, target),
        torch.float32,
        weight=weight,
        pos_weight=pos_weight,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_bce_with_logits_gradcheck(reduction, weighted):
    logits, target, weight, _, pos_weight = _bce_case((3, 4), torch.float64, seed=2)
    logits.requires_grad_(True)
    target.requires_grad_(True)

    def loss(logits, target):
        return lossgrad.binary_cross_entropy_with_logits(
            logits,
            target,
            weight=weight if weighted else None,
            pos_weight=pos_weight if weighted else None,
            reduction=reduction,
        )

    assert torch.autograd.gradcheck(loss, (logits, target))


def test_bce_with_logits_stable_at_large_logits():
    logits = torch.tensor([1e4, -1e4, 1e4, -1e4, 0.0], requires_grad=True)
    target = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5])
    loss = lossgrad.binary_cross_entropy_with_logits(logits, target, reduction="none")
    expected = torch.tensor([0.0, 0.0, 1e4, 1e4, 0.6931471805599453])
    assert_close(loss, expected, "loss")
    (grad,) = grads_of(loss.sum(), [logits])
    assert_close(grad, torch.tensor([0.0, 0.0, 1.0, -1.0, 0.0]), "grad")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("use_pos_weight", [False, True])
def test_bce_with_logits_confident_keeps_precision(reduction, use_pos_weight):
    """A confident, correct logit's loss log1p(e^(-|x|)) keeps its relative precision.

    Forming it as softplus(x) - y·x would round e^(-15) ≈ 3e-7 away against 15.
    """
    logits = torch.tensor([15.0, -15.0, 30.0, -30.0, 8.0, -8.0], requires_grad=True)
    target = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    pos_weight = torch.tensor([2.0]) if use_pos_weight else None
    loss = lossgrad.binary_cross_entropy_with_logits(
        logits, target, pos_weight=pos_weight, reduction=reduction
    )
    x, y = logits.detach().double(), target.double()
    pw = 1.0 if pos_weight is None else pos_weight.double()
    expected = torch.log1p(torch.exp(-x.abs())) * (pw * y + 1 - y)
    expected = {"none": expected, "mean": expected.mean(), "sum": expected.sum()}[reduction]
    assert_close(loss, expected.float(), "loss", rtol=1e-6, atol=0.0)
    (grad,) = grads_of(loss.sum(), [logits])
    scale = 1 / logits.numel() if reduction == "mean" else 1.0
    expected_grad = ((pw * y + 1 - y) * torch.sigmoid(x) - pw * y) * scale
    # σ(x) − y itself rounds near 1, as in PyTorch, so the gradient gets the usual tolerance.
    assert_close(grad, expected_grad.float(), "grad", kind="grad")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_with_logits_infinite_logit_reduced(reduction):
    """An infinite logit in a reduced loss takes the guarded form: 0 for the matching label."""
    logits = torch.tensor([[-INF, INF, 0.5], [2.0, -1.0, INF]], requires_grad=True)
    target = torch.tensor([[0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    weight = torch.tensor([1.0, 2.0, 0.5])
    pos_weight = torch.tensor([3.0, 1.0, 2.0])
    loss = lossgrad.binary_cross_entropy_with_logits(
        logits, target, weight, reduction=reduction, pos_weight=pos_weight
    )
    finite = logits.detach().clone()
    finite[finite.isinf()] = 0.0
    per_element = F.binary_cross_entropy_with_logits(
        finite, target, weight, reduction="none", pos_weight=pos_weight
    )
    per_element[logits.detach().isinf()] = 0.0
    expected = {"none": per_element, "mean": per_element.mean(), "sum": per_element.sum()}
    assert_close(loss, expected[reduction], "loss")
    (grad,) = grads_of(loss.sum(), [logits])
    assert not grad.isnan().any()


def test_bce_with_logits_nan_logit_gives_nan():
    logits = torch.tensor([0.5, float("nan"), -1.0], requires_grad=True)
    target = torch.tensor([1.0, 0.0, 1.0])
    loss = lossgrad.binary_cross_entropy_with_logits(logits, target, reduction="none")
    assert loss[1].isnan()
    assert not loss[[0, 2]].isnan().any()
    assert lossgrad.binary_cross_entropy_with_logits(logits, target).isnan()


def test_bce_with_logits_integer_target_cast():
    logits = torch.randn(3, 2)
    target = torch.tensor([[0, 1], [1, 1], [0, 0]])
    loss = lossgrad.binary_cross_entropy_with_logits(logits, target)
    assert_close(loss, F.binary_cross_entropy_with_logits(logits, target.float()), "loss")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_bce_with_logits_half_matches_float32(dtype):
    logits, target, weight, _, pos_weight = _bce_case((4, 5), torch.float32)
    half = logits.to(dtype).requires_grad_(True)
    reference = half.detach().float().requires_grad_(True)
    options = dict(weight=weight, pos_weight=pos_weight)
    ours = lossgrad.binary_cross_entropy_with_logits(half, target.to(dtype), **options)
    expected = F.binary_cross_entropy_with_logits(reference, target.to(dtype).float(), **options)
    assert_close(ours, expected.to(dtype), "loss")
    (got,) = grads_of(ours, [half])
    (want,) = grads_of(expected, [reference])
    assert_close(got, want.to(dtype), "grad", kind="grad")


def test_bce_with_logits_empty_mean_is_zero():
    logits = torch.zeros(0, 3, requires_grad=True)
    loss = lossgrad.binary_cross_entropy_with_logits(logits, torch.zeros(0, 3))
    assert loss.item() == 0.0
    (grad,) = grads_of(loss, [logits])
    assert grad.shape == (0, 3)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(target=torch.zeros(3, 1)), ValueError, r"target: expected the same shape as input \(3, 4\)"),
        (dict(weight=torch.ones(3)), ValueError, r"weight: expected a shape that broadcasts"),
        (dict(pos_weight=torch.ones(5)), ValueError, r"pos_weight: expected a shape that broadcasts"),
        (dict(pos_weight=torch.ones(4, requires_grad=True)), ValueError, "pos_weight: gradients"),
        (dict(reduction="batchmean"), ValueError, "reduction: expected one of"),
        (dict(size_average=False), ValueError, "size_average: deprecated"),
        (dict(input=torch.zeros(3, 4, dtype=torch.long)), TypeError, "input: expected a floating-point"),
    ],
)
def test_bce_with_logits_rejects_bad_input(kwargs, error, match):
    arguments = dict(input=torch.randn(3, 4), target=torch.rand(3, 4))
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        lossgrad.binary_cross_entropy_with_logits(**arguments)


# binary_cross_entropy.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", BCE_SHAPES)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_matches_torch(dtype, shape, weighted, reduction):
    logits, target, weight, _, _ = _bce_case(shape, dtype)
    probabilities = torch.sigmoid(logits).requires_grad_(True)
    target.requires_grad_(True)
    _compare_with_torch(
        lossgrad.binary_cross_entropy,
        F.binary_cross_entropy,
        (probabilities, target),
        dtype,
        weight=weight if weighted else None,
        reduction=reduction,
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_bce_gradcheck(reduction):
    logits, target, weight, _, _ = _bce_case((3, 4), torch.float64, seed=4)
    probabilities = torch.sigmoid(logits).requires_grad_(True)
    target.requires_grad_(True)

    def loss(probabilities, target):
        return lossgrad.binary_cross_entropy(probabilities, target, weight=weight, reduction=reduction)

    assert torch.autograd.gradcheck(loss, (probabilities, target))


def test_bce_clamped_endpoints_match_torch():
    """At p = 0 and 1 the log is clamped at -100 and the gradient is PyTorch's."""
    probabilities = torch.tensor([0.0, 1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
    probabilities.requires_grad_(True)
    target = torch.tensor([0.0, 1.0, 1.0, 0.0, 0.25], dtype=torch.float64)
    loss = lossgrad.binary_cross_entropy(probabilities, target, reduction="none")
    expected = F.binary_cross_entropy(probabilities, target, reduction="none")
    assert_close(loss, expected, "loss")
    assert loss[2].item() == 100.0
    (grad,) = grads_of(loss.sum(), [probabilities])
    (want,) = grads_of(expected.sum(), [probabilities])
    assert_close(grad, want, "grad")


def test_bce_target_grad_finite_at_endpoints():
    """The target gradient is that of the clamped loss: ±100 at p = 0 and 1."""
    probabilities = torch.tensor([0.0, 1.0])
    target = torch.tensor([0.5, 0.5], requires_grad=True)
    loss = lossgrad.binary_cross_entropy(probabilities, target, reduction="sum")
    (grad,) = grads_of(loss, [target])
    assert_close(grad, torch.tensor([100.0, -100.0]), "grad of target")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(input=torch.tensor([[0.5, 1.5], [0.1, 0.2]])), ValueError, r"input: expected probabilities in \[0, 1\], got 1.5"),
        (dict(input=torch.tensor([[0.5, -0.5], [0.1, 0.2]])), ValueError, r"input: expected probabilities in \[0, 1\], got -0.5"),
        (dict(target=torch.rand(2)), ValueError, "target: expected the same shape"),
        (dict(weight=torch.ones(3)), ValueError, "weight: expected a shape that broadcasts"),
        (dict(reduce=True), ValueError, "reduce: deprecated"),
        (dict(reduction="max"), ValueError, "reduction: expected one of"),
    ],
)
def test_bce_rejects_bad_input(kwargs, error, match):
    arguments = dict(input=torch.rand(2, 2), target=torch.rand(2, 2))
    arguments.update(kwargs)
    with pytest.raises(error, match=match):
        lossgrad.binary_cross_entropy(**arguments)


@given(
    shape=st.sampled_from([(0,), (5,), (3, 4)]),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    reduction=st.sampled_from(REDUCTIONS),
    seed=st.integers(0, 2**16),
)
def test_binary_losses_no_nan_on_finite_inputs(shape, dtype, scale, reduction, seed):
    generator = torch.Generator().manual_seed(seed)
    logits = (min(scale, torch.finfo(dtype).max / 10) * torch.randn(shape, generator=generator))
    logits = logits.to(dtype).requires_grad_(True)
    target = torch.rand(shape, generator=generator).to(dtype)
    pos_weight = torch.rand(shape[-1:], generator=generator)
    with_logits = lossgrad.binary_cross_entropy_with_logits(
        logits, target, pos_weight=pos_weight, reduction=reduction
    )
    probabilities = torch.sigmoid(logits.detach()).requires_grad_(True)
    on_probabilities = lossgrad.binary_cross_entropy(probabilities, target, reduction=reduction)
    for name, loss, tensor in (
        ("with logits", with_logits, logits),
        ("on probabilities", on_probabilities, probabilities),
    ):
        assert not loss.isnan().any(), name
        (grad,) = grads_of(loss.sum(), [tensor])
        assert not grad.isnan().any(), name


# Modules and documentation.


def test_modules_match_functions():
    logits, target, weight = _ce_case((4, 5), torch.float32, False, weighted=True)
    target[0] = 2
    module = lossgrad.nn.CrossEntropyLoss(weight=weight, ignore_index=2, label_smoothing=0.1)
    assert "weight" in dict(module.named_buffers())
    expected = lossgrad.cross_entropy(logits, target, weight, ignore_index=2, label_smoothing=0.1)
    assert_close(module(logits, target), expected, "CrossEntropyLoss")

    logits, target, weight, _, pos_weight = _bce_case((4, 5), torch.float32)
    module = lossgrad.nn.BCEWithLogitsLoss(weight=weight, reduction="sum", pos_weight=pos_weight)
    assert {"weight", "pos_weight"} <= set(dict(module.named_buffers()))
    expected = lossgrad.binary_cross_entropy_with_logits(
        logits, target, weight, reduction="sum", pos_weight=pos_weight
    )
    assert_close(module(logits, target), expected, "BCEWithLogitsLoss")

    probabilities = torch.sigmoid(logits)
    module = lossgrad.nn.BCELoss(weight=weight, reduction="none")
    expected = lossgrad.binary_cross_entropy(probabilities, target, weight, reduction="none")
    assert_close(module(probabilities, target), expected, "BCELoss")


@pytest.mark.parametrize(
    ("module", "options", "error", "message"),
    [
        ("CrossEntropyLoss", {"label_smoothing": 1.5}, ValueError, "label_smoothing"),
        ("CrossEntropyLoss", {"reduction": "avg"}, ValueError, "reduction"),
        ("CrossEntropyLoss", {"ignore_index": 1.0}, TypeError, "ignore_index"),
        ("CrossEntropyLoss", {"weight": torch.tensor([1, 2])}, TypeError, "weight"),
        ("CrossEntropyLoss", {"size_average": True}, ValueError, "size_average"),
        ("BCEWithLogitsLoss", {"pos_weight": torch.tensor([1, 2])}, TypeError, "pos_weight"),
        ("BCEWithLogitsLoss", {"reduction": "batchmean"}, ValueError, "reduction"),
        ("BCELoss", {"reduce": False}, ValueError, "reduce"),
    ],
)
def test_modules_check_options_when_built(module, options, error, message):
    with pytest.raises(error, match=message):
        getattr(lossgrad.nn, module)(**options)


@pytest.mark.parametrize(
    "function",
    [
        lossgrad.cross_entropy,
        lossgrad.binary_cross_entropy_with_logits,
        lossgrad.binary_cross_entropy,
    ],
)
def test_docstring_contains_formula(function):
    assert "{formula}" not in function.__doc__
    assert "Loss::" in function.__doc__
    assert "Gradient::" in function.__doc__
    assert lossgrad.FORMULAS[function.__name__] is function.formula


def test_binary_losses_func_grad_and_vmap():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, generator=generator, dtype=torch.float64)
    target = torch.rand(3, 4, 5, generator=generator, dtype=torch.float64)
    pos_weight = torch.rand(5, generator=generator, dtype=torch.float64)
    pairs = [
        (
            lambda x, y: lossgrad.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight),
            lambda x, y: F.binary_cross_entropy_with_logits(x, y, pos_weight=pos_weight),
        ),
        (
            lambda x, y: lossgrad.binary_cross_entropy(torch.sigmoid(x), y),
            lambda x, y: F.binary_cross_entropy(torch.sigmoid(x), y),
        ),
    ]
    for index, (ours, reference) in enumerate(pairs):
        got = torch.func.vmap(torch.func.grad(ours))(logits, target)
        want = torch.func.vmap(torch.func.grad(reference))(logits, target)
        assert_close(got, want, f"vmap(grad) of binary loss {index}")


def test_bce_with_logits_infinite_logit_with_matching_label_is_zero():
    """0 · softplus(±inf) is taken as 0: a certain, correct prediction costs nothing."""
    logits = torch.tensor([float("-inf"), float("inf"), float("-inf")], requires_grad=True)
    target = torch.tensor([0.0, 1.0, 1.0])

    loss = lossgrad.binary_cross_entropy_with_logits(logits, target, reduction="none")
    (grad,) = torch.autograd.grad(loss[:2].sum(), logits)

    assert loss[0].item() == 0.0
    assert loss[1].item() == 0.0
    assert loss[2].item() == float("inf")
    assert torch.equal(grad, torch.zeros(3))
