"""``python -m deepgen``: the same command line as the ``deepgen`` console script."""

from .cli import main

raise SystemExit(main())
