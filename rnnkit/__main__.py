"""``python -m rnnkit``: the ``rnnkit`` command line."""

from rnnkit.cli import main

raise SystemExit(main())
