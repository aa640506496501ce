"""The GPU benchmark: lossgrad's Triton kernels against PyTorch eager, torch.compile and Liger-Kernel.

``lossgrad bench --device cuda`` runs this module. For each loss it times the
forward and backward pass with CUDA events (median of repeated runs after
warm-up, compile time reported apart), measures the extra peak of
``torch.cuda.max_memory_allocated`` beyond the inputs and the gradient, and
reports the achieved bandwidth of the softmax family as

    (bytes of logits read once + bytes of the gradient written once) / time,

against two ceilings: a device-to-device copy measured on the same GPU, and
the vendor's datasheet figure where the GPU's name is known.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import lossgrad

__all__ = ["GpuResult", "run_gpu_benchmark"]

logger = logging.getLogger(__name__)

# Datasheet memory bandwidth in bytes per second, by a substring of the
# device name (NVIDIA's H100 and H200 datasheets: SXM parts).
DATASHEET_BANDWIDTH = {
    "H200": 4.8e12,
    "H100": 3.35e12,
    "A100": 2.0e12,
}


@dataclass
class GpuResult:
    """One variant of one loss, timed and measured."""

    loss: str
    variant: str
    shape: list[int]
    dtype: str
    median_ms: float
    min_ms: float
    max_ms: float
    extra_peak_mib: float
    bandwidth_gbs: float | None = None
    compile_s: float | None = None
    error: str | None = None
    notes: list[str] = field(default_factory=list)


def _median_ms(step: Callable[[], None], prepare: Callable[[], None], repeats: int) -> list[float]:
    """Time ``step`` after ``prepare`` (untimed) with CUDA events; return the times in ms."""
    times = []
    for _ in range(repeats):
        prepare()
        torch.cuda.synchronize()
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return times


def copy_bandwidth(n_bytes: int = 2 << 30) -> float:
    """Return the measured device-to-device copy bandwidth in bytes per second (read + write)."""
    source = torch.empty(n_bytes // 2, dtype=torch.bfloat16, device="cuda")
    target = torch.empty_like(source)
    times = _median_ms(lambda: target.copy_(source), lambda: None, 10)
    seconds = statistics.median(times) / 1e3
    return 2 * source.numel() * source.element_size() / seconds


def _liger_cross_entropy() -> Callable | None:
    """Return Liger-Kernel's cross-entropy as ``f(logits, target)``, or None if not installed.

    The module form is used because the functional form's positional
    arguments changed between Liger-Kernel releases; some releases return a
    (loss, z_loss) tuple.
    """
    try:
        from liger_kernel.transformers import LigerCrossEntropyLoss
    except ImportError:
        return None
    criterion = LigerCrossEntropyLoss()

    def liger(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        value = criterion(logits, target)
        return value[0] if isinstance(value, tuple) else value

    return liger


def _softmax_cases(N: int, V: int) -> dict[str, dict[str, Callable]]:
    """Return, per loss, the variants as functions of (logits, target, teacher)."""
    cases: dict[str, dict[str, Callable]] = {
        "cross_entropy": {
            "lossgrad": lambda x, y, t: lossgrad.cross_entropy(x, y),
            "lossgrad inplace_backward": lambda x, y, t: lossgrad.cross_entropy(
                x, y, inplace_backward=True
            ),
            "eager": lambda x, y, t: F.cross_entropy(x, y),
            "torch.compile": torch.compile(lambda x, y, t: F.cross_entropy(x, y)),
        },
        "kd_loss": {
            "lossgrad": lambda x, y, t: lossgrad.kd_loss(x, t, y),
            "eager": lambda x, y, t: 0.9
            * 16.0
            * F.kl_div(
                F.log_softmax(x.float() / 4, -1),
                F.log_softmax(t.float() / 4, -1),
                reduction="batchmean",
                log_target=True,
            )
            + 0.1 * F.cross_entropy(x.float(), y),
        },
        "js_div": {
            "lossgrad": lambda x, y, t: lossgrad.js_div(x, t),
            "eager": lambda x, y, t: _eager_js(x, t),
        },
    }
    liger = _liger_cross_entropy()
    if liger is not None:
        cases["cross_entropy"]["liger-kernel"] = lambda x, y, t: liger(x, y)
    return cases


def _eager_js(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(student.float(), -1)
    log_q = F.log_softmax(teacher.float(), -1)
    log_m = torch.logaddexp(log_p, log_q) - torch.log(torch.tensor(2.0, device=student.device))
    kl_q = F.kl_div(log_m, log_q, reduction="batchmean", log_target=True)
    kl_p = F.kl_div(log_m, log_p, reduction="batchmean", log_target=True)
    return 0.5 * kl_q + 0.5 * kl_p


def _run_variant(
    loss: str,
    variant: str,
    function: Callable,
    base: torch.Tensor,
    target: torch.Tensor,
    teacher: torch.Tensor,
    repeats: int,
    peak_bytes: float | None,
) -> GpuResult:
    N, V = base.shape
    element = base.element_size()
    logits: list[torch.Tensor] = []

    def prepare() -> None:
        # A fresh non-leaf copy, as logits come out of a model's last layer.
        anchor = torch.zeros((), device="cuda", dtype=base.dtype, requires_grad=True)
        logits[:] = [base + anchor]

    def step() -> None:
        (x,) = logits
        value = function(x, target, teacher)
        torch.autograd.grad(value, x)

    result = GpuResult(loss, variant, [N, V], str(base.dtype), 0.0, 0.0, 0.0, 0.0)
    try:
        started = time.perf_counter()
        prepare()
        step()  # warm-up; compiles the torch.compile variant
        torch.cuda.synchronize()
        if variant == "torch.compile":
            result.compile_s = time.perf_counter() - started
        prepare()
        step()
        times = _median_ms(step, prepare, repeats)
    except Exception as error:  # noqa: BLE001 - a failing variant is reported, not fatal
        result.error = f"{type(error).__name__}: {error}"
        logger.warning("%s / %s failed: %s", loss, variant, result.error)
        return result
    result.median_ms = statistics.median(times)
    result.min_ms, result.max_ms = min(times), max(times)

    # Memory beyond the logits, the teacher and the gradient that reaches the model.
    logits.clear()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    prepare()
    baseline = torch.cuda.memory_allocated() + N * V * element
    step()
    torch.cuda.synchronize()
    result.extra_peak_mib = max(0, torch.cuda.max_memory_allocated() - baseline) / 2**20
    logits.clear()

    moved = 2 * N * V * element  # logits read once, gradient written once
    result.bandwidth_gbs = moved / (result.median_ms / 1e3) / 1e9
    if peak_bytes:
        result.notes.append(f"{100 * result.bandwidth_gbs * 1e9 / peak_bytes:.0f}% of datasheet")
    return result


def run_gpu_benchmark(
    *,
    rows: int = 16384,
    classes: int = 131072,
    dtype: torch.dtype = torch.bfloat16,
    repeats: int = 10,
    losses: list[str] | None = None,
    out: Path | None = None,
) -> list[GpuResult]:
    """Benchmark the softmax family on the current CUDA device and write the report.

    Raises:
        RuntimeError: no CUDA device, or Triton is not installed.
    """
    if not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    from .._kernels import triton_ops

    if not triton_ops.HAS_TRITON:
        raise RuntimeError("--device cuda: Triton is not installed (pip install 'lossgrad[triton]')")
    name = torch.cuda.get_device_name()
    datasheet = next((bw for key, bw in DATASHEET_BANDWIDTH.items() if key in name), None)
    measured_copy = copy_bandwidth()
    logger.info("%s: copy bandwidth %.0f GB/s", name, measured_copy / 1e9)

    generator = torch.Generator(device="cuda").manual_seed(0)
    base = torch.randn(rows, classes, device="cuda", dtype=dtype, generator=generator)
    teacher = torch.randn(rows, classes, device="cuda", dtype=dtype, generator=generator)
    target = torch.randint(0, classes, (rows,), device="cuda", generator=generator)

    results = []
    for loss, variants in _softmax_cases(rows, classes).items():
        if losses and loss not in losses:
            continue
        for variant, function in variants.items():
            logger.info("timing %s / %s", loss, variant)
            results.append(
                _run_variant(
                    loss, variant, function, base, target, teacher, repeats, datasheet
                )
            )
            results[-1].notes.append(
                f"{100 * results[-1].bandwidth_gbs * 1e9 / measured_copy:.0f}% of copy"
                if results[-1].bandwidth_gbs
                else ""
            )
    if out is not None:
        _write(out, results, name, measured_copy, datasheet)
    return results


def _write(
    out: Path,
    results: list[GpuResult],
    device: str,
    copy_bytes_per_s: float,
    datasheet: float | None,
) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {
        "device": device,
        "copy_bandwidth_gbs": copy_bytes_per_s / 1e9,
        "datasheet_bandwidth_gbs": None if datasheet is None else datasheet / 1e9,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import triton

        meta["triton"] = triton.__version__
    except ImportError:
        meta["triton"] = None
    (out / "gpu-results.json").write_text(
        json.dumps({"meta": meta, "results": [asdict(r) for r in results]}, indent=2)
    )
    lines = [
        f"GPU: {device}; torch {meta['torch']}, triton {meta['triton']}",
        f"copy bandwidth (measured): {meta['copy_bandwidth_gbs']:.0f} GB/s; "
        f"datasheet: {meta['datasheet_bandwidth_gbs'] or 'unknown'} GB/s",
        "",
        "| loss | variant | shape | dtype | median ms | min–max ms | extra peak MiB | GB/s | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.loss} | {r.variant} | {r.shape} | {r.dtype} | failed: {r.error} |||||")
            continue
        notes = "; ".join(n for n in r.notes if n)
        if r.compile_s is not None:
            notes = f"{notes}; compile {r.compile_s:.1f} s".strip("; ")
        lines.append(
            f"| {r.loss} | {r.variant} | {r.shape[0]}×{r.shape[1]} | {r.dtype} | "
            f"{r.median_ms:.3f} | {r.min_ms:.3f}–{r.max_ms:.3f} | {r.extra_peak_mib:.0f} | "
            f"{r.bandwidth_gbs:.0f} | {notes} |"
        )
    (out / "gpu-results.md").write_text("\n".join(lines) + "\n")
