"""``python -m bdn`` runs the CLI."""

import sys

from bdn.cli import main

sys.exit(main())
