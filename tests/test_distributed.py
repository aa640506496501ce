"""Multi-process tests of lossgrad.distributed and info_nce(gather=True).

Each world of 2 or 3 processes is spawned once per module with the gloo
backend on 127.0.0.1. The workers run every case, save what each rank saw to
a temporary folder, and the tests compare it, in this process, with one
process computing the same loss on the concatenated batch. Data differ across
ranks and batch sizes are uneven in some cases, because a symmetric setup hides
the classic gather bugs (reducing only the local slice, or slicing before
summing).
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import assert_close
from losses.test_info_nce import reference_info_nce

import lossgrad
from lossgrad import distributed
from lossgrad.nn import InfoNCELoss

D = 4
TEMPERATURE = 0.3

# name -> (rows per rank, options). "hard" rows per rank: M_r for shared
# hard negatives (split like the batch), K per query otherwise.
CASES: dict[int, dict[str, tuple[list[int], dict]]] = {
    2: {
        "plain": ([3, 3], {}),
        "symmetric": ([3, 3], {"symmetric": True}),
        "hard_shared": ([3, 3], {"hard": "shared", "hard_rows": [2, 1]}),
        "hard_per_query": ([3, 3], {"hard": "per_query", "symmetric": True}),
        "uneven": ([2, 5], {"symmetric": True, "hard": "per_query"}),
        "sum": ([2, 3], {"reduction": "sum"}),
        "dot": ([4, 4], {"similarity": "dot", "symmetric": True}),
    },
    3: {
        "plain": ([2, 2, 2], {}),
        "symmetric": ([2, 2, 2], {"symmetric": True}),
        "hard_shared": ([2, 2, 2], {"hard": "shared", "hard_rows": [1, 0, 2], "symmetric": True}),
        "uneven": ([1, 4, 2], {"symmetric": True}),
        "empty_rank": ([0, 2, 3], {"hard": "shared", "hard_rows": [1, 1, 1]}),
    },
}
GATHER_SIZES = {2: [2, 3], 3: [3, 0, 2]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def global_inputs(name: str, sizes: list[int], options: dict) -> dict:
    """Build the concatenated batch of a case, the same on every rank."""
    generator = torch.Generator().manual_seed(sum(map(ord, name)) + len(sizes))
    N = sum(sizes)
    inputs = {
        "query": torch.randn(N, D, generator=generator, dtype=torch.float64),
        "key": torch.randn(N, D, generator=generator, dtype=torch.float64),
    }
    if options.get("hard") == "shared":
        M = sum(options["hard_rows"])
        inputs["hard"] = torch.randn(M, D, generator=generator, dtype=torch.float64)
    elif options.get("hard") == "per_query":
        inputs["hard"] = torch.randn(N, 2, D, generator=generator, dtype=torch.float64)
    return inputs


def rank_rows(sizes: list[int], rank: int) -> slice:
    return slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))


def loss_options(options: dict) -> dict:
    return {
        "similarity": options.get("similarity", "cosine"),
        "symmetric": options.get("symmetric", False),
        "reduction": options.get("reduction", "mean"),
    }


# --- worker side -------------------------------------------------------------------


def run_info_nce_case(rank: int, name: str, sizes: list[int], options: dict) -> dict:
    inputs = global_inputs(name, sizes, options)
    rows = rank_rows(sizes, rank)
    local = {
        "query": inputs["query"][rows].clone().requires_grad_(True),
        "key": inputs["key"][rows].clone().requires_grad_(True),
    }
    if options.get("hard") == "shared":
        local["hard"] = inputs["hard"][rank_rows(options["hard_rows"], rank)].clone()
    elif options.get("hard") == "per_query":
        local["hard"] = inputs["hard"][rows].clone()
    if "hard" in local:
        local["hard"].requires_grad_(True)
    temperature = torch.tensor(TEMPERATURE, dtype=torch.float64, requires_grad=True)
    loss = lossgrad.info_nce(
        local["query"], local["key"], temperature=temperature,
        hard_negatives=local.get("hard"), gather=True, **loss_options(options),
    )
    loss.backward()
    result = {f"grad_{k}": v.grad for k, v in local.items()}
    result["grad_temperature"] = temperature.grad
    result["value"] = loss.detach()
    return result


class Encoder(torch.nn.Module):
    """A linear encoder with the loss inside, so DDP also averages log τ."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(3, D, dtype=torch.float64)
        self.criterion = InfoNCELoss(TEMPERATURE, learn_temperature=True, symmetric=True)
        self.criterion.double()

    def forward(self, x_query, x_key, gather):
        self.criterion.gather = gather
        return self.criterion(self.linear(x_query), self.linear(x_key))


def ddp_inputs(sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(11)
    N = sum(sizes)
    x_query = torch.randn(N, 3, generator=generator, dtype=torch.float64)
    x_key = torch.randn(N, 3, generator=generator, dtype=torch.float64)
    return x_query, x_key


def run_ddp_case(rank: int, sizes: list[int]) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    torch.manual_seed(5)
    model = distributed.wrap_ddp(Encoder(), distributed.current_info())
    assert isinstance(model, DistributedDataParallel)
    x_query, x_key = ddp_inputs(sizes)
    rows = rank_rows(sizes, rank)
    loss = model(x_query[rows], x_key[rows], True)
    loss.backward()
    return {name: p.grad.clone() for name, p in model.module.named_parameters()}


def run_all_gather_checks(rank: int, world_size: int) -> dict:
    sizes = GATHER_SIZES[world_size]
    n = sizes[rank]
    # Rank r contributes rows 100 r + [0, 1, ...], two columns each.
    local = (100.0 * rank + torch.arange(n, dtype=torch.float64)).repeat(2, 1).T
    local = local.contiguous().requires_grad_(True)
    gathered = distributed.all_gather(local)
    # Each rank weights the gathered rows differently, so the gradient of
    # rank r's rows must be the sum of every rank's weights on those rows.
    weights = (rank + 1.0) * torch.arange(1, gathered.numel() + 1, dtype=torch.float64)
    (gathered * weights.reshape(gathered.shape)).sum().backward()
    result = {"gathered": gathered.detach(), "grad": local.grad}
    try:
        distributed.all_gather(torch.zeros(2, 3 + rank))
    except ValueError as error:
        result["shape_error"] = str(error)
    return result


def run_helper_checks(info: distributed.DistributedInfo) -> dict:
    current = distributed.current_info()
    return {
        "info": (info.rank, info.world_size, info.local_rank),
        "current": (current.rank, current.world_size, current.local_rank),
        "is_main": distributed.is_main_process(),
        "sums": distributed.sum_over_ranks(float(info.rank), 1.0),
    }


def worker(rank: int, world_size: int, port: int, folder: str) -> None:
    # The variables that torchrun sets, so that init_from_env is what starts the group.
    os.environ.update({
        "GLOO_SOCKET_IFNAME": "lo",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
    })
    info = distributed.init_from_env("gloo", timeout_s=60)
    try:
        results = {"helpers": run_helper_checks(info)}
        results["all_gather"] = run_all_gather_checks(rank, world_size)
        for name, (sizes, options) in CASES[world_size].items():
            results[name] = run_info_nce_case(rank, name, sizes, options)
        results["ddp"] = run_ddp_case(rank, CASES[world_size]["uneven"][0])
        torch.save(results, Path(folder) / f"rank{rank}.pt")
        # Without this barrier, a rank that destroyed its group first
        # sometimes made a slower peer abort with SIGABRT inside gloo.
        dist.barrier()
    finally:
        distributed.shutdown()


def spawn_world(world_size: int, folder: Path) -> list[dict]:
    torch.multiprocessing.spawn(
        worker, args=(world_size, free_port(), str(folder)), nprocs=world_size, join=True
    )
    return [torch.load(folder / f"rank{rank}.pt") for rank in range(world_size)]


@pytest.fixture(scope="module", params=[2, 3], ids=["world2", "world3"])
def world(request, tmp_path_factory) -> tuple[int, list[dict]]:
    world_size = request.param
    return world_size, spawn_world(world_size, tmp_path_factory.mktemp(f"world{world_size}"))


# --- test side ------------------------------------------------------------------------


def single_process(name: str, sizes: list[int], options: dict) -> dict:
    """Gradients of the loss on the concatenated batch in one process."""
    inputs = {
        input_name: tensor.clone().requires_grad_(True)
        for input_name, tensor in global_inputs(name, sizes, options).items()
    }
    temperature = torch.tensor(TEMPERATURE, dtype=torch.float64, requires_grad=True)
    loss = reference_info_nce(
        inputs["query"], inputs["key"], temperature=temperature,
        hard_negatives=inputs.get("hard"), **loss_options(options),
    )
    loss.backward()
    expected = {f"grad_{k}": v.grad for k, v in inputs.items()}
    expected["grad_temperature"] = temperature.grad
    expected["value"] = loss.detach()
    return expected


def test_init_from_env_reads_torchrun_variables(world):
    world_size, results = world
    for rank in range(world_size):
        helpers = results[rank]["helpers"]
        assert helpers["info"] == (rank, world_size, rank)
        assert helpers["current"] == (rank, world_size, rank)
        assert helpers["is_main"] == (rank == 0)


def test_sum_over_ranks(world):
    world_size, results = world
    expected = (float(sum(range(world_size))), float(world_size))
    for rank in range(world_size):
        assert results[rank]["helpers"]["sums"] == expected


def test_all_gather_concatenates_in_rank_order(world):
    world_size, results = world
    sizes = GATHER_SIZES[world_size]
    expected = torch.cat([
        (100.0 * rank + torch.arange(n, dtype=torch.float64)).repeat(2, 1).T
        for rank, n in enumerate(sizes)
    ])
    for rank in range(world_size):
        assert_close(results[rank]["all_gather"]["gathered"], expected, f"rank {rank} gathered")


def test_all_gather_backward_sums_over_ranks(world):
    world_size, results = world
    sizes = GATHER_SIZES[world_size]
    total_weight = sum(rank + 1.0 for rank in range(world_size))
    base = torch.arange(1, 2 * sum(sizes) + 1, dtype=torch.float64).reshape(-1, 2)
    for rank in range(world_size):
        expected = total_weight * base[rank_rows(sizes, rank)]
        assert_close(results[rank]["all_gather"]["grad"], expected, f"rank {rank} grad")


def test_all_gather_rejects_mismatched_shapes(world):
    world_size, results = world
    for rank in range(world_size):
        message = results[rank]["all_gather"].get("shape_error", "")
        assert "tensor: expected the same dtype and the same shape after dim 0" in message


@pytest.mark.parametrize("case", ["plain", "symmetric", "hard_shared", "uneven"])
def test_ddp_average_equals_single_process(world, case):
    world_size, results = world
    sizes, options = CASES[world_size][case]
    expected = single_process(case, sizes, options)
    _check_against_single_process(world_size, results, case, sizes, options, expected)


def test_other_cases_equal_single_process(world):
    world_size, results = world
    for case in set(CASES[world_size]) - {"plain", "symmetric", "hard_shared", "uneven"}:
        sizes, options = CASES[world_size][case]
        expected = single_process(case, sizes, options)
        _check_against_single_process(world_size, results, case, sizes, options, expected)


def _check_against_single_process(world_size, results, case, sizes, options, expected):
    # DDP averages over W ranks: the gradient that rank r's rows contribute to
    # the parameters, divided by W, must be the one-process gradient of them.
    # Under 'sum' nothing is rescaled, so the ranks' sums are what DDP averages.
    W = world_size if options.get("reduction", "mean") == "mean" else 1
    for rank in range(world_size):
        got = results[rank][case]
        rows = rank_rows(sizes, rank)
        for name in ("query", "key"):
            assert_close(
                got[f"grad_{name}"] / W, expected[f"grad_{name}"][rows],
                f"{case} rank {rank} grad {name}", kind="grad",
            )
        if options.get("hard") == "shared":
            hard_rows = rank_rows(options["hard_rows"], rank)
            assert_close(
                got["grad_hard"] / W, expected["grad_hard"][hard_rows],
                f"{case} rank {rank} grad hard", kind="grad",
            )
        elif options.get("hard") == "per_query":
            assert_close(
                got["grad_hard"] / W, expected["grad_hard"][rows],
                f"{case} rank {rank} grad hard", kind="grad",
            )
    mean_over_ranks = sum(results[r][case]["grad_temperature"] for r in range(world_size)) / W
    assert_close(
        mean_over_ranks, expected["grad_temperature"], f"{case} grad temperature", kind="grad"
    )
    values = torch.stack([results[r][case]["value"] for r in range(world_size)])
    total = values.sum() / W
    assert_close(total, expected["value"], f"{case} mean of rank values")


def test_equal_sizes_value_is_rank_mean(world):
    world_size, results = world
    sizes, options = CASES[world_size]["symmetric"]
    inputs = global_inputs("symmetric", sizes, options)
    per_row = reference_info_nce(
        inputs["query"], inputs["key"], temperature=TEMPERATURE, symmetric=True, reduction="none"
    )
    for rank in range(world_size):
        expected = per_row[rank_rows(sizes, rank)].mean()
        assert_close(results[rank]["symmetric"]["value"], expected, f"rank {rank} value")


def test_ddp_parameter_grads_equal_single_process(world):
    world_size, results = world
    sizes = CASES[world_size]["uneven"][0]
    torch.manual_seed(5)
    model = Encoder()
    x_query, x_key = ddp_inputs(sizes)
    model(x_query, x_key, False).backward()
    for name, parameter in model.named_parameters():
        for rank in range(world_size):
            assert_close(
                results[rank]["ddp"][name], parameter.grad, f"rank {rank} {name}", kind="grad"
            )


# --- single-process helpers ------------------------------------------------------------


def test_all_gather_without_process_group():
    with pytest.raises(RuntimeError, match="all_gather: expected an initialised"):
        distributed.all_gather(torch.ones(2))


def test_ddp_mean_denominator():
    assert distributed.ddp_mean_denominator([2, 4]) == 3.0
    with pytest.raises(ValueError, match="sizes: expected one row count per rank"):
        distributed.ddp_mean_denominator([])


def test_shard_batch_covers_batch_in_order():
    world_size = 3
    shards = [
        distributed.shard_batch(10, distributed.DistributedInfo(rank, world_size))
        for rank in range(world_size)
    ]
    assert [s.rows for s in shards] == [slice(0, 4), slice(4, 7), slice(7, 10)]
    assert [s.loss_scale for s in shards] == [1.2, 0.9, 0.9]


def test_shard_batch_rejects_negative_size():
    with pytest.raises(ValueError, match="batch_size: expected a value >= 0, got -1"):
        distributed.shard_batch(-1, distributed.DistributedInfo())


def test_init_from_env_without_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info = distributed.init_from_env()
    assert info == distributed.DistributedInfo(0, 1, 0)
    assert info.is_main
    assert not info.is_distributed
    assert distributed.is_main_process()
    assert distributed.current_info() == info


def test_single_process_helpers_are_identity():
    assert distributed.sum_over_ranks(2.5, 3.0) == (2.5, 3.0)
    module = torch.nn.Linear(2, 2)
    assert distributed.wrap_ddp(module, distributed.DistributedInfo()) is module
    distributed.shutdown()
