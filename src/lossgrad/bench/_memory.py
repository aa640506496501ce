"""Extra peak memory of one variant, measured in a fresh process.

Run as ``python -m lossgrad.bench._memory --case NAME --variant LABEL
--sizes JSON --dtype float32``; it prints one JSON object. The process builds
the inputs, runs the variant once to warm up (and compile) and prepares fresh
non-leaf inputs. Then it resets the peak resident set size (``VmHWM`` in
``/proc/self/status``, reset by writing 5 to ``/proc/self/clear_refs``) and
runs the forward and backward. It reports the peak beyond the inputs and
beyond the gradient that reaches the model. A gradient written over the
input's own storage (``inplace_backward``) adds nothing to the latter.

Linux only. ``measure_memory`` sets ``MALLOC_MMAP_THRESHOLD_`` so that glibc
returns freed tensors to the system instead of keeping them resident, which
would hide later allocations from the peak.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys

import torch

__all__ = ["measure_memory"]

_STATUS = "/proc/self/status"


def _status_kib(field: str) -> int:
    with open(_STATUS) as status:
        match = re.search(rf"^{field}:\s+(\d+) kB", status.read(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"{_STATUS}: field {field} not found")
    return int(match.group(1))


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _storage_keys(tensors) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in tensors}


def run_in_this_process(case_name: str, label: str, sizes: dict[str, int], dtype: torch.dtype) -> dict:
    """Measure one variant here; return the byte counts."""
    from ._cases import available_cases
    from ._variants import COMPILED, variants_for

    case = available_cases()[case_name]
    generator = torch.Generator().manual_seed(0)
    inputs = case.build(sizes, dtype, generator)
    # torch.compile imports Dynamo, seconds of start-up, so it is built only when measured.
    compile = label == COMPILED
    (variant,) = [v for v in variants_for(case, compile=compile) if v.label == label]
    variant.prepare(inputs)()  # warm-up, which compiles a torch.compile variant

    run = variant.prepare(inputs)
    # Drop the warm copies: from here the run's own non-leaf inputs are the inputs.
    inputs.grad_inputs = ()
    gc.collect()
    _reset_peak()
    baseline = _status_kib("VmRSS") * 1024
    result = run()
    peak = _status_kib("VmHWM") * 1024

    grad_bytes = 0
    if result is not None:
        _, grads, grad_inputs = result
        input_storages = _storage_keys(grad_inputs)
        grad_bytes = sum(
            g.numel() * g.element_size()
            for g in grads
            if g.untyped_storage().data_ptr() not in input_storages
        )
    return {
        "baseline_bytes": baseline,
        "peak_bytes": peak,
        "new_grad_bytes": grad_bytes,
        # VmHWM grows in pages, so a variant whose gradient is smaller than
        # the allocator's slack can read a little below 0: that is 0.
        "extra_peak_bytes": max(0, peak - baseline - grad_bytes),
    }


def measure_memory(case_name: str, label: str, sizes: dict[str, int], dtype: torch.dtype,
                   threads: int | None = None, timeout_s: float = 1800) -> dict:
    """Measure one variant in a fresh Python process; return its byte counts."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536")
    command = [
        sys.executable, "-m", "lossgrad.bench._memory",
        "--case", case_name,
        "--variant", label,
        "--sizes", json.dumps(sizes),
        "--dtype", str(dtype).removeprefix("torch."),
    ]
    if threads is not None:
        command += ["--threads", str(threads)]
    completed = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=timeout_s, check=False
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"memory measurement of {case_name} ({label}) failed with exit code "
            f"{completed.returncode}: {completed.stderr.strip()[-2000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Measure one variant's extra peak memory.")
    parser.add_argument("--case", required=True, help="lossgrad function name")
    parser.add_argument("--variant", required=True, help="variant label, such as 'eager'")
    parser.add_argument("--sizes", required=True, help="the family's sizes as JSON")
    parser.add_argument("--dtype", default="float32", help="dtype of the inputs")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    print(json.dumps(run_in_this_process(args.case, args.variant, json.loads(args.sizes), dtype)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
