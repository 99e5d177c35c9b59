"""``python -m pipeline.worker``: see :mod:`pipeline.worker.main`."""

import sys

from pipeline.worker.main import main

sys.exit(main())
