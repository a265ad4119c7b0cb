"""Optimise per-step control forces that push a blob of smoke into the Taichi logo.

Thin wrapper over ``taichi-dr smoke control`` (see ``--help``)."""

import sys

from taichi_dr.cli import main as cli_main


def main(argv=None):
    return cli_main(["smoke", "control", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
