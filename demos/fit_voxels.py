"""Voxel grids as a scene: fit a density + colour grid, dense and sparse, to multi-view images
of the textured asset, and compare held-out PSNR, memory and time.

Thin wrapper over ``taichi-dr fit voxels`` (see ``taichi-dr fit --help``)."""

import sys

from taichi_dr.cli import main as cli_main


def main(argv=None):
    return cli_main(["fit", "voxels", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
