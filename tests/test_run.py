"""End-to-end tests of ``lossgrad run`` in fast mode, its run folder and its input errors."""

from __future__ import annotations

import csv
import json
import logging
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch

from lossgrad.cli import main as cli_main
from lossgrad.run.config import RunError, resolve_config

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
COMMON_FILES = ("config.toml", "metrics.json", "history.csv", "summary.md", "curves.png")


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run ``lossgrad run ARGS`` in this process; return (exit code, stdout, stderr)."""
    try:
        code = cli_main(["run", *args])
    except SystemExit as exit_:
        code = exit_.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def read_metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def assert_run_folder(folder: Path, pngs: tuple[str, ...]) -> None:
    for name in COMMON_FILES:
        assert (folder / name).is_file(), f"{name} missing from {folder}"
    for name in pngs:
        path = folder / f"{name}.png"
        assert path.is_file(), f"{name}.png missing"
        assert path.read_bytes()[:8] == PNG_SIGNATURE, f"{name}.png is not a PNG"
    with (folder / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows, "history.csv has no rows"
    assert {"phase", "seed", "epoch", "train_loss"} <= set(rows[0])
    assert all(np.isfinite(float(row["train_loss"])) for row in rows)


def mean(results: dict, name: str, metric: str) -> float:
    return results[name][metric]["mean"]


# 1. Each experiment end to end.


def test_distill_fast_end_to_end(tmp_path, capsys):
    folder = tmp_path / "distill"
    code, out, err = run_cli(capsys, "--fast", "--quiet", "--out", str(folder))
    assert code == 0, err
    assert_run_folder(folder, ("curves", "confusion_omitted"))
    assert "| teacher" in out
    assert "paper" in out
    assert (folder / "summary.md").read_text() in out
    metrics = read_metrics(folder)
    results = metrics["results"]
    assert metrics["omitted_class"] == 3
    assert mean(results, "teacher", "test_accuracy") > 0.85
    for name in ("student_ce", "student_kd", "omitted_ce", "omitted_kd"):
        assert 0.5 < mean(results, name, "test_accuracy") <= 1.0, name
    # The qualitative result: soft targets carry the omitted class, hard labels cannot.
    assert mean(results, "omitted_ce", "omitted_accuracy") < 0.05
    assert mean(results, "omitted_kd", "omitted_accuracy") > (
        mean(results, "omitted_ce", "omitted_accuracy") + 0.1
    )
    assert mean(results, "omitted_kd", "shifted_omitted_accuracy") > 0.5
    assert metrics["verdict"]["distilled_student_recognises_omitted"] is True


def test_classify_fast_end_to_end(tmp_path, capsys):
    folder = tmp_path / "classify"
    code, out, err = run_cli(capsys, "classify", "--fast", "--quiet", "--out", str(folder))
    assert code == 0, err
    assert_run_folder(folder, ("curves", "reliability"))
    results = read_metrics(folder)["results"]
    assert len(results) == 3
    for name, stats in results.items():
        assert 0.8 < stats["test_accuracy"]["mean"] <= 1.0, name
        assert 0.0 <= stats["ece"]["mean"] < 0.5, name
    assert "ECE" in out


def test_embed_fast_end_to_end(tmp_path, capsys):
    folder = tmp_path / "embed"
    code, out, err = run_cli(capsys, "embed", "--fast", "--quiet", "--out", str(folder))
    assert code == 0, err
    assert_run_folder(folder, ("curves", "embedding"))
    results = read_metrics(folder)["results"]
    for name in ("contrastive", "triplet", "cosine embedding", "cosine similarity",
                 "squared pull + negative pair", "info_nce"):
        assert 0.7 < results[name]["knn_accuracy"]["mean"] <= 1.0, name
        assert 0.7 < results[name]["recall_at_1"]["mean"] <= 1.0, name
    assert "Recall@1" in out


def test_embed_methods_option(tmp_path, capsys):
    folder = tmp_path / "embed"
    code, _, err = run_cli(capsys, "embed", "--fast", "--quiet", "--seeds", "0,", "--epochs", "1",
                           "--methods", "info_nce, triplet", "--out", str(folder))
    assert code == 0, err
    metrics = read_metrics(folder)
    assert metrics["methods"] == ["triplet", "info_nce"]
    assert set(metrics["results"]) == {"input features (no training)", "triplet", "info_nce"}


def test_leader_needs_a_lead_beyond_noise():
    from lossgrad.run.experiments.common import leader, summarize_runs

    def results(a, b):
        return {"a": summarize_runs([{"x": v} for v in a]),
                "b": summarize_runs([{"x": v} for v in b])}

    clear = leader(results([0.9, 0.91, 0.92], [0.8, 0.8, 0.81]), ["a", "b"], "x")
    assert clear.startswith("a, 10.67 points ahead of b, beyond two standard errors")
    noisy = leader(results([0.9, 0.7, 0.95], [0.8, 0.85, 0.8]), ["a", "b"], "x")
    assert "not a clear winner" in noisy
    lower = leader(results([0.1, 0.1, 0.1], [0.3, 0.31, 0.3]), ["b", "a"], "x",
                   higher_is_better=False)
    assert lower.startswith("a, ")
    assert "too few" in leader(results([0.9, 0.9], [0.1, 0.1]), ["a", "b"], "x")


def test_embed_method_keys_match_config():
    from lossgrad.run.config import EMBED_METHODS
    from lossgrad.run.experiments.embed import METHODS

    assert tuple(method.key for method in METHODS) == EMBED_METHODS


def test_regress_fast_end_to_end(tmp_path, capsys):
    folder = tmp_path / "regress"
    code, out, err = run_cli(capsys, "regress", "--fast", "--quiet", "--out", str(folder))
    assert code == 0, err
    assert_run_folder(folder, ("curves", "predictions"))
    metrics = read_metrics(folder)
    results = metrics["results"]
    for name, stats in results.items():
        # Diabetes targets range from 25 to 346; a linear fit errs by about 45 on average.
        assert 20 < stats["clean_mae"]["mean"] < 80, name
    # Squared error lets the raised targets pull the fit the most.
    assert mean(results, "L2 (MSE)", "mae_increase") > mean(results, "L1", "mae_increase")
    assert metrics["most_robust"] != "L2 (MSE)"
    assert "most robust" in out


# 2. Determinism, config files and settings.


def test_same_seed_same_metrics(tmp_path, capsys):
    outputs = []
    for name in ("first", "second"):
        folder = tmp_path / name
        code, _, err = run_cli(capsys, "distill", "--fast", "--quiet", "--epochs", "3",
                               "--seeds", "4,", "--out", str(folder))
        assert code == 0, err
        outputs.append((folder / "metrics.json").read_bytes())
    assert outputs[0] == outputs[1]


def test_config_file_overridden_by_flags(tmp_path, capsys):
    config_file = tmp_path / "settings.toml"
    config_file.write_text(
        'experiment = "regress"\nepochs = 2\nseeds = [5]\noutlier-fraction = 0.3\nquiet = true\n'
    )
    folder = tmp_path / "out"
    code, _, err = run_cli(capsys, "--config", str(config_file), "--epochs", "3",
                           "--out", str(folder))
    assert code == 0, err
    saved = tomllib.loads((folder / "config.toml").read_text())
    assert saved["experiment"] == "regress"
    assert saved["epochs"] == 3
    assert saved["seeds"] == [5]
    assert saved["outlier_fraction"] == 0.3
    with (folder / "history.csv").open() as handle:
        epochs = {int(row["epoch"]) for row in csv.DictReader(handle)}
    assert epochs == {1, 2, 3}


def test_saved_config_reruns(tmp_path, capsys):
    first = tmp_path / "first"
    code, _, err = run_cli(capsys, "classify", "--fast", "--quiet", "--epochs", "2",
                           "--seeds", "1", "--out", str(first))
    assert code == 0, err
    second = tmp_path / "second"
    code, _, err = run_cli(capsys, "--config", str(first / "config.toml"),
                           "--out", str(second))
    assert code == 0, err
    assert read_metrics(first) == read_metrics(second)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3", (0, 1, 2)), ("5,", (5,)), ("0, 7,42", (0, 7, 42)), ([2, 9], (2, 9)), (1, (0,))],
)
def test_seeds_count_or_list(text, expected):
    config, _ = resolve_config({"seeds": text})
    assert config.seeds == expected


def test_option_for_other_experiment_listed():
    _, unused = resolve_config({"experiment": "regress", "temperature": "3"})
    assert unused == ["--temperature"]


def test_fast_defaults():
    config, _ = resolve_config({"fast": True})
    assert config.experiment == "distill"
    assert config.seeds == (0, 1)
    assert config.epochs < 20


# 3. Bring your own data.


def blob_data(rows_per_class: int = 30, classes: int = 3, features: int = 6):
    generator = np.random.default_rng(0)
    centers = generator.normal(scale=4.0, size=(classes, features))
    x = np.concatenate([center + generator.normal(size=(rows_per_class, features))
                        for center in centers])
    y = np.repeat(np.arange(classes), rows_per_class)
    return x, y


def test_own_npz_classify(tmp_path, capsys):
    x, y = blob_data()
    path = tmp_path / "blobs.npz"
    np.savez(path, x=x, y=y)
    folder = tmp_path / "out"
    code, _, err = run_cli(capsys, "classify", "--fast", "--quiet", "--data", str(path),
                           "--out", str(folder))
    assert code == 0, err
    metrics = read_metrics(folder)
    assert metrics["data"] == "blobs.npz"
    assert metrics["test_rows"] == 18
    for stats in metrics["results"].values():
        assert stats["test_accuracy"]["mean"] > 0.8


def test_own_npz_images_embed(tmp_path, capsys):
    # Rows of 2-D images are flattened into feature vectors.
    x, y = blob_data(features=16)
    path = tmp_path / "images.npz"
    np.savez(path, x=x.reshape(-1, 4, 4), y=y)
    folder = tmp_path / "out"
    code, _, err = run_cli(capsys, "embed", "--fast", "--quiet", "--epochs", "3",
                           "--embedding-dim", "2", "--data", str(path), "--out", str(folder))
    assert code == 0, err
    assert_run_folder(folder, ("curves", "embedding"))
    results = read_metrics(folder)["results"]
    assert results["triplet"]["knn_accuracy"]["mean"] > 0.8


def test_progress_and_logging(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="lossgrad")
    code, _, err = run_cli(capsys, "regress", "--fast", "--epochs", "2", "--seeds", "0,",
                           "--temperature", "3", "--out", str(tmp_path / "out"))
    assert code == 0, err
    messages = [record.getMessage() for record in caplog.records]
    assert any(message.startswith("running regress on diabetes") for message in messages)
    assert any(message.startswith("finished in") for message in messages)
    assert "--temperature does not apply to the regress experiment; ignored" in messages


def test_own_csv_distill_with_label_column(tmp_path, capsys):
    x, y = blob_data(rows_per_class=25, classes=4)
    path = tmp_path / "blobs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["kind", *(f"f{i}" for i in range(x.shape[1]))])
        writer.writerows([[label, *row] for label, row in zip(y, x)])
    folder = tmp_path / "out"
    code, _, err = run_cli(capsys, "distill", "--fast", "--quiet", "--epochs", "3",
                           "--data", str(path), "--label-column", "kind", "--omit-class", "1",
                           "--out", str(folder))
    assert code == 0, err
    metrics = read_metrics(folder)
    assert metrics["omitted_class"] == 1
    assert metrics["test_rows"] == 20


def test_own_csv_regress(tmp_path, capsys):
    generator = np.random.default_rng(1)
    x = generator.normal(size=(80, 3))
    y = x @ np.array([2.0, -1.0, 0.5]) + 10 + 0.1 * generator.normal(size=80)
    path = tmp_path / "line.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "c", "label"])
        writer.writerows([[*row, target] for row, target in zip(x, y)])
    folder = tmp_path / "out"
    code, _, err = run_cli(capsys, "regress", "--fast", "--quiet", "--data", str(path),
                           "--out", str(folder))
    assert code == 0, err
    results = read_metrics(folder)["results"]
    # Better than predicting the mean target, which errs by about 1.8 here.
    constant_mae = float(np.abs(y - y.mean()).mean())
    for name in results:
        assert mean(results, name, "clean_mae") < 0.8 * constant_mae, name


# 4. User mistakes: one line on stderr, exit code 2, no traceback.


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def bad_cases(tmp_path: Path) -> dict[str, tuple[list[str], str]]:
    """Map a case name to (arguments, expected text of the message)."""
    good_rows = [[i % 3, i, i * 2] for i in range(30)]
    no_label = write_csv(tmp_path / "no_label.csv", ["a", "b", "c"], good_rows)
    negative = write_csv(tmp_path / "negative.csv", ["label", "a", "b"],
                         [[-1 if i == 0 else i % 3, i, i] for i in range(30)])
    words = write_csv(tmp_path / "words.csv", ["label", "a", "b"],
                      [[i % 3, "seven" if i == 4 else i, i] for i in range(30)])
    fractional = write_csv(tmp_path / "fractional.csv", ["label", "a"],
                           [[(i % 3) + 0.5, i] for i in range(30)])
    np.savez(tmp_path / "wrong_arrays.npz", features=np.zeros((10, 2)), labels=np.zeros(10))
    unknown_key = tmp_path / "unknown.toml"
    unknown_key.write_text("temprature = 3\n")
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("epochs = [\n")
    return {
        "unknown experiment": (["distil"], "unknown experiment 'distil'"),
        "missing data file": (["--data", str(tmp_path / "none.npz")], "file not found"),
        "unsupported data file": (["--data", str(bad_toml)], "expected a .npz or .csv"),
        "no label column": (["classify", "--data", str(no_label)], "no column 'label'"),
        "negative label": (["classify", "--data", str(negative)], "class indices"),
        "fractional label": (["classify", "--data", str(fractional)], "integer class indices"),
        "non-numeric feature": (["classify", "--data", str(words)], "expected a number"),
        "npz without x and y": (["--data", str(tmp_path / "wrong_arrays.npz")], "no array"),
        "omitted class not a label": (["--omit-class", "10"], "not among the labels"),
        "epochs not an integer": (["--epochs", "ten"], "--epochs: expected an integer"),
        "epochs zero": (["--epochs", "0"], "--epochs: expected an integer >= 1"),
        "seeds not numbers": (["--seeds", "a,b"], "--seeds"),
        "alpha out of range": (["--alpha", "1.5"], "--alpha: expected a number in [0, 1]"),
        "unknown device": (["--device", "tpu"], "--device"),
        "missing config file": (["--config", str(tmp_path / "none.toml")], "file not found"),
        "unknown config key": (["--config", str(unknown_key)], "unknown key 'temprature'"),
        "invalid toml": (["--config", str(bad_toml)], "invalid TOML"),
        "option without value": (["--epochs"], "expected one argument"),
        "unknown option": (["--temprature", "3"], "unrecognized arguments: --temprature"),
        "unknown embed method": (["embed", "--methods", "triplet,infonce"],
                                 "--methods: expected a comma list of contrastive"),
    }


@pytest.mark.parametrize("case", [
    "unknown experiment", "missing data file", "unsupported data file", "no label column",
    "negative label", "fractional label", "non-numeric feature", "npz without x and y",
    "omitted class not a label", "epochs not an integer", "epochs zero", "seeds not numbers",
    "alpha out of range", "unknown device", "missing config file", "unknown config key",
    "invalid toml", "option without value", "unknown option", "unknown embed method",
])
def test_bad_input_one_line(tmp_path, capsys, case):
    arguments, expected = bad_cases(tmp_path)[case]
    code, out, err = run_cli(capsys, *arguments, "--out", str(tmp_path / "out"))
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert expected in lines[0]
    assert "Traceback" not in err
    assert out == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_unavailable_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--device", "cuda", "--out", str(tmp_path / "out"))
    assert code == 2
    assert err.strip() == (
        "lossgrad run: error: --device cuda: CUDA is not available here; use --device cpu"
    )


def test_command_line_error_without_traceback(tmp_path):
    completed = subprocess.run(
        [sys.executable, "-m", "lossgrad", "run", "nonsense", "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=120,
    )
    assert completed.returncode == 2
    assert "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines() == [
        "lossgrad run: error: unknown experiment 'nonsense': choose one of distill, classify, "
        "embed, regress"
    ]


def test_run_error_is_exception():
    with pytest.raises(RunError, match="--threads: expected an integer >= 1"):
        resolve_config({"threads": "0"})


# 4. Several processes under torchrun.


def test_run_keeps_callers_process_group(tmp_path, capsys, monkeypatch):
    """A group that the caller made is left initialised; lossgrad run destroys only its own."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        code, _, err = run_cli(capsys, "regress", "--fast", "--quiet", "--seeds", "0,",
                               "--epochs", "1", "--out", str(tmp_path / "run"))
        assert code == 0, err
        assert dist.is_initialized()
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def read_history(folder: Path) -> list[dict[str, str]]:
    with open(folder / "history.csv", newline="") as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("arguments", [
    # No dropout and no jitter, so both runs see the same numbers. embed shards each batch
    # itself and gathers InfoNCE's keys over the ranks. Its last batch of each epoch (1077
    # training rows) splits into 27 and 26 rows. regress shards through the Trainer.
    ["embed", "--methods", "info_nce,triplet", "--epochs", "2"],
    ["regress", "--epochs", "3"],
], ids=["embed", "regress"])
def test_torchrun_two_processes_match_one(tmp_path, arguments):
    common = [*arguments, "--seeds", "0,", "--quiet"]
    one = subprocess.run(
        [sys.executable, "-m", "lossgrad", "run", *common, "--out", str(tmp_path / "one")],
        capture_output=True, text=True, timeout=600,
    )
    assert one.returncode == 0, one.stderr
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
         "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
         "-m", "lossgrad", "run", *common, "--out", str(tmp_path / "two")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "GLOO_SOCKET_IFNAME": "lo"},
    )
    assert two.returncode == 0, two.stderr[-3000:]
    # Only rank 0 prints the table.
    assert two.stdout.count("## Result") == 1
    assert read_metrics(tmp_path / "two")["processes"] == 2
    rows_one, rows_two = read_history(tmp_path / "one"), read_history(tmp_path / "two")
    assert len(rows_one) == len(rows_two) > 0
    for row_one, row_two in zip(rows_one, rows_two):
        assert row_one["phase"] == row_two["phase"]
        # DDP sums the gradients of two halves, which rounds differently from one process.
        assert float(row_two["train_loss"]) == pytest.approx(float(row_one["train_loss"]),
                                                             rel=1e-4, abs=1e-6)
