"""The public surface: names, signatures against PyTorch, docs and the command's version."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch.nn.functional as F

import lossgrad
from lossgrad import cli

# Losses that PyTorch 2.13 has too: lossgrad takes its exact signature for the
# shared parameters (names, order, kinds and defaults) and adds keyword-only ones.
SHARED_WITH_TORCH = [
    "cross_entropy",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy",
    "l1_loss",
    "mse_loss",
    "huber_loss",
    "smooth_l1_loss",
    "kl_div",
    "cosine_embedding_loss",
    "triplet_margin_loss",
]

LOSSES = [name for name in lossgrad.__all__ if name not in ("FORMULAS", "Formula")]


@pytest.mark.parametrize("name", SHARED_WITH_TORCH)
def test_signature_matches_pytorch(name):
    ours = inspect.signature(getattr(lossgrad, name)).parameters
    theirs = inspect.signature(getattr(F, name)).parameters
    shared = list(ours)[: len(theirs)]
    assert shared == list(theirs), f"{name}: parameters {shared} != PyTorch's {list(theirs)}"
    for parameter_name, parameter in theirs.items():
        assert ours[parameter_name].default == parameter.default, parameter_name
        assert ours[parameter_name].kind == parameter.kind, parameter_name
    for extra in list(ours)[len(theirs) :]:
        assert ours[extra].kind == inspect.Parameter.KEYWORD_ONLY, f"{name}: {extra} is positional"


def test_linear_cross_entropy_shares_pytorch_signature():
    ours = inspect.signature(lossgrad.linear_cross_entropy).parameters
    theirs = inspect.signature(F.linear_cross_entropy).parameters
    for parameter_name, parameter in theirs.items():
        if parameter_name in ours:
            assert ours[parameter_name].default == parameter.default, parameter_name


@pytest.mark.parametrize("name", LOSSES)
def test_every_loss_documents_its_formula(name):
    function = getattr(lossgrad, name)
    assert name in lossgrad.FORMULAS
    assert "{formula}" not in function.__doc__
    assert "Gradient::" in function.__doc__
    assert "Shape" in function.__doc__


def test_nn_is_reachable_from_the_package():
    assert lossgrad.nn.CrossEntropyLoss is not None
    assert set(lossgrad.nn.__all__) >= {"CrossEntropyLoss", "KDLoss", "TripletMarginLoss"}


def test_command_prints_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert lossgrad.__version__ in capsys.readouterr().out


def test_cli_without_run_extras():
    """explain works with torch alone; run names the missing extra in one line."""
    script = (
        "import sys\n"
        "for name in ('numpy', 'sklearn', 'matplotlib', 'tqdm'):\n"
        "    sys.modules[name] = None\n"
        "from lossgrad import cli\n"
        "assert cli.main(['explain', 'l1_loss']) == 0\n"
        "try:\n"
        "    cli.main(['run'])\n"
        "except SystemExit as exit_:\n"
        "    sys.exit(exit_.code)\n"
    )
    completed = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 2, completed.stderr
    assert "pip install 'lossgrad[run]'" in completed.stderr
    assert "Traceback" not in completed.stderr
