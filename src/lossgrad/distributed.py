"""Autograd-aware gathering across processes, and the helpers of a DDP run.

:func:`all_gather` concatenates every rank's tensor along dim 0, in rank order,
on every rank, and its backward sends each rank the gradient of *all* ranks'
losses with respect to its own rows. That is what a loss needs when it uses
the rows of other ranks, such as InfoNCE with the keys of the whole global
batch as negatives.

Scaling rule for a loss built on :func:`all_gather` under DDP: DDP averages
parameter gradients over the ``W`` ranks. If rank ``r`` reports
``L_r = (W / N) Σ_{i ∈ rank r} ℓ_i``, with ``N`` the global batch size, then
``(1 / W) Σ_r ∂L_r/∂θ = (1 / N) Σ_i ∂ℓ_i/∂θ``, which is the gradient of the mean
over the concatenated batch in one process. When every rank has ``N / W`` rows,
``L_r`` is simply the mean over the rank's own rows. :func:`ddp_mean_denominator`
returns ``N / W``.

The rest of the module is what a training script needs under ``torchrun``:
:func:`init_from_env`, :func:`wrap_ddp`, :func:`shard_batch`,
:func:`sum_over_ranks` for metrics, :func:`is_main_process` (write outputs on
rank 0 only) and :func:`shutdown`.
"""

from __future__ import annotations

import datetime
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from ._autograd import refuse_double_backward

__all__ = [
    "DistributedInfo",
    "Shard",
    "all_gather",
    "all_gather_with_sizes",
    "current_info",
    "ddp_mean_denominator",
    "init_from_env",
    "is_main_process",
    "require_process_group",
    "shard_batch",
    "shutdown",
    "sum_over_ranks",
    "wrap_ddp",
]

# The shape header sent before the data has room for this many dimensions.
MAX_DIMS = 8


def require_process_group(name: str = "all_gather") -> None:
    """Raise RuntimeError unless a default process group is initialised."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            f"{name}: expected an initialised torch.distributed process group, got "
            "none; call torch.distributed.init_process_group (or "
            "lossgrad.distributed.init_from_env under torchrun) first"
        )


def _dtype_code(dtype: torch.dtype) -> int:
    return zlib.crc32(str(dtype).encode())


def _gather_sizes(tensor: Tensor, group: dist.ProcessGroup | None) -> list[int]:
    """Exchange shapes and dtypes; return every rank's size along dim 0.

    Every rank receives every header, so a mismatch raises the same error on
    all ranks instead of leaving some of them waiting in the data collective.
    """
    if tensor.dim() < 1 or tensor.dim() > MAX_DIMS:
        raise ValueError(
            f"tensor: expected 1 to {MAX_DIMS} dimensions, got shape {tuple(tensor.shape)}"
        )
    header = torch.zeros(2 + MAX_DIMS, dtype=torch.int64)
    header[0] = _dtype_code(tensor.dtype)
    header[1] = tensor.dim()
    header[2 : 2 + tensor.dim()] = torch.tensor(tensor.shape, dtype=torch.int64)
    header = header.to(tensor.device)
    headers = [torch.empty_like(header) for _ in range(dist.get_world_size(group))]
    dist.all_gather(headers, header, group=group)
    rows = [h.tolist() for h in headers]
    mine = header.tolist()
    for rank, other in enumerate(rows):
        # Compare everything except the size along dim 0 (index 2).
        if other[:2] != mine[:2] or other[3:] != mine[3:]:
            raise ValueError(
                f"tensor: expected the same dtype and the same shape after dim 0 on "
                f"every rank, got dtype {tensor.dtype} and shape {tuple(tensor.shape)} "
                f"here and a different dtype or shape on rank {rank}"
            )
    return [row[2] for row in rows]


class _AllGather(torch.autograd.Function):
    """Concatenate the ranks' tensors; backward sums the gradients over ranks."""

    @staticmethod
    def forward(
        tensor: Tensor, sizes: tuple[int, ...], group: dist.ProcessGroup | None
    ) -> Tensor:
        # Ranks may have different numbers of rows, but a collective moves
        # equal-sized buffers: pad to the largest size, then cut each part back.
        padded = tensor.contiguous()
        missing = max(sizes) - tensor.shape[0]
        if missing > 0:
            padding = tensor.new_zeros((missing, *tensor.shape[1:]))
            padded = torch.cat([padded, padding])
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=group)
        return torch.cat([part[:size] for part, size in zip(parts, sizes)])

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        _, sizes, group = inputs
        rank = dist.get_rank(group)
        ctx.rows = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        ctx.group = group

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        refuse_double_backward("distributed.all_gather")
        # Rank r's loss L_r depends on every rank's rows, so the gradient of
        # Σ_r L_r for this rank's rows is Σ_r (∂L_r/∂gathered)[own rows]. An
        # all_reduce of the whole gradient followed by a slice computes it.
        # A reduce_scatter would move 1/W of the data, but gloo has none on
        # CPU in some PyTorch versions; the all_reduce works on every backend.
        summed = grad_output.contiguous().clone()
        dist.all_reduce(summed, op=dist.ReduceOp.SUM, group=ctx.group)
        return summed[ctx.rows], None, None


def all_gather_with_sizes(
    tensor: Tensor, *, group: dist.ProcessGroup | None = None
) -> tuple[Tensor, list[int]]:
    """Gather like :func:`all_gather` and also return each rank's row count.

    Rank ``r``'s rows start at ``sum(sizes[:r])`` in the result.
    """
    require_process_group("all_gather")
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor: expected a torch.Tensor, got {type(tensor).__name__}")
    sizes = _gather_sizes(tensor, group)
    return _AllGather.apply(tensor, tuple(sizes), group), sizes


def all_gather(tensor: Tensor, *, group: dist.ProcessGroup | None = None) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order, on every rank.

    The result takes part in autograd. Its backward runs on every rank: it sums
    the gradients that all ranks computed for the gathered tensor (an
    ``all_reduce``) and returns each rank the rows of that sum that belong to its
    own input. So a rank's input receives the gradient of the sum of all ranks'
    losses, as if the losses had been computed in one process.

    Ranks may pass different numbers of rows; the other dimensions and the
    dtype must agree, else every rank raises ``ValueError``.

    Args:
        tensor: this rank's rows, shape ``(N_r, *)``.
        group: the process group; the default group when ``None``.

    Returns:
        A tensor of shape ``(Σ_r N_r, *)``.

    Every rank must call :func:`all_gather` the same number of times in the
    same order and run the backward pass through each result, because both
    directions are collectives. Example, a loss over the global batch whose
    DDP-averaged gradient equals the one-process gradient (see the module
    docs for the scaling)::

        embeddings = model(x)                                 # N_r x D
        everyone, sizes = all_gather_with_sizes(embeddings)   # N x D
        start = sum(sizes[: dist.get_rank()])
        per_row = my_loss(embeddings, everyone, start)        # N_r losses
        loss = per_row.sum() / ddp_mean_denominator(sizes)
        loss.backward()
    """
    return all_gather_with_sizes(tensor, group=group)[0]


def ddp_mean_denominator(sizes: Sequence[int]) -> float:
    """Return ``N / W``, the divisor that makes DDP's average a global mean.

    ``sizes`` contains every rank's row count (``N = Σ sizes``, ``W = len(sizes)``).
    Dividing each rank's sum of per-row losses by ``N / W`` makes DDP's average
    of the parameter gradients equal the gradient of the mean over all ``N``
    rows, also when ranks have different numbers of rows. With equal sizes it
    is the rank's own row count, so the loss is the rank's own mean.
    """
    if len(sizes) == 0:
        raise ValueError("sizes: expected one row count per rank, got an empty sequence")
    return sum(sizes) / len(sizes)


# --- Helpers for a training run under torchrun ---------------------------------


@dataclass(frozen=True)
class DistributedInfo:
    """This process's place in the run: ``rank`` of ``world_size`` processes."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0, the process that writes outputs."""
        return self.rank == 0


def init_from_env(
    backend: str | None = None, *, timeout_s: float = 600.0
) -> DistributedInfo:
    """Initialise the default process group from torchrun's environment variables.

    torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
    ``MASTER_PORT``. Without ``WORLD_SIZE``, or with ``WORLD_SIZE=1``, nothing is
    initialised and a single-process :class:`DistributedInfo` is returned, so a
    script runs unchanged with and without torchrun. ``backend`` defaults to
    ``nccl`` when CUDA is available and ``gloo`` otherwise. If a process group
    already exists, its rank and size are returned.
    """
    if dist.is_available() and dist.is_initialized():
        return current_info()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistributedInfo()
    if not dist.is_available():
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but this PyTorch build has no torch.distributed"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(
        backend=backend,
        init_method="env://",
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    return DistributedInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def current_info() -> DistributedInfo:
    """Return this process's rank and world size from the initialised default group.

    Without a process group this is the single-process ``DistributedInfo()``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return DistributedInfo()
    rank = dist.get_rank()
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    return DistributedInfo(rank, dist.get_world_size(), local_rank)


def shutdown() -> None:
    """Destroy the default process group if one exists; otherwise do nothing."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_over_ranks(*values: float) -> tuple[float, ...]:
    """Return each value summed over all ranks (the values themselves in one process).

    Use it for metrics such as a running loss sum and a row count, so that every
    rank can report the epoch's global mean. It is a collective: every rank must
    call it with the same number of values.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return tuple(float(value) for value in values)
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    totals = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(totals, op=dist.ReduceOp.SUM)
    return tuple(totals.tolist())


def is_main_process() -> bool:
    """Return whether this process is rank 0 (or the only process)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def wrap_ddp(module: torch.nn.Module, info: DistributedInfo) -> torch.nn.Module:
    """Wrap ``module`` in DistributedDataParallel when more than one process runs.

    On CPU DDP takes no ``device_ids``; on CUDA the module is expected on
    ``cuda:{local_rank}``. A single process gets ``module`` back unchanged.
    """
    if not info.is_distributed:
        return module
    from torch.nn.parallel import DistributedDataParallel

    parameter = next(module.parameters(), None)
    if parameter is not None and parameter.device.type == "cuda":
        return DistributedDataParallel(module, device_ids=[info.local_rank])
    return DistributedDataParallel(module)


@dataclass(frozen=True)
class Shard:
    """This rank's part of one global batch.

    Attributes:
        rows: the slice of the global batch that this rank processes.
        loss_scale: ``W · n_r / N``. Multiplying the mean loss over this rank's
            ``n_r`` rows by it makes DDP's average of the parameter gradients
            equal the gradient of the mean over all ``N`` rows. It is 1 when
            ``W`` divides ``N``.
    """

    rows: slice
    loss_scale: float


def shard_batch(batch_size: int, info: DistributedInfo) -> Shard:
    """Split a global batch of ``batch_size`` rows into contiguous per-rank parts.

    Every rank draws the same global batch (same seed), and rank ``r`` takes
    the ``r``-th part, so one step of ``W`` processes sees exactly the batch of
    one process. Part sizes differ by at most one row, larger parts first (as
    ``torch.tensor_split``). Unlike ``DistributedSampler``, which deals each
    rank a fixed subset of the data set, this keeps the sequence of global
    batches identical to the single-process run, which is what makes the two
    comparable step by step.
    """
    if batch_size < 0:
        raise ValueError(f"batch_size: expected a value >= 0, got {batch_size}")
    base, extra = divmod(batch_size, info.world_size)
    size = base + (1 if info.rank < extra else 0)
    start = info.rank * base + min(info.rank, extra)
    scale = info.world_size * size / batch_size if batch_size > 0 else 1.0
    return Shard(rows=slice(start, start + size), loss_scale=scale)
