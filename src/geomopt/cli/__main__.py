"""``python -m geomopt.cli``: the same command line as ``geomopt`` (the data-parallel launcher starts it so)."""

import sys

from geomopt.cli import main

sys.exit(main())
