"""Allow ``python -m scu_tui``."""

import sys

from scu_tui.cli import main

sys.exit(main())
