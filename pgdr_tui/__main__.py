"""``python -m pgdr_tui``: the same as the ``pgdr`` command."""

import sys

from pgdr_tui.cli import main

sys.exit(main())
