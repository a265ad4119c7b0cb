"""Inverse rendering: geometry from a deliberately wrong start.

Thin wrapper over ``taichi-dr fit geometry`` (see ``--help``)."""

import sys

from taichi_dr.cli import main as cli_main


def main(argv=None):
    return cli_main(["fit", "geometry", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
