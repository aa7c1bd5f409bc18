import sys

from shmdiag.cli.main import main

sys.exit(main())
