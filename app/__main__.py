"""`python -m app`: the `vigil` command line."""

from app.cli import main

raise SystemExit(main())
