"""`python -m service ...`: the admin command line."""

import sys

from service.cli import main

sys.exit(main())
