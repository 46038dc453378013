"""`python -m attnc ...`: the `attnc` command (see attnc.cli)."""

from attnc.cli import main

raise SystemExit(main())
