"""`python -m converter.cli`: the same entry point as the `cellpipe` console script."""

from converter.cli.main import main

raise SystemExit(main())
