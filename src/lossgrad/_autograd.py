"""Helpers at the autograd boundary shared by every loss Function."""

from __future__ import annotations

import torch

__all__ = ["graph_is_kept", "refuse_double_backward"]


def refuse_double_backward(name: str) -> None:
    """Raise when a backward pass is being recorded for a second derivative.

    Every lossgrad backward is a closed form built from tensors saved in the
    forward pass, so differentiating it again would silently give a wrong
    (mostly zero) second derivative. Grad mode is on inside ``backward`` only
    under ``create_graph=True`` or a ``torch.func`` transform; the transforms
    are allowed because ``torch.func.grad`` of the loss itself needs them.
    """
    if torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active():
        raise RuntimeError(
            f"lossgrad.{name}: double backward (create_graph=True) is not supported, "
            "because the backward pass is a closed form without a graph of its own; "
            "use the torch.nn.functional loss for higher-order gradients"
        )


def graph_is_kept() -> bool:
    """Return whether the running backward pass keeps the graph (``retain_graph=True``).

    A backward that returns tensors saved in the forward pass may scale them
    in place, which saves a copy of each, but only when the graph is freed
    afterwards. With a kept graph a later backward would read the scaled
    values. The answer comes from a private PyTorch function (present in
    2.13); without it this returns True, the safe choice. It is True under
    torch.compile, which cannot trace that function, and under torch.func
    transforms, whose wrapped tensors should not be mutated.
    """
    keeps_graph = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    if keeps_graph is None or torch.compiler.is_compiling():
        return True
    if torch._C._are_functorch_transforms_active():
        return True
    return bool(keeps_graph())
