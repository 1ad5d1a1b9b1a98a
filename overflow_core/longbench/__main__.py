"""``python -m overflow_core.longbench``: the same as ``oprm longbench``."""

import sys

from overflow_core.longbench.cli import main

sys.exit(main())
