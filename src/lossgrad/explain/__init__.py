"""``lossgrad explain``: a loss's formula and gradient, evaluated and checked three ways.

For one loss (and optionally a second, ``--compare``) the command prints the
formula from :data:`lossgrad.FORMULAS` and evaluates the loss on the user's
numbers or on built-in worked examples. It checks lossgrad's closed-form
gradient against autograd of an independent float64 formula and against
central finite differences. ``--steps`` runs gradient descent, ``--plot``
draws the loss and its gradient, ``--json`` prints everything for scripts.

Each loss is one row of the explainer table (see ``_table.Explainer``); rows
whose loss is not in ``lossgrad.__all__`` are left out.
"""

from ._command import configure_parser, main

__all__ = ["configure_parser", "main"]
