"""All explainer rows, and lookup by loss name."""

from __future__ import annotations

import difflib

from . import _classification, _divergence, _embedding, _info_nce, _linear, _regression
from ._table import Explainer
from ._values import UsageError

__all__ = ["EXPLAINERS", "available", "lookup"]

EXPLAINERS: dict[str, Explainer] = {
    explainer.name: explainer
    for explainer in (
        *_classification.EXPLAINERS,
        *_divergence.EXPLAINERS,
        *_embedding.EXPLAINERS,
        *_info_nce.EXPLAINERS,
        *_linear.EXPLAINERS,
        *_regression.EXPLAINERS,
    )
}


def available() -> dict[str, Explainer]:
    """Return the rows whose loss is in ``lossgrad.__all__`` now, in table order."""
    return {
        name: explainer for name, explainer in EXPLAINERS.items() if explainer.function is not None
    }


def lookup(name: str, flag: str = "LOSS") -> Explainer:
    """Return the row of loss ``name``; raise UsageError naming the closest losses."""
    losses = available()
    if name in losses:
        return losses[name]
    if name in EXPLAINERS:
        raise UsageError(f"{flag}: {name} is not in this version of lossgrad yet")
    message = f"{flag}: unknown loss {name!r}"
    close = difflib.get_close_matches(name, list(losses), n=3, cutoff=0.5)
    if close:
        message += "; did you mean " + " or ".join(close) + "?"
    else:
        message += "; run 'lossgrad explain --list' to see the losses"
    raise UsageError(message)
