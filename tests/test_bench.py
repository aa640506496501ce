"""End-to-end tests of ``lossgrad bench`` on tiny sizes. They never assert a time."""

from __future__ import annotations

import json
import math

import pytest
import torch

import lossgrad.bench as bench
from lossgrad import cli
from lossgrad.bench import _runner
from lossgrad.bench._cases import CASES, available_cases
from lossgrad.bench._report import check_targets

TINY = ["N=16", "V=50", "E=1000", "D=8", "H=8"]
TINY_SIZES = bench.parse_sizes(TINY)


def load_results(out):
    return json.loads((out / "results.json").read_text())


def check_record(record: dict) -> None:
    """Check one case's record: every variant timed twice, finite, with ratios."""
    variants = record["variants"]
    assert "lossgrad" in variants
    assert "eager" in variants
    assert "floor" in variants
    for label, entry in variants.items():
        assert len(entry["times_ms"]) == 2, label
        assert all(math.isfinite(t) and t > 0 for t in entry["times_ms"]), label
        assert entry["min_ms"] <= entry["median_ms"] <= entry["max_ms"], label
        assert "ratio_to_floor" in entry, label
    assert variants["lossgrad"]["speedup_vs_eager"] > 0
    assert variants["floor"]["value"] is None
    assert variants["eager"]["value_rel_diff"] < 1e-4, record["loss"]


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_cli_writes_json_and_markdown(tmp_path, restore_threads):
    out = tmp_path / "bench"
    argv = ["bench", "--losses", "cross_entropy", "mse_loss", "--sizes", *TINY,
            "--repeats", "2", "--threads", "1", "--out", str(out), "--no-memory", "--no-compile"]
    assert cli.main(argv) == 0

    results = load_results(out)
    assert [record["loss"] for record in results["cases"]] == ["cross_entropy", "mse_loss"]
    assert results["repeats"] == 2
    assert results["machine"]["cores"] >= 1
    assert results["machine"]["torch"]
    assert results["machine"]["cpu"]
    assert results["machine"]["torch_threads"] == 1
    for record in results["cases"]:
        check_record(record)
    cross_entropy = results["cases"][0]
    assert cross_entropy["shape"] == "N=16 V=50"
    assert "lossgrad inplace_backward" in cross_entropy["variants"]

    markdown = (out / "results.md").read_text()
    assert markdown.startswith("# lossgrad bench results")
    assert "| loss | size | variant | median ms |" in markdown
    assert "| cross_entropy | N=16 V=50 | lossgrad |" in markdown
    assert "--repeats 2 --threads 1" in markdown
    assert "## Targets" in markdown


def test_api_every_available_loss(tmp_path):
    results = bench.run(sizes=TINY_SIZES, repeats=2, out=tmp_path, memory=False, compile=False)
    names = [record["loss"] for record in results["cases"]]
    assert names == list(available_cases())
    for record in results["cases"]:
        check_record(record)
    assert load_results(tmp_path)["cases"][0]["loss"] == names[0]


def test_api_sweep_writes_plot(tmp_path):
    results = bench.run(["cross_entropy"], sizes=TINY_SIZES, repeats=2, out=tmp_path,
                        memory=False, compile=False, sweep=True)
    points = results["sweep"]
    assert {point["N"] for point in points} == {2, 4, 8, 16}
    assert {point["V"] for point in points} == {6, 12, 25, 50}
    png = (tmp_path / "sweep.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert "![sweep](sweep.png)" in (tmp_path / "results.md").read_text()


def test_api_sweep_measures_linear_memory(tmp_path, monkeypatch):
    # Two fractions instead of four: each memory figure is a fresh process.
    monkeypatch.setattr(_runner, "SWEEP_FRACTIONS", (0.5, 1.0))
    sizes = bench.parse_sizes(["linear.N=64", "linear.H=16", "linear.V=40"])
    results = bench.run(["linear_cross_entropy"], sizes=sizes, repeats=2, out=tmp_path,
                        memory=True, compile=False, sweep=True)
    points = [point for point in results["sweep"] if point["variant"] == "lossgrad"]
    assert sorted((point["N"], point["V"]) for point in points) == [(32, 40), (64, 20), (64, 40)]
    assert all(point["extra_peak_bytes"] >= 0 for point in points)
    assert "extra peak MiB" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "sweep.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_api_memory_and_compile(tmp_path):
    results = bench.run(["mse_loss"], sizes=bench.parse_sizes(["E=200000"]), repeats=2,
                        out=tmp_path)
    (record,) = results["cases"]
    compiled = record["variants"]["torch.compile"]
    assert compiled["compile_s"] >= 0
    assert compiled["value_rel_diff"] < 1e-4
    for label in ("lossgrad", "eager", "torch.compile"):
        entry = record["variants"][label]
        assert entry["peak_bytes"] >= entry["baseline_bytes"], label
        assert "extra_peak_ratio" in entry, label
    assert "extra peak" in (tmp_path / "results.md").read_text()


def test_sizes_parse_family_and_bare_keys():
    assert bench.parse_sizes(["N=8", "linear.V=100"]) == {"*": {"N": 8}, "linear": {"V": 100}}


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("N8", r"expected KEY=VALUE"),
        ("Q=3", r"expected KEY=VALUE or FAMILY.KEY=VALUE with KEY in"),
        ("N=-3", r"expected a positive integer in 'N=-3'"),
        ("linear.E=3", r"with KEY in H, N, V"),
        ("conv.N=3", r"unknown family 'conv'"),
    ],
)
def test_bad_sizes_raise(item, message):
    with pytest.raises(ValueError, match=message):
        bench.parse_sizes([item])


def test_unknown_loss_exits_with_error(tmp_path, capsys):
    argv = ["bench", "--losses", "hinge", "--out", str(tmp_path), "--no-memory"]
    assert cli.main(argv) == 2
    assert "--losses: unknown loss hinge" in capsys.readouterr().err


def test_bad_repeats_exits_with_error(tmp_path, capsys):
    argv = ["bench", "--repeats", "0", "--out", str(tmp_path)]
    assert cli.main(argv) == 2
    assert "--repeats: expected an integer >= 1, got 0" in capsys.readouterr().err


def test_targets_report_shortfall():
    results = {"cases": [{
        "loss": "cross_entropy",
        "variants": {"lossgrad": {"speedup_vs_eager": 2.0, "ratio_to_floor": 3.2}},
    }]}
    rows = {(row["metric"], row["target"]): row for row in check_targets(results)}
    speed = rows[("speedup_vs_eager", "≥ 5× faster than eager")]
    assert not speed["met"]
    assert speed["missed_by_factor"] == pytest.approx(2.5)
    floor = rows[("ratio_to_floor", "≤ 1.6× the exp floor")]
    assert floor["missed_by_factor"] == pytest.approx(2.0)
    not_slower = rows[("speedup_vs_eager", "not slower than eager by more than 10%")]
    assert not_slower["met"]


def test_every_case_has_a_known_family():
    for case in CASES:
        assert case.family in bench._cases.DEFAULT_SIZES, case.name


def test_failing_variant_is_reported(tmp_path, monkeypatch):
    from lossgrad.bench import _runner
    from lossgrad.bench._variants import Variant

    def broken_prepare(inputs):
        raise RuntimeError("out of memory")

    original = _runner.variants_for

    def with_broken(case, *, compile):
        return [*original(case, compile=compile), Variant("broken", "always fails", broken_prepare)]

    monkeypatch.setattr(_runner, "variants_for", with_broken)
    results = bench.run(["mse_loss"], sizes=TINY_SIZES, repeats=2, out=tmp_path,
                        memory=False, compile=False)
    (record,) = results["cases"]
    assert record["errors"] == {"broken": "RuntimeError: out of memory"}
    assert "lossgrad" in record["variants"]
    markdown = (tmp_path / "results.md").read_text()
    assert "- mse_loss broken: RuntimeError: out of memory" in markdown


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without a GPU")
def test_cli_cuda_without_gpu_fails_clearly(tmp_path, capsys):
    assert cli.main(["bench", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cuda: no CUDA device is available" in capsys.readouterr().err
