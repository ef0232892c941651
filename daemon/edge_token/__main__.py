"""`python -m edge_token` is the same as the `edge-token` console script."""

from edge_token.cli import main

raise SystemExit(main())
