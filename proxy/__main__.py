"""`python -m proxy` is the `certbound` command."""

import sys

from proxy.cli import main

sys.exit(main())
