"""Distances between paired rows: values and closed-form gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from helpers import as_tensor, assert_close, reported_case
from lossgrad._losses.distance import (
    DISTANCE_NAMES,
    Cosine,
    Distance,
    Euclidean,
    PNorm,
    SmoothCosine,
    SquaredEuclidean,
    distance_by_name,
)

DTYPES = (torch.float32, torch.float64)
SHAPES = ((5, 7), (1, 1), (17, 423), (9,))


def reference(distance: Distance, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Return the distance written with plain torch ops, for autograd."""
    if isinstance(distance, Euclidean):
        return torch.linalg.vector_norm(x1 - x2, dim=-1)
    if isinstance(distance, SquaredEuclidean):
        return ((x1 - x2) ** 2).sum(dim=-1)
    if isinstance(distance, PNorm):
        return torch.linalg.vector_norm(x1 - x2, ord=distance.p, dim=-1)
    if isinstance(distance, Cosine):
        # clamp_min has the derivative 0 below eps: the clamped norm is constant there.
        c1 = torch.linalg.vector_norm(x1, dim=-1).clamp_min(distance.eps)
        c2 = torch.linalg.vector_norm(x2, dim=-1).clamp_min(distance.eps)
        return 1 - (x1 * x2).sum(dim=-1) / (c1 * c2)
    if isinstance(distance, SmoothCosine):
        m1 = (x1 * x1).sum(dim=-1) + distance.eps_squared
        m2 = (x2 * x2).sum(dim=-1) + distance.eps_squared
        return 1 - (x1 * x2).sum(dim=-1) / torch.sqrt(m1 * m2)
    raise AssertionError(f"no reference for {distance!r}")


ALL = (Euclidean(), SquaredEuclidean(), PNorm(1.0), PNorm(3.0), Cosine(), SmoothCosine())


class DistanceFunction(torch.autograd.Function):
    """Wrap a distance's value and vjp so that gradcheck can test the closed form."""

    @staticmethod
    def forward(ctx, x1, x2, distance):
        d = distance.value(x1, x2)
        ctx.save_for_backward(x1, x2, d)
        ctx.distance = distance
        return d

    @staticmethod
    def backward(ctx, grad_d):
        x1, x2, d = ctx.saved_tensors
        grad_x1, grad_x2 = ctx.distance.vjp(x1, x2, d, grad_d)
        return grad_x1, grad_x2, None


@pytest.mark.parametrize("distance", ALL, ids=lambda d: repr(d))
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_value_and_vjp_match_autograd(distance, dtype, shape):
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn(shape, dtype=torch.float64, generator=generator)
    x2 = torch.randn(shape, dtype=torch.float64, generator=generator)
    grad_d = torch.randn(shape[:-1], dtype=torch.float64, generator=generator)
    a = x1.clone().requires_grad_(True)
    b = x2.clone().requires_grad_(True)
    expected = reference(distance, a, b)
    expected_grads = torch.autograd.grad(expected, (a, b), grad_d)

    d = distance.value(x1.to(dtype), x2.to(dtype))
    grad_x1, grad_x2 = distance.vjp(x1.to(dtype), x2.to(dtype), d, grad_d.to(dtype))

    assert_close(d, expected.to(dtype), "d", dtype=dtype)
    assert_close(grad_x1, expected_grads[0].to(dtype), "grad_x1", kind="grad", dtype=dtype)
    assert_close(grad_x2, expected_grads[1].to(dtype), "grad_x2", kind="grad", dtype=dtype)


@pytest.mark.parametrize("distance", ALL, ids=lambda d: repr(d))
def test_vjp_passes_gradcheck(distance):
    generator = torch.Generator().manual_seed(1)
    x1 = torch.randn(4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    x2 = torch.randn(4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: DistanceFunction.apply(a, b, distance), (x1, x2))


@pytest.mark.parametrize("distance", ALL, ids=lambda d: repr(d))
def test_vjp_skips_unneeded_inputs(distance):
    x1 = torch.randn(3, 4, dtype=torch.float64)
    x2 = torch.randn(3, 4, dtype=torch.float64)
    d = distance.value(x1, x2)
    grad_x1, grad_x2 = distance.vjp(x1, x2, d, torch.ones_like(d), (False, True))
    assert grad_x1 is None
    assert grad_x2 is not None


SYMMETRIC = (Euclidean(), SquaredEuclidean(), PNorm(3.0), Cosine())


@pytest.mark.parametrize("distance", SYMMETRIC, ids=repr)
def test_distance_is_symmetric(distance):
    x1 = torch.randn(6, 3, dtype=torch.float64)
    x2 = torch.randn(6, 3, dtype=torch.float64)
    assert torch.equal(distance.value(x1, x2), distance.value(x2, x1))


def test_euclidean_matches_pairwise_distance_without_eps():
    x1 = torch.randn(8, 5)
    x2 = torch.randn(8, 5)
    expected = F.pairwise_distance(x1, x2, eps=0.0)
    assert_close(Euclidean().value(x1, x2), expected, "d")


def test_euclidean_coincident_points_r08():
    """R08: the euclidean distance of two equal points is 0 with the subgradient 0.

    sqrt(Σ u²) has an infinite derivative at u = 0, so a formula written for
    autograd gives 0 · inf = NaN; the closed form takes the subgradient 0.
    """
    case = reported_case("R08")
    a = as_tensor(case["inputs"]["a"])
    p = as_tensor(case["inputs"]["p"])
    distance = Euclidean()

    d = distance.value(a, p)
    grad_a, grad_p = distance.vjp(a, p, d, torch.ones_like(d))

    assert_close(d, torch.tensor([case["expected"]["distance"]], dtype=torch.float64), "d")
    expected_grad = as_tensor([case["expected"]["grad_a (subgradient convention 0)"]])
    assert_close(grad_a, expected_grad, "grad_a", kind="grad")
    assert_close(grad_p, torch.zeros_like(p), "grad_p", kind="grad")


@pytest.mark.parametrize("distance", (Euclidean(), PNorm(1.0), PNorm(3.0)), ids=repr)
def test_norm_distances_zero_gradient_at_coincident_rows(distance):
    x = torch.randn(4, 3)
    d = distance.value(x, x.clone())
    grad_x1, grad_x2 = distance.vjp(x, x.clone(), d, torch.ones_like(d))
    assert torch.equal(d, torch.zeros(4))
    assert torch.equal(grad_x1, torch.zeros(4, 3))
    assert torch.equal(grad_x2, torch.zeros(4, 3))


def test_cosine_zero_vector_r07():
    """R07: a zero vector gives cos = 0 and a finite gradient of size |a|/(|a| eps).

    With each norm clamped at eps, d(1 − cos)/db = −a/(|a| eps) at b = 0 and
    d(1 − cos)/da = 0, where an unclamped formula gives 0/0 = NaN.
    """
    case = reported_case("R07")
    x1 = as_tensor(case["inputs"]["x1"])
    x2 = as_tensor(case["inputs"]["x2"])
    distance = Cosine(case["inputs"]["eps"])

    d = distance.value(x1, x2)
    grad_x1, grad_x2 = distance.vjp(x1, x2, d, torch.ones_like(d))

    assert_close(d, torch.tensor([case["expected"]["loss_1_minus_cos"]], dtype=torch.float64), "d")
    assert_close(grad_x1, as_tensor([case["expected"]["grad_x1"]]), "grad_x1", kind="grad")
    expected_x2 = as_tensor([case["expected"]["grad_x2_per_norm_clamp"]])
    assert_close(grad_x2, expected_x2, "grad_x2", kind="grad")


def test_cosine_clamped_norm_is_constant():
    """Below eps the clamped norm is the constant eps, so only x2/(c1 c2) remains.

    PyTorch's cosine_similarity differentiates the unclamped norm there and
    returns the gradient below, which differs.
    """
    x1 = torch.tensor([[3e-9, 4e-9]], dtype=torch.float64)
    x2 = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    cosine = Cosine(1e-8)

    cos = cosine.similarity(x1, x2)
    grad_x1, grad_x2 = cosine.similarity_vjp(x1, x2, cos, torch.ones_like(cos))

    assert_close(cos, torch.tensor([0.3], dtype=torch.float64), "cos")
    assert_close(grad_x1, torch.tensor([[1e8, 0.0]], dtype=torch.float64), "grad_x1", kind="grad")
    # ∂cos/∂x2 = x1/(eps ‖x2‖) − cos · x2/‖x2‖² = [0.3 − 0.3, 0.4].
    expected_x2 = torch.tensor([[0.0, 0.4]], dtype=torch.float64)
    assert_close(grad_x2, expected_x2, "grad_x2", kind="grad", atol=1e-12)
    a = x1.clone().requires_grad_(True)
    (torch_grad,) = torch.autograd.grad(F.cosine_similarity(a, x2, eps=1e-8).sum(), a)
    assert not torch.allclose(torch_grad, grad_x1)


def test_cosine_matches_cosine_similarity():
    x1 = torch.randn(10, 6)
    x2 = torch.randn(10, 6)
    x2[3] = 0
    expected = F.cosine_similarity(x1, x2, eps=1e-8)
    assert_close(Cosine().similarity(x1, x2), expected, "cos")


def test_cosine_clamps_into_unit_interval():
    x = torch.randn(200, 7)
    cos = Cosine().similarity(x, 3 * x)
    assert float(cos.max()) <= 1.0
    assert float(cos.min()) >= -1.0


def test_cosine_gradient_zero_for_parallel_rows():
    x = torch.randn(5, 4, dtype=torch.float64)
    cosine = Cosine()
    d = cosine.value(x, 2 * x)
    grad_x1, _ = cosine.vjp(x, 2 * x, d, torch.ones_like(d))
    assert_close(grad_x1, torch.zeros_like(x), "grad_x1", kind="grad", atol=1e-12)


def test_distance_by_name_covers_all_names():
    for name in DISTANCE_NAMES:
        assert distance_by_name(name).name == name


def test_distance_by_name_rejects_unknown():
    with pytest.raises(ValueError, match="distance: expected one of"):
        distance_by_name("manhattan")


finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False, width=32)
rows = st.lists(st.lists(finite, min_size=3, max_size=3), min_size=1, max_size=4)


@given(data=rows, zero_row=st.booleans(), coincide=st.booleans())
def test_no_nan_on_finite_rows(data, zero_row, coincide):
    x1 = torch.tensor(data, dtype=torch.float32)
    x2 = torch.flip(x1, dims=(0,)) * 0.5
    if zero_row:
        x2[0] = 0
    if coincide:
        x2[-1] = x1[-1]
    for distance in ALL:
        d = distance.value(x1, x2)
        grad_x1, grad_x2 = distance.vjp(x1, x2, d, torch.ones_like(d))
        assert bool(torch.isfinite(d).all()), f"{distance!r}: d = {d}"
        assert bool(torch.isfinite(grad_x1).all()), f"{distance!r}: grad_x1 = {grad_x1}"
        assert bool(torch.isfinite(grad_x2).all()), f"{distance!r}: grad_x2 = {grad_x2}"
