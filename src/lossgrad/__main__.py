"""Allow ``python -m lossgrad``."""

from .cli import main

raise SystemExit(main())
