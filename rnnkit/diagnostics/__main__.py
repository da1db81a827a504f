"""``python -m rnnkit.diagnostics [options]``: the ``rnnkit diagnose`` command."""

import sys

from .report import main

sys.exit(main())
