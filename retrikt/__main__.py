"""``python -m retrikt`` is the same as the ``retrikt`` console script."""

import sys

from retrikt.cli import main

sys.exit(main())
