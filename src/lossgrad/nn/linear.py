"""Modules of the linear + loss heads: they use an existing ``nn.Linear`` and call the functions."""

from __future__ import annotations

from torch import Tensor, nn

from .._losses.linear import linear_cross_entropy, linear_kd_loss

__all__ = ["LinearCrossEntropyLoss", "LinearKDLoss"]


def _check_linear(name: str, head: object, *, bias_allowed: bool = True) -> nn.Linear:
    if not isinstance(head, nn.Linear):
        raise TypeError(f"{name}: expected a torch.nn.Linear, got {type(head).__name__}")
    if not bias_allowed and head.bias is not None:
        raise ValueError(
            f"{name}: expected an nn.Linear without bias, because linear_kd_loss "
            "takes no bias, got one with bias"
        )
    return head


class LinearCrossEntropyLoss(nn.Module):
    """Cross-entropy of a linear head's output; see :func:`lossgrad.linear_cross_entropy`.

    ``head`` is the model's own ``nn.Linear`` (an LM head, for example): its
    ``weight`` and ``bias`` are read at every call, never copied, so the
    gradients reach the head and it trains. The head is registered as the
    submodule ``head``, so ``loss.parameters()`` lists its parameters too:
    build the optimizer from the model's parameters, not from both.
    ``weight`` (class weights) is registered as a buffer.

    Unlike ``torch.nn.LinearCrossEntropyLoss`` (PyTorch 2.13), which creates
    its own ``Linear`` from ``in_features`` and ``num_classes``, this module
    wraps a head that already exists.

    Example::

        >>> head = nn.Linear(16, 100, bias=False)
        >>> criterion = LinearCrossEntropyLoss(head, z_loss=1e-4)
        >>> loss = criterion(torch.randn(6, 16), torch.randint(0, 100, (6,)))
    """

    def __init__(
        self,
        head: nn.Linear,
        *,
        weight: Tensor | None = None,
        reduction: str = "mean",
        ignore_index: int | None = None,
        label_smoothing: float = 0.0,
        z_loss: float = 0.0,
        softcap: float | None = None,
        return_z_loss: bool = False,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.head = _check_linear("head", head)
        self.register_buffer("weight", weight)
        self.reduction = reduction
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        self.return_z_loss = return_z_loss
        self.chunk_size = chunk_size

    def forward(
        self, input: Tensor, target: Tensor, num_items: Tensor | float | None = None
    ) -> Tensor | tuple[Tensor, Tensor]:
        return linear_cross_entropy(
            input,
            self.head.weight,
            target,
            linear_bias=self.head.bias,
            weight=self.weight,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            return_z_loss=self.return_z_loss,
            num_items=num_items,
            chunk_size=self.chunk_size,
        )


class LinearKDLoss(nn.Module):
    """Distillation loss between a student and a teacher head; see :func:`lossgrad.linear_kd_loss`.

    Both heads are existing ``nn.Linear`` modules without bias, registered as
    the submodules ``student_head`` and ``teacher_head`` and read at every
    call. Only the student head and the student input get gradients.

    Example::

        >>> student_head = nn.Linear(16, 100, bias=False)
        >>> teacher_head = nn.Linear(32, 100, bias=False)
        >>> criterion = LinearKDLoss(student_head, teacher_head, temperature=2.0)
        >>> loss = criterion(torch.randn(6, 16), torch.randn(6, 32), torch.randint(0, 100, (6,)))
    """

    def __init__(
        self,
        student_head: nn.Linear,
        teacher_head: nn.Linear,
        *,
        divergence: str = "kl",
        temperature: float = 1.0,
        alpha: float = 0.5,
        beta: float = 0.5,
        ignore_index: int = -100,
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.student_head = _check_linear("student_head", student_head, bias_allowed=False)
        self.teacher_head = _check_linear("teacher_head", teacher_head, bias_allowed=False)
        self.divergence = divergence
        self.temperature = temperature
        self.alpha = alpha
        self.beta = beta
        self.ignore_index = ignore_index
        self.chunk_size = chunk_size

    def forward(
        self, student_input: Tensor, teacher_input: Tensor, target: Tensor | None = None
    ) -> Tensor:
        return linear_kd_loss(
            student_input,
            self.student_head.weight,
            teacher_input,
            self.teacher_head.weight,
            target,
            divergence=self.divergence,
            temperature=self.temperature,
            alpha=self.alpha,
            beta=self.beta,
            ignore_index=self.ignore_index,
            chunk_size=self.chunk_size,
        )
