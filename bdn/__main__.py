"""``python -m bdn`` runs the CLI."""

import sys

from bdn.cli.main import main

sys.exit(main())
