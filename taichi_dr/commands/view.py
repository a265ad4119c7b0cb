"""``taichi-dr view MESH``: the interactive viewer (see :mod:`taichi_dr.apps.viewer`).

With ``--headless`` no window opens: ``--frames`` frames are drawn into an invisible GGUI
window (turning ``--spin`` degrees each) and the last is written to ``OUT/view.png``.
A 3D Gaussian Splatting or point-cloud ``.ply`` is shown by the splatter
(:mod:`taichi_dr.commands.splat`).
"""

import math

from .. import backend
from ..apps.orbit import AOVS, ViewState
from ..apps.viewer import Viewer, run_headless, run_window
from ..camera import check_resolution
from ..errors import UserError
from ..render.shading import MODELS
from ..scene import load_mesh


def add_arguments(p) -> None:
    p.add_argument("mesh", help="mesh file: obj, ply, stl, off, glb, gltf (or a splat .ply)")
    p.add_argument("--resolution", type=int, nargs=2, default=(512, 512), metavar=("W", "H"))
    p.add_argument("--shading", choices=list(MODELS), default="blinn-phong")
    p.add_argument("--aov", choices=AOVS, default="image", help="what to show first")
    p.add_argument("--fov", type=float, default=45.0, help="vertical field of view, degrees")
    p.add_argument("--azimuth", type=float, default=30.0, help="degrees around +y")
    p.add_argument("--elevation", type=float, default=20.0, help="degrees above the xz plane")
    p.add_argument(
        "--frames",
        type=int,
        default=None,
        help="stop after N frames and save OUT/view.png (default: 1 headless, else until quit)",
    )
    p.add_argument("--spin", type=float, default=0.0, help="azimuth step per frame, degrees")


def run(args) -> int:
    from . import splat as splat_cli

    if splat_cli.handles(args.mesh):
        return splat_cli.view(args)
    W, H = args.resolution
    check_resolution(W, H)
    if args.frames is not None and args.frames < 1:
        raise UserError(f"--frames must be at least 1, got {args.frames}")
    if not math.isfinite(args.spin):
        raise UserError(f"--spin must be a finite number of degrees, got {args.spin}")
    backend.init(args.arch)
    mesh = load_mesh(args.mesh)
    state = ViewState.framing(
        mesh,
        fov=args.fov,
        aspect=W / H,
        azimuth=args.azimuth,
        elevation=args.elevation,
        shading=args.shading,
        aov=args.aov,
    )
    viewer = Viewer(mesh, state, W, H)
    if args.headless:
        run_headless(viewer, args.frames or 1, args.out, args.spin)
        return 0
    return run_window(viewer, args.out, args.frames)
