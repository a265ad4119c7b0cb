"""``taichi-dr render MESH``: render a mesh file to ``image.png`` and ``aov.npz``.

A 3D Gaussian Splatting ``.ply`` or a point-cloud ``.ply`` is rendered by the splatter
instead (:mod:`taichi_dr.commands.splat`).

Without ``--eye`` the camera frames the mesh: it looks at the bounding-box centre from
the front-right, above, at a distance that fits the bounding sphere into the view.
Lights: ``--light dir:X,Y,Z:R,G,B`` (direction towards the light) or
``--light point:X,Y,Z:R,G,B`` (position), repeatable; ``--ambient R G B``.
"""

import time
from pathlib import Path

import numpy as np

from .. import backend, io
from ..camera import Camera, check_fov, framing
from ..errors import UserError
from ..render.lights import Lights
from ..render.pipeline import Renderer, RenderSettings
from ..render.shading import MODELS, Material
from ..scene import load_mesh


def add_arguments(p) -> None:
    p.add_argument("mesh", help="mesh file: obj, ply, stl, off, glb, gltf (or a splat .ply)")
    p.add_argument("--eye", type=float, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--center", type=float, nargs=3, metavar=("X", "Y", "Z"))
    p.add_argument("--up", type=float, nargs=3, default=(0.0, 1.0, 0.0), metavar=("X", "Y", "Z"))
    p.add_argument("--fov", type=float, default=45.0, help="vertical field of view, degrees")
    p.add_argument("--near", type=float, default=None, help="near plane (default: auto)")
    p.add_argument("--far", type=float, default=None, help="far plane (default: auto)")
    p.add_argument("--resolution", type=int, nargs=2, default=(512, 512), metavar=("W", "H"))
    p.add_argument("--shading", choices=list(MODELS), default="blinn-phong")
    p.add_argument("--light", action="append", default=None, metavar="KIND:XYZ:RGB")
    p.add_argument("--ambient", type=float, nargs=3, default=(0.08, 0.08, 0.08))
    p.add_argument("--background", type=float, nargs=3, default=(0.0, 0.0, 0.0))
    p.add_argument("--base-color", type=float, nargs=3, default=(0.8, 0.8, 0.8))
    p.add_argument("--roughness", type=float, default=0.4)
    p.add_argument("--metallic", type=float, default=0.0)
    p.add_argument("--opacity", type=float, default=1.0)
    p.add_argument("--layers", type=int, default=1, help="depth-peeling layers (transparency)")
    p.add_argument("--cull", choices=("none", "back", "front"), default="none")
    p.add_argument(
        "--texture-filter", choices=("nearest", "bilinear", "trilinear"), default="trilinear"
    )
    p.add_argument("--precision", choices=("f32", "f64"), default=None)


def parse_light(text: str):
    """``dir:X,Y,Z:R,G,B`` or ``point:X,Y,Z:R,G,B`` → (kind, xyz, rgb)."""
    try:
        kind, xyz, rgb = text.split(":")
        xyz = tuple(float(v) for v in xyz.split(","))
        rgb = tuple(float(v) for v in rgb.split(","))
        assert kind in ("dir", "point") and len(xyz) == 3 and len(rgb) == 3
    except (ValueError, AssertionError):
        raise UserError(
            f"cannot parse --light {text!r}; write dir:X,Y,Z:R,G,B or point:X,Y,Z:R,G,B"
        ) from None
    return kind, xyz, rgb


def frame_camera(vertices, args) -> Camera:
    """The camera of ``--eye/--center/--up/--fov/--near/--far/--resolution`` for
    ``vertices`` (what is not given frames them, see :func:`taichi_dr.camera.framing`)."""
    check_fov(args.fov)  # before it is used to place the eye
    W, H = args.resolution
    return framing(
        vertices, args.fov, W, H, args.eye, args.center or None, args.up, args.near, args.far
    )


def run(args) -> int:
    from . import splat as splat_cli

    if splat_cli.handles(args.mesh):
        return splat_cli.render(args, frame_camera)
    backend.init(args.arch, args.precision)
    settings = RenderSettings(
        shading=args.shading,
        cull=args.cull,
        background=args.background,
        texture_filter=args.texture_filter,
        layers=args.layers,
    )
    lights = [parse_light(t) for t in (args.light or ["dir:0.4,0.7,0.6:1,1,1"])]
    lights = dict(
        ambient=args.ambient,
        directional=[(x, c) for k, x, c in lights if k == "dir"],
        point=[(x, c) for k, x, c in lights if k == "point"],
    )
    material = dict(
        base_color=args.base_color,
        roughness=args.roughness,
        metallic=args.metallic,
        opacity=args.opacity,
    )
    Lights(**lights), Material(**material)  # bad values are refused before any work
    mesh = load_mesh(args.mesh)
    camera = frame_camera(mesh.vertices, args)
    renderer = Renderer(mesh, camera, settings)
    renderer.lights.reset(**lights)
    renderer.material.set(**material)
    start = time.perf_counter()
    out = renderer.render()
    seconds = time.perf_counter() - start
    folder = Path(args.out)
    io.save_image(folder / "image.png", out.image)
    aovs = {k: v.astype(np.float32) if v.dtype.kind == "f" else v for k, v in out.as_dict().items()}
    io.save_npz(folder / "aov.npz", **aovs)
    print(
        f"rendered {mesh.num_faces} faces at {camera.width}x{camera.height} on "
        f"{backend.current_arch()} in {seconds:.3f} s (incl. compile) -> {folder}/image.png, "
        f"{folder}/aov.npz"
    )
    return 0
