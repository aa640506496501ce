"""Tests of the linear + loss heads: linear_cross_entropy and linear_kd_loss.

References are F.linear followed by the loss, in float64: PyTorch's
cross_entropy where it has the options, and a plain formula for z-loss,
soft-capping and the distillation divergences.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import ODD_CLASSES, ODD_ROWS, as_tensor, assert_close, grads_of, reported_case
from hypothesis import given
from hypothesis import strategies as st

import lossgrad
from lossgrad import linear_cross_entropy, linear_kd_loss
from lossgrad.nn import LinearCrossEntropyLoss, LinearKDLoss

F64 = torch.float64


def make_head(N, H, V, *, bias=True, dtype=F64, seed=0, ignored=(), scale=1.0):
    """Return (input, weight, bias or None, target) with ``ignored`` rows set to -100."""
    generator = torch.Generator().manual_seed(seed)
    x = (scale * torch.randn(N, H, generator=generator, dtype=dtype)).requires_grad_()
    w = torch.randn(V, H, generator=generator, dtype=dtype).requires_grad_()
    b = torch.randn(V, generator=generator, dtype=dtype).requires_grad_() if bias else None
    target = torch.randint(0, V, (N,), generator=generator)
    for i in ignored:
        target[i] = -100
    return x, w, b, target


def params(x, w, b):
    return [t for t in (x, w, b) if t is not None]


def reference_head(x, w, b, target, *, weight=None, reduction="mean", label_smoothing=0.0,
                   z_loss=0.0, softcap=None, ignore_index=-100, num_items=None):
    """F.linear, then capping, cross_entropy and z-loss as plain float64 formulas."""
    z = F.linear(x, w, b)
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    ce = F.cross_entropy(
        z, target, weight=weight, reduction="none", ignore_index=ignore_index,
        label_smoothing=label_smoothing,
    )
    counted = target != ignore_index
    safe = torch.where(counted, target, torch.zeros_like(target))
    w_y = counted.to(z.dtype) if weight is None else weight[safe] * counted
    rows = ce + z_loss * w_y * torch.logsumexp(z, dim=-1) ** 2
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    denominator = w_y.sum() if num_items is None else num_items
    return rows.sum() / denominator


# ---------------------------------------------------------------------------
# linear_cross_entropy against F.linear + F.cross_entropy
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.2}, {"weight": True}, {"weight": True, "label_smoothing": 0.1}],
    ids=["plain", "smoothing", "weight", "weight-smoothing"],
)
def test_matches_torch_cross_entropy(reduction, bias, options):
    x, w, b, target = make_head(17, 5, 23, bias=bias, ignored=(2, 9))
    options = dict(options)
    if options.get("weight"):
        options["weight"] = torch.rand(23, dtype=F64, generator=torch.Generator().manual_seed(1))
    else:
        options.pop("weight", None)
    loss = linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction, chunk_size=4,
                                **options)
    expected = F.cross_entropy(F.linear(x, w, b), target, reduction=reduction, **options)
    assert_close(loss, expected, "loss")
    grad_output = torch.randn_like(expected)
    for name, got, want in zip(
        ("input", "weight", "bias"),
        grads_of(loss, params(x, w, b), grad_output),
        grads_of(expected, params(x, w, b), grad_output),
    ):
        assert_close(got, want, f"grad {name}", kind="grad")


@pytest.mark.parametrize("N", ODD_ROWS)
@pytest.mark.parametrize("V", ODD_CLASSES)
@pytest.mark.parametrize("chunk_size", [1, 2, None])
def test_odd_shapes_and_chunks(N, V, chunk_size):
    x, w, b, target = make_head(N, 3, V, seed=N * V)
    loss = linear_cross_entropy(x, w, target, linear_bias=b, chunk_size=chunk_size)
    expected = F.cross_entropy(F.linear(x, w, b), target)
    assert_close(loss, expected, "loss")
    for name, got, want in zip(
        ("input", "weight", "bias"), grads_of(loss, [x, w, b]), grads_of(expected, [x, w, b])
    ):
        assert_close(got, want, f"grad {name}", kind="grad")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize(
    "options",
    [
        {"z_loss": 1e-2},
        {"softcap": 2.0},
        {"z_loss": 0.05, "softcap": 3.0},
        {"z_loss": 0.05, "softcap": 3.0, "label_smoothing": 0.1, "weight": True},
    ],
    ids=["z-loss", "softcap", "both", "all"],
)
def test_z_loss_and_softcap_match_formula(reduction, options):
    x, w, b, target = make_head(13, 6, 31, ignored=(0, 5), scale=2.0)
    options = dict(options)
    if options.get("weight"):
        options["weight"] = torch.rand(31, dtype=F64, generator=torch.Generator().manual_seed(2))
    loss = linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction, chunk_size=5,
                                **options)
    expected = reference_head(x, w, b, target, reduction=reduction, **options)
    assert_close(loss, expected, "loss")
    grad_output = torch.randn_like(expected)
    for name, got, want in zip(
        ("input", "weight", "bias"),
        grads_of(loss, [x, w, b], grad_output),
        grads_of(expected, [x, w, b], grad_output),
    ):
        assert_close(got, want, f"grad {name}", kind="grad")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_return_z_loss_is_reduced_part(reduction):
    x, w, b, target = make_head(9, 4, 12, ignored=(3,))
    loss, z_part = linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction,
                                        z_loss=0.1, return_z_loss=True, chunk_size=4)
    with_z = reference_head(x, w, b, target, reduction=reduction, z_loss=0.1)
    without_z = reference_head(x, w, b, target, reduction=reduction)
    assert_close(loss, with_z, "loss")
    assert_close(z_part, with_z - without_z, "z-loss part")
    assert not z_part.requires_grad


def test_probability_targets_match_torch():
    x, w, b, _ = make_head(7, 4, 10)
    probabilities = torch.softmax(torch.randn(7, 10, dtype=F64), dim=-1)
    weight = torch.rand(10, dtype=F64) + 0.5
    for reduction in ("mean", "sum", "none"):
        loss = linear_cross_entropy(x, w, probabilities, linear_bias=b, weight=weight,
                                    label_smoothing=0.1, reduction=reduction, chunk_size=3)
        expected = F.cross_entropy(F.linear(x, w, b), probabilities, weight=weight,
                                   label_smoothing=0.1, reduction=reduction)
        assert_close(loss, expected, f"loss {reduction}")
        grad_output = torch.randn_like(expected)
        for name, got, want in zip(
            ("input", "weight", "bias"),
            grads_of(loss, [x, w, b], grad_output),
            grads_of(expected, [x, w, b], grad_output),
        ):
            assert_close(got, want, f"grad {name} ({reduction})", kind="grad")


def test_batch_shape_and_unbatched_input():
    x, w, b, target = make_head(12, 4, 9)
    x3 = x.detach().reshape(3, 4, 4).requires_grad_()
    loss = linear_cross_entropy(x3, w, target.reshape(3, 4), linear_bias=b, reduction="none")
    assert loss.shape == (3, 4)
    expected = F.cross_entropy(F.linear(x3.reshape(12, 4), w, b), target, reduction="none")
    assert_close(loss.reshape(12), expected, "loss (3, 4)")
    single = linear_cross_entropy(x[0], w, target[0], linear_bias=b)
    assert single.shape == ()
    assert_close(single, F.cross_entropy(F.linear(x[0], w, b), target[0]), "unbatched loss")


# ---------------------------------------------------------------------------
# reduction="none": per-token upstream gradients
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["A", "B"])
def test_r14_per_token_upstream_gradient(variant):
    """A fused head that precomputes gradients in forward must not read grad_output as a scalar.

    The gradient of each token is its own upstream weight times ∂ℓ/∂z, so
    ``reduction="none"`` recomputes the logits in backward. A zero first
    weight (the first token masked) must zero that token alone.
    """
    case = reported_case("R14")
    inputs = case["inputs"]
    data = inputs[f"variant_{variant}"]
    expected = next(v for k, v in case["expected"].items() if k.startswith(f"{variant}:"))
    hidden = as_tensor(inputs["hidden"]).requires_grad_()
    weight = as_tensor(inputs["weight"]).requires_grad_()
    target = torch.tensor(data["targets"])
    upstream = as_tensor(data["upstream_grad"])
    loss = linear_cross_entropy(hidden, weight, target, reduction="none",
                                ignore_index=inputs["ignore_index"], chunk_size=1)
    assert_close(loss, as_tensor(expected["per_token_loss"]), "per-token loss", rtol=1e-7)
    grad_hidden, grad_weight = grads_of(loss, [hidden, weight], upstream)
    assert_close(grad_hidden, as_tensor(expected["grad_hidden"]), "grad hidden", rtol=1e-7,
                 atol=1e-8)
    assert_close(grad_weight, as_tensor(expected["grad_weight"]), "grad weight", rtol=1e-7,
                 atol=1e-8)


def test_none_ignored_rows_have_zero_gradient():
    x, w, b, target = make_head(6, 3, 5, ignored=(1, 4))
    loss = linear_cross_entropy(x, w, target, linear_bias=b, reduction="none", chunk_size=4)
    assert loss[1] == 0
    assert loss[4] == 0
    grad_x, = grads_of(loss, [x], torch.randn(6, dtype=F64))
    assert torch.all(grad_x[[1, 4]] == 0)


# ---------------------------------------------------------------------------
# Nothing counts, gradient accumulation
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_all_ignored_gives_zero_connected(reduction):
    x, w, b, target = make_head(4, 3, 6, ignored=range(4))
    loss = linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction, z_loss=0.1)
    assert loss.requires_grad
    assert torch.all(loss == 0)
    for name, grad in zip(("input", "weight", "bias"),
                          grads_of(loss, [x, w, b], torch.ones_like(loss))):
        assert torch.all(grad == 0), name


def test_empty_batch_gives_zero():
    x, w, b, _ = make_head(0, 3, 6)
    loss = linear_cross_entropy(x, w, torch.zeros(0, dtype=torch.long), linear_bias=b)
    assert loss == 0
    grad_w, = grads_of(loss, [w])
    assert torch.all(grad_w == 0)


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("as_tensor_count", [False, True])
def test_num_items_reproduces_full_batch_mean(weighted, as_tensor_count):
    x, w, b, target = make_head(20, 4, 11, ignored=(0, 1, 2, 7, 15))
    weight = torch.rand(11, dtype=F64) + 0.2 if weighted else None
    full = linear_cross_entropy(x, w, target, linear_bias=b, weight=weight, z_loss=1e-3)
    full_grads = grads_of(full, [x, w, b])
    counted = target != -100
    count = weight[target[counted]].sum() if weighted else counted.sum().to(F64)
    num_items = count if as_tensor_count else float(count)
    total = 0
    for rows in (slice(0, 3), slice(3, 11), slice(11, 20)):
        total = total + linear_cross_entropy(
            x[rows], w, target[rows], linear_bias=b, weight=weight, z_loss=1e-3,
            num_items=num_items,
        )
    assert_close(total, full, "accumulated loss")
    for name, got, want in zip(("input", "weight", "bias"), grads_of(total, [x, w, b]),
                               full_grads):
        assert_close(got, want, f"accumulated grad {name}", kind="grad")


# ---------------------------------------------------------------------------
# Autograd behaviour
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck(reduction):
    x, w, b, target = make_head(5, 3, 7, ignored=(1,))
    weight = torch.rand(7, dtype=F64) + 0.5

    def head(x, w, b):
        return linear_cross_entropy(x, w, target, linear_bias=b, weight=weight,
                                    label_smoothing=0.1, z_loss=0.05, softcap=2.0,
                                    reduction=reduction, chunk_size=2)

    assert torch.autograd.gradcheck(head, (x, w, b))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_torch_func_grad_and_vmap(reduction):
    x, w, b, target = make_head(5, 3, 7, ignored=(2,))

    def ours(x, w, b):
        return linear_cross_entropy(x, w, target, linear_bias=b, reduction=reduction,
                                    chunk_size=2).sum()

    def reference(x, w, b):
        return F.cross_entropy(F.linear(x, w, b), target, reduction=reduction).sum()

    inputs = (x.detach(), w.detach(), b.detach())
    got = torch.func.grad(ours, argnums=(0, 1, 2))(*inputs)
    want = torch.func.grad(reference, argnums=(0, 1, 2))(*inputs)
    for name, a, c in zip(("input", "weight", "bias"), got, want):
        assert_close(a, c, f"func.grad {name}", kind="grad")
    batched = torch.randn(3, 5, 3, dtype=F64)
    got = torch.vmap(torch.func.grad(ours), in_dims=(0, None, None))(batched, *inputs[1:])
    want = torch.vmap(torch.func.grad(reference), in_dims=(0, None, None))(batched, *inputs[1:])
    assert_close(got, want, "vmap of func.grad input", kind="grad")


def test_retain_graph_gives_same_gradients_twice():
    x, w, b, target = make_head(6, 3, 8)
    loss = linear_cross_entropy(x, w, target, linear_bias=b)
    first = torch.autograd.grad(loss, [x, w, b], retain_graph=True)
    second = torch.autograd.grad(loss, [x, w, b])
    for name, a, c in zip(("input", "weight", "bias"), first, second):
        assert_close(a, c, f"second grad {name}", kind="grad")


def test_second_backward_without_retain_graph_raises():
    x, w, b, target = make_head(6, 3, 8)
    loss = linear_cross_entropy(x, w, target, linear_bias=b)
    loss.backward()
    with pytest.raises(RuntimeError, match="second time|modified by an inplace"):
        loss.backward()


def test_double_backward_raises():
    x, w, b, target = make_head(4, 3, 5)
    loss = linear_cross_entropy(x, w, target, linear_bias=b)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, [x], create_graph=True)


def test_frozen_parameters_get_no_gradient():
    x, w, b, target = make_head(5, 3, 6)
    frozen_w = w.detach()
    loss = linear_cross_entropy(x, frozen_w, target, linear_bias=b)
    grad_x, grad_b = grads_of(loss, [x, b])
    expected = F.cross_entropy(F.linear(x, frozen_w, b), target)
    want_x, want_b = grads_of(expected, [x, b])
    assert_close(grad_x, want_x, "grad input", kind="grad")
    assert_close(grad_b, want_b, "grad bias", kind="grad")
    with torch.no_grad():
        value = linear_cross_entropy(x, w, target, linear_bias=b)
    assert not value.requires_grad
    assert_close(value, expected.detach(), "no_grad loss")


def test_accumulates_into_existing_grad():
    x, w, b, target = make_head(5, 3, 6)
    linear_cross_entropy(x, w, target, linear_bias=b).backward()
    linear_cross_entropy(x, w, target, linear_bias=b).backward()
    expected = F.cross_entropy(F.linear(x, w, b), target)
    grad_w, = grads_of(2 * expected, [w])
    assert_close(w.grad, grad_w, "accumulated weight grad", kind="grad")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_no_worse_than_torch(dtype):
    """Against a float32 reference, the float32 gradient accumulation keeps errors at torch's level."""
    x, w, b, target = make_head(64, 32, 300, dtype=torch.float32, ignored=(3,))
    reference = F.cross_entropy(F.linear(x, w, b), target, label_smoothing=0.1)
    want = grads_of(reference, [x, w, b])
    low = [t.detach().to(dtype).requires_grad_() for t in (x, w, b)]
    ours = linear_cross_entropy(low[0], low[1], target, linear_bias=low[2], label_smoothing=0.1,
                                chunk_size=16)
    torch_loss = F.cross_entropy(F.linear(*low), target, label_smoothing=0.1)
    assert ours.dtype == dtype
    ours_grads = grads_of(ours, low)
    torch_grads = grads_of(torch_loss, low)
    assert (ours.float() - reference).abs() <= 2 * (torch_loss.float() - reference).abs() + 1e-3
    for name, mine, theirs, exact in zip(("input", "weight", "bias"), ours_grads, torch_grads,
                                         want):
        assert mine.dtype == dtype, name
        my_error = (mine.float() - exact).abs().max()
        torch_error = (theirs.float() - exact).abs().max()
        assert my_error <= 1.5 * torch_error + 1e-6, f"{name}: {my_error} vs torch {torch_error}"


@given(
    scale=st.floats(min_value=1e-3, max_value=1e3),
    softcap=st.one_of(st.none(), st.floats(min_value=0.5, max_value=50.0)),
    seed=st.integers(0, 2**16),
)
def test_finite_inputs_give_finite_results(scale, softcap, seed):
    x, w, b, target = make_head(6, 4, 9, dtype=torch.float32, seed=seed, scale=scale)
    loss = linear_cross_entropy(x, w, target, linear_bias=b, z_loss=1e-4, softcap=softcap,
                                chunk_size=4)
    assert torch.isfinite(loss)
    for name, grad in zip(("input", "weight", "bias"), grads_of(loss, [x, w, b])):
        assert torch.isfinite(grad).all(), name


# ---------------------------------------------------------------------------
# PyTorch's own sample inputs for linear_cross_entropy
# ---------------------------------------------------------------------------


def test_matches_pytorch_on_opinfo_samples():
    """Compare on the OpInfo samples of nn.functional.linear_cross_entropy (PyTorch 2.13).

    Skipped: samples with K-dimensional weights (V, d₁, …, H), which
    lossgrad does not support. Probability targets are detached, because
    lossgrad gives them no gradient.
    """
    pytest.importorskip("expecttest", reason="torch's OpInfo database imports expecttest")
    from torch.testing._internal.common_methods_invocations import op_db

    ops = [op for op in op_db if op.name == "nn.functional.linear_cross_entropy"]
    assert ops, "no OpInfo entry nn.functional.linear_cross_entropy in this torch"
    compared = 0
    for op in ops:
        for sample in op.sample_inputs("cpu", F64, requires_grad=True):
            weight, target = sample.args
            if weight.dim() != 2:
                continue
            kwargs = {k: v for k, v in sample.kwargs.items() if k != "options"}
            target = target.detach()
            expected = F.linear_cross_entropy(sample.input, weight, target, **kwargs)
            loss = linear_cross_entropy(sample.input, weight, target, **kwargs)
            label = f"{op.variant_test_name or 'reference'} {tuple(sample.input.shape)} {kwargs}"
            assert_close(loss, expected, f"loss {label}")
            inputs = [sample.input, weight]
            if kwargs.get("linear_bias") is not None:
                inputs.append(kwargs["linear_bias"])
            grad_output = torch.randn_like(expected)
            for got, want in zip(grads_of(loss, inputs, grad_output),
                                 grads_of(expected, inputs, grad_output)):
                assert_close(got, want, f"grad {label}", kind="grad")
            compared += 1
    assert compared >= 100


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


def error_inputs():
    x, w, b, target = make_head(4, 3, 5)
    return x.detach(), w.detach(), b.detach(), target


def test_error_hidden_size_mismatch():
    x, w, _, target = error_inputs()
    with pytest.raises(ValueError, match=r"linear_weight: expected size 3"):
        linear_cross_entropy(x, w[:, :2], target)


def test_error_target_length():
    x, w, _, target = error_inputs()
    with pytest.raises(ValueError, match=r"target: expected shape \(4,\)"):
        linear_cross_entropy(x, w, target[:3])


def test_error_bias_shape():
    x, w, b, target = error_inputs()
    with pytest.raises(ValueError, match=r"linear_bias: expected shape \(5,\)"):
        linear_cross_entropy(x, w, target, linear_bias=b[:4])


def test_error_weight_not_2d():
    x, w, _, target = error_inputs()
    with pytest.raises(ValueError, match="linear_weight: expected a 2-D tensor"):
        linear_cross_entropy(x, w.reshape(5, 3, 1), target)


def test_error_dtype_mismatch():
    x, w, _, target = error_inputs()
    with pytest.raises(TypeError, match="linear_weight: expected the dtype of input"):
        linear_cross_entropy(x, w.float(), target)


def test_error_class_index_out_of_range():
    x, w, _, target = error_inputs()
    with pytest.raises(ValueError, match=r"target: expected class indices in \[0, 4\]"):
        linear_cross_entropy(x, w, torch.tensor([0, 1, 2, 5]))


@pytest.mark.parametrize(
    ("option", "value", "error", "match"),
    [
        ("z_loss", -0.1, ValueError, "z_loss: expected a value >= 0"),
        ("softcap", 0.0, ValueError, "softcap: expected a value > 0"),
        ("softcap", -1.0, ValueError, "softcap: expected a value > 0"),
        ("chunk_size", 0, ValueError, "chunk_size: expected an integer > 0"),
        ("chunk_size", 2.5, TypeError, "chunk_size: expected a positive integer"),
        ("num_items", 0, ValueError, "num_items: expected a value > 0"),
        ("num_items", torch.tensor(0.0), ValueError, "num_items: expected a value > 0"),
        ("label_smoothing", 1.5, ValueError, r"label_smoothing: expected a value in \[0.0, 1.0\]"),
        ("reduction", "batchmean", ValueError, "reduction: expected one of"),
    ],
)
def test_error_bad_option(option, value, error, match):
    x, w, _, target = error_inputs()
    with pytest.raises(error, match=match):
        linear_cross_entropy(x, w, target, **{option: value})


def test_error_num_items_without_mean():
    x, w, _, target = error_inputs()
    with pytest.raises(ValueError, match="num_items: only used with reduction='mean'"):
        linear_cross_entropy(x, w, target, reduction="sum", num_items=3)


def test_error_ignore_index_with_probabilities():
    x, w, _, _ = error_inputs()
    with pytest.raises(ValueError, match="ignore_index: expected None for probability targets"):
        linear_cross_entropy(x, w, torch.full((4, 5), 0.2, dtype=F64), ignore_index=0)


def test_error_probability_target_requiring_grad():
    x, w, _, _ = error_inputs()
    target = torch.full((4, 5), 0.2, dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="target: the gradient with respect to probability"):
        linear_cross_entropy(x, w, target)


# ---------------------------------------------------------------------------
# Default chunk size
# ---------------------------------------------------------------------------


def test_default_chunk_size_bounds_logits():
    from lossgrad._losses.linear import default_chunk_size

    chunk = default_chunk_size(2048, 32000, 512)
    assert 64 <= chunk <= 2048
    assert chunk * 32000 * 4 <= 32 * 1024 * 1024
    assert default_chunk_size(5, 32000, 512) == 5
    assert default_chunk_size(0, 10, 10) == 1
    assert default_chunk_size(1000, 10, 10) == 1000


# ---------------------------------------------------------------------------
# linear_kd_loss
# ---------------------------------------------------------------------------


def make_pair(N=11, H=5, Ht=7, V=13, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(N, H, generator=generator, dtype=F64).requires_grad_()
    student_weight = torch.randn(V, H, generator=generator, dtype=F64).requires_grad_()
    teacher = torch.randn(N, Ht, generator=generator, dtype=F64).requires_grad_()
    teacher_weight = torch.randn(V, Ht, generator=generator, dtype=F64).requires_grad_()
    target = torch.randint(0, V, (N,), generator=generator)
    target[[i for i in (1, 6) if i < N]] = -100
    return student, student_weight, teacher, teacher_weight, target


def reference_distill(student, w_s, teacher, w_t, target, divergence, T, alpha, beta):
    """Plain float64 formulas of KD (α T² KL + (1 − α) CE) and the generalised JSD."""
    s = F.linear(student, w_s)
    t = F.linear(teacher, w_t)
    log_p_s = F.log_softmax(s / T, dim=-1)
    log_p_t = F.log_softmax(t / T, dim=-1)
    p_s, p_t = log_p_s.exp(), log_p_t.exp()
    counted = torch.ones(s.shape[0], dtype=torch.bool) if target is None else target != -100
    if divergence == "kl":
        kl = (p_t * (log_p_t - log_p_s)).sum(-1)
        if target is None:
            rows = T * T * kl
        else:
            ce = F.cross_entropy(s, target, reduction="none")
            rows = alpha * T * T * kl + (1 - alpha) * ce
    else:
        log_m = (beta * p_t + (1 - beta) * p_s).log()
        js = beta * (p_t * (log_p_t - log_m)).sum(-1) + (1 - beta) * (p_s * (log_p_s - log_m)).sum(-1)
        rows = T * T * js
    rows = torch.where(counted, rows, torch.zeros_like(rows))
    return rows.sum() / counted.sum()


@pytest.mark.parametrize("divergence", ["kl", "js"])
@pytest.mark.parametrize("temperature", [1.0, 2.5])
@pytest.mark.parametrize("with_target", [False, True])
def test_kd_matches_formula(divergence, temperature, with_target):
    student, w_s, teacher, w_t, target = make_pair()
    target = target if with_target else None
    loss = linear_kd_loss(student, w_s, teacher, w_t, target, divergence=divergence,
                          temperature=temperature, alpha=0.3, beta=0.4, chunk_size=4)
    expected = reference_distill(student, w_s, teacher, w_t, target, divergence, temperature,
                                 0.3, 0.4)
    assert_close(loss, expected, "loss")
    for name, got, want in zip(("student input", "student weight"),
                               grads_of(loss, [student, w_s]),
                               grads_of(expected, [student, w_s])):
        assert_close(got, want, f"grad {name}", kind="grad")


@pytest.mark.parametrize("divergence", ["kl", "js"])
def test_kd_matches_lossgrad_on_logits(divergence):
    student, w_s, teacher, w_t, target = make_pair(N=9, V=21, seed=3)
    loss = linear_kd_loss(student, w_s, teacher, w_t, target, divergence=divergence,
                          temperature=2.0, alpha=0.7, beta=0.2, chunk_size=2)
    s, t = F.linear(student, w_s), F.linear(teacher, w_t).detach()
    if divergence == "kl":
        expected = lossgrad.kd_loss(s, t, target, temperature=2.0, alpha=0.7)
    else:
        expected = lossgrad.js_div(s, t, target, beta=0.2, temperature=2.0)
    assert_close(loss, expected, "loss")
    for name, got, want in zip(("student input", "student weight"),
                               grads_of(loss, [student, w_s]),
                               grads_of(expected, [student, w_s])):
        assert_close(got, want, f"grad {name}", kind="grad")


def test_kd_teacher_gets_no_gradient():
    student, w_s, teacher, w_t, target = make_pair()
    loss = linear_kd_loss(student, w_s, teacher, w_t, target)
    loss.backward()
    assert teacher.grad is None
    assert w_t.grad is None
    assert w_s.grad is not None


def test_kd_gradcheck():
    student, w_s, teacher, w_t, target = make_pair(N=4, H=3, Ht=2, V=5)
    for divergence in ("kl", "js"):
        assert torch.autograd.gradcheck(
            lambda x, w: linear_kd_loss(x, w, teacher, w_t, target, divergence=divergence,
                                        temperature=1.5, chunk_size=3),
            (student, w_s),
        )


def test_kd_torch_func_grad():
    student, w_s, teacher, w_t, target = make_pair()

    def ours(x, w):
        return linear_kd_loss(x, w, teacher, w_t, target, temperature=2.0, chunk_size=4)

    def reference(x, w):
        return reference_distill(x, w, teacher, w_t, target, "kl", 2.0, 0.5, 0.5)

    got = torch.func.grad(ours, argnums=(0, 1))(student.detach(), w_s.detach())
    want = torch.func.grad(reference, argnums=(0, 1))(student.detach(), w_s.detach())
    for name, a, c in zip(("student input", "student weight"), got, want):
        assert_close(a, c, f"func.grad {name}", kind="grad")


def test_kd_all_ignored_gives_zero_connected():
    student, w_s, teacher, w_t, target = make_pair()
    target[:] = -100
    loss = linear_kd_loss(student, w_s, teacher, w_t, target)
    assert loss.requires_grad
    assert loss == 0
    grad_x, grad_w = grads_of(loss, [student, w_s])
    assert torch.all(grad_x == 0)
    assert torch.all(grad_w == 0)


@pytest.mark.parametrize(
    ("option", "value", "error", "match"),
    [
        ("divergence", "tvd", ValueError, "divergence: expected one of 'kl', 'js'"),
        ("temperature", 0.0, ValueError, "temperature: expected a value > 0"),
        ("alpha", 1.5, ValueError, r"alpha: expected a value in \[0.0, 1.0\]"),
        ("beta", -0.1, ValueError, r"beta: expected a value in \[0.0, 1.0\]"),
        ("chunk_size", -1, ValueError, "chunk_size: expected an integer > 0"),
    ],
)
def test_kd_error_bad_option(option, value, error, match):
    student, w_s, teacher, w_t, target = make_pair()
    with pytest.raises(error, match=match):
        linear_kd_loss(student, w_s, teacher, w_t, target, **{option: value})


def test_kd_error_shapes():
    student, w_s, teacher, w_t, target = make_pair()
    with pytest.raises(ValueError, match="student_weight: expected size 5"):
        linear_kd_loss(student, w_s[:, :4], teacher, w_t, target)
    with pytest.raises(ValueError, match="teacher_weight: expected size 13"):
        linear_kd_loss(student, w_s, teacher, w_t[:12], target)
    with pytest.raises(ValueError, match=r"teacher_input: expected leading shape \(11,\)"):
        linear_kd_loss(student, w_s, teacher[:10], w_t, target)
    with pytest.raises(ValueError, match=r"target: expected shape \(11,\)"):
        linear_kd_loss(student, w_s, teacher, w_t, target[:10])


# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------


def test_module_trains_the_existing_head():
    torch.manual_seed(0)
    head = torch.nn.Linear(6, 10).double()
    criterion = LinearCrossEntropyLoss(head, label_smoothing=0.1, z_loss=1e-3)
    assert criterion.head.weight is head.weight
    x = torch.randn(8, 6, dtype=F64)
    target = torch.randint(0, 10, (8,))
    criterion(x, target).backward()
    expected = reference_head(x, head.weight, head.bias, target, label_smoothing=0.1, z_loss=1e-3)
    want_w, want_b = grads_of(expected, [head.weight, head.bias])
    assert_close(head.weight.grad, want_w, "head weight grad", kind="grad")
    assert_close(head.bias.grad, want_b, "head bias grad", kind="grad")


def test_module_passes_num_items():
    head = torch.nn.Linear(4, 7, bias=False).double()
    criterion = LinearCrossEntropyLoss(head)
    x = torch.randn(5, 4, dtype=F64)
    target = torch.randint(0, 7, (5,))
    assert_close(criterion(x, target, num_items=10), criterion(x, target) / 2, "loss")


def test_module_rejects_non_linear():
    with pytest.raises(TypeError, match="head: expected a torch.nn.Linear, got Conv1d"):
        LinearCrossEntropyLoss(torch.nn.Conv1d(2, 2, 1))


def test_kd_module_uses_both_heads():
    student_head = torch.nn.Linear(5, 13, bias=False).double()
    teacher_head = torch.nn.Linear(7, 13, bias=False).double()
    criterion = LinearKDLoss(student_head, teacher_head, divergence="js", beta=0.3)
    student, _, teacher, _, target = make_pair()
    loss = criterion(student, teacher, target)
    expected = reference_distill(student, student_head.weight, teacher, teacher_head.weight,
                                 target, "js", 1.0, 0.5, 0.3)
    assert_close(loss, expected, "loss")
    loss.backward()
    assert student_head.weight.grad is not None
    assert teacher_head.weight.grad is None


def test_kd_module_rejects_bias():
    with pytest.raises(ValueError, match="student_head: expected an nn.Linear without bias"):
        LinearKDLoss(torch.nn.Linear(3, 4), torch.nn.Linear(3, 4, bias=False))


def test_formulas_are_registered():
    for name in ("linear_cross_entropy", "linear_kd_loss"):
        assert name in lossgrad.FORMULAS
    assert "∂L/∂W" in linear_cross_entropy.__doc__
