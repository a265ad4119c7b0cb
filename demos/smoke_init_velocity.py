"""DiffTaichi parity: optimise the initial velocity so the smoke draws the Taichi logo.

Thin wrapper over ``taichi-dr smoke init-velocity`` (see ``--help``)."""

import sys

from taichi_dr.cli import main as cli_main


def main(argv=None):
    return cli_main(["smoke", "init-velocity", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
