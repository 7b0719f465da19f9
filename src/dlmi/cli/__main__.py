"""`python -m dlmi.cli ...`: the same as the `dlmi` command."""

import sys

from dlmi.cli import main

sys.exit(main())
