"""``python -m ttt_checks.cli``: the ``ttt-checks`` command without its console script."""

import sys

from ttt_checks.cli import main

sys.exit(main())
