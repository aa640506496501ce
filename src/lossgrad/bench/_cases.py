"""The benchmark cases: each loss's inputs, its PyTorch peer and its floor.

A case builds warm input buffers for one size. The tensors that receive a
gradient (the logits, predictions or embeddings a model produces) are kept
apart from the constants (targets, teacher logits), because every timed run
gets fresh non-leaf copies of them. Where PyTorch has the loss, the eager peer
is ``torch.nn.functional``; otherwise it is the loss written as a plain PyTorch
autograd formula. A case is listed only if its lossgrad function exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

import lossgrad

__all__ = ["CASES", "DEFAULT_SIZES", "FAMILIES", "Case", "Inputs", "available_cases"]

# Default sizes per family: N rows or pairs, V classes, E elements,
# D embedding dimension, H hidden size.
DEFAULT_SIZES: dict[str, dict[str, int]] = {
    "softmax": {"N": 4096, "V": 32000},
    "elementwise": {"E": 1 << 20},
    "embedding": {"N": 4096, "D": 256},
    "linear": {"N": 2048, "H": 512, "V": 32000},
}
FAMILIES = tuple(DEFAULT_SIZES)


@dataclass
class Inputs:
    """Warm buffers of one case at one size.

    Attributes:
        grad_inputs: the tensors that receive a gradient, in call order.
        constants: the other arguments, passed after ``grad_inputs``.
        reference_bytes: the size of the logits (N × V for the softmax and
            linear families) or of the gradient inputs otherwise; extra
            memory is reported as a multiple of it.
        shape: a short description of the size, such as ``"N=4096 V=32000"``.
    """

    grad_inputs: tuple[Tensor, ...]
    constants: tuple[Tensor, ...]
    reference_bytes: int
    shape: str


@dataclass(frozen=True)
class Case:
    """One loss in the benchmark.

    Attributes:
        name: the lossgrad function name.
        family: a key of :data:`DEFAULT_SIZES`.
        build: makes the warm inputs from the family's sizes, a dtype and a
            generator.
        peer: the PyTorch eager version, called like the lossgrad function
            with ``grad_inputs`` then ``constants``.
        peer_label: how the peer is computed, for the report.
        options: keyword arguments of the lossgrad call.
        extra_peers: further PyTorch variants by label, such as PyTorch's own
            ``linear_cross_entropy``.
        floor: ``"exp"`` for one in-place exp pass over the gradient inputs, or
            ``"matmul"`` for the three matmuls of a linear head.
    """

    name: str
    family: str
    build: Callable[[dict[str, int], torch.dtype, torch.Generator], Inputs]
    peer: Callable[..., Tensor]
    peer_label: str
    options: dict[str, object] = field(default_factory=dict)
    extra_peers: dict[str, Callable[..., Tensor]] = field(default_factory=dict)
    floor: str = "exp"

    def function(self) -> Callable[..., Tensor]:
        """Return the lossgrad function called with this case's options."""
        loss = getattr(lossgrad, self.name)
        options = self.options
        return lambda *args: loss(*args, **options)


def _randn(shape: tuple[int, ...], dtype: torch.dtype, generator: torch.Generator) -> Tensor:
    return torch.randn(shape, generator=generator).to(dtype)


def _classes(n: int, classes: int, generator: torch.Generator) -> Tensor:
    return torch.randint(0, classes, (n,), generator=generator)


def _bytes(*tensors: Tensor) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


# Builders, one per input layout.


def _logits_and_classes(sizes: dict[str, int], dtype, generator) -> Inputs:
    n, v = sizes["N"], sizes["V"]
    logits = _randn((n, v), dtype, generator)
    return Inputs((logits,), (_classes(n, v, generator),), _bytes(logits), f"N={n} V={v}")


def _student_teacher(with_target: bool) -> Callable[..., Inputs]:
    """Return a builder of student and teacher logits, with class indices if asked."""

    def build(sizes: dict[str, int], dtype, generator) -> Inputs:
        n, v = sizes["N"], sizes["V"]
        student = _randn((n, v), dtype, generator)
        teacher = _randn((n, v), dtype, generator)
        constants = (teacher, _classes(n, v, generator)) if with_target else (teacher,)
        return Inputs((student,), constants, _bytes(student), f"N={n} V={v}")

    return build


def _log_probs(sizes: dict[str, int], dtype, generator) -> Inputs:
    n, v = sizes["N"], sizes["V"]
    log_p = torch.log_softmax(torch.randn((n, v), generator=generator), dim=-1).to(dtype)
    target = torch.softmax(torch.randn((n, v), generator=generator), dim=-1).to(dtype)
    return Inputs((log_p,), (target,), _bytes(log_p), f"N={n} V={v}")


def _predictions(sizes: dict[str, int], dtype, generator) -> Inputs:
    e = sizes["E"]
    prediction = _randn((e,), dtype, generator)
    return Inputs((prediction,), (_randn((e,), dtype, generator),), _bytes(prediction), f"E={e}")


def _probabilities(sizes: dict[str, int], dtype, generator) -> Inputs:
    e = sizes["E"]
    p = torch.sigmoid(torch.randn((e,), generator=generator)).to(dtype)
    labels = torch.randint(0, 2, (e,), generator=generator).to(dtype)
    return Inputs((p,), (labels,), _bytes(p), f"E={e}")


def _logits_and_labels(sizes: dict[str, int], dtype, generator) -> Inputs:
    e = sizes["E"]
    logits = _randn((e,), dtype, generator)
    labels = torch.randint(0, 2, (e,), generator=generator).to(dtype)
    return Inputs((logits,), (labels,), _bytes(logits), f"E={e}")


def _pairs(labels: str | None) -> Callable[..., Inputs]:
    """Return a builder of N pairs of D-dimensional embeddings and optional labels.

    The embeddings are scaled by 1/√D so that pair distances are about √2 and
    the default margins of 1 leave some pairs inside the hinge.
    """

    def build(sizes: dict[str, int], dtype, generator) -> Inputs:
        n, d = sizes["N"], sizes["D"]
        x1 = (torch.randn((n, d), generator=generator) / math.sqrt(d)).to(dtype)
        x2 = (torch.randn((n, d), generator=generator) / math.sqrt(d)).to(dtype)
        constants: tuple[Tensor, ...] = ()
        bits = torch.randint(0, 2, (n,), generator=generator)
        if labels == "binary":
            constants = (bits.to(dtype),)
        elif labels == "sign":
            constants = ((2 * bits - 1).to(dtype),)
        return Inputs((x1, x2), constants, _bytes(x1, x2), f"N={n} D={d}")

    return build


def _triplets(sizes: dict[str, int], dtype, generator) -> Inputs:
    n, d = sizes["N"], sizes["D"]
    a, p, q = ((torch.randn((n, d), generator=generator) / math.sqrt(d)).to(dtype) for _ in range(3))
    return Inputs((a, p, q), (), _bytes(a, p, q), f"N={n} D={d}")


def _linear_head(sizes: dict[str, int], dtype, generator) -> Inputs:
    n, h, v = sizes["N"], sizes["H"], sizes["V"]
    hidden = _randn((n, h), dtype, generator)
    weight = (torch.randn((v, h), generator=generator) / math.sqrt(h)).to(dtype)
    target = _classes(n, v, generator)
    logits_bytes = n * v * hidden.element_size()
    return Inputs((hidden, weight), (target,), logits_bytes, f"N={n} H={h} V={v}")


def _linear_student_teacher(sizes: dict[str, int], dtype, generator) -> Inputs:
    """Build a student head (hidden states and weight, both trained) and a constant teacher head."""
    head = _linear_head(sizes, dtype, generator)
    hidden, weight = head.grad_inputs
    (target,) = head.constants
    teacher_hidden = _randn(tuple(hidden.shape), dtype, generator)
    teacher_weight = torch.randn(tuple(weight.shape), generator=generator)
    teacher_weight = teacher_weight.div_(math.sqrt(hidden.shape[1])).to(dtype)
    return Inputs((hidden, weight), (teacher_hidden, teacher_weight, target),
                  head.reference_bytes, head.shape)


# Plain PyTorch formulas of the losses that torch.nn.functional lacks.


def _kd_formula(student, teacher, target, temperature=4.0, alpha=0.9):
    t = temperature
    log_p_student = F.log_softmax(student / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher / t, dim=-1)
    soft = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    hard = F.cross_entropy(student, target)
    return alpha * t * t * soft + (1 - alpha) * hard


def _js_formula(student, teacher, beta=0.5):
    log_p_s = F.log_softmax(student, dim=-1)
    log_p_t = F.log_softmax(teacher, dim=-1)
    log_m = torch.logaddexp(log_p_t + math.log(beta), log_p_s + math.log(1 - beta))
    kl_t = (log_p_t.exp() * (log_p_t - log_m)).sum(-1)
    kl_s = (log_p_s.exp() * (log_p_s - log_m)).sum(-1)
    return (beta * kl_t + (1 - beta) * kl_s).mean()


def _contrastive_formula(x1, x2, target, pos_margin=0.0, neg_margin=1.0):
    d = torch.linalg.vector_norm(x1 - x2, dim=-1)
    return (target * F.relu(d - pos_margin) + (1 - target) * F.relu(neg_margin - d)).mean()


def _negative_pair_formula(x1, x2, margin=1.0):
    return F.relu(margin - torch.linalg.vector_norm(x1 - x2, dim=-1)).mean()


def _cosine_similarity_formula(x1, x2):
    return (1 - F.cosine_similarity(x1, x2, dim=-1, eps=1e-8)).mean()


def _info_nce_formula(query, key, temperature=0.07):
    logits = F.normalize(query, dim=-1) @ F.normalize(key, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(query.shape[0]))


def _linear_then_cross_entropy(hidden, weight, target):
    return F.cross_entropy(F.linear(hidden, weight), target)


def _torch_linear_cross_entropy(hidden, weight, target):
    # Without options PyTorch 2.13 takes its unchunked reference path; the
    # default options select its chunked one, the peer that saves memory.
    return F.linear_cross_entropy(
        hidden, weight, target, options=torch.nn.LinearCrossEntropyOptions()
    )


def _linear_then_kd(hidden, weight, teacher_hidden, teacher_weight, target,
                    temperature=4.0, alpha=0.9):
    teacher = F.linear(teacher_hidden, teacher_weight)
    return _kd_formula(F.linear(hidden, weight), teacher, target, temperature, alpha)


def _torch_peer(name: str, **options) -> Callable[..., Tensor]:
    function = getattr(F, name)
    return lambda *args: function(*args, **options)


_FORMULA = "plain PyTorch autograd formula"

CASES: tuple[Case, ...] = (
    Case("cross_entropy", "softmax", _logits_and_classes, F.cross_entropy, "F.cross_entropy"),
    Case("kd_loss", "softmax", _student_teacher(True), _kd_formula, _FORMULA,
         options={"temperature": 4.0, "alpha": 0.9}),
    Case("js_div", "softmax", _student_teacher(False), _js_formula, _FORMULA),
    Case("kl_div", "softmax", _log_probs, _torch_peer("kl_div", reduction="batchmean"),
         "F.kl_div", options={"reduction": "batchmean"}),
    Case("l1_loss", "elementwise", _predictions, F.l1_loss, "F.l1_loss"),
    Case("mse_loss", "elementwise", _predictions, F.mse_loss, "F.mse_loss"),
    Case("huber_loss", "elementwise", _predictions, F.huber_loss, "F.huber_loss"),
    Case("smooth_l1_loss", "elementwise", _predictions, F.smooth_l1_loss, "F.smooth_l1_loss"),
    Case("binary_cross_entropy", "elementwise", _probabilities, F.binary_cross_entropy,
         "F.binary_cross_entropy"),
    Case("binary_cross_entropy_with_logits", "elementwise", _logits_and_labels,
         F.binary_cross_entropy_with_logits, "F.binary_cross_entropy_with_logits"),
    Case("cosine_embedding_loss", "embedding", _pairs("sign"), F.cosine_embedding_loss,
         "F.cosine_embedding_loss"),
    Case("cosine_similarity_loss", "embedding", _pairs(None), _cosine_similarity_formula, _FORMULA),
    Case("negative_pair_loss", "embedding", _pairs(None), _negative_pair_formula, _FORMULA),
    Case("contrastive_loss", "embedding", _pairs("binary"), _contrastive_formula, _FORMULA),
    Case("triplet_margin_loss", "embedding", _triplets, F.triplet_margin_loss,
         "F.triplet_margin_loss"),
    Case("info_nce", "embedding", _pairs(None), _info_nce_formula, _FORMULA),
    Case("linear_cross_entropy", "linear", _linear_head, _linear_then_cross_entropy,
         "F.linear + F.cross_entropy",
         extra_peers=(
             {"torch linear_cross_entropy": _torch_linear_cross_entropy}
             if hasattr(F, "linear_cross_entropy")
             else {}
         ),
         floor="matmul"),
    Case("linear_kd_loss", "linear", _linear_student_teacher, _linear_then_kd,
         "F.linear + " + _FORMULA, options={"temperature": 4.0, "alpha": 0.9}, floor="matmul"),
)


def available_cases() -> dict[str, Case]:
    """Return the cases whose lossgrad function exists, by name."""
    return {case.name: case for case in CASES if callable(getattr(lossgrad, case.name, None))}
