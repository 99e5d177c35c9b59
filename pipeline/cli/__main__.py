"""``python -m pipeline.cli``: the ``rigpipe`` command."""

import sys

from pipeline.cli import main

sys.exit(main())
