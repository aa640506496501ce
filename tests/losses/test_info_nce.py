"""Tests of info_nce against a plain float64 autograd formula."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from helpers import ODD_ROWS, assert_close, grads_of

import lossgrad
from lossgrad import FORMULAS
from lossgrad._kernels import triton_ops
from lossgrad.nn import InfoNCELoss

EPS = 1e-8
HARD_KINDS = (None, "shared", "per_query")


def reference_info_nce(
    query, key, *, temperature=0.07, similarity="cosine", hard_negatives=None,
    symmetric=False, reduction="mean",
):
    """InfoNCE from F.normalize, matmul and F.cross_entropy, differentiated by autograd."""
    if similarity == "cosine":
        query = F.normalize(query, dim=-1, eps=EPS)
        key = F.normalize(key, dim=-1, eps=EPS)
        if hard_negatives is not None:
            hard_negatives = F.normalize(hard_negatives, dim=-1, eps=EPS)
    N = query.shape[0]
    columns = [query @ key.T]
    if hard_negatives is not None and hard_negatives.dim() == 2:
        columns.append(query @ hard_negatives.T)
    elif hard_negatives is not None:
        columns.append(torch.einsum("nd,nkd->nk", query, hard_negatives))
    logits = torch.cat(columns, dim=1) / temperature
    target = torch.arange(N)
    loss = F.cross_entropy(logits, target, reduction="none")
    if symmetric:
        loss_kq = F.cross_entropy(key @ query.T / temperature, target, reduction="none")
        loss = 0.5 * (loss + loss_kq)
    if reduction == "mean":
        return loss.mean() if N > 0 else loss.sum()
    if reduction == "sum":
        return loss.sum()
    return loss


def make_inputs(N, D, hard, *, K=3, M=4, dtype=torch.float64, seed=0, scale=1.0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        data = torch.randn(*shape, generator=generator, dtype=torch.float64) * scale
        return data.to(dtype).requires_grad_(True)

    query, key = randn(N, D), randn(N, D)
    if hard == "shared":
        return query, key, randn(M, D)
    if hard == "per_query":
        return query, key, randn(N, K, D)
    return query, key, None


def leaves(query, key, hard):
    return [t for t in (query, key, hard) if t is not None]


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("hard", HARD_KINDS)
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_value_and_grads_match_reference(similarity, symmetric, hard, reduction):
    query, key, hard_negatives = make_inputs(6, 5, hard)
    temperature = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    options = dict(
        temperature=temperature, similarity=similarity, hard_negatives=hard_negatives,
        symmetric=symmetric, reduction=reduction,
    )
    inputs = leaves(query, key, hard_negatives) + [temperature]
    loss = lossgrad.info_nce(query, key, **options)
    expected = reference_info_nce(query, key, **options)
    assert_close(loss, expected, "loss")
    names = ["query", "key", "hard_negatives"][: len(inputs) - 1] + ["temperature"]
    for name, got, want in zip(names, grads_of(loss, inputs), grads_of(expected, inputs)):
        assert_close(got, want, f"grad {name}", kind="grad")


@pytest.mark.parametrize("N", ODD_ROWS)
@pytest.mark.parametrize("D", [1, 7])
def test_odd_shapes_match_reference(N, D):
    query, key, _ = make_inputs(N, D, None, seed=N * 10 + D)
    loss = lossgrad.info_nce(query, key, temperature=0.5, symmetric=True)
    expected = reference_info_nce(query, key, temperature=0.5, symmetric=True)
    assert_close(loss, expected, "loss")
    for name, got, want in zip(
        ("query", "key"), grads_of(loss, [query, key]), grads_of(expected, [query, key])
    ):
        assert_close(got, want, f"grad {name}", kind="grad")


def test_many_row_chunks_match_reference():
    # 600 columns of float32 make chunks of about 218 rows, so three chunks.
    query, key, hard = make_inputs(600, 8, "shared", M=5, dtype=torch.float32, seed=3)
    options = dict(temperature=0.1, hard_negatives=hard, symmetric=True)
    loss = lossgrad.info_nce(query, key, **options)
    expected = reference_info_nce(query, key, **options)
    assert_close(loss, expected, "loss", rtol=1e-5)
    inputs = [query, key, hard]
    for name, got, want in zip(
        ("query", "key", "hard"), grads_of(loss, inputs), grads_of(expected, inputs)
    ):
        assert_close(got, want, f"grad {name}", kind="grad")


@pytest.mark.parametrize("similarity", ["cosine", "dot"])
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("hard", HARD_KINDS)
def test_gradcheck_with_tensor_temperature(similarity, symmetric, hard):
    query, key, hard_negatives = make_inputs(4, 3, hard, K=2, M=2, seed=1)
    temperature = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)

    def loss(query, key, temperature, *hard_negatives):
        return lossgrad.info_nce(
            query, key, temperature=temperature, similarity=similarity,
            hard_negatives=hard_negatives[0] if hard_negatives else None,
            symmetric=symmetric,
        )

    inputs = (query, key, temperature, *([] if hard_negatives is None else [hard_negatives]))
    assert torch.autograd.gradcheck(loss, inputs)


def test_gradcheck_reduction_none():
    query, key, hard = make_inputs(5, 4, "per_query", seed=2)
    temperature = torch.tensor([0.4], dtype=torch.float64, requires_grad=True)

    def loss(query, key, hard, temperature):
        return lossgrad.info_nce(
            query, key, temperature=temperature, hard_negatives=hard,
            symmetric=True, reduction="none",
        )

    assert torch.autograd.gradcheck(loss, (query, key, hard, temperature))


@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("hard", HARD_KINDS)
def test_reduction_none_honours_grad_output(symmetric, hard):
    query, key, hard_negatives = make_inputs(7, 4, hard, seed=4)
    temperature = torch.tensor(0.15, dtype=torch.float64, requires_grad=True)
    options = dict(
        temperature=temperature, hard_negatives=hard_negatives, symmetric=symmetric,
        reduction="none",
    )
    grad_output = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    grad_output[0] = 0.0
    inputs = leaves(query, key, hard_negatives) + [temperature]
    loss = lossgrad.info_nce(query, key, **options)
    expected = reference_info_nce(query, key, **options)
    assert_close(loss, expected, "loss")
    got = grads_of(loss, inputs, grad_output)
    want = grads_of(expected, inputs, grad_output)
    for index, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, f"grad of input {index}", kind="grad")


def test_retain_graph_gives_same_grads_twice():
    query, key, hard = make_inputs(5, 3, "shared", seed=12)
    loss = lossgrad.info_nce(query, key, hard_negatives=hard, symmetric=True)
    first = torch.autograd.grad(loss, [query, key, hard], retain_graph=True)
    second = torch.autograd.grad(loss, [query, key, hard])
    for name, a, b in zip(("query", "key", "hard"), first, second):
        assert_close(b, a, f"second grad {name}", kind="grad")


def test_vmap_of_grad_matches_loop():
    generator = torch.Generator().manual_seed(13)
    query = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)
    key = torch.randn(3, 5, 4, generator=generator, dtype=torch.float64)

    def loss(query, key):
        return lossgrad.info_nce(query, key, temperature=0.2, symmetric=True)

    batched = torch.func.vmap(torch.func.grad(loss))(query, key)
    for index in range(3):
        single = query[index].clone().requires_grad_(True)
        (expected,) = torch.autograd.grad(loss(single, key[index]), [single])
        assert_close(batched[index], expected, f"vmap grad {index}", kind="grad")


def test_temperature_shape_and_dtype_kept():
    query, key, _ = make_inputs(3, 2, None)
    temperature = torch.tensor([0.5], dtype=torch.float32, requires_grad=True)
    loss = lossgrad.info_nce(query, key, temperature=temperature)
    (grad,) = torch.autograd.grad(loss, [temperature])
    assert grad.shape == (1,)
    assert grad.dtype == torch.float32


def test_zero_vectors_give_finite_values_and_grads():
    """A zero embedding has norm 0; dividing by max(|x|, eps) keeps it out of 0/0."""
    query, key, hard = make_inputs(4, 3, "shared", seed=6)
    with torch.no_grad():
        query[1].zero_()
        key[2].zero_()
        hard[0].zero_()
    options = dict(temperature=0.1, hard_negatives=hard, symmetric=True)
    loss = lossgrad.info_nce(query, key, **options)
    expected = reference_info_nce(query, key, **options)
    assert torch.isfinite(loss)
    assert_close(loss, expected, "loss")
    inputs = [query, key, hard]
    for name, got, want in zip(
        ("query", "key", "hard"), grads_of(loss, inputs), grads_of(expected, inputs)
    ):
        assert bool(torch.isfinite(got).all()), f"grad {name} is not finite"
        assert_close(got, want, f"grad {name}", kind="grad")


@pytest.mark.parametrize("temperature", [0.01, 0.001])
def test_small_temperature_stays_finite(temperature):
    query, key, hard = make_inputs(8, 16, "per_query", seed=7)
    options = dict(temperature=temperature, hard_negatives=hard, symmetric=True)
    loss = lossgrad.info_nce(query, key, **options)
    expected = reference_info_nce(query, key, **options)
    assert_close(loss, expected, "loss")
    inputs = [query, key, hard]
    for name, got, want in zip(
        ("query", "key", "hard"), grads_of(loss, inputs), grads_of(expected, inputs)
    ):
        assert_close(got, want, f"grad {name}", kind="grad")


def test_large_dot_logits_stay_finite_in_float32():
    query, key, _ = make_inputs(6, 4, None, dtype=torch.float32, seed=8, scale=100.0)
    loss = lossgrad.info_nce(query, key, similarity="dot", temperature=0.01)
    expected = reference_info_nce(query, key, similarity="dot", temperature=0.01)
    assert torch.isfinite(loss)
    assert_close(loss, expected, "loss", rtol=1e-6)
    got = grads_of(loss, [query, key])
    want = grads_of(expected, [query, key])
    for name, g, w in zip(("query", "key"), got, want):
        assert bool(torch.isfinite(g).all()), f"grad {name} is not finite"
        # Logits of about 1e6 leave float32 cancellation of about 1e-1 in
        # the reference itself; compare relative to the gradient's scale.
        assert_close(g, w, f"grad {name}", kind="grad", atol=1e-5 * float(w.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_accumulate_in_float32(dtype):
    query, key, hard = make_inputs(9, 8, "shared", dtype=dtype, seed=9)
    options = dict(temperature=0.05, hard_negatives=hard, symmetric=True)
    loss = lossgrad.info_nce(query, key, **options)
    assert loss.dtype == dtype
    upcast = [t.detach().float().requires_grad_(True) for t in (query, key, hard)]
    expected = reference_info_nce(upcast[0], upcast[1], **{**options, "hard_negatives": upcast[2]})
    assert_close(loss, expected.to(dtype), "loss")
    got = grads_of(loss, [query, key, hard])
    want = grads_of(expected, upcast)
    for name, g, w in zip(("query", "key", "hard"), got, want):
        assert g.dtype == dtype, f"grad {name} has dtype {g.dtype}"
        assert_close(g, w.to(dtype), f"grad {name}", kind="grad")


@pytest.mark.skipif(not triton_ops.HAS_TRITON, reason="Triton is not installed")
@pytest.mark.parametrize("hard", HARD_KINDS)
def test_triton_rows_match_reference(hard):
    """The Triton row kernel, run by the interpreter on CPU, gives the reference values."""
    query, key, hard_negatives = make_inputs(6, 5, hard, dtype=torch.float32, seed=14)
    options = dict(temperature=0.1, hard_negatives=hard_negatives, symmetric=True)
    inputs = leaves(query, key, hard_negatives)
    triton_ops.launch_counts.clear()
    triton_ops.force_triton(True)
    try:
        loss = lossgrad.info_nce(query, key, **options)
        got = grads_of(loss, inputs)
    finally:
        triton_ops.force_triton(False)
    assert triton_ops.launch_counts["cross_entropy_rows"] == 2
    expected = reference_info_nce(query, key, **options)
    assert_close(loss, expected, "loss")
    for index, (g, w) in enumerate(zip(got, grads_of(expected, inputs))):
        assert_close(g, w, f"grad of input {index}", kind="grad")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch_gives_zero_connected(reduction):
    query, key, _ = make_inputs(0, 4, None)
    loss = lossgrad.info_nce(query, key, symmetric=True, reduction=reduction)
    assert loss.grad_fn is not None
    assert bool((loss == 0).all())
    grad_query, grad_key = torch.autograd.grad(loss.sum(), [query, key])
    assert grad_query.shape == (0, 4)
    assert grad_key.shape == (0, 4)


def test_one_pair_has_zero_loss():
    query, key, _ = make_inputs(1, 3, None)
    loss = lossgrad.info_nce(query, key)
    assert float(loss.detach()) == 0.0


def test_double_backward_raises():
    query, key, _ = make_inputs(3, 2, None)
    loss = lossgrad.info_nce(query, key)
    with pytest.raises(RuntimeError, match="info_nce: double backward"):
        torch.autograd.grad(loss, [query], create_graph=True)


def test_formula_registered_and_in_docstring():
    assert "info_nce" in FORMULAS
    assert "{formula}" not in lossgrad.info_nce.__doc__
    assert "∂ℓ/∂τ" in lossgrad.info_nce.__doc__


@given(
    st.integers(min_value=1, max_value=6),
    st.integers(min_value=1, max_value=5),
    st.floats(min_value=1e-3, max_value=10.0),
    st.sampled_from(["cosine", "dot"]),
    st.booleans(),
    st.integers(min_value=0, max_value=2**31 - 1),
)
def test_finite_inputs_give_finite_results(N, D, temperature, similarity, symmetric, seed):
    generator = torch.Generator().manual_seed(seed)
    query = (torch.randn(N, D, generator=generator) * 10).requires_grad_(True)
    key = (torch.randn(N, D, generator=generator) * 10).requires_grad_(True)
    loss = lossgrad.info_nce(
        query, key, temperature=temperature, similarity=similarity, symmetric=symmetric
    )
    assert torch.isfinite(loss)
    grad_query, grad_key = torch.autograd.grad(loss, [query, key])
    assert bool(torch.isfinite(grad_query).all())
    assert bool(torch.isfinite(grad_key).all())


# --- nn module -----------------------------------------------------------------


def test_module_with_fixed_temperature_matches_function():
    query, key, hard = make_inputs(5, 3, "per_query")
    module = InfoNCELoss(0.2, symmetric=True, reduction="sum")
    expected = lossgrad.info_nce(
        query, key, temperature=0.2, hard_negatives=hard, symmetric=True, reduction="sum"
    )
    assert_close(module(query, key, hard), expected, "loss")
    assert list(module.parameters()) == []


def test_module_learns_log_temperature():
    query, key, _ = make_inputs(5, 3, None)
    module = InfoNCELoss(0.2, learn_temperature=True).double()
    tau = module.temperature.detach()
    assert math.isclose(float(tau), 0.2, rel_tol=1e-6)
    loss = module(query, key)
    (grad_log_tau,) = torch.autograd.grad(loss, [module.log_temperature])
    temperature = tau.clone().requires_grad_(True)
    expected = reference_info_nce(query, key, temperature=temperature)
    (grad_tau,) = torch.autograd.grad(expected, [temperature])
    # τ = exp(log τ), so ∂ℓ/∂log τ = τ ∂ℓ/∂τ.
    assert_close(grad_log_tau, tau * grad_tau, "grad log_temperature", kind="grad")


def test_module_repr_names_options():
    text = repr(InfoNCELoss(0.1, learn_temperature=True, symmetric=True))
    assert "temperature=0.1" in text
    assert "symmetric=True" in text


def test_module_rejects_bad_temperature():
    with pytest.raises(ValueError, match=r"temperature: expected a value > 0, got -1"):
        InfoNCELoss(-1.0)


# --- errors ------------------------------------------------------------------------


def test_query_not_a_tensor():
    with pytest.raises(TypeError, match="query: expected a torch.Tensor, got list"):
        lossgrad.info_nce([[1.0]], torch.ones(1, 1))


def test_query_integer_dtype():
    with pytest.raises(TypeError, match="query: expected a floating-point tensor"):
        lossgrad.info_nce(torch.ones(2, 3, dtype=torch.long), torch.ones(2, 3))


def test_query_not_2d():
    message = r"query: expected a 2-D tensor of shape \(N, D\), got shape \(2, 3, 4\)"
    with pytest.raises(ValueError, match=message):
        lossgrad.info_nce(torch.ones(2, 3, 4), torch.ones(2, 3, 4))


def test_key_shape_differs():
    message = r"key: expected the same shape as query \(2, 3\), got \(3, 3\)"
    with pytest.raises(ValueError, match=message):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(3, 3))


def test_key_dtype_differs():
    message = "key: expected dtype torch.float32 like query, got torch.float64"
    with pytest.raises(TypeError, match=message):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(2, 3, dtype=torch.float64))


def test_hard_negatives_wrong_dim():
    message = r"hard_negatives: expected shape \(M, 3\) or \(2, K, 3\), got \(4, 5\)"
    with pytest.raises(ValueError, match=message):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(2, 3), hard_negatives=torch.ones(4, 5))


def test_hard_negatives_wrong_rows():
    with pytest.raises(ValueError, match=r"hard_negatives: expected shape .* got \(3, 2, 3\)"):
        lossgrad.info_nce(
            torch.ones(2, 3), torch.ones(2, 3), hard_negatives=torch.ones(3, 2, 3)
        )


def test_hard_negatives_dtype_differs():
    with pytest.raises(TypeError, match="hard_negatives: expected dtype torch.float32"):
        lossgrad.info_nce(
            torch.ones(2, 3), torch.ones(2, 3),
            hard_negatives=torch.ones(4, 3, dtype=torch.float64),
        )


@pytest.mark.parametrize("temperature", [0.0, -0.5])
def test_temperature_not_positive(temperature):
    with pytest.raises(ValueError, match=r"temperature: expected a value > 0, got"):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(2, 3), temperature=temperature)


def test_temperature_tensor_not_positive():
    with pytest.raises(ValueError, match=r"temperature: expected a finite value > 0, got 0.0"):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(2, 3), temperature=torch.tensor(0.0))


def test_temperature_tensor_not_scalar():
    message = r"temperature: expected a tensor with one element, got shape \(2,\)"
    with pytest.raises(ValueError, match=message):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(2, 3), temperature=torch.ones(2))


def test_temperature_tensor_integer():
    with pytest.raises(TypeError, match="temperature: expected a floating-point tensor"):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(2, 3), temperature=torch.tensor(1))


def test_temperature_not_a_number():
    with pytest.raises(TypeError, match="temperature: expected a number, got str"):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(2, 3), temperature="0.1")


def test_unknown_similarity():
    with pytest.raises(ValueError, match="similarity: expected one of 'cosine', 'dot', got 'l2'"):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(2, 3), similarity="l2")


def test_unknown_reduction():
    message = "reduction: expected one of 'none', 'mean', 'sum', got 'batchmean'"
    with pytest.raises(ValueError, match=message):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(2, 3), reduction="batchmean")


def test_symmetric_not_bool():
    with pytest.raises(TypeError, match="symmetric: expected True or False, got 1"):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(2, 3), symmetric=1)


def test_gather_without_process_group():
    message = "gather: expected an initialised torch.distributed process group"
    with pytest.raises(RuntimeError, match=message):
        lossgrad.info_nce(torch.ones(2, 3), torch.ones(2, 3), gather=True)
