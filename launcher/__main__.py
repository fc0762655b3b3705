"""`python -m launcher ...`: see launcher/cli.py (or `python -m launcher --help`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
