"""`python -m fmnist.cli`: the `fmnist` command (bench and the tests run it this way)."""

import sys

from fmnist.cli import main

sys.exit(main())
