"""The three-way gradient check: closed form, autograd and finite differences.

The closed form is lossgrad's own backward. Autograd differentiates the
explainer's independent float64 formula. Finite differences are central
differences of lossgrad's forward in float64. At a kink the finite difference
straddles two pieces of the loss and may disagree with the subgradient by
design, so a kink is marked rather than failed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ._table import Case, Explainer

__all__ = [
    "FINITE_DIFFERENCE_STEP",
    "KINK_RADIUS",
    "Check",
    "GradientCheck",
    "check",
    "closed_form",
]

# Step of the central difference. In float64 its truncation error (about
# step² · ℓ''') and rounding error (about 1e-16 · |ℓ| / step) are both near 1e-10.
FINITE_DIFFERENCE_STEP = 1e-6

# A point closer than this to a kink is treated as on it: the central
# difference reaches across the kink from anywhere within one step.
KINK_RADIUS = 2 * FINITE_DIFFERENCE_STEP

# Relative tolerances, scaled by max(1, |loss|, max |gradient|).
AUTOGRAD_TOLERANCE = 1e-9
FINITE_DIFFERENCE_TOLERANCE = 1e-6


@dataclass
class GradientCheck:
    """The three gradients of the loss with respect to one input."""

    name: str
    closed_form: Tensor
    autograd: Tensor
    finite_difference: Tensor


@dataclass
class Check:
    """The outcome of checking one case.

    ``status`` is ``"pass"``, ``"kink"`` (the closed form matches autograd
    and the point is on a kink, where finite differences may disagree) or
    ``"fail"``, with ``failure`` naming the comparison that failed.
    """

    loss: float
    reference_loss: float
    gradients: list[GradientCheck]
    autograd_difference: float
    finite_difference_difference: float
    kinks: list[str]
    status: str
    failure: str | None = None

    @property
    def passed(self) -> bool:
        """Whether the check passed, on a kink or not."""
        return self.status != "fail"


def closed_form(explainer: Explainer, case: Case) -> tuple[Tensor, dict[str, Tensor]]:
    """Return lossgrad's loss and its backward's gradient for each input in ``case.wrt``."""
    leaves = {name: case.arguments[name].detach().clone().requires_grad_(True) for name in case.wrt}
    loss = explainer.call(case.replace(**leaves))
    return loss.detach(), gradients_of(loss, leaves)


def reference_gradients(explainer: Explainer, case: Case) -> tuple[Tensor, dict[str, Tensor]]:
    """Return the explainer's reference loss and autograd's gradient of it."""
    leaves = {name: case.arguments[name].detach().clone().requires_grad_(True) for name in case.wrt}
    loss = explainer.reference(case.replace(**leaves))
    return loss.detach(), gradients_of(loss, leaves)


def gradients_of(loss: Tensor, leaves: dict[str, Tensor]) -> dict[str, Tensor]:
    """Return d(loss)/d(leaf) for each leaf; zero where the loss does not depend on it."""
    if not loss.requires_grad:
        return {name: torch.zeros_like(leaf) for name, leaf in leaves.items()}
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return {
        name: torch.zeros_like(leaf) if grad is None else grad.detach()
        for (name, leaf), grad in zip(leaves.items(), grads)
    }


def finite_differences(explainer: Explainer, case: Case) -> dict[str, Tensor]:
    """Return the central-difference gradient of lossgrad's forward for each input in ``case.wrt``."""
    step = FINITE_DIFFERENCE_STEP
    result = {}
    with torch.no_grad():
        for name in case.wrt:
            base = case.arguments[name].detach().to(torch.float64)
            gradient = torch.zeros_like(base)
            for index in range(base.numel()):
                shifted_up = base.clone()
                shifted_up.view(-1)[index] += step
                shifted_down = base.clone()
                shifted_down.view(-1)[index] -= step
                up = explainer.call(case.replace(**{name: shifted_up}))
                down = explainer.call(case.replace(**{name: shifted_down}))
                gradient.view(-1)[index] = (up - down) / (2 * step)
            result[name] = gradient
    return result


def largest_difference(first: dict[str, Tensor], second: dict[str, Tensor]) -> float:
    """Return the largest absolute difference over all entries of matching gradients."""
    largest = 0.0
    for name, tensor in first.items():
        if tensor.numel():
            largest = max(largest, float((tensor - second[name]).abs().max()))
    return largest


def check(explainer: Explainer, case: Case) -> Check:
    """Evaluate ``case`` and compare the three gradients."""
    loss, closed = closed_form(explainer, case)
    reference_loss, autograd = reference_gradients(explainer, case)
    numeric = finite_differences(explainer, case)

    autograd_difference = largest_difference(closed, autograd)
    numeric_difference = largest_difference(closed, numeric)
    scale = max(
        [1.0, abs(float(reference_loss))]
        + [float(g.abs().max()) for g in autograd.values() if g.numel()]
    )
    finite = all(bool(torch.isfinite(g).all()) for g in closed.values()) and bool(
        torch.isfinite(loss)
    )
    kinks = explainer.kinks(case)

    status, failure = "pass", None
    if not finite:
        failure = "the loss or its closed-form gradient is not finite"
    elif abs(float(loss) - float(reference_loss)) > AUTOGRAD_TOLERANCE * scale:
        failure = "the loss differs from the reference formula"
    elif autograd_difference > AUTOGRAD_TOLERANCE * scale:
        failure = "the closed-form gradient differs from autograd"
    elif kinks:
        status = "kink"
    elif numeric_difference > FINITE_DIFFERENCE_TOLERANCE * scale:
        failure = "the closed-form gradient differs from finite differences"
    if failure is not None:
        status = "fail"

    gradients = [
        GradientCheck(name, closed[name], autograd[name], numeric[name]) for name in case.wrt
    ]
    return Check(
        loss=float(loss),
        reference_loss=float(reference_loss),
        gradients=gradients,
        autograd_difference=autograd_difference,
        finite_difference_difference=numeric_difference,
        kinks=kinks,
        status=status,
        failure=failure,
    )
