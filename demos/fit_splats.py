"""3D Gaussian splatting: fit Gaussians to multi-view renders of a textured mesh (MCMC
relocation, held-out PSNR, the fitted ``splats.ply``).

Thin wrapper over ``taichi-dr fit splats`` (see ``--help``)."""

import sys

from taichi_dr.cli import main as cli_main


def main(argv=None):
    return cli_main(["fit", "splats", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
