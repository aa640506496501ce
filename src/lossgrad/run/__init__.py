"""``lossgrad run``: experiments on real data that ships with scikit-learn.

``distill`` (the default) repeats the distillation experiments of Hinton, Vinyals and Dean
(2015) on digits; ``classify`` compares softmax, sigmoid and label-smoothed training;
``embed`` compares the embedding losses; ``regress`` compares L1, L2 and Huber under outliers.
Each run writes a folder with its config, metrics, history, plots and summary table.

Under ``torchrun --nproc-per-node W`` every process trains the same models with
DistributedDataParallel on its part of each batch (gloo on CPU), and only rank 0 writes the
folder and prints the table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from .. import distributed
from .config import RunConfig, RunError, add_options, resolve_config
from .data import load_classification, load_regression
from .experiments import load_experiment
from .report import make_run_folder, write_run
from .training import History

__all__ = ["configure_parser", "main"]

logger = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add this command's arguments and options to parser."""
    parser.epilog = (
        "examples: lossgrad run; lossgrad run distill --temperature 4 --omit-class 8; "
        "lossgrad run regress --data mine.csv --label-column price"
    )
    add_options(parser)


def main(args: argparse.Namespace) -> int:
    """Run the chosen experiment and return the exit code (2 for a bad option or data)."""
    # Only the options typed on the command line are in args (their default is SUPPRESS).
    flag_values = {
        name: value
        for name, value in vars(args).items()
        if name not in ("command", "handler", "verbose")
    }
    # --quiet and --threads change process-wide state; restore it for callers in this process.
    package_logger = logging.getLogger("lossgrad")
    log_level = package_logger.level
    threads = torch.get_num_threads()
    try:
        return _run(flag_values)
    except RunError as error:
        print(f"lossgrad run: error: {error}", file=sys.stderr)
        return 2
    finally:
        package_logger.setLevel(log_level)
        torch.set_num_threads(threads)


def _run(flag_values: dict[str, object]) -> int:
    # 1. Settings, processes, device and data.
    config, unused = resolve_config(flag_values)
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: CUDA is not available here; use --device cpu")
    # A process group that the caller made stays; one made here is destroyed at the end.
    owns_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = distributed.init_from_env()
    try:
        return _run_experiment(config, unused, info)
    finally:
        if owns_group:
            distributed.shutdown()


def _run_experiment(
    config: RunConfig, unused: list[str], info: distributed.DistributedInfo
) -> int:
    if config.quiet or not info.is_main:
        logging.getLogger("lossgrad").setLevel(logging.WARNING)
    if info.is_main:
        for flag in unused:
            logger.warning("%s does not apply to the %s experiment; ignored", flag, config.experiment)
    # NOTE: the CUDA path has not been run yet; every experiment has been tested on CPU only.
    torch.set_num_threads(config.threads)
    if config.experiment == "regress":
        data = load_regression(config.data, config.label_column)
    else:
        data = load_classification(config.data, config.label_column)
    data = data.to(config.device)
    folder = make_run_folder(config) if info.is_main else None
    logger.info(
        "running %s on %s (%d training rows) with seeds %s in %d process(es); output in %s",
        config.experiment, data.name, len(data.y_train),
        ",".join(map(str, config.seeds)), info.world_size, folder,
    )

    # 2. The experiment, then the run folder and the table on stdout, from rank 0 only.
    started = time.perf_counter()
    result = load_experiment(config.experiment)(config, data, History())
    result.metrics["processes"] = info.world_size
    if folder is not None:
        write_run(folder, config, result)
        print(result.summary)
        logger.info("finished in %.1f s; results in %s", time.perf_counter() - started, folder)
    return 0
