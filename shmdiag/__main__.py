"""``python -m shmdiag``: the ``shmdiag`` command."""

import sys

from shmdiag.cli.main import main

sys.exit(main())
