"""``python -m overflow_core.demo``."""

from overflow_core.demo import main

raise SystemExit(main())
