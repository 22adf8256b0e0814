"""`python -m simulators`: the same as `community-gateway simulate`."""

import sys

from simulators.cli import main

if __name__ == "__main__":
    sys.exit(main())
