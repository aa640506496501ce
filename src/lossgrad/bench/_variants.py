"""The timed variants of a case: lossgrad, PyTorch eager, torch.compile, the floor.

A variant splits each run into an untimed ``prepare`` and the timed call it
returns. For a loss, ``prepare`` makes fresh copies of the warm gradient
inputs as non-leaf tensors, the way logits come out of a model, and the timed
call is the loss's forward and its backward to those tensors.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

import lossgrad

from ._cases import Case, Inputs

__all__ = ["FLOOR", "LOSSGRAD", "LOSSGRAD_INPLACE", "EAGER", "COMPILED", "Variant", "variants_for"]

LOSSGRAD = "lossgrad"
LOSSGRAD_INPLACE = "lossgrad inplace_backward"
EAGER = "eager"
COMPILED = "torch.compile"
FLOOR = "floor"

# A timed call returns the loss, the gradients and the tensors they are the
# gradients of, or None for a floor.
Run = Callable[[], "tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]] | None"]


@dataclass(frozen=True)
class Variant:
    """One way to compute a case.

    Attributes:
        label: the name in the report, such as ``"eager"``.
        description: what is computed, such as ``"F.cross_entropy"``.
        prepare: makes the inputs of one run, untimed, and returns the timed call.
        is_loss: False for the floor, which computes no loss.
        compiled: True for a torch.compile variant, whose first run compiles.
    """

    label: str
    description: str
    prepare: Callable[[Inputs], Run]
    is_loss: bool = True
    compiled: bool = False


def loss_run(function: Callable[..., Tensor]) -> Callable[[Inputs], Run]:
    """Return a ``prepare`` that times ``function``'s forward and backward."""

    def prepare(inputs: Inputs) -> Run:
        # x + 0 with a leaf zero gives each input its own storage and a grad_fn,
        # as a model's output has. The backward stops at these tensors.
        anchor = torch.zeros((), requires_grad=True)
        grad_inputs = tuple(x + anchor.to(x.dtype) for x in inputs.grad_inputs)
        constants = inputs.constants

        def run() -> tuple[Tensor, tuple[Tensor, ...], tuple[Tensor, ...]]:
            loss = function(*grad_inputs, *constants)
            grads = torch.autograd.grad(loss, grad_inputs)
            return loss, grads, grad_inputs

        return run

    return prepare


def exp_floor(inputs: Inputs) -> Run:
    """Prepare one in-place exp pass over fresh copies of the gradient inputs."""
    copies = tuple(x.clone() for x in inputs.grad_inputs)

    def run() -> None:
        for x in copies:
            x.exp_()

    return run


def matmul_floor(inputs: Inputs) -> Run:
    """Prepare the three matmuls of a linear head: logits, and both gradients.

    The forward ``x Wᵀ`` (N × V), the input gradient ``G W`` and the weight
    gradient ``Gᵀ x``, written into preallocated buffers.
    """
    hidden, weight = inputs.grad_inputs
    n, v = hidden.shape[0], weight.shape[0]
    logits = torch.empty((n, v), dtype=hidden.dtype)
    grad_logits = torch.full((n, v), 1e-3, dtype=hidden.dtype)
    grad_hidden = torch.empty_like(hidden)
    grad_weight = torch.empty_like(weight)

    def run() -> None:
        torch.mm(hidden, weight.t(), out=logits)
        torch.mm(grad_logits, weight, out=grad_hidden)
        torch.mm(grad_logits.t(), hidden, out=grad_weight)

    return run


def _accepts(function: Callable, parameter: str) -> bool:
    try:
        return parameter in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False


def variants_for(case: Case, *, compile: bool) -> list[Variant]:
    """Return the variants of ``case``: lossgrad, its in-place form, the peers, the floor."""
    function = getattr(lossgrad, case.name)
    variants = [Variant(LOSSGRAD, f"lossgrad.{case.name}", loss_run(case.function()))]
    if _accepts(function, "inplace_backward"):
        options = {**case.options, "inplace_backward": True}
        variants.append(
            Variant(
                LOSSGRAD_INPLACE,
                f"lossgrad.{case.name}(inplace_backward=True)",
                loss_run(lambda *args: function(*args, **options)),
            )
        )
    variants.append(Variant(EAGER, case.peer_label, loss_run(case.peer)))
    if compile:
        compiled = torch.compile(case.peer)
        variants.append(
            Variant(COMPILED, f"torch.compile({case.peer_label})", loss_run(compiled), compiled=True)
        )
    for label, peer in case.extra_peers.items():
        variants.append(Variant(label, label, loss_run(peer)))
    if case.floor == "matmul":
        variants.append(Variant(FLOOR, "three matmuls", matmul_floor, is_loss=False))
    else:
        variants.append(Variant(FLOOR, "in-place exp", exp_floor, is_loss=False))
    return variants
