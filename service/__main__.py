"""`python -m service` is the same as the `pdbridge` console script."""

from service.cli import main

raise SystemExit(main())
