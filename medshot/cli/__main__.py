"""``python -m medshot.cli``: the ``medshot`` command."""

from .main import main

raise SystemExit(main())
