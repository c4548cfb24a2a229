"""Smoke job: every node of the cluster reaches object storage and MLflow; prints the node count.

pbp submit smoke --wait
"""

import sys

from pbp.stack.smoke import main

if __name__ == "__main__":
    sys.exit(main())
