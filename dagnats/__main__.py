"""`python -m dagnats` is the `dagnats` command."""

import sys

from dagnats.app.cli import main

sys.exit(main())
