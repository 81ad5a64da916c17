"""`python -m memlm.cli`: the same as the `memlm` command."""

import sys

from memlm.cli import app

sys.exit(app())
