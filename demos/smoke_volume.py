"""Optimise the initial density of a 3D smoke simulation so that volume renderings of its
state after N steps, from several cameras, match renderings of a hidden smoke ring's rollout.

Thin wrapper over ``taichi-dr smoke volume`` (see ``--help``)."""

import sys

from taichi_dr.cli import main as cli_main


def main(argv=None):
    return cli_main(["smoke", "volume", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
