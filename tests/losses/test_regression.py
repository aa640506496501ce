"""Tests of the regression losses against PyTorch, autograd and the reported cases."""

from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import lossgrad
import lossgrad.nn
from helpers import as_tensor, assert_close, reported_case

# (name, options) of each loss, with a non-default threshold where it has one.
LOSSES = [
    ("l1_loss", {}),
    ("mse_loss", {}),
    ("huber_loss", {"delta": 0.7}),
    ("smooth_l1_loss", {"beta": 0.7}),
    ("smooth_l1_loss", {"beta": 0.0}),
]
WEIGHTED = ("l1_loss", "mse_loss", "huber_loss")
REDUCTIONS = ("none", "mean", "sum")
IDS = [f"{name}-{options}" for name, options in LOSSES]


def make_inputs(shape, dtype, seed=0, requires_grad=True):
    """Return input, target and a positive weight of ``shape``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=generator, dtype=torch.float64)
    y = torch.randn(shape, generator=generator, dtype=torch.float64)
    w = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.1
    tensors = [t.to(dtype).requires_grad_(requires_grad) for t in (x, y, w)]
    return tuple(tensors)


def both(name, *args, **kwargs):
    """Return (lossgrad, torch) results of the same call."""
    return getattr(lossgrad, name)(*args, **kwargs), getattr(F, name)(*args, **kwargs)


# Values and gradients against PyTorch.


WEIGHTING = [(name, options, False) for name, options in LOSSES] + [
    (name, options, True) for name, options in LOSSES if name in WEIGHTED
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "options", "weighted"), WEIGHTING)
def test_matches_torch(name, options, weighted, reduction, dtype):
    x, y, w = make_inputs((16, 33), dtype)
    kwargs = dict(options, reduction=reduction)
    inputs = [x, y]
    if weighted:
        kwargs["weight"] = w
        inputs.append(w)
    ours, theirs = both(name, x, y, **kwargs)
    assert_close(ours, theirs, "value")

    grad_output = torch.randn_like(ours)
    grads = torch.autograd.grad(ours, inputs, grad_output)
    expected = torch.autograd.grad(theirs, inputs, grad_output)
    for label, actual, reference in zip(("input", "target", "weight"), grads, expected):
        assert_close(actual, reference, f"grad {label}", kind="grad")


@pytest.mark.parametrize("shape", [(), (1,), (3, 423), (3, 47, 31, 5)])
@pytest.mark.parametrize(("name", "options"), LOSSES, ids=IDS)
def test_odd_shapes(name, options, shape):
    x, y, _ = make_inputs(shape, torch.float64, seed=1)
    for reduction in REDUCTIONS:
        ours, theirs = both(name, x, y, reduction=reduction, **options)
        assert_close(ours, theirs, f"value {reduction}")
        grad_output = torch.randn_like(ours)
        (grad,) = torch.autograd.grad(ours, [x], grad_output)
        (expected,) = torch.autograd.grad(theirs, [x], grad_output)
        assert_close(grad, expected, f"grad {reduction}", kind="grad")


@pytest.mark.parametrize(("name", "options"), LOSSES, ids=IDS)
def test_non_contiguous_input(name, options):
    x, y, _ = make_inputs((9, 14), torch.float64, seed=2)
    xt, yt = x.T, y.T
    ours, theirs = both(name, xt, yt, reduction="none", **options)
    assert_close(ours, theirs, "value")
    grad_output = torch.randn_like(ours)
    (grad,) = torch.autograd.grad(ours, [x], grad_output)
    (expected,) = torch.autograd.grad(theirs, [x], grad_output)
    assert_close(grad, expected, "grad", kind="grad")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "options"), LOSSES, ids=IDS)
def test_backward_twice_gives_same_grad(name, options, reduction):
    """A retained graph gives the same gradient again: backward modifies nothing it saved."""
    x, y, _ = make_inputs((7, 3), torch.float64, seed=10)
    loss = getattr(lossgrad, name)(x, y, reduction=reduction, **options)
    grad_output = torch.randn_like(loss)
    first = torch.autograd.grad(loss, [x, y], grad_output, retain_graph=True)
    second = torch.autograd.grad(loss, [x, y], grad_output)
    assert torch.equal(first[0], second[0])
    assert torch.equal(first[1], second[1])


# Gradients against finite differences.


def away_from_kinks(shape, threshold, seed):
    """Return input and target whose residuals keep 0.05 away from 0 and ±threshold."""
    generator = torch.Generator().manual_seed(seed)
    magnitude = torch.rand(shape, generator=generator, dtype=torch.float64) * 2 + 0.1
    too_close = (magnitude - threshold).abs() < 0.05
    magnitude = torch.where(too_close, magnitude + 0.1, magnitude)
    sign = torch.randint(0, 2, shape, generator=generator).to(torch.float64) * 2 - 1
    target = torch.randn(shape, generator=generator, dtype=torch.float64)
    return (target + sign * magnitude).requires_grad_(), target.requires_grad_()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize(("name", "options"), LOSSES, ids=IDS)
def test_gradcheck(name, options, reduction):
    threshold = options.get("delta", options.get("beta", 0.0))
    x, y = away_from_kinks((4, 5), threshold, seed=3)
    function = getattr(lossgrad, name)
    assert torch.autograd.gradcheck(
        lambda a, b: function(a, b, reduction=reduction, **options), (x, y)
    )


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", WEIGHTED)
def test_gradcheck_weight(name, reduction):
    x, y = away_from_kinks((3, 4), 1.0, seed=4)
    w = (torch.rand(3, 4, dtype=torch.float64) + 0.1).requires_grad_()
    function = getattr(lossgrad, name)
    assert torch.autograd.gradcheck(
        lambda a, b, c: function(a, b, reduction=reduction, weight=c), (x, y, w)
    )


# Semantics decided by lossgrad.


@pytest.mark.parametrize(("name", "options"), LOSSES, ids=IDS)
def test_empty_mean_is_zero_with_zero_grad(name, options):
    x = torch.zeros(0, 3, requires_grad=True)
    loss = getattr(lossgrad, name)(x, torch.zeros(0, 3), **options)
    (grad,) = torch.autograd.grad(loss, [x])
    assert loss.item() == 0.0
    assert grad.shape == (0, 3)


@pytest.mark.parametrize("name", ("l1_loss", "mse_loss"))
def test_zero_weights_give_zero(name):
    x = torch.randn(4, requires_grad=True)
    loss = getattr(lossgrad, name)(x, torch.randn(4), weight=torch.zeros(4))
    (grad,) = torch.autograd.grad(loss, [x])
    assert loss.item() == 0.0
    assert torch.equal(grad, torch.zeros(4))


def test_huber_weighted_mean_divides_by_count():
    """PyTorch 2.13 divides a weighted Huber mean by N, not by the weight sum."""
    x = torch.tensor([0.0, 0.0], dtype=torch.float64)
    y = torch.tensor([1.0, 3.0], dtype=torch.float64)
    w = torch.tensor([2.0, 0.0], dtype=torch.float64)
    # Element 0: weight 2 times 0.5 · 1² = 1; element 1 has weight 0; mean over N = 2.
    loss = lossgrad.huber_loss(x, y, weight=w)
    assert loss.item() == pytest.approx(0.5)


@pytest.mark.parametrize("target_dtype", [torch.int64, torch.int32, torch.bool])
@pytest.mark.parametrize(("name", "options"), LOSSES, ids=IDS)
def test_integer_target_is_cast(name, options, target_dtype):
    x = torch.randn(6, 4, dtype=torch.float32, requires_grad=True)
    target = torch.randint(0, 2, (6, 4)).to(target_dtype)
    ours = getattr(lossgrad, name)(x, target, **options)
    expected = getattr(F, name)(x, target.to(torch.float32), **options)
    assert ours.dtype == torch.float32
    assert_close(ours, expected, "value")


@pytest.mark.parametrize(("name", "options"), LOSSES, ids=IDS)
def test_mixed_float_dtypes_follow_torch(name, options):
    x = torch.randn(6, 4, dtype=torch.float32, requires_grad=True)
    y = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    ours = getattr(lossgrad, name)(x, y, **options)
    expected = getattr(F, name)(x, y, **options)
    assert ours.dtype == expected.dtype
    assert_close(ours, expected, "value")
    grads = torch.autograd.grad(ours, (x, y))
    assert [grad.dtype for grad in grads] == [torch.float32, torch.float64]
    if name == "huber_loss":
        return  # PyTorch 2.13's huber_loss backward fails on mixed dtypes
    for grad, expected_grad in zip(grads, torch.autograd.grad(expected, (x, y))):
        assert_close(grad, expected_grad, "gradient")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("name", "options"), LOSSES, ids=IDS)
def test_half_matches_float32_reference(name, options, dtype):
    x, y, _ = make_inputs((8, 50), dtype, seed=5)
    ours = getattr(lossgrad, name)(x, y, **options)
    (grad,) = torch.autograd.grad(ours, [x])
    x32, y32 = x.detach().float().requires_grad_(), y.detach().float()
    reference = getattr(F, name)(x32, y32, **options)
    (grad_reference,) = torch.autograd.grad(reference, [x32])
    assert ours.dtype == dtype
    assert grad.dtype == dtype
    assert_close(ours, reference.to(dtype), "value")
    assert_close(grad, grad_reference.to(dtype), "grad", kind="grad")


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_mean_does_not_overflow_through_sum(dtype):
    """A float16 mean of 40000 over 4096 elements is finite although its sum is not.

    The sum, 1.6e8, exceeds float16's maximum of 65504; lossgrad sums in
    float32 and casts only the mean.
    """
    x = torch.full((4096,), 200.0, dtype=dtype, requires_grad=True)
    y = torch.zeros(4096, dtype=dtype)
    loss = lossgrad.mse_loss(x, y)
    (grad,) = torch.autograd.grad(loss, [x])
    assert loss.dtype == dtype
    assert loss.float().item() == pytest.approx(40000.0, rel=1e-2)
    assert torch.isfinite(grad).all()
    assert_close(grad.float(), torch.full((4096,), 400.0 / 4096), "grad", kind="grad", dtype=dtype)


def test_half_residual_does_not_overflow():
    """The residual 60000 − (−60000) overflows float16 but not the float32 compute dtype."""
    x = torch.tensor([60000.0], dtype=torch.float16, requires_grad=True)
    y = torch.tensor([-60000.0], dtype=torch.float16)
    loss = lossgrad.l1_loss(x, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, [x])
    assert loss.item() == float("inf")  # 120000 does not fit in float16
    assert grad.item() == 1.0


# Properties on random finite inputs.


finite = st.floats(min_value=-1e4, max_value=1e4, allow_nan=False, width=32)


@given(
    data=st.data(),
    shape=st.lists(st.integers(1, 5), min_size=0, max_size=3).map(tuple),
    case=st.sampled_from(LOSSES),
    reduction=st.sampled_from(REDUCTIONS),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    threshold=st.floats(min_value=0.0, max_value=10.0),
)
def test_finite_inputs_give_no_nan(data, shape, case, reduction, dtype, threshold):
    name, options = case
    options = {key: threshold for key in options}
    if name == "huber_loss":
        options["delta"] = max(threshold, 1e-3)
    count = int(torch.Size(shape).numel())
    values = data.draw(st.lists(finite, min_size=2 * count, max_size=2 * count))
    both_tensors = torch.tensor(values, dtype=torch.float64).reshape(2, *shape)
    x = both_tensors[0].to(dtype).requires_grad_()
    y = both_tensors[1].to(dtype)
    loss = getattr(lossgrad, name)(x, y, reduction=reduction, **options)
    (grad,) = torch.autograd.grad(loss, [x], torch.ones_like(loss))
    assert loss.dtype == dtype
    assert loss.shape == (shape if reduction == "none" else ())
    assert not loss.isnan().any()
    assert not grad.isnan().any()
    assert grad.shape == x.shape


# Reported cases.


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_r10_column_against_vector_raises(name):
    """R10: an (N, 1) prediction against an (N,) target must not broadcast to (N, N).

    PyTorch only warns and compares every pair, which trains towards the mean;
    lossgrad raises and names both shapes.
    """
    case = reported_case("R10")
    x = as_tensor(case["inputs"]["input"])
    y = as_tensor(case["inputs"]["target"])
    with pytest.raises(ValueError, match=r"target: expected the same shape as input \(2, 1\), got \(2,\)"):
        getattr(lossgrad, name)(x, y)
    squeezed = getattr(lossgrad, name)(x.squeeze(1), y)
    assert squeezed.item() == case["expected"]["elementwise_after_squeeze"]


def test_r11_l1_grad_zero_at_zero_residual():
    """R11: the L1 gradient at an exactly zero residual is sign(0) = 0.

    A gradient of +1 there would move masked entries (input = target = 0).
    """
    case = reported_case("R11")
    x = as_tensor(case["inputs"]["input"]).requires_grad_()
    y = as_tensor(case["inputs"]["target"])
    loss = lossgrad.l1_loss(x, y, reduction=case["inputs"]["reduction"])
    (grad,) = torch.autograd.grad(loss, [x])
    assert loss.item() == case["expected"]["loss_sum"]
    assert_close(grad, as_tensor(case["expected"]["grad"]), "grad", kind="grad")


def test_r12_smooth_l1_beta_zero_is_l1():
    """R12: smooth L1 with beta = 0 is L1, with a finite gradient and no division by beta."""
    case = reported_case("R12")
    inputs = case["inputs"]
    x = as_tensor(inputs["input"]).requires_grad_()
    y = as_tensor(inputs["target"])
    loss = lossgrad.smooth_l1_loss(x, y, reduction=inputs["reduction"], beta=inputs["beta"])
    (grad,) = torch.autograd.grad(loss, [x])
    assert loss.item() == case["expected"]["loss_sum"]
    assert_close(grad, as_tensor(case["expected"]["grad"]), "grad", kind="grad")
    l1 = lossgrad.l1_loss(x, y, reduction=inputs["reduction"])
    (l1_grad,) = torch.autograd.grad(l1, [x])
    assert torch.equal(grad, l1_grad)


@pytest.mark.parametrize("beta", [1e-40, 5e-324])
def test_smooth_l1_subnormal_beta_is_l1(beta):
    """A β that underflows in the compute dtype acts as 0 instead of giving 0/0 = NaN."""
    x = torch.tensor([0.0, 1.0, -2.0], requires_grad=True)
    y = torch.zeros(3)
    loss = lossgrad.smooth_l1_loss(x, y, reduction="sum", beta=beta)
    (grad,) = torch.autograd.grad(loss, [x])
    assert loss.item() == pytest.approx(3.0)
    assert torch.equal(grad, torch.tensor([0.0, 1.0, -1.0]))


def test_r12_huber_delta_zero_raises():
    """R12: Huber with delta = 0 is rejected explicitly, as PyTorch does."""
    with pytest.raises(ValueError, match=r"delta: expected a value > 0, got 0.0"):
        lossgrad.huber_loss(torch.zeros(3), torch.zeros(3), delta=0.0)


# Errors.


def test_negative_delta_raises():
    with pytest.raises(ValueError, match=r"delta: expected a value > 0, got -1.0"):
        lossgrad.huber_loss(torch.zeros(3), torch.zeros(3), delta=-1.0)


def test_negative_beta_raises():
    with pytest.raises(ValueError, match=r"beta: expected a value >= 0, got -0.5"):
        lossgrad.smooth_l1_loss(torch.zeros(3), torch.zeros(3), beta=-0.5)


def test_nan_delta_raises():
    with pytest.raises(ValueError, match=r"delta: expected a finite number, got nan"):
        lossgrad.huber_loss(torch.zeros(3), torch.zeros(3), delta=float("nan"))


@pytest.mark.parametrize("name", ["l1_loss", "mse_loss", "smooth_l1_loss"])
@pytest.mark.parametrize("argument", ["size_average", "reduce"])
def test_legacy_reduction_raises(name, argument):
    with pytest.raises(ValueError, match=rf"{argument}: deprecated in PyTorch and not supported"):
        getattr(lossgrad, name)(torch.zeros(3), torch.zeros(3), **{argument: True})


@pytest.mark.parametrize(("name", "options"), LOSSES, ids=IDS)
def test_unknown_reduction_raises(name, options):
    with pytest.raises(ValueError, match=r"reduction: expected one of 'none', 'mean', 'sum', got 'avg'"):
        getattr(lossgrad, name)(torch.zeros(3), torch.zeros(3), reduction="avg", **options)


@pytest.mark.parametrize(("name", "options"), LOSSES, ids=IDS)
def test_integer_input_raises(name, options):
    with pytest.raises(TypeError, match=r"input: expected a floating-point tensor, got dtype torch.int64"):
        getattr(lossgrad, name)(torch.zeros(3, dtype=torch.long), torch.zeros(3), **options)


def test_non_tensor_target_raises():
    with pytest.raises(TypeError, match=r"target: expected a torch.Tensor, got list"):
        lossgrad.mse_loss(torch.zeros(3), [0.0, 0.0, 0.0])


@pytest.mark.parametrize("name", WEIGHTED)
def test_weight_shape_mismatch_raises(name):
    with pytest.raises(ValueError, match=r"weight: expected the same shape as input \(3,\), got \(1,\)"):
        getattr(lossgrad, name)(torch.zeros(3), torch.zeros(3), weight=torch.ones(1))


@pytest.mark.parametrize("name", WEIGHTED)
def test_negative_weight_raises(name):
    with pytest.raises(ValueError, match=r"weight: expected non-negative weights, got -2.0"):
        getattr(lossgrad, name)(torch.zeros(3), torch.zeros(3), weight=torch.tensor([1.0, -2.0, 1.0]))


@pytest.mark.parametrize("name", WEIGHTED)
def test_integer_weight_raises(name):
    with pytest.raises(TypeError, match=r"weight: expected a floating-point tensor"):
        getattr(lossgrad, name)(torch.zeros(3), torch.zeros(3), weight=torch.ones(3, dtype=torch.long))


@pytest.mark.parametrize(("name", "options"), LOSSES, ids=IDS)
def test_double_backward_raises(name, options):
    x = torch.randn(4, dtype=torch.float64, requires_grad=True)
    loss = getattr(lossgrad, name)(x, torch.randn(4, dtype=torch.float64), **options)
    with pytest.raises(RuntimeError, match=rf"lossgrad\.{name}: double backward"):
        torch.autograd.grad(loss, [x], create_graph=True)


# torch.func transforms.


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_func_grad_matches_autograd(name):
    x, y, w = make_inputs((5, 6), torch.float64, seed=6, requires_grad=False)
    function = getattr(lossgrad, name)
    grad = torch.func.grad(lambda a: function(a, y, weight=w))(x)
    x_leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(function(x_leaf, y, weight=w), [x_leaf])
    assert_close(grad, expected, "grad", kind="grad")


@pytest.mark.parametrize("name", ["mse_loss", "l1_loss"])
def test_vmap_matches_loop(name):
    x, y, _ = make_inputs((4, 7, 3), torch.float64, seed=7, requires_grad=False)
    function = getattr(lossgrad, name)
    batched = torch.vmap(lambda a, b: function(a, b))(x, y)
    looped = torch.stack([function(a, b) for a, b in zip(x, y)])
    assert_close(batched, looped, "value")

    grads = torch.vmap(torch.func.grad(lambda a, b: function(a, b)))(x, y)
    looped_grads = torch.stack([torch.func.grad(lambda a: function(a, b))(a) for a, b in zip(x, y)])
    assert_close(grads, looped_grads, "grad", kind="grad")


def test_vmap_over_weight_only():
    """Only the weight is batched: the residual is not, the upstream gradient is."""
    x, y, w = make_inputs((3, 5), torch.float64, seed=8, requires_grad=False)
    grads = torch.vmap(
        torch.func.grad(lambda a, c: lossgrad.mse_loss(a, y[0], weight=c)), in_dims=(None, 0)
    )(x[0], w)
    for i in range(3):
        expected = torch.func.grad(lambda a: lossgrad.mse_loss(a, y[0], weight=w[i]))(x[0])
        assert_close(grads[i], expected, f"grad {i}", kind="grad")


# Modules.


MODULES = [
    ("L1Loss", "l1_loss", {}),
    ("MSELoss", "mse_loss", {}),
    ("HuberLoss", "huber_loss", {"delta": 0.3}),
    ("SmoothL1Loss", "smooth_l1_loss", {"beta": 0.3}),
]


@pytest.mark.parametrize(("module", "function", "options"), MODULES)
def test_module_matches_torch(module, function, options):
    x, y, _ = make_inputs((5, 4), torch.float64, seed=9)
    for reduction in REDUCTIONS:
        ours = getattr(lossgrad.nn, module)(reduction=reduction, **options)(x, y)
        theirs = getattr(torch.nn, module)(reduction=reduction, **options)(x, y)
        assert_close(ours, theirs, f"value {reduction}")


@pytest.mark.parametrize(("module", "function", "options"), MODULES)
def test_module_signature_matches_torch(module, function, options):
    ours = inspect.signature(getattr(lossgrad.nn, module).__init__)
    theirs = inspect.signature(getattr(torch.nn, module).__init__)
    assert list(ours.parameters) == list(theirs.parameters)
    for name, parameter in theirs.parameters.items():
        assert ours.parameters[name].default == parameter.default, name


@pytest.mark.parametrize("name", ["l1_loss", "mse_loss", "huber_loss", "smooth_l1_loss"])
def test_function_signature_matches_torch(name):
    ours = inspect.signature(getattr(lossgrad, name))
    theirs = inspect.signature(getattr(F, name))
    assert list(ours.parameters) == list(theirs.parameters)
    for parameter_name, parameter in theirs.parameters.items():
        assert ours.parameters[parameter_name].default == parameter.default, parameter_name


def test_module_rejects_bad_options():
    with pytest.raises(ValueError, match=r"delta: expected a value > 0"):
        lossgrad.nn.HuberLoss(delta=0.0)
    with pytest.raises(ValueError, match=r"beta: expected a value >= 0"):
        lossgrad.nn.SmoothL1Loss(beta=-1.0)
    with pytest.raises(ValueError, match=r"reduction: expected one of"):
        lossgrad.nn.MSELoss(reduction="avg")
    with pytest.raises(ValueError, match=r"size_average: deprecated"):
        lossgrad.nn.L1Loss(size_average=True)


def test_module_repr():
    assert repr(lossgrad.nn.HuberLoss(delta=0.5)) == "HuberLoss(reduction='mean', delta=0.5)"
    assert repr(lossgrad.nn.L1Loss(reduction="sum")) == "L1Loss(reduction='sum')"


def test_formulas_registered():
    for name in ("l1_loss", "mse_loss", "huber_loss", "smooth_l1_loss"):
        assert name in lossgrad.FORMULAS
        assert "{formula}" not in getattr(lossgrad, name).__doc__
        assert "Gradient::" in getattr(lossgrad, name).__doc__
