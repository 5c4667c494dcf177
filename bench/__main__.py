"""``python -m fastnn.bench``: the same as the ``fastnn-bench`` command."""
import sys

from fastnn.bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
