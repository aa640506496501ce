"""Every public loss under torch.func.grad, vmap, torch.compile and double backward.

Each loss has one row in :data:`EXAMPLES`: a builder that returns a small
input to differentiate and the loss as a function of that input alone. Add a
row when you add a loss, because :func:`test_every_loss_has_example` fails until then.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

import lossgrad
from helpers import assert_close


@dataclass(frozen=True)
class Example:
    """A loss as a function of one input, with every other argument fixed.

    Attributes:
        x: the input that is differentiated, such as the logits or predictions.
        loss: maps a tensor of ``x``'s shape to a scalar loss.
    """

    x: torch.Tensor
    loss: Callable[[torch.Tensor], torch.Tensor]


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float64)


def _classes(n: int, num_classes: int, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, num_classes, (n,), generator=generator)


def _pair_labels(n: int, seed: int = 2) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (n,), generator=generator).to(torch.float64)


def _regression(name: str, **options: float) -> Callable[[], Example]:
    def build() -> Example:
        target = _randn(6, 5, seed=1)
        function = getattr(lossgrad, name)
        return Example(_randn(6, 5), lambda x: function(x, target, **options))

    return build


def _binary_cross_entropy() -> Example:
    target = _pair_labels(12).reshape(4, 3)
    x = torch.sigmoid(_randn(4, 3))
    return Example(x, lambda p: lossgrad.binary_cross_entropy(p, target))


def _binary_cross_entropy_with_logits() -> Example:
    target = _pair_labels(12).reshape(4, 3)
    return Example(_randn(4, 3), lambda x: lossgrad.binary_cross_entropy_with_logits(x, target))


def _cross_entropy() -> Example:
    target = _classes(6, 7)
    return Example(_randn(6, 7), lambda x: lossgrad.cross_entropy(x, target, label_smoothing=0.1))


def _kl_div() -> Example:
    target = torch.softmax(_randn(6, 7, seed=1), dim=-1)
    x = torch.log_softmax(_randn(6, 7), dim=-1)
    return Example(x, lambda log_p: lossgrad.kl_div(log_p, target, reduction="batchmean"))


def _kd_loss() -> Example:
    teacher = _randn(6, 7, seed=1)
    target = _classes(6, 7)
    return Example(_randn(6, 7), lambda x: lossgrad.kd_loss(x, teacher, target, temperature=2.0))


def _js_div() -> Example:
    teacher = _randn(6, 7, seed=1)
    return Example(_randn(6, 7), lambda x: lossgrad.js_div(x, teacher))


def _contrastive_loss() -> Example:
    other = _randn(5, 4, seed=1)
    labels = _pair_labels(5)
    return Example(_randn(5, 4), lambda x: lossgrad.contrastive_loss(x, other, labels))


def _cosine_embedding_loss() -> Example:
    other = _randn(5, 4, seed=1)
    labels = _pair_labels(5) * 2 - 1
    return Example(
        _randn(5, 4), lambda x: lossgrad.cosine_embedding_loss(x, other, labels, margin=0.1)
    )


def _cosine_similarity_loss() -> Example:
    other = _randn(5, 4, seed=1)
    return Example(_randn(5, 4), lambda x: lossgrad.cosine_similarity_loss(x, other))


def _negative_pair_loss() -> Example:
    other = _randn(5, 4, seed=1) * 0.3
    return Example(_randn(5, 4) * 0.3, lambda x: lossgrad.negative_pair_loss(x, other))


def _triplet_margin_loss() -> Example:
    positive = _randn(5, 4, seed=1)
    negative = _randn(5, 4, seed=2)
    return Example(_randn(5, 4), lambda x: lossgrad.triplet_margin_loss(x, positive, negative))


def _info_nce() -> Example:
    key = _randn(6, 4, seed=1)
    return Example(_randn(6, 4), lambda x: lossgrad.info_nce(x, key, temperature=0.5))


def _linear_cross_entropy() -> Example:
    weight = _randn(9, 4, seed=1)
    target = _classes(6, 9)
    return Example(_randn(6, 4), lambda x: lossgrad.linear_cross_entropy(x, weight, target))


def _linear_kd_loss() -> Example:
    student_weight = _randn(9, 4, seed=1)
    teacher_input = _randn(6, 5, seed=2)
    teacher_weight = _randn(9, 5, seed=3)
    target = _classes(6, 9)
    return Example(
        _randn(6, 4),
        lambda x: lossgrad.linear_kd_loss(x, student_weight, teacher_input, teacher_weight, target),
    )


# (public name, builder). One row per loss in lossgrad.FORMULAS.
EXAMPLES: list[tuple[str, Callable[[], Example]]] = [
    ("l1_loss", _regression("l1_loss")),
    ("mse_loss", _regression("mse_loss")),
    ("huber_loss", _regression("huber_loss", delta=0.5)),
    ("smooth_l1_loss", _regression("smooth_l1_loss", beta=0.5)),
    ("binary_cross_entropy", _binary_cross_entropy),
    ("binary_cross_entropy_with_logits", _binary_cross_entropy_with_logits),
    ("cross_entropy", _cross_entropy),
    ("kl_div", _kl_div),
    ("kd_loss", _kd_loss),
    ("js_div", _js_div),
    ("contrastive_loss", _contrastive_loss),
    ("cosine_embedding_loss", _cosine_embedding_loss),
    ("cosine_similarity_loss", _cosine_similarity_loss),
    ("negative_pair_loss", _negative_pair_loss),
    ("triplet_margin_loss", _triplet_margin_loss),
    ("info_nce", _info_nce),
    ("linear_cross_entropy", _linear_cross_entropy),
    ("linear_kd_loss", _linear_kd_loss),
]

# One loss per family for the torch.compile test, which takes seconds per loss.
COMPILED = (
    "mse_loss",
    "binary_cross_entropy_with_logits",
    "cross_entropy",
    "kd_loss",
    "triplet_margin_loss",
    "info_nce",
    "linear_cross_entropy",
)

BUILDERS = dict(EXAMPLES)
NAMES = [name for name, _ in EXAMPLES if hasattr(lossgrad, name)]


def autograd_grad(example: Example, x: torch.Tensor) -> torch.Tensor:
    """Return d loss / d x by ordinary autograd."""
    leaf = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(example.loss(leaf), [leaf])
    return grad


def test_every_loss_has_example():
    losses = [name for name in lossgrad.__all__ if name in lossgrad.FORMULAS]
    missing = [name for name in losses if name not in BUILDERS]
    assert not missing, f"add a row to EXAMPLES for {missing}"


@pytest.mark.parametrize("name", NAMES)
def test_func_grad_matches_autograd(name):
    example = BUILDERS[name]()
    grad = torch.func.grad(example.loss)(example.x)
    assert_close(grad, autograd_grad(example, example.x), "grad", kind="grad")


# Losses whose forward or backward does not run under vmap yet, with the reason.
VMAP_FAILS = {
    "binary_cross_entropy_with_logits": "an in-place op on an unbatched tensor in backward",
}


def _vmap_params() -> list:
    params = []
    for name in NAMES:
        marks = []
        if name in VMAP_FAILS:
            marks.append(pytest.mark.xfail(reason=VMAP_FAILS[name], strict=True))
        params.append(pytest.param(name, marks=marks))
    return params


@pytest.mark.parametrize("name", _vmap_params())
def test_vmap_matches_loop(name):
    example = BUILDERS[name]()
    generator = torch.Generator().manual_seed(3)
    noise = torch.randn((3, *example.x.shape), generator=generator, dtype=example.x.dtype)
    batch = example.x + 0.1 * noise

    values = torch.vmap(example.loss)(batch)
    looped = torch.stack([example.loss(x) for x in batch])
    assert_close(values, looped, "value")

    grads = torch.vmap(torch.func.grad(example.loss))(batch)
    looped_grads = torch.stack([autograd_grad(example, x) for x in batch])
    assert_close(grads, looped_grads, "grad", kind="grad")


@pytest.mark.parametrize("name", NAMES)
def test_double_backward_raises(name):
    example = BUILDERS[name]()
    x = example.x.detach().clone().requires_grad_()
    loss = example.loss(x)
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad(loss, [x], create_graph=True)


def training_step(example: Example, compiled: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Run one Linear layer, the loss and an SGD step; return the loss and the gradients."""
    torch.manual_seed(0)
    *batch, features = example.x.shape
    model = torch.nn.Linear(3, features, dtype=example.x.dtype)
    inputs = torch.randn(*batch, 3, dtype=example.x.dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)

    def forward(inputs: torch.Tensor) -> torch.Tensor:
        return example.loss(model(inputs))

    if compiled:
        forward = torch.compile(forward, fullgraph=False)
    loss = forward(inputs)
    loss.backward()
    grads = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    optimizer.step()
    return loss.detach(), grads


@pytest.mark.slow
@pytest.mark.parametrize("name", [name for name in COMPILED if name in NAMES])
def test_compiled_step_matches_eager(name):
    torch._dynamo.reset()
    example = BUILDERS[name]()
    loss, grads = training_step(example, compiled=False)
    compiled_loss, compiled_grads = training_step(example, compiled=True)
    assert_close(compiled_loss, loss, "loss")
    for parameter, grad in grads.items():
        assert_close(compiled_grads[parameter], grad, f"grad {parameter}", kind="grad")
