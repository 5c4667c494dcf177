"""``python -m fastnn info`` (also the ``fastnn`` command) and ``python -m fastnn demo``."""
from __future__ import annotations

import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="fastnn", description="fastnn command line")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("info", help="versions, backends (available or why not), device, BLAS and threads")
    demo = sub.add_parser("demo", help="train a network on scikit-learn's bundled digits")
    demo.add_argument("--backend", default="auto", help="auto (default), cpu, numpy, numba, cupy")
    demo.add_argument("--epochs", type=int, default=60)
    demo.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "info":
        from fastnn.info import report

        print(report())
        return 0
    if args.command == "demo":
        from fastnn.demo import run

        acc = run(backend=args.backend, epochs=args.epochs, seed=args.seed)
        return 0 if acc >= 0.96 else 1
    parser.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
