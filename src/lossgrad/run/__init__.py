"""``lossgrad run``: experiments on real data that ships with scikit-learn.

``distill`` (the default) repeats the distillation experiments of Hinton, Vinyals and Dean
(2015) on digits; ``classify`` compares softmax, sigmoid and label-smoothed training;
``embed`` compares the embedding losses; ``regress`` compares L1, L2 and Huber under outliers.
Each run writes a folder with its config, metrics, history, plots and summary table.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time

import torch

from .config import RunError, add_options, resolve_config
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
    # 1. Settings, device and data.
    config, unused = resolve_config(flag_values)
    if config.quiet:
        logging.getLogger("lossgrad").setLevel(logging.WARNING)
    for flag in unused:
        logger.warning("%s does not apply to the %s experiment; ignored", flag, config.experiment)
    # NOTE: the CUDA path has not been run yet; every experiment has been tested on CPU only.
    if config.device == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda: CUDA is not available here; use --device cpu")
    torch.set_num_threads(config.threads)
    if config.experiment == "regress":
        data = load_regression(config.data, config.label_column)
    else:
        data = load_classification(config.data, config.label_column)
    data = data.to(config.device)
    folder = make_run_folder(config)
    logger.info(
        "running %s on %s (%d training rows) with seeds %s; output in %s",
        config.experiment, data.name, len(data.y_train),
        ",".join(map(str, config.seeds)), folder,
    )

    # 2. The experiment, then the run folder and the table on stdout.
    started = time.perf_counter()
    result = load_experiment(config.experiment)(config, data, History())
    write_run(folder, config, result)
    print(result.summary)
    logger.info("finished in %.1f s; results in %s", time.perf_counter() - started, folder)
    return 0
