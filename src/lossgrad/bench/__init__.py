"""``lossgrad bench``: speed and memory of each loss against PyTorch eager and torch.compile.

For every loss that lossgrad has, the forward and backward pass is timed in
this process, as the median and interquartile range after a warm-up. The
variants are lossgrad, lossgrad with ``inplace_backward=True`` where the
function accepts it, the PyTorch eager peer (``torch.nn.functional`` or a
plain autograd formula) and ``torch.compile`` of the peer (steady state, with
the compile time reported apart). The floor is one in-place ``exp`` pass over
the same logits, or the three matmuls of a linear head. Peak memory is
measured in a fresh process per variant. Results go to ``results.json`` and
``results.md`` in ``--out``.

The method is described in ``docs/benchmarks.md``. The heavy modules are
imported only when the command runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

__all__ = ["configure_parser", "main", "parse_sizes", "run"]

DTYPES = ("float32", "float64", "bfloat16", "float16")


def parse_sizes(items: list[str]) -> dict[str, dict[str, int]]:
    """Parse ``KEY=VALUE`` or ``FAMILY.KEY=VALUE`` items into overrides per family.

    A bare key applies to every family that has it (family ``"*"``).
    """
    from ._cases import DEFAULT_SIZES

    overrides: dict[str, dict[str, int]] = {}
    for item in items:
        name, separator, value = item.partition("=")
        family, _, key = name.rpartition(".")
        family = family or "*"
        known_keys = {k for sizes in DEFAULT_SIZES.values() for k in sizes}
        if family != "*" and family not in DEFAULT_SIZES:
            raise ValueError(
                f"--sizes: unknown family {family!r} in {item!r}; expected one of "
                f"{', '.join(DEFAULT_SIZES)}"
            )
        allowed = known_keys if family == "*" else set(DEFAULT_SIZES[family])
        if not separator or key not in allowed:
            raise ValueError(
                f"--sizes: expected KEY=VALUE or FAMILY.KEY=VALUE with KEY in "
                f"{', '.join(sorted(allowed))}, got {item!r}"
            )
        if not value.isdigit() or int(value) <= 0:
            raise ValueError(f"--sizes: expected a positive integer in {item!r}, got {value!r}")
        overrides.setdefault(family, {})[key] = int(value)
    return overrides


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add this command's options to parser."""
    parser.add_argument(
        "--losses", nargs="+", metavar="NAME",
        help="losses to benchmark (default: every loss lossgrad has)",
    )
    parser.add_argument(
        "--sizes", nargs="+", default=[], metavar="KEY=VALUE",
        help="override sizes: N rows or pairs, V classes, E elements, D embedding "
        "dimension, H hidden size; FAMILY.KEY=VALUE sets one family (softmax, "
        "elementwise, embedding, linear). Defaults: softmax N=4096 V=32000, "
        "elementwise E=1048576, embedding N=4096 D=256, linear N=2048 H=512 V=32000",
    )
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None,
        help="input dtype (default: float32 on cpu, bfloat16 on cuda)",
    )
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cpu",
        help="cpu: every loss against eager and torch.compile; cuda: the softmax family on "
        "the Triton kernels against eager, torch.compile and Liger-Kernel, with bandwidth "
        "(N=16384, V=131072 bf16 unless --sizes and --dtype say otherwise)",
    )
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch intra-op threads for every variant and memory process "
        "(default: torch's default, the number of cores)",
    )
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed runs per variant after one warm-up (default 5)"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("bench-out"),
        help="folder for results.json, results.md and sweep.png (default bench-out/)",
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="skip the peak-memory subprocesses"
    )
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument(
        "--sweep", action="store_true",
        help="also time the softmax-family and linear losses at 1/8, 1/4, 1/2 and all of N "
        "and of V (the linear head's extra peak memory too), and plot them to sweep.png",
    )


def run(
    losses: list[str] | None = None,
    *,
    sizes: dict[str, dict[str, int]] | None = None,
    dtype: str = "float32",
    repeats: int = 5,
    out: str | Path = "bench-out",
    memory: bool = True,
    compile: bool = True,
    sweep: bool = False,
    threads: int | None = None,
    command: str = "lossgrad.bench.run(...)",
) -> dict:
    """Run the benchmark from Python and return the results that ``results.json`` holds.

    ``sizes`` maps a family (or ``"*"`` for all) to size overrides, as
    :func:`parse_sizes` returns them.
    """
    import torch

    from ._runner import BenchConfig, run_benchmark

    if repeats < 1:
        raise ValueError(f"repeats: expected an integer >= 1, got {repeats}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads: expected an integer >= 1, got {threads}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {', '.join(DTYPES)}, got {dtype!r}")
    config = BenchConfig(
        losses=losses,
        sizes=sizes or {},
        dtype=getattr(torch, dtype),
        repeats=repeats,
        out=Path(out),
        memory=memory,
        compile=compile,
        sweep=sweep,
        threads=threads,
        command=command,
    )
    return run_benchmark(config)


def command_line(args: argparse.Namespace) -> list[str]:
    """Return the ``lossgrad bench`` command, with every option spelled out, for the report."""
    words = ["lossgrad", "bench"]
    if args.losses:
        words += ["--losses", *args.losses]
    if args.sizes:
        words += ["--sizes", *args.sizes]
    words += ["--dtype", _dtype(args), "--device", args.device, "--repeats", str(args.repeats)]
    if args.threads is not None:
        words += ["--threads", str(args.threads)]
    words += ["--out", str(args.out)]
    for flag in ("no_memory", "no_compile", "sweep"):
        if getattr(args, flag):
            words.append("--" + flag.replace("_", "-"))
    return words


def main(args: argparse.Namespace) -> int:
    """Run the command."""
    try:
        sizes = parse_sizes(args.sizes)
        if args.repeats < 1:
            raise ValueError(f"--repeats: expected an integer >= 1, got {args.repeats}")
        if args.threads is not None and args.threads < 1:
            raise ValueError(f"--threads: expected an integer >= 1, got {args.threads}")
        command = shlex.join(command_line(args))
        if args.device == "cuda":
            return _main_cuda(args, sizes)
        run(
            args.losses,
            sizes=sizes,
            dtype=_dtype(args),
            repeats=args.repeats,
            out=args.out,
            memory=not args.no_memory,
            compile=not args.no_compile,
            sweep=args.sweep,
            threads=args.threads,
            command=command,
        )
    except ValueError as error:
        print(f"lossgrad bench: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'results.md'} and {args.out / 'results.json'}")
    return 0


def _main_cuda(args: argparse.Namespace, sizes: dict[str, dict[str, int]]) -> int:
    """Run the GPU benchmark of :mod:`lossgrad.bench.gpu`."""
    import torch

    from .gpu import run_gpu_benchmark

    softmax = {**sizes.get("*", {}), **sizes.get("softmax", {})}
    dtype = _dtype(args)
    try:
        run_gpu_benchmark(
            rows=softmax.get("N", 16384),
            classes=softmax.get("V", 131072),
            dtype=getattr(torch, dtype),
            repeats=max(args.repeats, 5),
            losses=args.losses,
            out=args.out,
        )
    except RuntimeError as error:
        print(f"lossgrad bench: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.out / 'gpu-results.md'} and {args.out / 'gpu-results.json'}")
    return 0


def _dtype(args: argparse.Namespace) -> str:
    """Return the dtype asked for, or the device's default."""
    if args.dtype is not None:
        return args.dtype
    return "bfloat16" if args.device == "cuda" else "float32"
