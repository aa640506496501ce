"""Shared references and tolerances for the test suite.

Every comparison goes through :func:`assert_close`, which checks shape and
dtype before values and names the tensor and the worst index on failure.
Tolerances per dtype live in :data:`TOLERANCES` and nowhere else.
"""

from __future__ import annotations

import torch
from torch import Tensor

# (rtol, atol) for values and for gradients, per dtype of the computation.
TOLERANCES: dict[torch.dtype, dict[str, tuple[float, float]]] = {
    torch.float64: {"value": (1e-10, 1e-12), "grad": (1e-9, 1e-11)},
    torch.float32: {"value": (1e-6, 1e-7), "grad": (1e-5, 1e-6)},
    torch.bfloat16: {"value": (2e-2, 1e-2), "grad": (2e-2, 1e-2)},
    torch.float16: {"value": (2e-3, 1e-3), "grad": (2e-3, 1e-3)},
}

# Odd shapes that catch chunking and indexing errors, beside one realistic shape.
ODD_ROWS = (1, 3, 17)
ODD_CLASSES = (1, 2, 7, 423)


def assert_close(
    actual: Tensor,
    expected: Tensor,
    name: str,
    *,
    kind: str = "value",
    dtype: torch.dtype | None = None,
    rtol: float | None = None,
    atol: float | None = None,
    check_dtype: bool = True,
) -> None:
    """Assert ``actual`` matches ``expected`` within the tolerance for ``dtype``.

    ``kind`` is ``"value"`` or ``"grad"``. ``dtype`` picks the tolerance row and
    defaults to ``actual.dtype``. Explicit ``rtol``/``atol`` override the table.
    """
    assert isinstance(actual, Tensor), f"{name}: expected a tensor, got {type(actual)}"
    assert actual.shape == expected.shape, (
        f"{name}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    )
    if check_dtype:
        assert actual.dtype == expected.dtype, (
            f"{name}: dtype {actual.dtype} != expected {expected.dtype}"
        )
    table_rtol, table_atol = TOLERANCES[dtype or actual.dtype][kind]
    rtol = table_rtol if rtol is None else rtol
    atol = table_atol if atol is None else atol
    a = actual.detach().to(torch.float64)
    e = expected.detach().to(torch.float64)
    same_nonfinite = (a == e) | (a.isnan() & e.isnan())
    error = (a - e).abs()
    bound = atol + rtol * e.abs()
    bad = ~(same_nonfinite | (error <= bound))
    if bool(bad.any()):
        index = tuple(int(i) for i in bad.nonzero()[0])
        raise AssertionError(
            f"{name}: {int(bad.sum())} of {a.numel()} entries differ; first at "
            f"index {index}: got {a[index].item()!r}, expected {e[index].item()!r} "
            f"(rtol={rtol}, atol={atol}, max error {error[bad].max().item():.3g})"
        )


def grads_of(loss: Tensor, inputs: list[Tensor], grad_output: Tensor | None = None) -> list[Tensor]:
    """Return d(loss)/d(input) for each input, with an optional upstream gradient."""
    return list(torch.autograd.grad(loss, inputs, grad_output, allow_unused=False))


def leaf(data: object, dtype: torch.dtype = torch.float64) -> Tensor:
    """Return a fresh leaf tensor that requires grad."""
    return torch.tensor(data, dtype=dtype).requires_grad_(True)


def reported_case(case_id: str) -> dict:
    """Return one case of ``tests/data/reported_cases.json`` by its id (``"R01"``)."""
    import json
    from pathlib import Path

    path = Path(__file__).parent / "data" / "reported_cases.json"
    cases = {case["id"]: case for case in json.loads(path.read_text())}
    return cases[case_id]


def as_tensor(value: object, dtype: torch.dtype = torch.float64) -> Tensor:
    """Turn JSON numbers, with "inf", "-inf" and "nan" as strings, into a tensor."""

    def convert(v: object) -> object:
        if isinstance(v, list):
            return [convert(x) for x in v]
        if isinstance(v, str):
            return float(v)
        return v

    return torch.tensor(convert(value), dtype=dtype)
