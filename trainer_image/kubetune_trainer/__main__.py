"""`python -m kubetune_trainer ...` is the same program as `kubetune ...`."""

import sys

from kubetune.cli import main

sys.exit(main())
