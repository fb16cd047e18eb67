"""``python -m kscale.report results/<name> [--metric ...] [--law auto] [--n-bootstrap 1000] [--out DIR]``."""
import sys

from kscale.report.cli import main

if __name__ == "__main__":
    sys.exit(main())
