"""``python -m edge`` is ``shelfcast``."""

from edge.cli import main

raise SystemExit(main())
