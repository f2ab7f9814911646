"""`python -m dagnats` is the `dagnats` command."""

import sys

from .cli import main

sys.exit(main())
