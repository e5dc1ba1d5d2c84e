"""``python -m snakepit``: the command line (see :mod:`snakepit._cli`)."""

import sys

from snakepit._cli import main

sys.exit(main())
