"""``python -m relay`` runs the ``relais`` command line."""

import sys

from relay.cli import main

sys.exit(main())
