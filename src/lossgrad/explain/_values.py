"""The command-line values of ``lossgrad explain`` and their parsing.

Every value arrives as the text the user typed (or the text of a worked
example), so a worked example and a command line go through the same checks.
Tensors are written as numbers separated by ``,`` with rows separated by ``;``.
"""

from __future__ import annotations

import re

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "OPTIONS",
    "MissingValue",
    "Option",
    "UsageError",
    "Values",
    "flag_of",
]


class UsageError(Exception):
    """Bad input on the command line; the command prints the message and exits with 2."""


class MissingValue(UsageError):
    """A value the loss needs was not given."""

    def __init__(self, key: str) -> None:
        super().__init__(f"missing required option {flag_of(key)}")
        self.key = key


@dataclass(frozen=True)
class Option:
    """One value the command accepts.

    Attributes:
        key: the name inside :class:`Values` (``"label_smoothing"``).
        help: what the option sets, for ``--help``.
        is_flag: true for an on/off switch without a value.
    """

    key: str
    help: str
    is_flag: bool = False

    @property
    def flag(self) -> str:
        """The command-line spelling, such as ``--label-smoothing``."""
        return "--" + self.key.replace("_", "-")


TENSOR_HELP = "numbers separated by ',' and rows by ';'"

OPTIONS: tuple[Option, ...] = (
    Option(
        "input",
        f"the first input: prediction, logits, embedding x1, query or hidden states ({TENSOR_HELP})",
    ),
    Option(
        "other",
        f"the second input: embedding x2, key, teacher logits or teacher hidden states ({TENSOR_HELP})",
    ),
    Option(
        "target",
        "the target: values (regression), one class index per row or one probability row "
        "per row (classification), +1/-1 or 1/0 labels per row (pairs)",
    ),
    Option("anchor", f"the anchor embedding of a triplet ({TENSOR_HELP})"),
    Option("positive", f"the positive embedding of a triplet ({TENSOR_HELP})"),
    Option(
        "negative",
        f"the negative of a triplet, or info_nce's shared hard negatives ({TENSOR_HELP})",
    ),
    Option(
        "linear_weight",
        f"the weight W (V x H) of a linear head, the student's for linear_kd_loss ({TENSOR_HELP})",
    ),
    Option(
        "teacher_weight", f"the teacher's head weight (V x H_t) of linear_kd_loss ({TENSOR_HELP})"
    ),
    Option("score", "the target cosine similarity per row (cosine_similarity_loss)"),
    Option(
        "weight", "a weight per class (cross_entropy, linear_cross_entropy) or per element (others)"
    ),
    Option("pos_weight", "the weight of positive examples per class (BCE with logits)"),
    Option("margin", "the margin of a hinge (a distance or a cosine)"),
    Option("pos_margin", "the distance below which a similar pair costs nothing"),
    Option("neg_margin", "the distance beyond which a dissimilar pair costs nothing"),
    Option("temperature", "the softmax temperature T (distillation and divergences)"),
    Option("alpha", "the weight α of the soft (teacher) term in kd_loss and linear_kd_loss"),
    Option(
        "beta",
        "smooth_l1_loss: width of the quadratic zone; "
        "js_div and linear_kd_loss: the teacher's mixture weight",
    ),
    Option("delta", "the residual size where Huber turns from quadratic to linear"),
    Option(
        "label_smoothing",
        "the probability mass spread evenly over the classes whose logit is not -inf",
    ),
    Option("ignore_index", "a target class index whose rows are left out"),
    Option("eps", "the small constant of the loss (see its formula)"),
    Option("p", "the norm degree of the triplet distance"),
    Option("distance", "the pair distance: euclidean, squared_euclidean or cosine"),
    Option("similarity", "info_nce's similarity: cosine or dot"),
    Option("divergence", "linear_kd_loss's divergence: kl or js"),
    Option("z_loss", "the weight λ of the z-loss λ·lse² (linear_cross_entropy)"),
    Option("softcap", "the logit soft cap s: logits become s·tanh(z/s) (linear_cross_entropy)"),
    Option("reduction", "how the per-element losses are combined: mean, sum or batchmean"),
    Option("log_target", "kl_div: the target is given as log-probabilities", is_flag=True),
    Option("swap", "triplet: use min(d(a, n), d(p, n)) as the negative distance", is_flag=True),
    Option("squared", "contrastive: square each hinge", is_flag=True),
    Option("symmetric", "info_nce: average the query-to-key and key-to-query losses", is_flag=True),
)

OPTIONS_BY_KEY = {option.key: option for option in OPTIONS}


def flag_of(key: str) -> str:
    """Return the command-line spelling of ``key``."""
    return OPTIONS_BY_KEY[key].flag


def parse_number(key: str, text: str) -> float:
    """Parse one finite number, naming the option on failure."""
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{flag_of(key)}: expected a number, got {text.strip()!r}") from None
    if not math.isfinite(value):
        raise UsageError(f"{flag_of(key)}: expected a finite number, got {text.strip()!r}")
    return value


@dataclass
class Values:
    """The raw text of each value given, keyed by option key."""

    text: dict[str, str]

    def has(self, key: str) -> bool:
        """Return whether the user gave ``key``."""
        return key in self.text

    def rows(self, key: str) -> list[list[float]]:
        """Parse ``key`` as rows of numbers; raise UsageError if missing or malformed."""
        if key not in self.text:
            raise MissingValue(key)
        text = self.text[key].strip()
        if not text:
            raise UsageError(f"{flag_of(key)}: expected {TENSOR_HELP}, got an empty value")
        rows = []
        # One trailing ';' or ',' is allowed, as in a Python list. An empty
        # field inside (1,,2 or 1;;2) is a typo, not a number to skip.
        for row_text in text.removesuffix(";").split(";"):
            row_text = row_text.strip().removesuffix(",").strip()
            if not row_text:
                raise UsageError(f"{flag_of(key)}: expected {TENSOR_HELP}, got an empty row")
            cells = re.split(r"\s*,\s*|\s+", row_text)
            if "" in cells:
                raise UsageError(
                    f"{flag_of(key)}: expected {TENSOR_HELP}, got an empty number in {row_text!r}"
                )
            rows.append([parse_number(key, cell) for cell in cells])
        lengths = sorted({len(row) for row in rows})
        if len(lengths) > 1:
            raise UsageError(
                f"{flag_of(key)}: expected rows of the same length, got lengths "
                + " and ".join(str(n) for n in lengths)
            )
        return rows

    def matrix(self, key: str) -> Tensor:
        """Return ``key`` as an N x D float64 tensor (one row when no ';' is given)."""
        return torch.tensor(self.rows(key), dtype=torch.float64)

    def array(self, key: str) -> Tensor:
        """Return ``key`` as a vector when it is one row, else as an N x D matrix."""
        matrix = self.matrix(key)
        return matrix[0] if matrix.shape[0] == 1 else matrix

    def per_row(self, key: str, rows: int) -> Tensor:
        """Return ``key`` as one number per row of a batch of ``rows`` rows.

        The numbers may be written on one line (``1,-1``) or one per row
        (``1;-1``).
        """
        values = self.matrix(key).reshape(-1)
        if values.numel() != rows:
            raise UsageError(
                f"{flag_of(key)}: expected {rows} value(s), one per row of the inputs, "
                f"got {values.numel()}"
            )
        return values

    def number(self, key: str, default: float | None = None) -> float:
        """Return ``key`` as one number, or ``default`` when it is not given."""
        if key not in self.text:
            if default is None:
                raise MissingValue(key)
            return default
        return parse_number(key, self.text[key])

    def integer(self, key: str, default: int) -> int:
        """Return ``key`` as an integer, or ``default`` when it is not given."""
        if key not in self.text:
            return default
        value = parse_number(key, self.text[key])
        if value != int(value):
            raise UsageError(f"{flag_of(key)}: expected an integer, got {self.text[key]!r}")
        return int(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        """Return ``key`` if it is one of ``choices``, or ``default`` when it is not given."""
        value = self.text.get(key, default).strip()
        if value not in choices:
            allowed = ", ".join(choices)
            raise UsageError(f"{flag_of(key)}: expected one of {allowed}, got {value!r}")
        return value

    def switch(self, key: str) -> bool:
        """Return whether the on/off option ``key`` is on."""
        return key in self.text
