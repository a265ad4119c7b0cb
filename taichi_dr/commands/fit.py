"""``taichi-dr fit APP``: inverse rendering from a deliberately wrong start.

APP is geometry, pose, texture, material, lighting or joint (see :mod:`taichi_dr.apps.inverse`),
voxels (a density + colour voxel grid, dense and sparse: :mod:`taichi_dr.apps.voxel_fit`) or
splats (3D Gaussians fitted to renders of a textured mesh: :mod:`taichi_dr.apps.splat_fit`).
Targets are rendered from the ground truth (the built-in shape, or ``--target-mesh``), or
read from ``--target IMAGE... --cameras CAMERAS.json``. Writes to ``--out``: metrics.json
(settings, per-iteration losses and metrics, final metrics, goals, time), loss.png,
progress.gif (target | current | error of the first view), dashboard.png (what the live
view shows, see :mod:`taichi_dr.apps.live`), params.json (start, final and true values of every
fitted parameter), mesh.obj (+ mesh.mtl, mesh.png: the texture), target.png, final.png and
checkpoint.npz (``--resume`` continues from it). Without ``--headless`` a GGUI window shows
the fit live: keys pause (space), single-step (s, n), switch the view (v, arrows), stop (q);
the mouse orbits the current model.
"""

import argparse
import json
import math
from dataclasses import fields

import numpy as np

from .. import backend, io, scene
from ..apps import inverse, splat_fit, voxel_fit
from ..apps.fit import View
from ..apps.runner import Runner
from ..camera import Camera, check_depth_range, from_opencv, numbers
from ..errors import UserError

DEFAULTS = {  # iterations, resolution, views
    "geometry": (200, 256, 8),
    "pose": (150, 128, 1),
    "texture": (80, 256, 8),
    "material": (150, 128, 4),
    "lighting": (120, 96, 3),
    "joint": (300, 128, 4),
}


def add_arguments(parser):
    parser.add_argument(
        "app", choices=(*inverse.BUILDERS, "voxels", "splats"), help="what to recover"
    )
    parser.add_argument("--iters", type=int, help="optimisation iterations (default per app)")
    parser.add_argument("--resolution", type=int, help="image width = height in pixels")
    parser.add_argument("--views", type=int, help="cameras (per light for lighting)")
    parser.add_argument(
        "--mode",
        choices=("antialias", "soft", "nmr"),
        help="visibility gradients (default: soft for geometry, antialias otherwise)",
    )
    parser.add_argument(
        "--precondition",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="large-steps preconditioning of vertex positions (geometry)",
    )
    parser.add_argument(
        "--coarse-to-fine",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="blur image and target with a shrinking Gaussian (default: on for pose)",
    )
    parser.add_argument(
        "--sigma-anneal",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="with --mode soft: σ from 3e-4 down to 3e-5 over 60 %% of the iterations",
    )
    parser.add_argument(
        "--shading",
        choices=("ggx", "phong", "blinn-phong"),
        help="material: the model whose parameters are fitted (default ggx: base colour, "
        "roughness, metallic; phong/blinn-phong: base colour, specular, shininess)",
    )
    parser.add_argument(
        "--stop-at-target",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="end the fit at the first iteration where every metric meets its goal "
        "(schedules still span --iters; default: on for geometry)",
    )
    parser.add_argument("--target-mesh", metavar="MESH", help="ground-truth mesh file")
    parser.add_argument("--target", nargs="+", metavar="IMAGE", help="target images")
    parser.add_argument("--cameras", metavar="JSON", help="cameras of the --target images")
    parser.add_argument("--start-angle", type=float, default=30.0, help="pose: degrees off")
    parser.add_argument(
        "--deterministic",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="CPU kernels on one thread, so a seed repeats a fit bit for bit (default: on, "
        "unless this process already runs Taichi)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from --out/checkpoint")
    parser.add_argument("--checkpoint-every", type=int, default=10, help="iterations")
    parser.add_argument("--frame-every", type=int, default=5, help="iterations per GIF frame")
    voxel_fit.add_arguments(parser.add_argument_group("voxels (taichi_dr.apps.voxel_fit)"))
    splat_fit.add_arguments(parser)


def load_cameras(path) -> list:
    """Cameras from a JSON file: ``{"width": W, "height": H, "near": 0.1, "far": 100,
    "cameras": [{"eye": [x, y, z], "center": [...], "up": [...], "fov": deg} or
    {"K": 3x3, "R": 3x3, "t": [3]}, ...]}`` (near, far, center, up and fov optional)."""
    try:
        with open(path) as f:
            data = json.load(f)
    except OSError as exc:
        raise UserError(f"cannot read cameras file {path!r} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"cameras file {path!r} is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cameras"), list):
        raise UserError(f'cameras file {path!r} needs an object with a "cameras" list')
    try:
        size = [data.get(k) for k in ("width", "height")]
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in size):
            raise UserError(f'"width" and "height" must be integers, got {size[0]!r}, {size[1]!r}')
        W, H = size
        near = float(numbers(data.get("near", 0.1), (), '"near"'))
        far = float(numbers(data.get("far", 100.0), (), '"far"'))
        check_depth_range(near, far)
    except UserError as exc:
        raise UserError(f"cameras file {path!r}: {exc}") from None
    cams = []
    for k, c in enumerate(data["cameras"]):
        try:
            if not isinstance(c, dict) or not ("eye" in c or {"K", "R", "t"} <= set(c)):
                raise UserError('give "eye" (look-at) or "K", "R", "t" (OpenCV)')
            if "eye" in c:
                view = (c["eye"], c.get("center", (0, 0, 0)), c.get("up", (0, 1, 0)))
                cams.append(Camera.look_at(*view, c.get("fov", inverse.FOV), W, H, near, far))
            else:
                cams.append(from_opencv(c["K"], c["R"], c["t"], W, H, near, far))
        except UserError as exc:
            raise UserError(f"camera {k} in {path!r}: {exc}") from None
    if not cams:
        raise UserError(f"cameras file {path!r} lists no cameras")
    return cams


def load_targets(paths, cameras) -> tuple:
    """Target views from image files (RGB, RGBA or single-channel masks), one per camera;
    returns (views, masks_only)."""
    if len(paths) != len(cameras):
        raise UserError(
            f"got {len(paths)} target images but {len(cameras)} cameras; give one image per camera"
        )
    views, kinds = [], set()
    for path, cam in zip(paths, cameras):
        img = io.load_image(path).astype(np.float64)
        if img.shape[:2] != (cam.height, cam.width):
            raise UserError(
                f"target {path} is {img.shape[1]}x{img.shape[0]} pixels but its camera is "
                f"{cam.width}x{cam.height}; resize the image or fix the cameras file"
            )
        c = img.shape[2]
        if c not in (1, 3, 4):
            raise UserError(
                f"target {path} has {c} channels; use RGB, RGBA or a single-channel mask"
            )
        if c == 1:
            mask = io.load_image(path, srgb=False)[..., 0].astype(np.float64)
            views.append(View(cam, np.repeat(mask[..., None], 3, axis=2), mask))
        else:
            alpha = img[..., 3] if c == 4 else np.ones(img.shape[:2])
            views.append(View(cam, img[..., :3] * alpha[..., None], alpha))
        kinds.add(c == 1)
    if len(kinds) > 1:
        raise UserError("mix of mask and colour targets; give all masks or all colour images")
    return views, kinds == {True}


def _check(args):
    defaults = DEFAULTS[args.app]
    args.iters = defaults[0] if args.iters is None else args.iters
    args.resolution = defaults[1] if args.resolution is None else args.resolution
    args.views = defaults[2] if args.views is None else args.views
    if args.mode is None:
        args.mode = "soft" if args.app == "geometry" else "antialias"
    if args.stop_at_target is None:
        args.stop_at_target = args.app == "geometry"
    if args.coarse_to_fine is None:
        args.coarse_to_fine = args.app == "pose"
    args.sigma_anneal = args.sigma_anneal and args.mode == "soft"
    for name in ("iters", "views", "resolution", "checkpoint_every", "frame_every"):
        if getattr(args, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise UserError(f"{flag} must be at least 1, got {getattr(args, name)}")
    if args.resolution > 4096:
        raise UserError(f"--resolution must be at most 4096, got {args.resolution}")
    if not math.isfinite(args.start_angle):
        raise UserError(f"--start-angle must be a finite number of degrees, got {args.start_angle}")
    if args.shading is not None and args.app != "material":
        raise UserError("--shading applies to fit material only")
    if bool(args.target) != bool(args.cameras):
        raise UserError("--target and --cameras go together: give both or neither")
    if args.app == "texture" and args.mode == "soft":
        raise UserError("fit texture needs --mode antialias or nmr (soft mode has no texture)")


def run(args):
    if args.app == "voxels":
        return voxel_fit.run(args)
    if args.app == "splats":
        return splat_fit.run(args)
    _check(args)
    deterministic = args.deterministic
    if deterministic is None:  # on, but never restart a Taichi that already holds fields
        deterministic = True if backend.current_arch() is None else None
    backend.init(args.arch, deterministic=deterministic)
    backend.require_autodiff()
    args.deterministic = backend.deterministic()  # what ran, for metrics.json
    target_mesh = scene.load_mesh(args.target_mesh) if args.target_mesh else None
    real_views = masks_only = None
    if args.target:
        cameras = load_cameras(args.cameras)
        real_views, masks_only = load_targets(args.target, cameras)
        if len({(c.width, c.height) for c in cameras}) > 1:
            raise UserError("all cameras in the cameras file must share one resolution")
        if (cameras[0].width, cameras[0].height) != (args.resolution, args.resolution):
            args.resolution = (cameras[0].width, cameras[0].height)
    options = {f.name: getattr(args, f.name) for f in fields(inverse.FitOptions)}
    app = inverse.build(args.app, inverse.FitOptions(**options), target_mesh)
    problem = app.problem
    if real_views is not None:
        problem.views = real_views
        app.synthetic = False
        if masks_only:
            if args.app == "texture":
                raise UserError("fit texture needs colour targets, not masks")
            problem.renderer.configure(shading="unlit")
            problem.fixed["material.base_color"] = np.ones(3)
            t = problem.renderer.texture
            problem.fixed["texture"] = np.ones((t.height, t.width, 3))

    runner = Runner.from_args(args, f"fit-{args.app}", key_metric=app.key_metric)
    final = inverse.optimise(app, runner, args.iters, args.stop_at_target)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in final.items() if isinstance(v, float))
    print(
        f"fit {args.app}: {shown}" + (f"; goal met: {final['goal_met']}" if app.synthetic else "")
    )
    return 130 if runner.interrupted else 0
