"""``python -m geomopt``: the same command line as ``geomopt``."""

import sys

from geomopt.cli import main

sys.exit(main())
