"""``python -m dinov3_integration ...`` runs the ``dinov3`` command line."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
