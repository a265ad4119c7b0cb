"""The smallest program: one triangle with per-vertex colours, rasterized, interpolated and
written to ``triangle.png``. As in nvdiffrast's first sample, only the import differs:

    import taichi_dr.nvdiffrast as dr   # for: import nvdiffrast.torch as dr

Checks the picture against the analytic one (colour = barycentric weights of the vertex
colours at each pixel centre) and prints the largest difference."""

import sys

import numpy as np
import torch
import util

import taichi_dr.nvdiffrast as dr


def main(argv=None):
    args = util.parser(__doc__, resolution=256).parse_args(argv)
    n = args.resolution
    pos = torch.tensor([[[-0.8, -0.8, 0, 1], [0.8, -0.8, 0, 1], [-0.8, 0.8, 0, 1]]])
    col = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]])
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)

    glctx = dr.RasterizeCudaContext()  # no CUDA needed
    rast, _ = dr.rasterize(glctx, pos, tri, resolution=[n, n])
    out, _ = dr.interpolate(col, rast, tri)
    util.save(args.out, "triangle.png", out[0])

    # the analytic picture: pixel centres at NDC (2i + 1)/n − 1, row 0 at the bottom
    y, x = (np.mgrid[:n, :n] * 2 + 1) / n - 1
    inside = (x > -0.8) & (y > -0.8) & (x + y < 0)
    expect = np.stack([-(x + y) / 1.6, (x + 0.8) / 1.6, (y + 0.8) / 1.6], -1) * inside[..., None]
    error = float(np.abs(out[0].numpy() - expect).max())
    util.log(
        args.quiet, f"triangle {n}x{n}: {int(inside.sum())} pixels covered, max error {error:.2e}"
    )
    return {"max_error": error, "covered": int(inside.sum())}


if __name__ == "__main__":
    result = main()
    sys.exit(0 if result["max_error"] < 1e-5 else 1)
